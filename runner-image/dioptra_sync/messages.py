"""Turning client exceptions into one-line messages that name the source and the cause.

Pure: an exception goes in, a `SyncError` comes out. obstore's exceptions carry the server's
answer as text (the S3 error code in its XML, the HTTP status): both are read from there.
obstore is only imported when it is already loaded (a local-folder sync never loads it).
Messages never quote the server's raw error text (some servers echo the access key id in
authentication failures) and never print credentials.
"""

from __future__ import annotations

import re
import sys

from dioptra_sync.errors import ClientSetupError, SyncError
from dioptra_sync.uri import check_relative_key

_CODE = re.compile(r"<Code>([^<]{1,64})</Code>")
_STATUS = re.compile(r"status code: (\d{3})")
_BAD_PATH = re.compile(r'Path "((?:[^"\\]|\\.)*)"')
_CERTIFICATE = re.compile(r"InvalidCertificate\(\s*(\w+)")
_UNREACHABLE = ("error sending request", "Connection refused", "dns error", "connect error")

_AUTH_HINTS = {
    "InvalidAccessKeyId": "the server does not know this access key id; check AWS_ACCESS_KEY_ID",
    "SignatureDoesNotMatch": "the secret key is wrong; check AWS_SECRET_ACCESS_KEY",
    "AccessDenied": "access denied; check the credentials and the bucket policy",
    "AllAccessDisabled": "access to the bucket is disabled",
    "ExpiredToken": "the session token has expired",
    "InvalidToken": "the session token is invalid",
    "TokenRefreshRequired": "the session token must be refreshed",
    "RequestTimeTooSkewed": "this machine's clock differs too much from the server's",
}
_RETRIED_CODES = ("SlowDown", "Throttling", "ServiceUnavailable", "InternalError", "503", "500")


def explain(
    error: BaseException, *, source: str, endpoint: str, key: str | None = None
) -> SyncError:
    """A `SyncError` for `error`, which happened while working on `source` (and `key`)."""
    where = f"{source}: {key!r}" if key else source
    if isinstance(error, SyncError):
        return error
    if isinstance(error, ClientSetupError):
        return SyncError(f"{where}: {error}")
    if "obstore" in sys.modules:
        message = _obstore_message(error, endpoint, source)
        if message is not None:
            return SyncError(f"{where}: {message}")
    if isinstance(error, OSError):
        return SyncError(f"{where}: {error.strerror or type(error).__name__} ({error.filename})")
    first_line = str(error).splitlines()[0] if str(error) else ""
    return SyncError(f"{where}: {type(error).__name__}: {first_line}")


def _obstore_message(error: BaseException, endpoint: str, source: str) -> str | None:
    from obstore.exceptions import BaseError, InvalidPathError, PreconditionError

    if not isinstance(error, BaseError | FileNotFoundError) or not str(error):
        return None  # obstore's NotFoundError is a FileNotFoundError
    text = str(error)
    if isinstance(error, InvalidPathError):
        found = _BAD_PATH.search(text)
        if found is not None:  # a listed key object_store refuses to parse: say why we do too
            key = found.group(1).encode().decode("unicode_escape")
            prefix = source[len("s3://") :].partition("/")[2]
            relative = key[len(prefix) :] if prefix and key.startswith(prefix) else key
            try:
                check_relative_key(relative, source=source)
            except SyncError as refused:
                return str(refused)[len(source) + 2 :]
        return f"refusing an object key that is not a safe relative path ({text.splitlines()[0]})"
    if isinstance(error, PreconditionError):
        return describe_code("PreconditionFailed", 412, "", source)
    code, status = _CODE.search(text), _STATUS.search(text)
    if code is not None or status is not None:
        number = int(status.group(1)) if status is not None else 0
        return describe_code(code.group(1) if code else str(number), number, "", source)
    certificate = _CERTIFICATE.search(text)
    if certificate is not None:
        return (
            f"the TLS certificate of {endpoint} is not trusted ({certificate.group(1)}); "
            "set AWS_CA_BUNDLE to the CA that signed it"
        )
    if any(marker in text for marker in _UNREACHABLE):
        return f"cannot reach the S3 endpoint {endpoint}"
    if "timed out" in text or "operation timed out" in text:
        return f"the S3 endpoint {endpoint} did not answer in time"
    return None


def describe_code(code: str, status: int, message: str, source: str) -> str:
    """The cause for an S3 error code, as a user should read it."""
    if code == "NoSuchBucket":
        bucket = source[len("s3://") :].split("/", 1)[0] if source else ""
        return f"bucket {bucket!r} does not exist" if bucket else "the bucket does not exist"
    if code in ("NoSuchKey", "404"):
        return "the object disappeared while syncing; run the sync again"
    if code in ("PreconditionFailed", "412"):
        return "the object changed while syncing; run the sync again"
    if code in _AUTH_HINTS:
        return f"{_AUTH_HINTS[code]} ({code})"
    if code in ("403", "Forbidden"):
        return f"{_AUTH_HINTS['AccessDenied']} (HTTP 403)"
    if code in _RETRIED_CODES:
        return f"the server kept failing after retries ({code}, HTTP {status})"
    first_line = message.splitlines()[0] if message else ""
    return f"{code} (HTTP {status}){': ' + first_line if first_line else ''}"
