"""`dioptra plugins sync|push` as a user runs them: exit codes, output lines, messages.

Runs the `dioptra` console script when the whole CLI imports, else the same handlers through
`python -m dioptra_sync` (the run command is written separately and may be missing).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dioptra_sync import MANIFEST_NAME
from support.s3 import S3Server, start_moto_server

FULL_CLI = importlib.util.find_spec("dioptra_runner.run_command") is not None
DIOPTRA = Path(sys.executable).with_name("dioptra")


def command(*args: str) -> list[str]:
    if FULL_CLI and DIOPTRA.exists():
        return [str(DIOPTRA), "plugins", *args]
    return [sys.executable, "-m", "dioptra_sync", *args]


def dioptra_plugins(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args),
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


@pytest.fixture
def source(s3_server: S3Server, s3_bucket: str) -> str:
    s3_server.put_files(s3_bucket, "plugins", {"acme/__init__.py": "", "acme/x.py": "x = 1\n"})
    return f"s3://{s3_bucket}/plugins/"


def test_a_sync_off_a_terminal_prints_one_summary_line(
    s3_server: S3Server, source: str, tmp_path: Path
) -> None:
    result = dioptra_plugins("sync", "--dest", str(tmp_path), source, env=s3_server.env())
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [result.stdout.strip()] and result.stdout.startswith(
        "synced 2 files from 1 source into"
    )


def test_the_destination_defaults_to_dioptra_plugin_dir(
    s3_server: S3Server, source: str, tmp_path: Path
) -> None:
    env = {**s3_server.env(), "DIOPTRA_PLUGIN_DIR": str(tmp_path)}
    result = dioptra_plugins("sync", source, env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "acme/x.py").read_text() == "x = 1\n"


def test_a_sync_without_any_destination_is_a_usage_error(s3_server: S3Server, source: str) -> None:
    env = {**s3_server.env(), "DIOPTRA_PLUGIN_DIR": ""}
    result = dioptra_plugins("sync", source, env=env)
    assert result.returncode == 2
    assert "pass --dest DIR or set DIOPTRA_PLUGIN_DIR" in result.stderr


def test_the_output_says_which_paths_a_later_source_overrides(
    s3_server: S3Server, s3_bucket: str, source: str, tmp_path: Path
) -> None:
    s3_server.put_files(s3_bucket, "custom", {"acme/x.py": "x = 2\n"})
    override = f"s3://{s3_bucket}/custom/"
    result = dioptra_plugins("sync", "--dest", str(tmp_path), source, override, env=s3_server.env())
    assert result.returncode == 0, result.stderr
    assert f"later sources win: acme/x.py ({override} over {source})" in result.stdout
    assert "1 overridden by later sources" in result.stdout


def test_a_sync_on_a_terminal_shows_live_progress(
    s3_server: S3Server, source: str, tmp_path: Path
) -> None:
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        command("sync", "--dest", str(tmp_path), source),
        env={**os.environ, **s3_server.env()},
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    )
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:
            break  # the child closed the terminal
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert process.wait(timeout=60) == 0
    assert b"syncing 2/2 files" in output


@dataclass
class AuthServer:
    """A moto server that checks every request against its IAM users."""

    server: S3Server
    bucket: str
    key_id: str
    secret: str


@pytest.fixture(scope="module")
def auth_server() -> Iterator[AuthServer]:
    # The first 6 requests run unauthenticated: they create a user with an access key and an
    # s3:* policy, a bucket and two objects. Every later request must be signed by that user,
    # and moto then checks the signature, so these tests also prove our SigV4 signing right.
    server = start_moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "6"})
    try:
        import boto3

        iam = boto3.client("iam", **_client_kwargs(server))
        iam.create_user(UserName="researcher")
        key = iam.create_access_key(UserName="researcher")["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(
            UserName="researcher", PolicyName="s3", PolicyDocument=json.dumps(policy)
        )
        client = server.client()
        client.create_bucket(Bucket="secured")
        client.put_object(Bucket="secured", Key="plugins/a.py", Body=b"a = 1\n")
        client.put_object(Bucket="secured", Key="plugins/odd dir/\u00fc+%.py", Body=b"u = 1\n")
        yield AuthServer(server, "secured", key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        server.stop()


def _client_kwargs(server: S3Server) -> dict[str, str]:
    return {
        "endpoint_url": server.endpoint_url,
        "aws_access_key_id": "bootstrap",
        "aws_secret_access_key": "bootstrap",
        "region_name": "us-east-1",
    }


def test_valid_credentials_sync_from_a_server_that_enforces_auth(
    auth_server: AuthServer, tmp_path: Path
) -> None:
    env = auth_server.server.env(auth_server.key_id, auth_server.secret)
    result = dioptra_plugins("sync", "--dest", str(tmp_path), "s3://secured/plugins/", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a.py").read_text() == "a = 1\n"
    assert (tmp_path / "odd dir/\u00fc+%.py").read_text() == "u = 1\n"


@pytest.mark.parametrize(
    ("which", "expected"),
    [
        ("unknown key", "the server does not know this access key id; check AWS_ACCESS_KEY_ID"),
        ("wrong secret", "the secret key is wrong; check AWS_SECRET_ACCESS_KEY"),
    ],
)
def test_bad_credentials_end_with_one_line_that_names_the_cause_and_no_secret(
    auth_server: AuthServer, tmp_path: Path, which: str, expected: str
) -> None:
    key_id = "AKIAUNKNOWNKEY000000" if which == "unknown key" else auth_server.key_id
    secret = "wrong-secret-value-123"
    env = {
        **auth_server.server.env(key_id, secret),
        "AWS_MAX_ATTEMPTS": "1",
    }
    result = dioptra_plugins("sync", "--dest", str(tmp_path), "s3://secured/plugins", env=env)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"dioptra plugins sync: s3://secured/plugins: {expected}"
        f" ({'InvalidAccessKeyId' if which == 'unknown key' else 'SignatureDoesNotMatch'})"
    ]
    assert secret not in result.stderr + result.stdout
    assert key_id not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://missing-bucket/p", "s3://missing-bucket/p: bucket 'missing-bucket' does not exist"),
        ("s3://BUCKET/empty", "s3://BUCKET/empty: no plugin files under prefix 'empty/'"),
    ],
)
def test_a_failed_sync_exits_non_zero_with_one_line_and_no_traceback(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, uri: str, expected: str
) -> None:
    uri, expected = uri.replace("BUCKET", s3_bucket), expected.replace("BUCKET", s3_bucket)
    result = dioptra_plugins("sync", "--dest", str(tmp_path), uri, env=s3_server.env())
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"dioptra plugins sync: {expected}")
    assert "Traceback" not in result.stderr


def test_an_unreachable_endpoint_exits_non_zero_with_one_line(
    s3_server: S3Server, tmp_path: Path
) -> None:
    env = {**s3_server.env(), "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "2"}
    result = dioptra_plugins("sync", "--dest", str(tmp_path), "s3://any-bucket/p", env=env)
    assert (result.returncode, result.stderr.splitlines()) == (
        1,
        [
            "dioptra plugins sync: s3://any-bucket/p: cannot reach the S3 endpoint http://127.0.0.1:9"
        ],
    )


def test_endpoint_url_overrides_the_environment(
    s3_server: S3Server, source: str, tmp_path: Path
) -> None:
    env = {**s3_server.env(), "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    result = dioptra_plugins(
        "sync", "--endpoint-url", s3_server.endpoint_url, "--dest", str(tmp_path), source, env=env
    )
    assert result.returncode == 0, result.stderr


def test_the_synced_folder_works_with_plugin_dirs_and_pyplugs(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    plugin = "from dioptra import pyplugs\n\n@pyplugs.register\ndef double(x):\n    return 2 * x\n"
    s3_server.put_files(
        s3_bucket,
        "p",
        {"acme/__init__.py": "", "acme/ops/__init__.py": "", "acme/ops/steps.py": plugin},
    )
    dest = tmp_path / "plugins"
    synced = dioptra_plugins(
        "sync", "--dest", str(dest), f"s3://{s3_bucket}/p/", env=s3_server.env()
    )
    assert synced.returncode == 0, synced.stderr
    script = (
        "from dioptra import pyplugs\n"
        "from dioptra.sdk.utilities.contexts import plugin_dirs\n"
        "with plugin_dirs():\n"
        "    print(pyplugs.names('acme.ops'), pyplugs.call('acme.ops', 'steps', 'double', x=21))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "DIOPTRA_PLUGIN_DIR": str(dest)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["['steps']", "42"]
    assert (dest / MANIFEST_NAME).exists()


def test_push_then_sync_on_the_command_line_round_trips_a_folder(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    folder = tmp_path / "mine"
    (folder / "acme").mkdir(parents=True)
    (folder / "acme/__init__.py").write_text("")
    (folder / "acme/y.py").write_text("y = 2\n")
    uri = f"s3://{s3_bucket}/mine"
    pushed = dioptra_plugins("push", str(folder), uri, env=s3_server.env())
    assert (pushed.returncode, pushed.stderr) == (0, "")
    assert pushed.stdout.startswith(f"pushed to {uri} in ")
    synced = dioptra_plugins("sync", "--dest", str(tmp_path / "out"), uri, env=s3_server.env())
    assert synced.returncode == 0, synced.stderr
    # Without a trailing slash the prefix lands as its own folder, as with rsync.
    assert (tmp_path / "out/mine/acme/y.py").read_text() == "y = 2\n"


def python_script(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`script` in a fresh interpreter: what a process imports shows only there."""
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )


def test_a_sync_with_keys_in_the_environment_imports_neither_boto3_nor_prefect(
    s3_server: S3Server, source: str, tmp_path: Path
) -> None:
    script = (
        "import sys\n"
        "from dioptra_sync.command import main\n"
        f"code = main(['sync', '--dest', {str(tmp_path)!r}, {source!r}])\n"
        "heavy = {'botocore', 'boto3', 'prefect', 'kubernetes', 'rich'} & set(sys.modules)\n"
        "print(code, sorted(heavy))\n"
    )
    result = python_script(script, env={**os.environ, **s3_server.env()})
    assert result.stdout.splitlines()[-1] == "0 []", result.stderr


def test_dioptra_plugins_sync_loads_none_of_the_run_commands_modules(
    s3_server: S3Server, source: str, tmp_path: Path
) -> None:
    """The init container's command: `dioptra plugins sync` skips `dioptra run`'s set-up."""
    script = (
        "import sys\n"
        "from dioptra_runner.cli import main\n"
        "try:\n"
        f"    main(['plugins', 'sync', '--dest', {str(tmp_path)!r}, {source!r}])\n"
        "except SystemExit as stop:\n"
        "    runner = sorted(m for m in sys.modules if m.startswith('dioptra_runner.'))\n"
        "    print(stop.code, runner)\n"
    )
    result = python_script(script, env={**os.environ, **s3_server.env()})
    assert result.stdout.splitlines()[-1] == "0 ['dioptra_runner.cli']", result.stderr


def test_a_prefix_holding_one_package_syncs_as_that_package_and_imports_by_its_name(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    """Dioptra's layout: s3://plugins/dioptra_builtins holds the package's own files."""
    plugin = "from dioptra import pyplugs\n\n@pyplugs.register\ndef triple(x):\n    return 3 * x\n"
    s3_server.put_files(
        s3_bucket, "syncpkg_one", {"__init__.py": "", "ops/__init__.py": "", "ops/steps.py": plugin}
    )
    dest = tmp_path / "plugins"
    synced = dioptra_plugins(
        "sync", "--dest", str(dest), f"s3://{s3_bucket}/syncpkg_one", env=s3_server.env()
    )
    assert synced.returncode == 0, synced.stderr
    assert (dest / "syncpkg_one" / "ops" / "steps.py").exists()
    script = (
        "from dioptra import pyplugs\n"
        "from dioptra.sdk.utilities.contexts import plugin_dirs\n"
        "with plugin_dirs([]):\n"
        "    print(pyplugs.call('syncpkg_one.ops', 'steps', 'triple', x=14))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "DIOPTRA_PLUGIN_DIR": str(dest)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["42"]
