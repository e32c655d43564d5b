"""`push_folder` (`dioptra plugins push`) against a real S3 server, and push-then-sync."""

from __future__ import annotations

from pathlib import Path

import pytest
from dioptra_sync import MANIFEST_NAME, SyncError, push_folder, sync_sources
from support.s3 import S3Server

TREE = {
    "acme/__init__.py": "",
    "acme/ops/steps.py": "def double(x):\n    return 2 * x\n",
    "acme/data/big.bin": "0123456789" * 5000,
}
NOT_PLUGINS = {
    ".git/config": "[core]\n",
    ".env": "SECRET=1\n",
    "acme/__pycache__/steps.cpython-311.pyc": "bytecode",
    "acme/old.pyc": "bytecode",
}


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def keys(s3_server: S3Server, bucket: str) -> list[str]:
    answer = s3_server.client().list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in answer.get("Contents", []))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "plugins", {**TREE, **NOT_PLUGINS})


def test_push_uploads_plugin_files_and_skips_pycache_bytecode_and_dotfiles(
    folder: Path, s3_server: S3Server, s3_bucket: str, s3_env: dict[str, str]
) -> None:
    report = push_folder(folder, f"s3://{s3_bucket}/custom")
    assert keys(s3_server, s3_bucket) == sorted(f"custom/{path}" for path in TREE)
    assert report.uploaded == len(TREE)


def test_push_then_sync_gives_back_the_same_plugin_tree(
    folder: Path, s3_bucket: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    push_folder(folder, f"s3://{s3_bucket}/custom")
    dest = tmp_path / "synced"
    sync_sources([f"s3://{s3_bucket}/custom/"], dest)
    synced = {
        p.relative_to(dest).as_posix(): p.read_text()
        for p in dest.rglob("*")
        if p.is_file() and p.name != MANIFEST_NAME
    }
    assert synced == TREE


def test_a_second_push_of_an_unchanged_folder_uploads_nothing(
    folder: Path, s3_server: S3Server, s3_bucket: str, s3_env: dict[str, str]
) -> None:
    push_folder(folder, f"s3://{s3_bucket}/custom")
    with s3_server.recording() as requests:
        report = push_folder(folder, f"s3://{s3_bucket}/custom")
    assert [r for r in requests if r.method == "PUT"] == []
    assert (report.uploaded, report.unchanged) == (0, len(TREE))


def test_a_push_uploads_only_the_changed_file(
    folder: Path, s3_server: S3Server, s3_bucket: str, s3_env: dict[str, str]
) -> None:
    push_folder(folder, f"s3://{s3_bucket}/custom")
    (folder / "acme/ops/steps.py").write_text("def double(x):\n    return x + x\n")
    with s3_server.recording() as requests:
        push_folder(folder, f"s3://{s3_bucket}/custom")
    puts = [r.path for r in requests if r.method == "PUT"]
    assert puts == [f"/{s3_bucket}/custom/acme/ops/steps.py"]


def test_remote_objects_missing_locally_are_kept_unless_delete_is_asked(
    folder: Path, s3_server: S3Server, s3_bucket: str, s3_env: dict[str, str]
) -> None:
    s3_server.put_files(s3_bucket, "custom", {"acme/removed.py": "gone\n"})
    kept = push_folder(folder, f"s3://{s3_bucket}/custom")
    assert "custom/acme/removed.py" in keys(s3_server, s3_bucket)
    deleted = push_folder(folder, f"s3://{s3_bucket}/custom", delete=True)
    assert "custom/acme/removed.py" not in keys(s3_server, s3_bucket)
    assert (kept.remote_only, deleted.deleted) == (1, 1)


def test_push_to_a_missing_bucket_names_the_bucket(folder: Path, s3_env: dict[str, str]) -> None:
    with pytest.raises(SyncError, match=r"^s3://no-such-bucket/x: bucket 'no-such-bucket' does"):
        push_folder(folder, "s3://no-such-bucket/x")


def test_push_of_a_folder_without_plugin_files_is_refused(
    tmp_path: Path, s3_bucket: str, s3_env: dict[str, str]
) -> None:
    write_tree(tmp_path / "only-dotfiles", {".env": "x\n"})
    with pytest.raises(SyncError, match="no plugin files to push"):
        push_folder(tmp_path / "only-dotfiles", f"s3://{s3_bucket}/x")


def test_push_needs_an_s3_destination(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(SyncError, match="push needs an s3://bucket/prefix destination"):
        push_folder(folder, str(tmp_path / "elsewhere"))
