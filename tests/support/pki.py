"""The certificates and keys a test control plane needs, made fresh for each test session.

One CA signs the API server's serving certificate and every client certificate (the tests'
admin, kube-controller-manager, kube-scheduler, the API server's own client for the kubelet).
ServiceAccount tokens are signed with a separate key pair, as kubeadm does. Elliptic-curve
keys keep generation in the milliseconds.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertPair", "Pki", "make_pki"]

_VALID_FOR = datetime.timedelta(days=2)


@dataclass(frozen=True)
class CertPair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Every file the control plane's flags name."""

    ca: CertPair
    serving: CertPair
    admin: CertPair
    controller_manager: CertPair
    scheduler: CertPair
    apiserver_kubelet_client: CertPair
    kubelet_serving: CertPair
    service_account_key: Path
    service_account_pub: Path

    def client_pair(self, component: str) -> CertPair:
        return {
            "admin": self.admin,
            "kube-controller-manager": self.controller_manager,
            "kube-scheduler": self.scheduler,
        }[component]


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> Any:
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _VALID_FOR)
    )


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def make_pki(folder: Path) -> Pki:
    """Write a CA, the serving and client certificates and the ServiceAccount keys."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = _name("dioptra-test-ca")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca = CertPair(_write_cert(ca_cert, folder / "ca.crt"), _write_key(ca_key, folder / "ca.key"))

    def issue(
        stem: str,
        common_name: str,
        organization: str | None = None,
        *,
        server: bool = False,
    ) -> CertPair:
        key = _key()
        builder = _builder(_name(common_name, organization), ca_name, key.public_key())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.DNSName("kubernetes"),
                        x509.DNSName("kubernetes.default"),
                        x509.DNSName("kubernetes.default.svc"),
                        x509.DNSName("kubernetes.default.svc.cluster.local"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        return CertPair(
            _write_cert(cert, folder / f"{stem}.crt"), _write_key(key, folder / f"{stem}.key")
        )

    sa_key = _key()
    sa_pub = folder / "sa.pub"
    sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return Pki(
        ca=ca,
        serving=issue("apiserver", "kube-apiserver", server=True),
        admin=issue("admin", "dioptra-test-admin", "system:masters"),
        controller_manager=issue("controller-manager", "system:kube-controller-manager"),
        scheduler=issue("scheduler", "system:kube-scheduler"),
        apiserver_kubelet_client=issue(
            "apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"
        ),
        kubelet_serving=issue("kubelet", "stand-in-kubelet", server=True),
        service_account_key=_write_key(sa_key, folder / "sa.key"),
        service_account_pub=sa_pub,
    )
