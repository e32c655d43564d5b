"""Turning boto3/botocore exceptions into one-line messages that name the source and the cause.

Pure: an exception goes in, a `SyncError` comes out. The messages never quote the server's raw
error text for authentication failures (some servers echo the access key id there) and never
print credentials.
"""

from __future__ import annotations

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

from dioptra_runner.sync.errors import SyncError

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


def explain(
    error: BaseException, *, source: str, endpoint: str, key: str | None = None
) -> SyncError:
    """A `SyncError` for `error`, which happened while working on `source` (and `key`)."""
    where = f"{source}: {key!r}" if key else source
    if isinstance(error, SyncError):
        return error
    if isinstance(error, ClientError):
        return SyncError(f"{where}: {_client_error(error, source)}")
    if isinstance(error, EndpointConnectionError | ConnectTimeoutError):
        return SyncError(f"{where}: cannot reach the S3 endpoint {endpoint}")
    if isinstance(error, ReadTimeoutError):
        return SyncError(f"{where}: the S3 endpoint {endpoint} did not answer in time")
    if isinstance(error, NoCredentialsError):
        return SyncError(
            f"{where}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or a web identity token)"
        )
    if isinstance(error, PartialCredentialsError):
        return SyncError(
            f"{where}: incomplete AWS credentials ({error.kwargs.get('cred_var')} missing)"
        )
    if isinstance(error, ProfileNotFound):
        return SyncError(f"{where}: the AWS profile named in AWS_PROFILE does not exist")
    if isinstance(error, NoRegionError):
        return SyncError(f"{where}: no AWS region set (AWS_DEFAULT_REGION)")
    if isinstance(error, ParamValidationError):
        return SyncError(f"{where}: invalid request ({str(error).splitlines()[-1].strip()})")
    if isinstance(error, OSError):
        return SyncError(f"{where}: {error.strerror or type(error).__name__} ({error.filename})")
    return SyncError(
        f"{where}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    )


def _client_error(error: ClientError, source: str) -> str:
    details = error.response.get("Error", {})
    code = str(details.get("Code", "Unknown"))
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code == "NoSuchBucket":
        bucket = source[len("s3://") :].split("/", 1)[0]
        return f"bucket {bucket!r} does not exist"
    if code in ("NoSuchKey", "404"):
        return "the object disappeared while syncing; run the sync again"
    if code in ("PreconditionFailed", "412"):
        return "the object changed while syncing; run the sync again"
    if code in _AUTH_HINTS:
        return f"{_AUTH_HINTS[code]} ({code})"
    if code in ("403", "Forbidden"):
        return f"{_AUTH_HINTS['AccessDenied']} (HTTP 403)"
    if code in ("SlowDown", "Throttling", "ServiceUnavailable", "InternalError", "503", "500"):
        return f"the server kept failing after retries ({code}, HTTP {status})"
    message = str(details.get("Message", "")).splitlines()[0] if details.get("Message") else ""
    return f"{code} (HTTP {status}){': ' + message if message else ''}"
