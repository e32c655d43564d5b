"""Prefect start-up design: a pre-migrated template database and an early-started server.

The flow-run test runs in a child process with its own ``PREFECT_HOME`` and no
``PREFECT_API_URL``, as a Job pod without a Prefect server would: the session's shared
server (tests/support/prefect.py) must not be what answers.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from dioptra_runner import prefect_warmup
from dioptra_runner.prefect_warmup import (
    DATABASE_NAME,
    STAMP_NAME,
    build_template,
    prepare_prefect_home,
    quiet_server_settings,
    start_background_warmup,
    uses_external_server,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real template for the module: building it runs Prefect's migrations (~5-10 s)."""
    dest = tmp_path_factory.mktemp("prefect-template") / "template"
    build_template(dest)
    return dest


def _env(home: Path, **extra: str) -> dict[str, str]:
    """An environment with no Prefect settings but PREFECT_HOME (and ``extra``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(home)
    env.update(extra)
    return env


def test_the_template_database_is_migrated_with_block_types_registered(template: Path) -> None:
    with sqlite3.connect(template / DATABASE_NAME) as db:
        versions = db.execute("select version_num from alembic_version").fetchall()
        block_types = db.execute("select count(*) from block_type").fetchone()[0]
    assert len(versions) == 1 and versions[0][0]
    assert block_types > 0


def test_the_template_is_stamped_with_the_installed_prefect_version(template: Path) -> None:
    from importlib.metadata import version

    stamp = json.loads((template / STAMP_NAME).read_text())
    assert stamp == {"prefect": version("prefect")}


def test_an_empty_prefect_home_gets_a_copy_of_the_template(template: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    copied = prepare_prefect_home(template, env=_env(home))
    assert copied
    assert (home / DATABASE_NAME).read_bytes() == (template / DATABASE_NAME).read_bytes()


def test_the_template_location_comes_from_the_environment(template: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert prepare_prefect_home(env=_env(home, DIOPTRA_PREFECT_TEMPLATE=str(template)))
    assert (home / DATABASE_NAME).exists()


def test_an_existing_database_is_kept(template: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / DATABASE_NAME).write_bytes(b"the user's history")
    assert not prepare_prefect_home(template, env=_env(home))
    assert (home / DATABASE_NAME).read_bytes() == b"the user's history"


@pytest.mark.parametrize(
    "setting",
    [
        "PREFECT_API_URL=http://prefect.example:4200/api",
        "PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://db/prefect",
    ],
)
def test_nothing_is_copied_when_the_user_chose_a_server_or_database(
    template: Path, tmp_path: Path, setting: str
) -> None:
    key, _, value = setting.partition("=")
    home = tmp_path / "home"
    assert not prepare_prefect_home(template, env=_env(home, **{key: value}))
    assert not (home / DATABASE_NAME).exists()


def test_a_template_from_another_prefect_version_is_ignored(template: Path, tmp_path: Path) -> None:
    old = tmp_path / "old-template"
    old.mkdir()
    (old / DATABASE_NAME).write_bytes((template / DATABASE_NAME).read_bytes())
    (old / STAMP_NAME).write_text(json.dumps({"prefect": "2.0.0"}))
    assert not prepare_prefect_home(old, env=_env(tmp_path / "home"))


def test_an_api_url_in_the_active_profile_counts_as_an_external_server(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "profiles.toml").write_text(
        'active = "team"\n[profiles.team]\nPREFECT_API_URL = "http://prefect.example/api"\n'
    )
    assert uses_external_server(_env(home))
    assert not uses_external_server(_env(tmp_path / "elsewhere"))


def test_quiet_settings_skip_migrations_only_for_a_templated_database() -> None:
    assert "PREFECT_API_DATABASE_MIGRATE_ON_START" not in quiet_server_settings(templated=False)
    assert quiet_server_settings(templated=True)["PREFECT_API_DATABASE_MIGRATE_ON_START"] == "false"


def test_warmup_starts_nothing_when_an_api_url_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    warmup = start_background_warmup()
    assert warmup.process is None and warmup.api_url is None
    warmup.wait(timeout=0.1)  # returns at once: nothing to wait for
    assert os.environ["PREFECT_API_URL"] == "http://127.0.0.1:9/api"


FLOW_AFTER_WARMUP = textwrap.dedent(
    """
    import json, sys, types
    from dioptra_runner.prefect_warmup import start_background_warmup

    warmup = start_background_warmup()  # before Prefect is imported, as the runner does

    from dioptra import pyplugs
    from dioptra.flow import Flow, Parameter

    ops = types.ModuleType("warmops.ops")
    sys.modules["warmops"] = types.ModuleType("warmops")
    sys.modules["warmops.ops"] = ops
    def double(x: int) -> int:
        return 2 * x
    double.__module__ = "warmops.ops"
    ops.double = pyplugs.register(double)

    with Flow("after warmup") as flow:
        x = Parameter("x")
        first = pyplugs.call_task("warmops", "ops", "double", x=x)
        pyplugs.call_task("warmops", "ops", "double", x=first)

    warmup.wait(timeout=90)
    result = flow.run({"x": 5})

    import time
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    only_this_run = FlowRunFilter(id=FlowRunFilterId(any_=[result.flow_run_id]))
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(result.flow_run_id)
        flow_name = client.read_flow(run.flow_id).name
        for _ in range(100):  # task runs reach the API through events, a moment later
            tasks = client.read_task_runs(flow_run_filter=only_this_run)
            if len(tasks) == 2 and all(t.state_name == "Completed" for t in tasks):
                break
            time.sleep(0.1)
    print(json.dumps({
        "state": result.state,
        "values": sorted(o.result for o in result.tasks.values()),
        "api_url": warmup.api_url,
        "flow_run": [flow_name, run.state_name],
        "task_runs": sorted(t.state_name for t in tasks),
    }))
    """
)


def test_a_flow_runs_on_the_warmed_up_server_and_its_run_is_in_the_api(
    template: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = _env(home, DIOPTRA_PREFECT_TEMPLATE=str(template))
    done = subprocess.run(
        [sys.executable, "-c", FLOW_AFTER_WARMUP],
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["state"] == "Completed"
    assert report["values"] == [10, 20]
    assert report["flow_run"] == ["after warmup", "Completed"]
    assert report["task_runs"] == ["Completed", "Completed"]
    assert report["api_url"].startswith("http://127.0.0.1:")
    # The server was told to skip migrations: it served the run from the copied template.
    with (
        sqlite3.connect(home / DATABASE_NAME) as db,
        sqlite3.connect(template / DATABASE_NAME) as t,
    ):
        query = "select version_num from alembic_version"
        assert db.execute(query).fetchall() == t.execute(query).fetchall()


BROKEN_SERVER = textwrap.dedent(
    """
    import os
    from dioptra_runner.prefect_warmup import WarmupError, start_background_warmup

    # A database the server cannot open: it exits during start-up.
    bad = {"PREFECT_API_DATABASE_CONNECTION_URL": "sqlite+aiosqlite:////nonexistent/dir/x.db"}
    warmup = start_background_warmup(server_settings=bad)
    print(os.environ["PREFECT_API_URL"] == warmup.api_url)
    try:
        warmup.wait(timeout=90)
    except WarmupError as error:
        print(str(error))
    warmup.stop()
    print("PREFECT_API_URL" in os.environ)
    """
)


def test_a_server_that_fails_to_start_is_reported_in_one_line_and_handed_back(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", BROKEN_SERVER],
        env=_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=110,
        check=True,
    )
    pointed, message, still_set = done.stdout.strip().splitlines()
    assert pointed == "True"
    assert message.startswith("the temporary Prefect server exited with code")
    assert "dioptra-prefect-server.log" in message
    assert still_set == "False"  # Prefect falls back to starting its own server


def test_the_module_imports_nothing_from_prefect() -> None:
    code = (
        "import sys, dioptra_runner.prefect_warmup; "
        "print(any(m == 'prefect' or m.startswith('prefect.') for m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    assert prefect_warmup.__all__


def test_the_sidecar_server_answers_on_its_address_and_ends_promptly_on_sigterm(
    template: Path, tmp_path: Path
) -> None:
    port = prefect_warmup.free_port()
    env = _env(tmp_path / "home", DIOPTRA_PREFECT_TEMPLATE=str(template))
    command = [sys.executable, "-m", "dioptra_runner.prefect_warmup", "serve"]
    server = subprocess.Popen(
        [*command, "--listen", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        prefect_warmup.SidecarApi(f"http://127.0.0.1:{port}/api", timeout=60).wait()
        assert (tmp_path / "home" / DATABASE_NAME).is_file(), "the template was copied in"
        server.terminate()
        assert server.wait(timeout=15) == 143  # 128 + SIGTERM, once uvicorn has shut down
    finally:
        server.kill()
        server.wait()


def test_waiting_for_a_sidecar_that_never_answers_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOSTNAME", "exp-g1-abcde")
    url = f"http://127.0.0.1:{prefect_warmup.free_port()}/api"
    with pytest.raises(prefect_warmup.SidecarUnavailable) as caught:
        prefect_warmup.SidecarApi(url, timeout=0.3).wait()
    assert str(caught.value) == (
        f"the Prefect API sidecar did not answer at {url} within 0.3 s; "
        "see `kubectl logs exp-g1-abcde -c prefect-api`"
    )


def test_a_pod_with_a_sidecar_waits_for_it_instead_of_starting_a_server() -> None:
    env = {"PREFECT_API_URL": "http://127.0.0.1:4200/api", "DIOPTRA_PREFECT_SIDECAR": "1"}
    api = prefect_warmup.pod_prefect_api({**env, "DIOPTRA_PREFECT_SIDECAR_TIMEOUT": "7"})
    assert isinstance(api, prefect_warmup.SidecarApi)
    assert (api.api_url, api.timeout) == ("http://127.0.0.1:4200/api", 7.0)
