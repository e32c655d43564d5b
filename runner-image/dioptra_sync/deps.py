"""Install the plugin packages' own Python requirements, once per resolved set, with uv.

A plugin package (a top-level folder of the synced plugin folder, `DEST/acme/`) may carry a
`requirements.txt` or a `pyproject.toml` with a `[project] dependencies` list. After a sync
`install_plugin_deps` resolves every package's requirements JOINTLY (one process imports all
plugins, and `sys.modules` holds one version of a library: two plugins that each resolve alone
but need different versions of a shared library could not both run, so the conflict is refused
at sync time, naming the plugin) with the runner's own installed distributions as constraints
(a plugin never gets a second numpy beside the image's, which could not be imported anyway).
What the image lacks is installed into `<cache>/<python tag>-<digest of those pins>`: written
under a temp dotfile name and renamed into place, so a folder that exists is complete; when two
pods share the cache, the first rename wins and the other discards its copy. The next sync
with the same resolution installs nothing.

The folders are recorded in `DEST/.dioptra-deps.json` (a dotfile: never synced nor imported);
the runner puts them on `sys.path` right after the plugin folder (`recorded_paths`).

The index is uv's (`UV_DEFAULT_INDEX`, `UV_INDEX_URL`, `UV_EXTRA_INDEX_URL`, `SSL_CERT_FILE`)
or pip's variables (`PIP_INDEX_URL`, `PIP_EXTRA_INDEX_URL`, `PIP_CERT`, `PIP_TRUSTED_HOST`),
passed on to uv when uv's own are unset. A requirement that cannot be resolved or installed is
one `SyncError` line naming it and its plugin package; uv's full output goes to the log.

Plugins without requirements cost a directory listing: no uv process, nothing imported beyond
the standard library modules already loaded.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dioptra_sync.atomic import temp_name
from dioptra_sync.errors import SyncError

DEPS_RECORD_NAME = ".dioptra-deps.json"
DEPS_CACHE_ENV = "DIOPTRA_DEPS_CACHE"


@dataclass(frozen=True)
class DepsReport:
    """What `install_plugin_deps` did: the folders for sys.path and what was installed."""

    requirements: dict[str, list[str]]
    paths: list[str] = field(default_factory=list)
    installed: list[str] = field(default_factory=list)  # pins new to the cache this time
    reused: list[str] = field(default_factory=list)  # pins found in the cache

    def summary(self) -> str:
        count = sum(len(reqs) for reqs in self.requirements.values())
        packages = ", ".join(sorted(self.requirements))
        if self.installed:
            done = f"installed {len(self.installed)} package(s)"
        elif self.reused:
            done = f"{len(self.reused)} package(s) already in the cache"
        else:
            done = "all provided by the runner image"
        return f"plugin requirements: {count} from {packages}; {done}"


def default_cache_dir() -> Path:
    """`$DIOPTRA_DEPS_CACHE`, else `$XDG_CACHE_HOME/dioptra/deps` (`~/.cache/dioptra/deps`)."""
    explicit = os.environ.get(DEPS_CACHE_ENV, "").strip()
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "dioptra" / "deps"


def find_requirements(dest: Path) -> dict[str, list[str]]:
    """Each top-level plugin package's requirements, in name order (packages without any
    are left out). Reads only `DEST/*/requirements.txt` and `DEST/*/pyproject.toml`."""
    found: dict[str, list[str]] = {}
    try:
        packages = sorted(
            (entry for entry in os.scandir(dest) if _is_package(entry)), key=lambda e: e.name
        )
    except OSError:
        return found
    for entry in packages:
        folder = Path(entry.path)
        requirements = _from_requirements_txt(entry.name, folder / "requirements.txt")
        requirements += _from_pyproject(entry.name, folder / "pyproject.toml")
        if requirements:
            found[entry.name] = list(dict.fromkeys(requirements))
    return found


def _is_package(entry: os.DirEntry[str]) -> bool:
    return not entry.name.startswith((".", "__")) and entry.is_dir(follow_symlinks=False)


def _from_requirements_txt(plugin: str, path: Path) -> list[str]:
    """The requirement lines of a requirements.txt: comments, blanks and continuations handled;
    options (`-r`, `--index-url`, `-e`) are refused, the index is the deployment's."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as error:
        raise SyncError(f"plugin {plugin}: cannot read requirements.txt: {error}") from None
    requirements = []
    for number, line in enumerate(text.replace("\\\n", " ").splitlines(), start=1):
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if not line:
            continue
        if line.startswith("-"):
            option = line.split()[0]
            raise SyncError(
                f"plugin {plugin}: requirements.txt line {number}: {option!r} is not supported "
                "(only requirements; the index comes from UV_INDEX_URL / PIP_INDEX_URL or the "
                "chart's pip.indexURL)"
            )
        requirements.append(line)
    return requirements


def _from_pyproject(plugin: str, path: Path) -> list[str]:
    """`[project] dependencies` of a pyproject.toml (tomllib is imported only when one exists)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as error:
        raise SyncError(f"plugin {plugin}: cannot read pyproject.toml: {error}") from None
    import tomllib

    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise SyncError(f"plugin {plugin}: pyproject.toml is not valid TOML: {error}") from None
    dependencies = (document.get("project") or {}).get("dependencies") or []
    if not isinstance(dependencies, list) or not all(isinstance(d, str) for d in dependencies):
        raise SyncError(
            f"plugin {plugin}: pyproject.toml [project] dependencies must be a list of strings"
        )
    return [d.strip() for d in dependencies if d.strip()]


def install_plugin_deps(dest: Path, cache: Path | None = None) -> DepsReport | None:
    """Resolve and install the plugin packages' requirements; record the folders in DEST.

    Returns None (and removes a stale record) when no plugin package has requirements; raises
    SyncError with one line when a requirement cannot be resolved or installed, or uv is missing.
    """
    record = dest / DEPS_RECORD_NAME
    requirements = find_requirements(dest)
    if not requirements:
        record.unlink(missing_ok=True)
        return None
    cache = cache if cache is not None else default_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SyncError(
            f"plugin requirements: cannot use the cache folder {cache}: "
            f"{error.strerror or error}; pass --deps-cache DIR (or set {DEPS_CACHE_ENV})"
        ) from None
    from dioptra_sync.uv_install import Uv, digest, find_uv, installed_distributions, pin_name

    present = installed_distributions()
    uv = Uv(find_uv(), cache, present)
    pins = uv.resolve(requirements)
    missing = [pin for pin in pins.lines if pin_name(pin) not in present]
    report = DepsReport(requirements)
    if missing:
        folder = cache / digest(missing)
        if folder.is_dir():
            report.reused.extend(missing)
        else:
            uv.install(missing, folder, requirements, pins)
            report.installed.extend(missing)
        report.paths.append(str(folder))
    _write_record(record, report)
    return report


def recorded_paths(plugin_dir: Path) -> list[str]:
    """The dependency folders the last sync recorded for this plugin folder (none: [])."""
    paths = (read_record(plugin_dir) or {}).get("paths")
    return [p for p in paths if isinstance(p, str)] if isinstance(paths, list) else []


def read_record(plugin_dir: Path) -> dict[str, Any] | None:
    """The whole record the last sync wrote; None without one (or an unreadable one)."""
    try:
        document = json.loads((plugin_dir / DEPS_RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _write_record(record: Path, report: DepsReport) -> None:
    document = {
        "version": 1,
        "paths": report.paths,
        "requirements": report.requirements,
        "packages": report.installed or report.reused,
    }
    temp = temp_name(record)
    temp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(temp, record)
