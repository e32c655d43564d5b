"""AWS Signature Version 4 for S3 requests: pure functions, standard library only.

Used by the fast client (`s3_http.py`). The payload is never signed (`UNSIGNED-PAYLOAD`, which
S3 accepts on GET), so a request is signed from its method, path, query and headers alone.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

UNSIGNED = "UNSIGNED-PAYLOAD"


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None

    def __repr__(self) -> str:  # never print a secret, even in a debugger or a traceback
        return "Credentials(***)"


def uri_encode(text: str, *, keep_slash: bool) -> str:
    """SigV4's encoding: everything but unreserved characters, '/' kept in paths."""
    return quote(text, safe="/~" if keep_slash else "~")


def canonical_query(params: dict[str, str]) -> str:
    return "&".join(
        f"{uri_encode(k, keep_slash=False)}={uri_encode(v, keep_slash=False)}"
        for k, v in sorted(params.items())
    )


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signing_key(secret_key: str, day: str, region: str) -> bytes:
    key = _hmac(f"AWS4{secret_key}".encode(), day)
    return _hmac(_hmac(_hmac(key, region), "s3"), "aws4_request")


def sign(
    method: str,
    host: str,
    path: str,
    params: dict[str, str],
    credentials: Credentials,
    region: str,
    now: datetime,
    key_cache: dict[tuple[str, str], bytes] | None = None,
) -> dict[str, str]:
    """The headers to send (Host, X-Amz-Date, X-Amz-Content-Sha256, Authorization...).

    `path` is already URI-encoded; `now` must be UTC. `key_cache` (day, region) -> key
    spares the four HMACs of the signing key on every request.
    """
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    headers = {"host": host, "x-amz-content-sha256": UNSIGNED, "x-amz-date": stamp}
    if credentials.token:
        headers["x-amz-security-token"] = credentials.token
    names = sorted(headers)
    canonical = "\n".join(
        [
            method,
            path,
            canonical_query(params),
            "".join(f"{name}:{headers[name].strip()}\n" for name in names),
            ";".join(names),
            UNSIGNED,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    if key_cache is not None and (day, region) in key_cache:
        key = key_cache[(day, region)]
    else:
        key = signing_key(credentials.secret_key, day, region)
        if key_cache is not None:
            key_cache[(day, region)] = key
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return headers
