"""`sync_sources` against a real S3 server (moto_server): what lands on disk and what is fetched.

The client is obstore; `test_sync_s3_chain.py` covers where its settings and credentials
come from.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from dioptra_sync import MANIFEST_NAME, SyncError, load_manifest, sync_sources
from support.s3 import FlakyProxy, RecordedRequest, S3Server

TREE = {
    "acme/__init__.py": "",
    "acme/ops/__init__.py": "",
    "acme/ops/steps.py": "def double(x):\n    return 2 * x\n",
    "acme/data/loaders.py": "def load():\n    return [1, 2, 3]\n",
    "acme/data/tables/schema.json": '{"columns": []}\n',
}


def object_gets(requests: list[RecordedRequest]) -> list[str]:
    """Paths of GETs of objects (a listing is a GET of the bucket itself)."""
    return [r.path for r in requests if r.method == "GET" and r.path.count("/") >= 2]


def listings(requests: list[RecordedRequest]) -> list[RecordedRequest]:
    return [r for r in requests if r.method == "GET" and "list-type=2" in r.query]


def files_under(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }


@pytest.fixture
def plugins(s3_server: S3Server, s3_bucket: str, s3_env: dict[str, str]) -> str:
    """A bucket holding TREE under the prefix `plugins`; returns the source URI."""
    s3_server.put_files(s3_bucket, "plugins", TREE)
    return f"s3://{s3_bucket}/plugins/"


def test_a_cold_sync_writes_the_nested_tree_at_the_destinations_top(
    plugins: str, tmp_path: Path
) -> None:
    report = sync_sources([plugins], tmp_path)
    assert files_under(tmp_path) == TREE
    assert report.downloaded == len(TREE)


def test_the_manifest_records_key_size_etag_and_sha256_of_every_file(
    plugins: str, tmp_path: Path
) -> None:
    sync_sources([plugins], tmp_path)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["sources"] == [plugins]
    entries = {item["path"]: item for item in manifest["files"]}
    assert set(entries) == set(TREE)
    for path, text in TREE.items():
        body = text.encode()
        assert entries[path]["key"] == f"plugins/{path}"
        assert entries[path]["size"] == len(body)
        assert entries[path]["sha256"] == hashlib.sha256(body).hexdigest()
        assert entries[path]["etag"] == hashlib.md5(body).hexdigest()  # moto's ETag is the MD5
        assert "versionId" not in entries[path]


def test_a_no_op_resync_makes_one_listing_and_no_get(
    plugins: str, tmp_path: Path, s3_server: S3Server
) -> None:
    sync_sources([plugins], tmp_path)
    with s3_server.recording() as requests:
        report = sync_sources([plugins], tmp_path)
    assert (len(listings(requests)), object_gets(requests)) == (1, [])
    assert (report.downloaded, report.unchanged) == (0, len(TREE))


def test_a_resync_fetches_changed_and_added_objects_and_deletes_removed_ones(
    plugins: str, tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    sync_sources([plugins], tmp_path)
    s3_server.put_files(s3_bucket, "plugins", {"acme/ops/steps.py": "changed = True\n"})
    s3_server.put_files(s3_bucket, "plugins", {"acme/ops/new.py": "added = True\n"})
    s3_server.client().delete_object(Bucket=s3_bucket, Key="plugins/acme/data/loaders.py")
    with s3_server.recording() as requests:
        report = sync_sources([plugins], tmp_path)
    assert sorted(object_gets(requests)) == [
        f"/{s3_bucket}/plugins/acme/ops/new.py",
        f"/{s3_bucket}/plugins/acme/ops/steps.py",
    ]
    expected = {
        **TREE,
        "acme/ops/steps.py": "changed = True\n",
        "acme/ops/new.py": "added = True\n",
    }
    del expected["acme/data/loaders.py"]
    assert files_under(tmp_path) == expected
    assert (report.downloaded, report.deleted) == (2, 1)


def test_a_later_source_wins_on_the_same_path(
    s3_server: S3Server, s3_bucket: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    s3_server.put_files(s3_bucket, "builtins", {"acme/x.py": "builtin\n", "acme/y.py": "y\n"})
    s3_server.put_files(s3_bucket, "custom", {"acme/x.py": "custom\n"})
    first, second = f"s3://{s3_bucket}/builtins/", f"s3://{s3_bucket}/custom/"
    report = sync_sources([first, second], tmp_path)
    assert files_under(tmp_path) == {"acme/x.py": "custom\n", "acme/y.py": "y\n"}
    assert [(o.path, o.winner, o.loser) for o in report.overrides] == [("acme/x.py", second, first)]
    sources = {item["path"]: item["source"] for item in report.manifest["files"]}
    assert sources == {"acme/x.py": second, "acme/y.py": first}


def test_a_prefix_does_not_match_a_longer_sibling_prefix(
    s3_server: S3Server, s3_bucket: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    s3_server.put_files(s3_bucket, "custom", {"a.py": "a\n"})
    s3_server.put_files(s3_bucket, "custom2", {"b.py": "b\n"})
    sync_sources([f"s3://{s3_bucket}/custom/"], tmp_path)
    assert files_under(tmp_path) == {"a.py": "a\n"}


def test_a_versioned_bucket_records_the_version_id_of_each_file(
    s3_server: S3Server, s3_env: dict[str, str], tmp_path: Path
) -> None:
    bucket = s3_server.new_bucket(versioned=True)
    s3_server.put_files(bucket, "p", {"v.py": "one\n"})
    s3_server.put_files(bucket, "p", {"v.py": "two\n"})
    latest = s3_server.client().head_object(Bucket=bucket, Key="p/v.py")["VersionId"]
    report = sync_sources([f"s3://{bucket}/p/"], tmp_path)
    assert (tmp_path / "v.py").read_text() == "two\n"
    assert report.manifest["files"][0]["versionId"] == latest


def test_dotfiles_pycache_and_bytecode_are_not_synced(
    s3_server: S3Server, s3_bucket: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    s3_server.put_files(
        s3_bucket,
        "p",
        {"a.py": "a\n", ".env": "X=1\n", "pkg/__pycache__/a.cpython-311.pyc": "c", "b.pyc": "c"},
    )
    report = sync_sources([f"s3://{s3_bucket}/p/"], tmp_path)
    assert files_under(tmp_path) == {"a.py": "a\n"}
    assert report.skipped == 3


@pytest.mark.parametrize(
    "key", ["p/../evil.py", "p/a/../../evil.py", "p//abs.py", "p/a\\b.py", "p/./x.py"]
)
def test_a_key_that_would_leave_the_destination_is_refused_and_nothing_is_written(
    s3_server: S3Server, s3_bucket: str, s3_env: dict[str, str], tmp_path: Path, key: str
) -> None:
    s3_server.put_files(s3_bucket, "", {"p/good.py": "good\n", key: "evil\n"})
    dest = tmp_path / "plugins"
    with pytest.raises(SyncError, match="refusing object key"):
        sync_sources([f"s3://{s3_bucket}/p/"], dest)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_an_empty_prefix_is_an_error_that_names_the_source(
    s3_bucket: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    with pytest.raises(SyncError) as caught:
        sync_sources([f"s3://{s3_bucket}/nothing-here"], tmp_path)
    assert str(caught.value).startswith(f"s3://{s3_bucket}/nothing-here: no plugin files")


def test_an_empty_prefix_is_accepted_with_allow_empty(
    s3_bucket: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    report = sync_sources([f"s3://{s3_bucket}/nothing-here"], tmp_path, allow_empty=True)
    assert report.manifest["files"] == []


def test_a_missing_bucket_is_an_error_that_names_the_bucket(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    with pytest.raises(SyncError, match=r"^s3://no-such-bucket/p: bucket 'no-such-bucket' does"):
        sync_sources(["s3://no-such-bucket/p"], tmp_path)


def test_an_unreachable_endpoint_is_an_error_that_names_it(
    s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # the default (5) backs off for seconds
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens on it here
    with pytest.raises(
        SyncError, match=f"^s3://some-bucket/p: cannot reach the S3 endpoint {closed}"
    ):
        sync_sources(["s3://some-bucket/p"], tmp_path, endpoint_url=closed)


def test_missing_credentials_are_an_error_that_says_where_they_come_from(
    s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never probe the metadata address
    with pytest.raises(SyncError, match=r"^s3://b-b/p: no AWS credentials found"):
        sync_sources(["s3://b-b/p"], tmp_path / "dest")


@pytest.mark.parametrize(("fault", "times"), [("503", 2), ("reset", 2), ("truncate", 2)])
def test_transient_server_faults_are_retried_and_the_files_are_whole(
    plugins: str, s3_server: S3Server, tmp_path: Path, fault: str, times: int
) -> None:
    with FlakyProxy(s3_server.endpoint_url, fault, times) as proxy:
        sync_sources([plugins], tmp_path, endpoint_url=proxy.url, workers=1)
    assert proxy.faults == times
    assert files_under(tmp_path) == TREE
    assert [p.name for p in tmp_path.rglob("*") if "dioptra-tmp" in p.name] == []


def test_a_local_folder_syncs_like_a_bucket_and_resyncs_incrementally(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for path, text in TREE.items():
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_text(text)
    dest = tmp_path / "dest"
    first = sync_sources([f"file://{source}/"], dest)
    (source / "acme/ops/steps.py").write_text("changed = True\n")
    second = sync_sources([f"{source}/"], dest)
    assert (first.downloaded, second.downloaded, second.unchanged) == (5, 1, 4)
    assert files_under(dest) == {**TREE, "acme/ops/steps.py": "changed = True\n"}


def test_load_manifest_returns_the_document_the_runner_copies_into_status(
    plugins: str, tmp_path: Path
) -> None:
    report = sync_sources([plugins], tmp_path)
    assert load_manifest(tmp_path) == report.manifest


def test_keys_with_spaces_and_non_ascii_characters_sync_to_the_same_names(
    s3_server: S3Server, s3_bucket: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    odd = {"acme/data/my file (1).txt": "a\n", "acme/data/\u00fcber+%41.txt": "b\n"}
    s3_server.put_files(s3_bucket, "p", odd)
    sync_sources([f"s3://{s3_bucket}/p/"], tmp_path)
    assert files_under(tmp_path) == odd


def test_a_listing_of_several_pages_is_read_to_the_end(
    s3_server: S3Server, s3_bucket: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    many = {f"pkg/m{i:04d}.py": f"n = {i}\n" for i in range(1001)}  # a page holds 1,000 keys
    s3_server.put_files(s3_bucket, "p", many)
    with s3_server.recording() as requests:
        sync_sources([f"s3://{s3_bucket}/p/"], tmp_path)
    assert len(listings(requests)) == 2
    assert files_under(tmp_path) == many


def test_a_symlinked_folder_in_the_destination_cannot_lead_files_outside(
    plugins: str, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "acme").symlink_to(outside)
    with pytest.raises(SyncError, match="is a symlink"):
        sync_sources([plugins], dest)
    assert list(outside.iterdir()) == []
