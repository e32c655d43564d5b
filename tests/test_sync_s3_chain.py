"""The obstore client honours the standard AWS chain, against real servers on 127.0.0.1.

`store_settings` is tested alone (it is pure); everything else runs `sync_sources` against a
`moto_server` started here: a named profile beating keys in the environment (on a server
that enforces credentials), `HTTP_PROXY` / `NO_PROXY` (through a forward proxy that records
what it forwards), `AWS_CA_BUNDLE` (moto over TLS with a certificate from a CA made here),
web identity (IRSA, moto serving STS too) and what a missing credential says. Nothing here
reaches the internet: instance metadata is disabled and the shared files point at nothing
unless a test writes them.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import http.server
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from dioptra_sync import SyncError, sync_sources
from dioptra_sync.s3_obstore import DEFAULT_ATTEMPTS, StoreSettings, store_settings
from support.pki import make_pki
from support.s3 import S3Server, start_moto_server

FILES = {"acme/__init__.py": "", "acme/ops.py": "def double(x):\n    return 2 * x\n"}
ROLE_ARN = "arn:aws:iam::123456789012:role/r"
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


# -- the environment and the servers ---------------------------------------------------------


@pytest.fixture(autouse=True)
def bare_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS variable, proxy or shared file of the machine running the tests leaks in, and
    the credential chain never probes the instance metadata address."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name.lower() in _PROXY_VARIABLES:
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials-file"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config-file"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def set_environment(monkeypatch: pytest.MonkeyPatch, variables: Mapping[str, str]) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


def synced_files(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


@dataclass(frozen=True)
class AuthServer:
    """A moto server that checks every request's signature against its IAM users."""

    server: S3Server
    source: str
    key_id: str
    secret: str


@pytest.fixture(scope="module")
def auth_server() -> Iterator[AuthServer]:
    # The setup's requests run unauthenticated (a user, its key and s3:* policy, a bucket,
    # one PUT per file); every later one must be signed by that user's key.
    server = start_moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": str(4 + len(FILES))})
    try:
        iam = boto3.client(
            "iam",
            endpoint_url=server.endpoint_url,
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
            region_name="us-east-1",
        )
        iam.create_user(UserName="researcher")
        key = iam.create_access_key(UserName="researcher")["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(
            UserName="researcher", PolicyName="s3", PolicyDocument=json.dumps(policy)
        )
        server.client().create_bucket(Bucket="secured")
        server.put_files("secured", "plugins", FILES)
        yield AuthServer(
            server, "s3://secured/plugins/", key["AccessKeyId"], key["SecretAccessKey"]
        )
    finally:
        server.stop()


@pytest.fixture
def plugins(s3_server: S3Server) -> str:
    """FILES in a fresh bucket of the plain (credential-blind) moto server; the source URI."""
    bucket = s3_server.new_bucket()
    s3_server.put_files(bucket, "plugins", FILES)
    return f"s3://{bucket}/plugins/"


@dataclass(frozen=True)
class Seen:
    """One request moto saw, with its headers and (decoded) body."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


def _moto_api(server: S3Server, method: str, path: str) -> str:
    request = urllib.request.Request(
        f"{server.endpoint_url}/moto-api/{path}",
        method=method,
        data=b"" if method == "POST" else None,
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode())


@contextlib.contextmanager
def recording(server: S3Server) -> Iterator[list[Seen]]:
    """The requests `server` saw inside the block, headers included (filled at exit)."""
    _moto_api(server, "POST", "recorder/reset-recording")
    _moto_api(server, "POST", "recorder/start-recording")
    seen: list[Seen] = []
    try:
        yield seen
    finally:
        _moto_api(server, "POST", "recorder/stop-recording")
        for line in _moto_api(server, "GET", "recorder/download-recording").splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            url = urlsplit(entry["url"])
            raw = entry.get("body") or ""
            body = base64.b64decode(raw) if entry.get("body_encoded") else raw.encode()
            seen.append(Seen(entry["method"], url.path, url.query, entry["headers"], body))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_tls_moto_server(cert: Path, key: Path, ca: Path) -> S3Server:
    """`moto_server` serving https on 127.0.0.1 with `cert`; waits until it answers."""
    moto = Path(sys.executable).with_name("moto_server")
    command = [str(moto)] if moto.exists() else [sys.executable, "-m", "moto.server"]
    trust = ssl.create_default_context(cafile=str(ca))
    for _ in range(3):  # the free port can be taken between choosing and binding it
        workdir = Path(tempfile.mkdtemp(prefix="moto-tls-"))
        port = _free_port()
        process = subprocess.Popen(
            [*command, "-H", "127.0.0.1", "-p", str(port), "-c", str(cert), "-k", str(key)],
            env={**os.environ, "MOTO_RECORDER_FILEPATH": str(workdir / "recording.jsonl")},
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = S3Server(process, port, workdir)
        server.endpoint_url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(
                    f"{server.endpoint_url}/moto-api/data.json", timeout=2, context=trust
                ):
                    return server
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.05)
        server.stop()
    raise RuntimeError("moto_server over TLS did not start")


@dataclass(frozen=True)
class TlsServer:
    server: S3Server
    ca_bundle: Path
    source: str


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    pki = make_pki(tmp_path_factory.mktemp("pki"))  # its serving cert is for 127.0.0.1 too
    server = start_tls_moto_server(pki.serving.cert, pki.serving.key, pki.ca.cert)
    try:
        client = boto3.client(
            "s3",
            endpoint_url=server.endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
            verify=str(pki.ca.cert),
        )
        client.create_bucket(Bucket="tls")
        for relative, text in FILES.items():
            client.put_object(Bucket="tls", Key=f"plugins/{relative}", Body=text.encode())
        yield TlsServer(server, pki.ca.cert, "s3://tls/plugins/")
    finally:
        server.stop()


class ForwardProxy:
    """A forward HTTP proxy on 127.0.0.1 that records the request line of everything it is
    asked to carry (`seen`: "GET http://127.0.0.1:1234/bucket?list-type=2..."), forwards
    plain http to 127.0.0.1 only and refuses anything else (CONNECT included)."""

    _HOP_BY_HOP = ("connection", "proxy-connection", "keep-alive", "proxy-authorization", "te")

    def __init__(self) -> None:
        self.seen: list[str] = []
        lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                with lock:
                    proxy.seen.append(f"{self.command} {self.path}")
                target = urlsplit(self.path)
                if target.scheme != "http" or target.hostname != "127.0.0.1":
                    self.send_error(403, "this test proxy only forwards to 127.0.0.1")
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in proxy._HOP_BY_HOP
                }
                upstream = http.client.HTTPConnection("127.0.0.1", target.port or 80, timeout=30)
                path = target.path + (f"?{target.query}" if target.query else "")
                upstream.request(self.command, path or "/", body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                upstream.close()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_CONNECT = _forward

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ForwardProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


# -- store_settings: pure, the environment is an argument ------------------------------------


def test_the_endpoint_argument_beats_both_endpoint_variables() -> None:
    environ = {"AWS_ENDPOINT_URL_S3": "http://s3-only:1", "AWS_ENDPOINT_URL": "http://all:2"}
    settings = store_settings("http://argument:3", environ)
    assert (settings.endpoint, settings.config["endpoint"]) == ("http://argument:3",) * 2


def test_aws_endpoint_url_s3_beats_aws_endpoint_url() -> None:
    environ = {"AWS_ENDPOINT_URL_S3": "http://s3-only:1", "AWS_ENDPOINT_URL": "http://all:2"}
    assert store_settings(None, environ).config["endpoint"] == "http://s3-only:1"


def test_aws_endpoint_url_applies_when_nothing_more_specific_is_set() -> None:
    assert store_settings(None, {"AWS_ENDPOINT_URL": "http://all:2"}).endpoint == "http://all:2"


def test_without_an_endpoint_the_store_targets_aws_and_names_it_by_region() -> None:
    settings = store_settings(None, {"AWS_REGION": "eu-west-3"})
    assert settings.endpoint == "AWS S3 (eu-west-3)"
    assert "endpoint" not in settings.config
    assert "allow_http" not in settings.client_options


def test_the_endpoint_loses_its_trailing_slash() -> None:
    assert store_settings("http://minio:9000/", {}).config["endpoint"] == "http://minio:9000"


@pytest.mark.parametrize(
    ("endpoint", "allowed"), [("http://minio:9000", True), ("https://minio:9000", False)]
)
def test_plain_http_is_allowed_only_for_an_http_endpoint(endpoint: str, allowed: bool) -> None:
    assert store_settings(endpoint, {}).client_options["allow_http"] is allowed


@pytest.mark.parametrize("where", ["argument", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"])
@pytest.mark.parametrize("endpoint", ["minio:9000", "s3.example.com", "ftp://files:21"])
def test_an_endpoint_that_is_not_an_http_url_is_a_one_line_error(endpoint: str, where: str) -> None:
    argument = endpoint if where == "argument" else None
    environ = {} if where == "argument" else {where: endpoint}
    with pytest.raises(SyncError) as caught:
        store_settings(argument, environ)
    assert str(caught.value) == (f"{endpoint}: the S3 endpoint must be an http:// or https:// URL")


@pytest.mark.parametrize(
    ("environ", "region"),
    [
        ({"AWS_REGION": "eu-central-1", "AWS_DEFAULT_REGION": "eu-west-1"}, "eu-central-1"),
        ({"AWS_DEFAULT_REGION": "eu-west-1"}, "eu-west-1"),
        ({"AWS_REGION": "", "AWS_DEFAULT_REGION": "eu-west-1"}, "eu-west-1"),
    ],
    ids=["AWS_REGION-first", "then-AWS_DEFAULT_REGION", "empty-AWS_REGION-is-unset"],
)
def test_the_region_comes_from_aws_region_then_aws_default_region(
    environ: dict[str, str], region: str
) -> None:
    settings = store_settings(None, environ)
    assert (settings.config["region"], settings.region_from_environment) == (region, True)


def test_without_a_region_variable_the_region_is_us_east_1_and_a_profile_may_set_it() -> None:
    settings = store_settings(None, {})
    assert (settings.config["region"], settings.region_from_environment) == ("us-east-1", False)


@pytest.mark.parametrize(("attempts", "retries"), [("1", 0), ("3", 2), ("10", 9)])
def test_aws_max_attempts_counts_the_first_try_too(attempts: str, retries: int) -> None:
    settings = store_settings(None, {"AWS_MAX_ATTEMPTS": attempts})
    assert settings.retry["max_retries"] == retries


@pytest.mark.parametrize("attempts", [None, "", "many", "-2"])
def test_an_unset_or_unusable_aws_max_attempts_means_the_default(attempts: str | None) -> None:
    environ = {} if attempts is None else {"AWS_MAX_ATTEMPTS": attempts}
    assert store_settings(None, environ).retry["max_retries"] == DEFAULT_ATTEMPTS - 1


def _credentials(settings: StoreSettings) -> dict[str, Any]:
    names = ("access_key_id", "secret_access_key", "session_token")
    return {name: settings.config[name] for name in names if name in settings.config}


def test_static_keys_in_the_environment_are_used_directly() -> None:
    settings = store_settings(None, {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "SK"})
    assert _credentials(settings) == {"access_key_id": "AKID", "secret_access_key": "SK"}
    assert settings.boto3_chain is False


def test_a_session_token_goes_with_the_static_keys() -> None:
    environ = {"AWS_ACCESS_KEY_ID": "ASIA", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_SESSION_TOKEN": "T"}
    assert _credentials(store_settings(None, environ)) == {
        "access_key_id": "ASIA",
        "secret_access_key": "SK",
        "session_token": "T",
    }


def test_aws_profile_switches_to_boto3s_chain_even_with_keys_in_the_environment() -> None:
    environ = {"AWS_PROFILE": "dev", "AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "SK"}
    settings = store_settings(None, environ)
    assert (settings.boto3_chain, _credentials(settings)) == (True, {})


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"AWS_ACCESS_KEY_ID": "AKID"},
        {"AWS_SECRET_ACCESS_KEY": "SK"},
        {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""},
        {"AWS_WEB_IDENTITY_TOKEN_FILE": "/token", "AWS_ROLE_ARN": ROLE_ARN},
    ],
    ids=["nothing", "key-id-alone", "secret-alone", "empty-keys", "web-identity"],
)
def test_without_both_keys_credentials_come_from_boto3s_chain(environ: dict[str, str]) -> None:
    settings = store_settings(None, environ)
    assert (settings.boto3_chain, _credentials(settings)) == (True, {})


def test_store_settings_reads_only_the_mapping_it_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_environment(
        monkeypatch,
        {
            "AWS_ENDPOINT_URL": "http://from-os-environ:1",
            "AWS_REGION": "ap-south-1",
            "AWS_ACCESS_KEY_ID": "AKID",
            "AWS_SECRET_ACCESS_KEY": "SK",
        },
    )
    settings = store_settings(None, {})
    assert (settings.endpoint, settings.boto3_chain) == ("AWS S3 (us-east-1)", True)


# -- a named profile --------------------------------------------------------------------------


def write_profile(
    folder: Path, name: str, key_id: str, secret: str, region: str = "us-east-1"
) -> dict[str, str]:
    """Shared credentials and config files holding one profile; the variables naming them."""
    credentials, config = folder / "credentials", folder / "config"
    credentials.write_text(
        f"[{name}]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n"
    )
    config.write_text(f"[profile {name}]\nregion = {region}\n")
    return {"AWS_SHARED_CREDENTIALS_FILE": str(credentials), "AWS_CONFIG_FILE": str(config)}


def test_a_named_profile_from_the_shared_files_signs_the_requests(
    auth_server: AuthServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_environment(
        monkeypatch,
        {
            **write_profile(tmp_path, "dev", auth_server.key_id, auth_server.secret),
            "AWS_PROFILE": "dev",
            "AWS_ENDPOINT_URL": auth_server.server.endpoint_url,
            "AWS_MAX_ATTEMPTS": "1",
        },
    )
    sync_sources([auth_server.source], tmp_path / "dest")
    assert synced_files(tmp_path / "dest") == FILES


def test_keys_in_the_environment_beat_aws_profile_as_in_the_aws_cli(
    auth_server: AuthServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore's order: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` come before the shared
    files even when `AWS_PROFILE` names a profile (only the profile's region is read then)."""
    set_environment(
        monkeypatch,
        {
            **write_profile(tmp_path, "dev", "AKIAWRONGWRONGWRONG0", "wrong-secret"),
            "AWS_PROFILE": "dev",
            "AWS_ACCESS_KEY_ID": auth_server.key_id,
            "AWS_SECRET_ACCESS_KEY": auth_server.secret,
            "AWS_ENDPOINT_URL": auth_server.server.endpoint_url,
            "AWS_MAX_ATTEMPTS": "1",
        },
    )
    report = sync_sources([auth_server.source], tmp_path / "dest")
    assert report.downloaded == len(FILES)
    assert synced_files(tmp_path / "dest") == FILES


def test_a_profile_that_does_not_exist_is_a_one_line_error_naming_the_source(
    auth_server: AuthServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_environment(
        monkeypatch,
        {
            **write_profile(tmp_path, "dev", auth_server.key_id, auth_server.secret),
            "AWS_PROFILE": "nope",
            "AWS_ENDPOINT_URL": auth_server.server.endpoint_url,
        },
    )
    with pytest.raises(SyncError) as caught:
        sync_sources([auth_server.source], tmp_path / "dest")
    assert str(caught.value) == (
        f"{auth_server.source}: the AWS profile 'nope' (AWS_PROFILE) does not exist"
    )


@pytest.mark.parametrize(
    ("variables", "region"),
    [({}, "eu-west-1"), ({"AWS_REGION": "ap-south-1"}, "ap-south-1")],
    ids=["the-profiles-region", "AWS_REGION-beats-it"],
)
def test_the_requests_are_signed_for_the_profiles_region_unless_one_is_set(
    plugins: str,
    s3_server: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    variables: dict[str, str],
    region: str,
) -> None:
    set_environment(
        monkeypatch,
        {
            **write_profile(tmp_path, "dev", "AKIDPROFILE", "secret", region="eu-west-1"),
            "AWS_PROFILE": "dev",
            "AWS_ENDPOINT_URL": s3_server.endpoint_url,
            **variables,
        },
    )
    with recording(s3_server) as seen:
        sync_sources([plugins], tmp_path / "dest")
    scopes = {r.headers["Authorization"].split("Credential=")[1].split(",")[0] for r in seen}
    assert len(seen) == 1 + len(FILES)  # the listing and the GETs
    assert {scope.split("/", 2)[0] for scope in scopes} == {"AKIDPROFILE"}
    assert {scope.split("/")[2] for scope in scopes} == {region}


# -- proxies ----------------------------------------------------------------------------------


def test_http_proxy_carries_the_listing_and_every_get(
    plugins: str, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ForwardProxy() as proxy:
        set_environment(
            monkeypatch,
            {**s3_server.env(), "HTTP_PROXY": proxy.url, "AWS_MAX_ATTEMPTS": "1"},
        )
        sync_sources([plugins], tmp_path / "dest")
    bucket, prefix = plugins[len("s3://") :].split("/", 1)
    base = f"{s3_server.endpoint_url}/{bucket}"
    listings = [line for line in proxy.seen if line.startswith(f"GET {base}?list-type=2")]
    gets = sorted(line.split(" ")[1] for line in proxy.seen if line.startswith(f"GET {base}/"))
    assert len(listings) == 1, proxy.seen
    assert gets == [f"{base}/{prefix}{relative}" for relative in sorted(FILES)]
    assert synced_files(tmp_path / "dest") == FILES


def test_no_proxy_sends_requests_for_127_0_0_1_past_the_proxy(
    plugins: str, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ForwardProxy() as proxy:
        set_environment(
            monkeypatch,
            {
                **s3_server.env(),
                "HTTP_PROXY": proxy.url,
                "NO_PROXY": "127.0.0.1",
                "AWS_MAX_ATTEMPTS": "1",
            },
        )
        sync_sources([plugins], tmp_path / "dest")
    assert proxy.seen == []
    assert synced_files(tmp_path / "dest") == FILES


# -- a private CA -----------------------------------------------------------------------------


def test_aws_ca_bundle_makes_an_endpoint_signed_by_a_private_ca_trusted(
    tls_server: TlsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_environment(
        monkeypatch,
        {**tls_server.server.env(), "AWS_CA_BUNDLE": str(tls_server.ca_bundle)},
    )
    assert tls_server.server.endpoint_url.startswith("https://127.0.0.1:")
    report = sync_sources([tls_server.source], tmp_path / "dest")
    assert report.downloaded == len(FILES)
    assert synced_files(tmp_path / "dest") == FILES


def test_an_endpoint_whose_certificate_is_not_trusted_is_a_one_line_error(
    tls_server: TlsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_environment(monkeypatch, {**tls_server.server.env(), "AWS_MAX_ATTEMPTS": "1"})
    with pytest.raises(SyncError) as caught:
        sync_sources([tls_server.source], tmp_path / "dest")
    message = str(caught.value)
    assert message.startswith(f"{tls_server.source}: ")
    assert "\n" not in message
    assert message == (
        f"{tls_server.source}: the TLS certificate of {tls_server.server.endpoint_url} is not "
        "trusted (UnknownIssuer); set AWS_CA_BUNDLE to the CA that signed it"
    )
    assert not (tmp_path / "dest").exists() or synced_files(tmp_path / "dest") == {}


# -- web identity (IRSA) ----------------------------------------------------------------------


def test_a_web_identity_token_is_exchanged_at_sts_for_the_credentials_the_sync_signs_with(
    plugins: str, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2ln")
    set_environment(
        monkeypatch,
        {
            "AWS_WEB_IDENTITY_TOKEN_FILE": str(token),
            "AWS_ROLE_ARN": ROLE_ARN,
            "AWS_ENDPOINT_URL_STS": s3_server.endpoint_url,
            "AWS_ENDPOINT_URL_S3": s3_server.endpoint_url,
        },
    )
    with recording(s3_server) as seen:
        report = sync_sources([plugins], tmp_path / "dest")
    assert synced_files(tmp_path / "dest") == FILES and report.downloaded == len(FILES)
    exchanges = [
        parse_qs(request.body.decode())
        for request in seen
        if request.method == "POST" and b"AssumeRoleWithWebIdentity" in request.body
    ]
    assert len(exchanges) == 1, seen
    assert exchanges[0]["RoleArn"] == [ROLE_ARN]
    assert exchanges[0]["WebIdentityToken"] == [token.read_text()]
    s3_requests = [r for r in seen if r.method == "GET" and not r.path.startswith("/moto-api")]
    assert s3_requests
    for request in s3_requests:  # signed with the temporary key moto issued, with its token
        assert "Credential=ASIA" in request.headers["Authorization"], request.headers
        assert request.headers.get("X-Amz-Security-Token")


# -- missing or incomplete credentials --------------------------------------------------------


def test_missing_credentials_with_no_endpoint_fail_before_any_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real AWS is the target here: the error must come from the chain, not the network."""
    with ForwardProxy() as proxy:
        set_environment(monkeypatch, {"HTTPS_PROXY": proxy.url, "HTTP_PROXY": proxy.url})
        with pytest.raises(SyncError) as caught:
            sync_sources(["s3://some-bucket/p"], tmp_path / "dest")
    assert str(caught.value).startswith("s3://some-bucket/p: no AWS credentials found")
    assert proxy.seen == []


def test_a_key_id_without_its_secret_is_a_one_line_error_naming_the_missing_variable(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_id = "AKIAHALFOFAPAIR0000"
    set_environment(
        monkeypatch, {"AWS_ENDPOINT_URL": s3_server.endpoint_url, "AWS_ACCESS_KEY_ID": key_id}
    )
    with pytest.raises(SyncError) as caught:
        sync_sources(["s3://some-bucket/p"], tmp_path / "dest")
    message = str(caught.value)
    assert message.startswith("s3://some-bucket/p: ")
    assert "missing: AWS_SECRET_ACCESS_KEY" in message
    assert key_id not in message


def test_a_web_identity_token_file_that_is_missing_is_a_one_line_error_naming_it(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "no-such-token"
    set_environment(
        monkeypatch,
        {
            "AWS_WEB_IDENTITY_TOKEN_FILE": str(token),
            "AWS_ROLE_ARN": ROLE_ARN,
            "AWS_ENDPOINT_URL_STS": s3_server.endpoint_url,
            "AWS_ENDPOINT_URL_S3": s3_server.endpoint_url,
            "AWS_MAX_ATTEMPTS": "1",
        },
    )
    with pytest.raises(SyncError) as caught:
        sync_sources(["s3://some-bucket/p"], tmp_path / "dest")
    assert str(caught.value) == (
        f"s3://some-bucket/p: cannot get AWS credentials: No such file or directory ({token})"
    )
