"""Pure parts of the plugin sync: sources, key safety, planning, messages, progress."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from dioptra_sync.errors import ClientSetupError, SyncError
from dioptra_sync.manifest import ManifestEntry
from dioptra_sync.messages import explain
from dioptra_sync.plan import SourceFile, make_plan, merge
from dioptra_sync.progress import Progress
from dioptra_sync.uri import LocalSource, S3Source, check_relative_key, parse_source
from obstore.exceptions import GenericError, InvalidPathError, PermissionDeniedError


@pytest.mark.parametrize(
    ("text", "bucket", "prefix", "folder"),
    [
        ("s3://plugins", "plugins", "", ""),
        ("s3://plugins/", "plugins", "", ""),
        ("s3://plugins/custom/", "plugins", "custom/", ""),
        ("s3://plugins/a/b/", "plugins", "a/b/", ""),
    ],
)
def test_an_s3_uri_with_a_trailing_slash_lands_at_the_destinations_top(
    text: str, bucket: str, prefix: str, folder: str
) -> None:
    assert parse_source(text) == S3Source(bucket, prefix, folder)


@pytest.mark.parametrize(
    ("text", "prefix", "folder"),
    [
        ("s3://plugins/dioptra_builtins", "dioptra_builtins/", "dioptra_builtins"),
        ("s3://plugins/team/acme", "team/acme/", "acme"),
    ],
)
def test_an_s3_uri_without_a_trailing_slash_lands_as_its_last_folder(
    text: str, prefix: str, folder: str
) -> None:
    """As with rsync: a prefix holding one plugin package stays importable by its name."""
    assert parse_source(text) == S3Source("plugins", prefix, folder)


def test_a_relative_folder_resolves_against_the_given_base(tmp_path: Path) -> None:
    assert parse_source("plugins/", base=tmp_path) == LocalSource(tmp_path / "plugins")
    assert parse_source("acme", base=tmp_path) == LocalSource(tmp_path / "acme", "acme")


def test_a_file_uri_becomes_a_local_folder(tmp_path: Path) -> None:
    assert parse_source(f"file://{tmp_path}/") == LocalSource(tmp_path)
    assert parse_source(f"file://{tmp_path}") == LocalSource(tmp_path, tmp_path.name)


@pytest.mark.parametrize("text", ["s3://", "s3://ab", "ftp://host/x", "s3://b/../x"])
def test_a_malformed_source_is_refused_with_a_message(text: str) -> None:
    with pytest.raises(SyncError, match=r"s3://|ftp://"):
        parse_source(text)


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("../evil.py", "'..' path segment"),
        ("a/../../evil.py", "'..' path segment"),
        ("/etc/passwd", "absolute path"),
        ("a\\b.py", "backslash"),
        ("a//b.py", "empty path segment"),
        ("./a.py", "'.' path segment"),
        ("a/\x00.py", "NUL"),
    ],
)
def test_a_key_that_could_leave_the_destination_is_refused(key: str, reason: str) -> None:
    with pytest.raises(SyncError, match=reason):
        check_relative_key(key, source="s3://b/p")


def test_a_nested_key_is_a_safe_relative_path() -> None:
    assert check_relative_key("acme/ops/steps.py", source="s3://b/p") == "acme/ops/steps.py"


def remote(path: str, source: str = "s3://b/one", token: str = "e1", size: int = 3) -> SourceFile:
    return SourceFile(source=source, key=f"one/{path}", path=path, size=size, token=token)


def entry(path: str, source: str = "s3://b/one", etag: str = "e1", size: int = 3) -> ManifestEntry:
    return ManifestEntry(path, source, f"one/{path}", size, "sha", etag)


def test_a_later_source_wins_on_the_same_path_and_the_override_is_recorded() -> None:
    first = remote("acme/x.py", source="s3://b/one")
    second = remote("acme/x.py", source="s3://b/two")
    files, overrides = merge([[first], [second]])
    assert files["acme/x.py"] is second
    assert [(o.path, o.winner, o.loser) for o in overrides] == [
        ("acme/x.py", "s3://b/two", "s3://b/one")
    ]


def test_a_path_that_is_a_file_in_one_source_and_a_folder_in_another_is_refused() -> None:
    with pytest.raises(SyncError, match="both a file and a folder"):
        merge([[remote("acme")], [remote("acme/x.py", source="s3://b/two")]])


def test_an_object_with_the_recorded_etag_and_size_is_not_downloaded_again() -> None:
    plan = make_plan([[remote("x.py")]], {"x.py": entry("x.py")}, lambda _: (3, 0))
    assert (plan.download, [e.path for e in plan.unchanged]) == ([], ["x.py"])


@pytest.mark.parametrize(
    ("listed", "state"),
    [
        (remote("x.py", token="e2"), (3, 0)),  # ETag changed
        (remote("x.py", size=4), (3, 0)),  # size changed
        (remote("x.py", source="s3://b/two"), (3, 0)),  # now comes from another source
        (remote("x.py"), None),  # the local copy was removed
        (remote("x.py"), (99, 0)),  # the local copy was altered
    ],
)
def test_a_changed_or_missing_file_is_downloaded(
    listed: SourceFile, state: tuple[int, int] | None
) -> None:
    plan = make_plan([[listed]], {"x.py": entry("x.py")}, lambda _: state)
    assert plan.download == [listed]


def test_a_file_written_by_the_previous_sync_whose_object_is_gone_is_deleted() -> None:
    plan = make_plan([[remote("kept.py")]], {"gone.py": entry("gone.py")}, lambda _: None)
    assert plan.delete == ["gone.py"]


def server_error(status: int, reason: str, code: str, message: str = "detail") -> str:
    """The text obstore gives an S3 error answer: the request, the status, the server's XML."""
    return (
        "Generic S3 error: Error performing list request: Error performing GET "
        f"http://e/b?list-type=2 in 9ms - Server returned non-2xx status code: {status} "
        f'{reason}: <?xml version="1.0"?><Error><Code>{code}</Code><Message>{message}'
        '</Message></Error>\n\nDebug source:\nGeneric { store: "S3" }'
    )


def test_a_missing_bucket_is_named_in_the_message() -> None:
    error = GenericError(server_error(404, "Not Found", "NoSuchBucket"))
    assert str(explain(error, source="s3://gone/p", endpoint="http://e")) == (
        "s3://gone/p: bucket 'gone' does not exist"
    )


def test_an_auth_failure_message_never_repeats_the_servers_text() -> None:
    text = server_error(403, "Forbidden", "InvalidAccessKeyId", "key AKIASECRETLOOKING unknown")
    error = explain(PermissionDeniedError(text), source="s3://b/p", endpoint="http://e")
    assert "AKIA" not in str(error)
    assert str(error) == (
        "s3://b/p: the server does not know this access key id; check AWS_ACCESS_KEY_ID "
        "(InvalidAccessKeyId)"
    )


def test_an_unreachable_endpoint_is_named_in_the_message() -> None:
    error = GenericError(
        "Generic S3 error: Error performing list request: Error performing GET "
        "http://127.0.0.1:9/b?list-type=2 in 105ms, after 1 retries - HTTP error: error "
        "sending request\n\nDebug source: ..."
    )
    assert str(explain(error, source="s3://b/p", endpoint="http://127.0.0.1:9")) == (
        "s3://b/p: cannot reach the S3 endpoint http://127.0.0.1:9"
    )


def test_a_listed_key_the_client_cannot_parse_is_refused_with_our_reason() -> None:
    error = InvalidPathError(
        'Encountered object with invalid path: Error parsing Path "p/a/../x.py": '
        'Encountered illegal character sequence ".." whilst parsing path segment ".."'
    )
    assert str(explain(error, source="s3://b/p/", endpoint="http://e")) == (
        "s3://b/p/: refusing object key 'a/../x.py': '..' path segment would leave the destination"
    )


def test_a_client_that_cannot_be_set_up_is_named_with_the_source() -> None:
    error = ClientSetupError("no AWS credentials found (set AWS_ACCESS_KEY_ID ...)")
    assert str(explain(error, source="s3://b/p", endpoint="-")) == (
        "s3://b/p: no AWS credentials found (set AWS_ACCESS_KEY_ID ...)"
    )


def test_a_sync_error_message_is_a_single_line() -> None:
    assert str(SyncError("first line\nsecond  line")) == "first line second line"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_shows_files_bytes_and_rate() -> None:
    stream = FakeTerminal()
    progress = Progress("syncing", 2, stream)
    progress.add_bytes(2048)
    progress.file_done()
    progress.file_done()
    assert "syncing 2/2 files, 2.0 KiB," in stream.getvalue()
    assert "/s" in stream.getvalue()


def test_progress_off_a_terminal_writes_nothing() -> None:
    stream = io.StringIO()
    progress = Progress("syncing", 1, stream)
    progress.add_bytes(10)
    progress.file_done()
    progress.finish()
    assert stream.getvalue() == ""
