"""uv, as the plugin requirements need it: resolve jointly, install into a folder, explain.

Only `dioptra_sync.deps` imports this, and only when some plugin package has requirements:
subprocess, tempfile and the metadata scan stay out of a sync without any.

Resolution runs `uv pip compile` over one requirements file per plugin package, with the
runner's installed distributions as constraints. When it fails, requirements are added one at
a time (plugins in name order) until one fails, so the one line names that requirement and
its plugin, and says whether it conflicts with another plugin, with the runner image, or
simply has no version on the index. uv's full output goes to the log at INFO.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dioptra_sync.errors import SyncError
from dioptra_sync.uri import TEMP_MARKER

DEFAULT_INDEX = "https://pypi.org/simple"
UV_CACHE_NAME = ".uv-cache"
_MAX_CAUSE = 300
ABANDONED_AFTER_SECONDS = 24 * 3600

_LOG = logging.getLogger("dioptra.sync.deps")
# `name==1.0`, `name[extra]>=1`, `name @ url`: the distribution name at the start.
_DIST_INFO = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._]*)-([^-]+)\.(?:dist-info|egg-info)$")
_NAME = re.compile(r"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")


def find_uv() -> str:
    """uv from PATH, else the binary of the `uv` Python package; a one-line SyncError if neither."""
    found = shutil.which("uv")
    if found:
        return found
    try:
        import uv as uv_package

        return str(uv_package.find_uv_bin())
    except (ImportError, FileNotFoundError):
        raise SyncError(
            "plugin requirements need uv, which is neither on PATH nor installed as the `uv` "
            "Python package (pip install uv)"
        ) from None


def python_tag() -> str:
    """The interpreter the folder is for: implementation, version and platform."""
    import sysconfig

    version = f"{sys.version_info.major}{sys.version_info.minor}"
    platform = re.sub(r"[^A-Za-z0-9]+", "_", sysconfig.get_platform())
    return f"{sys.implementation.name}{version}-{platform}"


def digest(pins: Sequence[str]) -> str:
    """The folder name for a set of pins: the interpreter's tag and a digest of both."""
    text = "\n".join([python_tag(), *sorted(pins)])
    return f"{python_tag()}-{hashlib.sha256(text.encode()).hexdigest()[:20]}"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pin_name(pin: str) -> str:
    match = _NAME.match(pin)
    return normalize(match.group(1)) if match else pin


def installed_distributions() -> dict[str, str]:
    """The runner interpreter's distributions, normalized name -> version (the first on
    sys.path wins, as for imports).

    Read from the `<name>-<version>.dist-info` folder names (PEP 427 spells them so): one
    listing per sys.path folder, where opening every METADATA file costs ~10x more.
    """
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            match = _DIST_INFO.match(name)
            if match:
                found.setdefault(normalize(match.group(1)), match.group(2))
    return found


@dataclass(frozen=True)
class Resolution:
    """`uv pip compile` output: the pins, and for each pin what asked for it (`# via`)."""

    lines: list[str]
    via: dict[str, list[str]]


class Uv:
    """The uv commands the install needs, with the index settings and a cache of its own."""

    def __init__(self, binary: str, cache: Path, installed: Mapping[str, str]) -> None:
        self.binary = binary
        self.env = uv_environment(os.environ, cache / UV_CACHE_NAME)
        self.installed = installed  # the runner's distributions: constraints, never reinstalled

    def resolve(self, requirements: Mapping[str, list[str]]) -> Resolution:
        """Resolve every plugin's requirements together; on failure, name the culprit."""
        with tempfile.TemporaryDirectory(prefix=TEMP_MARKER) as scratch:
            files = []
            for plugin, lines in requirements.items():
                path = Path(scratch) / f"{plugin}.txt"
                path.write_text("\n".join(lines) + "\n", encoding="utf-8")
                files.append(path)
            constraints = Path(scratch) / "runner-image.txt"
            constraints.write_text(_constraints_text(self.installed), encoding="utf-8")
            done = self._compile([str(path) for path in files], constraints, annotate=True)
            if done.returncode == 0:
                return _parse_resolution(done.stdout)
            _LOG.info("uv pip compile failed:\n%s", done.stderr)
            raise self._explain(requirements, constraints, done.stderr)

    def install(
        self,
        pins: list[str],
        folder: Path,
        requirements: Mapping[str, list[str]],
        resolution: Resolution,
    ) -> None:
        """Install `pins` (no dependencies: they are the whole resolution) into `folder`,
        atomically: a temp folder renamed into place; a folder already there wins."""
        _remove_abandoned_temps(folder.parent)
        # A unique name: pods sharing the cache may well have the same pid.
        temp = Path(tempfile.mkdtemp(prefix=f"{TEMP_MARKER}{folder.name}-", dir=folder.parent))
        try:
            done = self._run("install", "--target", str(temp), "--no-deps", *pins)
            if done.returncode != 0:
                _LOG.info("uv pip install failed:\n%s", done.stderr)
                raise _install_error(pins, requirements, resolution, done.stderr)
            try:
                os.rename(temp, folder)
            except OSError:
                if not folder.is_dir():
                    raise SyncError(
                        f"plugin requirements: cannot create {folder} in the cache"
                    ) from None
                _LOG.info("%s was installed by another sync meanwhile; using it", folder)
        finally:
            shutil.rmtree(temp, ignore_errors=True)

    def _compile(
        self, args: list[str], constraints: Path, *, annotate: bool = False, stdin: str = ""
    ) -> subprocess.CompletedProcess[str]:
        style = ["--annotation-style", "line"] if annotate else ["--no-annotate"]
        return self._run(
            "compile", "--no-header", *style, "-c", str(constraints), *args, stdin=stdin
        )

    def _run(self, command: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        argv = [self.binary, "pip", command, "--python", sys.executable, "--color", "never"]
        try:
            return subprocess.run(
                [*argv, "--quiet", *args],
                input=stdin,
                capture_output=True,
                text=True,
                env=self.env,
                check=False,
            )
        except OSError as error:
            raise SyncError(f"plugin requirements: cannot run {self.binary}: {error}") from None

    def _explain(
        self, requirements: Mapping[str, list[str]], constraints: Path, joint_error: str
    ) -> SyncError:
        """Add requirements one at a time (plugins in order) until one fails: that one, and
        its plugin, are the ones to name. Runs only after the joint resolution failed."""
        accepted: list[tuple[str, str]] = []
        for plugin, lines in requirements.items():
            for requirement in lines:
                trial = "\n".join([*(r for _, r in accepted), requirement]) + "\n"
                done = self._compile(["-"], constraints, stdin=trial)
                if done.returncode == 0:
                    accepted.append((plugin, requirement))
                    continue
                return SyncError(
                    f"plugin {plugin}: requirement {requirement!r} cannot be installed: "
                    f"{self._why(requirement, accepted, plugin, constraints, done.stderr)}"
                )
        return SyncError(
            f"plugin requirements of {', '.join(requirements)} cannot be resolved together: "
            f"{_cause(joint_error)}"
        )

    def _why(
        self,
        requirement: str,
        accepted: list[tuple[str, str]],
        plugin: str,
        constraints: Path,
        stderr: str,
    ) -> str:
        """The cause: no such version, a clash with the runner image, or with earlier lines."""
        line = requirement + "\n"
        alone = self._compile(["-"], constraints, stdin=line) if accepted else None
        if alone is not None and alone.returncode == 0:
            others = sorted({p for p, _ in accepted if p != plugin})
            whose = f"plugin(s) {', '.join(others)}" if others else "its own other lines"
            return f"conflicts with the requirements of {whose} ({_cause(stderr)})"
        stderr = alone.stderr if alone is not None else stderr
        name = pin_name(requirement)
        version = self.installed.get(name)
        if version is not None and f"{name}=={version}" in stderr.lower():
            return f"the runner image has {name}=={version} ({_cause(stderr)})"
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as nothing:
            free = self._compile(["-"], Path(nothing.name), stdin=line)
        if free.returncode == 0:
            return f"conflicts with the runner image's packages ({_cause(stderr)})"
        return _cause(stderr)


def _remove_abandoned_temps(cache: Path) -> None:
    """Temp folders of installs killed midway (a pod evicted) are removed after a day; a
    younger one may belong to an install still running in another pod."""
    import time

    cutoff = time.time() - ABANDONED_AFTER_SECONDS
    for entry in cache.glob(f"{TEMP_MARKER}*"):
        try:
            if entry.is_dir() and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue


def uv_environment(env: Mapping[str, str], uv_cache: Path) -> dict[str, str]:
    """uv's environment: pip's index settings passed on where uv's own are unset, a cache
    that lives with the folders (a pod's HOME is gone after the run), no Python downloads."""
    result = dict(env)

    def fill(target: str, source: str) -> None:
        if not result.get(target) and result.get(source):
            result[target] = result[source]

    if not (result.get("UV_DEFAULT_INDEX") or result.get("UV_INDEX_URL")):
        fill("UV_INDEX_URL", "PIP_INDEX_URL")
    fill("UV_EXTRA_INDEX_URL", "PIP_EXTRA_INDEX_URL")
    fill("SSL_CERT_FILE", "PIP_CERT")
    fill("UV_INSECURE_HOST", "PIP_TRUSTED_HOST")
    result.setdefault("UV_CACHE_DIR", str(uv_cache))
    result["UV_PYTHON_DOWNLOADS"] = "never"
    result["UV_NO_PROGRESS"] = "1"
    return result


def index_description(env: Mapping[str, str]) -> str:
    """The index (and extra indexes) uv uses, credentials removed: for messages."""
    main = (
        env.get("UV_DEFAULT_INDEX")
        or env.get("UV_INDEX_URL")
        or env.get("PIP_INDEX_URL")
        or DEFAULT_INDEX
    )
    extra = (env.get("UV_EXTRA_INDEX_URL") or env.get("PIP_EXTRA_INDEX_URL") or "").split()
    urls = [_without_credentials(url) for url in [main, *extra]]
    return " or ".join(urls)


def _without_credentials(text: str) -> str:
    """`https://user:token@host/simple` -> `https://host/simple`, anywhere in `text`."""
    return re.sub(r"(?<=://)[^/@\s]*@", "", text.strip())


def _constraints_text(installed: Mapping[str, str]) -> str:
    """The runner's installed distributions as `name==version` lines (no local versions: an
    index never has them)."""
    return "".join(
        f"{name}=={version}\n" for name, version in sorted(installed.items()) if "+" not in version
    )


def _parse_resolution(text: str) -> Resolution:
    lines: list[str] = []
    via: dict[str, list[str]] = {}
    for raw in text.splitlines():
        pin, _, comment = raw.partition("#")
        pin = pin.strip()
        if not pin:
            continue
        lines.append(pin)
        sources = comment.strip().removeprefix("via").split(",")
        via[pin_name(pin)] = [s.strip() for s in sources if s.strip()]
    return Resolution(lines, via)


def _cause(stderr: str) -> str:
    """uv's reason in one line: "no version found on <index>" when the name is unknown."""
    text = " ".join(stderr.split())
    if "not found in the package registry" in text or "no versions of" in text:
        return f"no version found on {index_description(os.environ)}"
    match = re.search(r"cause: (.*?)(?: error:|$)", text)
    reason = match.group(1) if match else text.removeprefix("error: ")
    reason = re.sub(r",? we can conclude that .*$", "", reason).strip().rstrip(".")
    reason = _without_credentials(reason)
    return reason[:_MAX_CAUSE] or "uv failed without saying why"


def _install_error(
    pins: list[str],
    requirements: Mapping[str, list[str]],
    resolution: Resolution,
    stderr: str,
) -> SyncError:
    """Name the pin uv failed on, and the plugin requirement that pulled it in."""
    mentioned = [pin for pin in pins if pin_name(pin) in normalize(stderr)] or pins[:1]
    failing = pin_name(mentioned[0])
    cause = _cause(stderr)
    plugin, requirement = _origin(failing, requirements, resolution)
    if plugin is None:
        return SyncError(f"plugin requirements: {mentioned[0]} cannot be installed: {cause}")
    through = "" if pin_name(requirement) == failing else f" (through {mentioned[0]})"
    return SyncError(
        f"plugin {plugin}: requirement {requirement!r} cannot be installed{through}: {cause}"
    )


def _origin(
    name: str, requirements: Mapping[str, list[str]], resolution: Resolution
) -> tuple[str | None, str]:
    """The plugin and its own requirement line whose dependencies include `name`."""
    seen: set[str] = set()
    frontier = [name]
    while frontier:
        current = frontier.pop(0)
        for plugin, lines in requirements.items():
            for line in lines:
                if pin_name(line) == current:
                    return plugin, line
        seen.add(current)
        for parent in resolution.via.get(current, []):
            parent_name = normalize(parent)
            if not parent.startswith("-") and parent_name not in seen:
                frontier.append(parent_name)
    return None, name
