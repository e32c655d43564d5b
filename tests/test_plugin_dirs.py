"""plugin_dirs() puts plugin folders on sys.path for a block and restores it exactly."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from dioptra.sdk.utilities.contexts import plugin_dirs


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    made = {name: tmp_path / name for name in ("env_a", "env_b", "local", "work")}
    for path in made.values():
        path.mkdir()
    monkeypatch.chdir(made["work"])
    monkeypatch.delenv("DIOPTRA_PLUGIN_DIR", raising=False)
    return made


def test_env_dirs_then_argument_dirs_go_right_after_the_first_entry(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIOPTRA_PLUGIN_DIR", f"{folders['env_a']}:{folders['env_b']}")
    first = sys.path[0]

    with plugin_dirs([str(folders["local"])]):
        assert sys.path[0] == first
        assert sys.path[1:4] == [
            str(folders["env_a"]),
            str(folders["env_b"]),
            str(folders["local"]),
        ]


def test_default_argument_adds_the_current_directory(folders: dict[str, Path]) -> None:
    with plugin_dirs():
        assert sys.path[1] == str(folders["work"].resolve())


def test_explicit_dirs_add_only_those_dirs_not_the_current_directory(
    folders: dict[str, Path],
) -> None:
    before = list(sys.path)

    with plugin_dirs([str(folders["local"])]):
        added = [entry for entry in sys.path if entry not in before]

    assert added == [str(folders["local"].resolve())]


def test_the_current_directory_is_added_even_when_sys_path_holds_it_as_an_empty_entry(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", ["", *sys.path])

    with plugin_dirs():
        assert sys.path[:2] == ["", str(folders["work"].resolve())]


def test_relative_argument_dirs_resolve_against_the_current_directory(
    folders: dict[str, Path],
) -> None:
    (folders["work"] / "plugins").mkdir()

    with plugin_dirs(["plugins"]):
        assert sys.path[1] == str((folders["work"] / "plugins").resolve())


def test_env_entries_that_are_relative_or_missing_are_ignored(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "DIOPTRA_PLUGIN_DIR", f"relative/dir:{folders['env_a'] / 'missing'}::{folders['env_a']}"
    )
    before = list(sys.path)

    with plugin_dirs([]):
        added = [entry for entry in sys.path if entry not in before]

    assert added == [str(folders["env_a"])]


def test_missing_argument_dirs_are_ignored(folders: dict[str, Path]) -> None:
    before = list(sys.path)

    with plugin_dirs([str(folders["work"] / "nope")]):
        assert sys.path == before


def test_a_symlink_to_a_folder_already_on_the_path_is_not_added_again(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    link = folders["work"] / "link"
    os.symlink(folders["env_a"], link)
    monkeypatch.syspath_prepend(str(folders["env_a"]))
    monkeypatch.setenv("DIOPTRA_PLUGIN_DIR", str(link))
    before = list(sys.path)

    with plugin_dirs([str(link)]):
        assert sys.path == before


def test_duplicates_are_dropped(folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIOPTRA_PLUGIN_DIR", str(folders["env_a"]))

    with plugin_dirs([str(folders["env_a"]), str(folders["env_a"])]):
        assert sys.path.count(str(folders["env_a"])) == 1


def test_sys_path_is_restored_exactly_on_exit(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIOPTRA_PLUGIN_DIR", str(folders["env_a"]))
    before = list(sys.path)

    with plugin_dirs([str(folders["local"])]):
        sys.path.append("/added/by/the/body")

    assert sys.path == before


def test_sys_path_is_restored_when_the_body_raises_and_the_error_propagates(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIOPTRA_PLUGIN_DIR", str(folders["env_a"]))
    before = list(sys.path)

    with pytest.raises(RuntimeError, match="boom"), plugin_dirs([str(folders["local"])]):
        raise RuntimeError("boom")

    assert sys.path == before


def test_plugins_in_env_folders_are_importable_inside_the_block(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    package = folders["env_a"] / "pd_probe_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("VALUE = 7\n")
    monkeypatch.setenv("DIOPTRA_PLUGIN_DIR", str(folders["env_a"]))

    with plugin_dirs([]):
        import pd_probe_pkg  # type: ignore[import-not-found]

        assert pd_probe_pkg.VALUE == 7
    del sys.modules["pd_probe_pkg"]
