"""Plugin bundles: deterministic packing, `push --bundle`, and syncing a bundle source.

Against a real S3 server (moto_server); hostile bundles are built here with `tarfile` and
synced from a local `.tar.gz` (the same unpacking code as for S3, without the upload).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from dioptra_sync import (
    MANIFEST_NAME,
    SyncError,
    load_manifest,
    push_bundle,
    status_entries,
    sync_sources,
)
from dioptra_sync import bundle as bundle_module
from dioptra_sync.bundle import CACHE_FOLDER, pack
from dioptra_sync.uri import BundleSource, parse_source
from support.s3 import RecordedRequest, S3Server
from test_sync_push import NOT_PLUGINS, write_tree

TREE = {
    "acme/__init__.py": "",
    "acme/ops/steps.py": "def double(x):\n    return 2 * x\n",
    "acme/data/table.json": '{"columns": []}\n',
}


def synced_files(dest: Path) -> dict[str, str]:
    """The plugin files in `dest` (not the manifest, not the bundle cache)."""
    return {
        p.relative_to(dest).as_posix(): p.read_text()
        for p in sorted(dest.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME and CACHE_FOLDER not in p.relative_to(dest).parts
    }


def object_gets(requests: list[RecordedRequest]) -> list[str]:
    """Paths of GETs of objects (a listing is a GET of the bucket itself)."""
    return [r.path for r in requests if r.method == "GET" and r.path.count("/") >= 2]


def tar_gz(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """A tar.gz holding exactly `members` (hostile ones included): what an attacker uploads."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, content in members:
            info.size = len(content) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(content) if info.isreg() else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    return info


def local_bundle(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / f"sha256-{hashlib.sha256(data).hexdigest()}.tar.gz"
    path.write_bytes(data)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A plugin folder `plugins/` holding TREE and files that are never plugins."""
    return write_tree(tmp_path / "plugins", {**TREE, **NOT_PLUGINS})


@pytest.fixture
def pushed(folder: Path, s3_bucket: str, s3_env: dict[str, str]) -> str:
    """TREE pushed as a bundle of the folder's contents; returns the pointer's URI."""
    return push_bundle(f"{folder}/", f"s3://{s3_bucket}/team").pointer_uri


# -- packing ---------------------------------------------------------------------------------


def test_the_same_tree_packed_twice_gives_the_same_bytes(folder: Path, tmp_path: Path) -> None:
    first = pack(folder, tmp_path / "one.tar.gz")
    for path in folder.rglob("*"):
        os.utime(path, (1_600_000_000, 1_600_000_000))  # other mtimes, same content
    second = pack(folder, tmp_path / "two.tar.gz")
    assert first == second
    assert (tmp_path / "one.tar.gz").read_bytes() == (tmp_path / "two.tar.gz").read_bytes()


def test_a_changed_file_gives_a_different_digest(folder: Path, tmp_path: Path) -> None:
    before = pack(folder, tmp_path / "one.tar.gz")
    (folder / "acme/ops/steps.py").write_text("def double(x):\n    return x + x\n")
    assert pack(folder, tmp_path / "two.tar.gz").digest != before.digest


def test_packing_skips_dotfiles_pycache_and_bytecode_and_normalises_owners_and_times(
    folder: Path, tmp_path: Path
) -> None:
    pack(folder, tmp_path / "b.tar.gz", root="plugins")
    with tarfile.open(tmp_path / "b.tar.gz") as tar:
        members = tar.getmembers()
    files = sorted(m.name for m in members if m.isfile())
    assert files == sorted(f"plugins/{path}" for path in TREE)
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members} == {
        (0, 0, "", "", bundle_module.FIXED_MTIME)
    }
    assert {m.mode for m in members if m.isfile()} == {0o644}


def test_the_gzip_header_has_no_file_name_and_no_time(folder: Path, tmp_path: Path) -> None:
    pack(folder, tmp_path / "b.tar.gz")
    header = (tmp_path / "b.tar.gz").read_bytes()[:10]
    flags, mtime = header[3], int.from_bytes(header[4:8], "little")
    assert (flags & 0x08, mtime) == (0, 0)  # FNAME unset, MTIME zero


def test_packing_refuses_a_symlink_in_the_folder(folder: Path, tmp_path: Path) -> None:
    (folder / "acme/link.py").symlink_to(folder / "acme/ops/steps.py")
    with pytest.raises(SyncError, match=r"refusing 'acme/link.py': it is a symlink"):
        pack(folder, tmp_path / "b.tar.gz")


# -- sources ---------------------------------------------------------------------------------


def test_a_pointer_and_a_digest_named_bundle_are_bundle_sources() -> None:
    digest = "ab" * 32
    assert parse_source("s3://bucket/team/bundle.json") == BundleSource(
        "bucket", "team/bundle.json", None
    )
    assert parse_source(f"s3://bucket/team/bundles/sha256-{digest}.tar.gz") == BundleSource(
        "bucket", f"team/bundles/sha256-{digest}.tar.gz", digest
    )


def test_an_s3_tar_gz_not_named_by_its_digest_is_refused() -> None:
    with pytest.raises(SyncError, match="named by its digest"):
        parse_source("s3://bucket/team/plugins.tar.gz")


# -- push and sync ---------------------------------------------------------------------------


def test_push_then_sync_of_a_folder_with_a_slash_lands_its_contents_at_the_top(
    pushed: str, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    sync_sources([pushed], dest)
    assert synced_files(dest) == TREE


def test_push_then_sync_of_a_folder_without_a_slash_lands_as_that_folder(
    folder: Path, s3_bucket: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    report = push_bundle(str(folder / "acme"), f"s3://{s3_bucket}/team")
    dest = tmp_path / "dest"
    sync_sources([report.bundle_uri], dest)
    assert synced_files(dest) == TREE  # TREE's paths all start with acme/


def test_push_writes_the_bundle_under_its_digest_and_a_pointer_naming_it(
    folder: Path, s3_server: S3Server, s3_bucket: str, s3_env: dict[str, str]
) -> None:
    report = push_bundle(f"{folder}/", f"s3://{s3_bucket}/team")
    key = f"team/bundles/sha256-{report.info.digest}.tar.gz"
    body = s3_server.client().get_object(Bucket=s3_bucket, Key="team/bundle.json")["Body"]
    assert json.loads(body.read()) == {
        "version": 1,
        "digest": f"sha256:{report.info.digest}",
        "key": key,
        "size": report.info.size,
        "files": len(TREE),
    }
    bundle_body = s3_server.client().get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    assert hashlib.sha256(bundle_body).hexdigest() == report.info.digest


def test_a_second_push_of_the_same_tree_uploads_only_the_pointer(
    folder: Path, s3_server: S3Server, s3_bucket: str, s3_env: dict[str, str]
) -> None:
    push_bundle(f"{folder}/", f"s3://{s3_bucket}/team")
    with s3_server.recording() as requests:
        report = push_bundle(f"{folder}/", f"s3://{s3_bucket}/team")
    assert [r.path for r in requests if r.method == "PUT"] == [f"/{s3_bucket}/team/bundle.json"]
    assert not report.uploaded


def test_a_cold_sync_is_one_get_of_the_pointer_and_one_of_the_bundle(
    pushed: str, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    with s3_server.recording() as requests:
        report = sync_sources([pushed], tmp_path / "dest")
    digest = report.bundles[0].info.digest
    assert requests and all(r.method == "GET" for r in requests)
    assert object_gets(requests) == [
        f"/{s3_bucket}/team/bundle.json",
        f"/{s3_bucket}/team/bundles/sha256-{digest}.tar.gz",
    ]
    assert len(requests) == 2  # no listing either


def test_a_no_op_resync_through_the_pointer_gets_only_the_pointer(
    pushed: str, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    sync_sources([pushed], tmp_path / "dest")
    with s3_server.recording() as requests:
        report = sync_sources([pushed], tmp_path / "dest")
    assert object_gets(requests) == [f"/{s3_bucket}/team/bundle.json"]
    assert (report.downloaded, report.unchanged) == (0, len(TREE))


def test_a_no_op_resync_of_a_digest_named_bundle_makes_no_request(
    folder: Path, s3_server: S3Server, s3_bucket: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    source = push_bundle(f"{folder}/", f"s3://{s3_bucket}/team").bundle_uri
    sync_sources([source], tmp_path / "dest")
    with s3_server.recording() as requests:
        sync_sources([source], tmp_path / "dest")
    assert requests == []


def test_a_new_push_updates_changed_files_deletes_removed_ones_and_drops_the_old_bundle(
    folder: Path, pushed: str, s3_bucket: str, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    first = sync_sources([pushed], dest).bundles[0].info.digest
    (folder / "acme/ops/steps.py").write_text("def double(x):\n    return x + x\n")
    (folder / "acme/data/table.json").unlink()
    push_bundle(f"{folder}/", f"s3://{s3_bucket}/team")
    report = sync_sources([pushed], dest)
    expected = {**TREE, "acme/ops/steps.py": "def double(x):\n    return x + x\n"}
    del expected["acme/data/table.json"]
    assert synced_files(dest) == expected
    assert report.deleted == 1
    assert sorted(p.name for p in (dest / CACHE_FOLDER).iterdir()) == [
        f"sha256-{report.bundles[0].info.digest}"
    ]
    assert first != report.bundles[0].info.digest


def test_a_damaged_cached_bundle_is_fetched_again_instead_of_trusted(
    pushed: str, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    digest = sync_sources([pushed], dest).bundles[0].info.digest
    (dest / CACHE_FOLDER / f"sha256-{digest}" / "acme/ops/steps.py").unlink()
    with s3_server.recording() as requests:
        sync_sources([pushed], dest)
    assert f"/{s3_bucket}/team/bundles/sha256-{digest}.tar.gz" in object_gets(requests)
    assert synced_files(dest) == TREE


def test_a_bundle_merged_with_a_later_per_file_source_loses_on_the_same_path(
    pushed: str, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    s3_server.put_files(s3_bucket, "fixes", {"acme/ops/steps.py": "def double(x):\n    return 0\n"})
    dest = tmp_path / "dest"
    report = sync_sources([pushed, f"s3://{s3_bucket}/fixes/"], dest)
    assert (dest / "acme/ops/steps.py").read_text() == "def double(x):\n    return 0\n"
    assert [(o.path, o.loser) for o in report.overrides] == [("acme/ops/steps.py", pushed)]


def test_the_manifest_records_the_bundle_and_the_pointer_it_was_found_through(
    pushed: str, s3_bucket: str, tmp_path: Path
) -> None:
    report = sync_sources([pushed], tmp_path / "dest")
    digest = report.bundles[0].info.digest
    assert load_manifest(tmp_path / "dest")["bundles"] == [  # type: ignore[index]
        {
            "source": pushed,
            "digest": f"sha256:{digest}",
            "key": f"team/bundles/sha256-{digest}.tar.gz",
            "size": report.bundles[0].info.size,
            "files": len(TREE),
            "pointer": "team/bundle.json",
        }
    ]


def test_status_entries_list_the_bundle_digest_and_not_its_files(
    pushed: str, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    s3_server.put_files(s3_bucket, "extra", {"other/mod.py": "x = 1\n"})
    report = sync_sources([pushed, f"s3://{s3_bucket}/extra/"], tmp_path / "dest")
    entries = status_entries(report.manifest)
    digest = report.bundles[0].info.digest
    assert entries[0] == {
        "source": pushed,
        "bundle": f"sha256:{digest}",
        "key": f"team/bundles/sha256-{digest}.tar.gz",
        "size": report.bundles[0].info.size,
        "files": len(TREE),
    }
    assert [e["path"] for e in entries[1:]] == ["other/mod.py"]


def test_a_tampered_bundle_fails_with_one_line_and_leaves_dest_as_it_was(
    s3_server: S3Server, s3_bucket: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    named = "0" * 64
    key = f"team/bundles/sha256-{named}.tar.gz"
    data = tar_gz([(member("acme/evil.py"), b"print('tampered')\n")])
    s3_server.client().put_object(Bucket=s3_bucket, Key=key, Body=data)
    dest = write_tree(tmp_path / "dest", {"mine.py": "kept\n"})
    with pytest.raises(SyncError) as raised:
        sync_sources([f"s3://{s3_bucket}/{key}"], dest)
    message = str(raised.value)
    assert "\n" not in message
    assert f"s3://{s3_bucket}/{key}" in message
    assert f"sha256:{hashlib.sha256(data).hexdigest()}" in message
    assert f"sha256:{named}" in message
    assert sorted(p.name for p in dest.iterdir()) == ["mine.py"]


@pytest.mark.parametrize(
    "document",
    [
        b"<html>not json</html>",
        b'{"version": 1, "digest": "sha256:nothex", "key": "b/sha256-x.tar.gz"}',
        b'{"version": 2, "digest": "sha256:' + b"a" * 64 + b'"}',
        b"[1, 2, 3]",
    ],
    ids=["not-json", "malformed-digest", "other-version", "not-an-object"],
)
def test_a_malformed_pointer_fails_with_one_line_naming_it(
    document: bytes, s3_server: S3Server, s3_bucket: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    s3_server.client().put_object(Bucket=s3_bucket, Key="team/bundle.json", Body=document)
    with pytest.raises(SyncError) as raised:
        sync_sources([f"s3://{s3_bucket}/team/bundle.json"], tmp_path / "dest")
    message = str(raised.value)
    assert message.startswith(f"s3://{s3_bucket}/team/bundle.json: not a bundle pointer")
    assert "\n" not in message


def test_the_cli_pushes_a_bundle_and_prints_its_digest_and_the_sources_to_use(
    folder: Path, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dioptra_sync",
            "push",
            "--bundle",
            f"{folder}/",
            f"s3://{s3_bucket}/t",
        ],
        env={**os.environ, **s3_server.env()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, "")
    digest = pack(folder, tmp_path / "same.tar.gz").digest
    assert done.stdout.count("\n") == 1
    assert f"sha256:{digest}" in done.stdout
    assert f"s3://{s3_bucket}/t/bundle.json" in done.stdout
    assert f"s3://{s3_bucket}/t/bundles/sha256-{digest}.tar.gz" in done.stdout


def test_push_refuses_delete_with_bundle(folder: Path, s3_bucket: str) -> None:
    from dioptra_sync.command import EXIT_USAGE, main

    assert main(["push", "--bundle", "--delete", str(folder), f"s3://{s3_bucket}/t"]) == EXIT_USAGE


# -- unpacking safely ------------------------------------------------------------------------


def test_a_local_bundle_file_syncs_like_one_on_s3(folder: Path, tmp_path: Path) -> None:
    pack(folder, tmp_path / "plugins.tar.gz")
    dest = tmp_path / "dest"
    sync_sources(["./plugins.tar.gz"], dest, base=tmp_path)
    assert synced_files(dest) == TREE


@pytest.mark.parametrize(
    ("hostile", "reason"),
    [
        (member("../outside.py"), "'..' path segment"),
        (member("/etc/outside.py"), "absolute path"),
        (member("acme/link.py", tarfile.SYMTYPE, "/etc/passwd"), "it is a symlink"),
        (member("acme/hard.py", tarfile.LNKTYPE, "acme/ok.py"), "it is a hard link"),
        (member("acme/dev", tarfile.CHRTYPE), "it is a device"),
        (member("acme/pipe", tarfile.FIFOTYPE), "it is a fifo"),
    ],
    ids=["traversal", "absolute", "symlink", "hard-link", "device", "fifo"],
)
def test_a_hostile_member_is_refused_and_nothing_is_synced(
    hostile: tarfile.TarInfo, reason: str, tmp_path: Path
) -> None:
    data = tar_gz([(member("acme/ok.py"), b"ok = 1\n"), (hostile, b"x = 1\n")])
    source = local_bundle(tmp_path, data)
    dest = tmp_path / "dest"
    with pytest.raises(SyncError, match=reason) as raised:
        sync_sources([str(source)], dest)
    assert "\n" not in str(raised.value)
    assert list(dest.rglob("*")) == []
    assert not (tmp_path / "outside.py").exists()


def test_a_bundle_over_the_file_count_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bundle_module, "MAX_BUNDLE_FILES", 2)
    data = tar_gz([(member(f"acme/m{i}.py"), b"x = 1\n") for i in range(3)])
    with pytest.raises(SyncError, match="more than 2 files"):
        sync_sources([str(local_bundle(tmp_path, data))], tmp_path / "dest")
    assert list((tmp_path / "dest").rglob("*")) == []


def test_a_bundle_over_the_size_limit_is_refused_before_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bundle_module, "MAX_BUNDLE_BYTES", 1000)
    data = tar_gz([(member("acme/a.py"), b"a" * 600), (member("acme/b.py"), b"b" * 600)])
    with pytest.raises(SyncError, match="more than 1000 bytes"):
        sync_sources([str(local_bundle(tmp_path, data))], tmp_path / "dest")
    assert list((tmp_path / "dest").rglob("*")) == []


def test_a_file_that_is_not_a_tar_gz_fails_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(SyncError, match=r"not a readable tar.gz bundle") as raised:
        sync_sources([str(local_bundle(tmp_path, b"PK\x03\x04 a zip, say"))], tmp_path / "dest")
    assert "\n" not in str(raised.value)


def test_a_bundle_lands_skip_rule_names_nowhere(tmp_path: Path) -> None:
    data = tar_gz(
        [
            (member("acme/ok.py"), b"ok = 1\n"),
            (member("acme/__pycache__/ok.cpython-311.pyc"), b"bytecode"),
            (member(".env"), b"SECRET=1\n"),
        ]
    )
    dest = tmp_path / "dest"
    sync_sources([str(local_bundle(tmp_path, data))], dest)
    assert synced_files(dest) == {"acme/ok.py": "ok = 1\n"}
