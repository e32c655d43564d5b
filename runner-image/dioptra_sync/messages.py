"""Turning client exceptions into one-line messages that name the source and the cause.

Pure: an exception goes in, a `SyncError` comes out. Both clients' errors are understood (the
fast client's `S3HttpError` / `EndpointUnreachable`, botocore's exceptions); botocore is only
imported when the error came from it. Messages never quote the server's raw error text for
authentication failures (some servers echo the access key id there) and never print
credentials.
"""

from __future__ import annotations

import sys

from dioptra_sync.errors import SyncError

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
    from dioptra_sync.s3_http import EndpointUnreachable, S3HttpError

    if isinstance(error, S3HttpError):
        return SyncError(
            f"{where}: {describe_code(error.code, error.status, error.message, source)}"
        )
    if isinstance(error, EndpointUnreachable):
        return SyncError(f"{where}: cannot reach the S3 endpoint {endpoint}")
    if "botocore" in sys.modules:
        message = _botocore_message(error, endpoint, source)
        if message is not None:
            return SyncError(f"{where}: {message}")
    if isinstance(error, OSError):
        return SyncError(f"{where}: {error.strerror or type(error).__name__} ({error.filename})")
    first_line = str(error).splitlines()[0] if str(error) else ""
    return SyncError(f"{where}: {type(error).__name__}: {first_line}")


def _botocore_message(error: BaseException, endpoint: str, source: str) -> str | None:
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        ParamValidationError,
        PartialCredentialsError,
        ProfileNotFound,
        ReadTimeoutError,
    )

    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return describe_code(
            str(details.get("Code", "Unknown")),
            int(status),
            str(details.get("Message", "")),
            source,
        )
    if isinstance(error, EndpointConnectionError | ConnectTimeoutError):
        return f"cannot reach the S3 endpoint {endpoint}"
    if isinstance(error, ReadTimeoutError):
        return f"the S3 endpoint {endpoint} did not answer in time"
    if isinstance(error, NoCredentialsError):
        return (
            "no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, or a web identity token)"
        )
    if isinstance(error, PartialCredentialsError):
        return f"incomplete AWS credentials ({error.kwargs.get('cred_var')} missing)"
    if isinstance(error, ProfileNotFound):
        return "the AWS profile named in AWS_PROFILE does not exist"
    if isinstance(error, NoRegionError):
        return "no AWS region set (AWS_DEFAULT_REGION)"
    if isinstance(error, ParamValidationError):
        return f"invalid request ({str(error).splitlines()[-1].strip()})"
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
