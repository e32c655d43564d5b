"""Turn an Experiment's ``spec.entryPoint`` into a :class:`dioptra.flow.Flow`.

Every way loading can go wrong ends in an :class:`EntryPointError` whose message
is one or a few lines for the user; the traceback, when there is one, is kept on
the error for the log.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
import types
from pathlib import Path
from typing import Any

from dioptra.flow import Flow
from dioptra_api import ENTRYPOINT_DIR, ENTRYPOINT_DIR_ENV

from dioptra_runner.errors import EntryPointError

__all__ = ["EntryPointError", "load_flow"]


def load_flow(entry_point: dict[str, Any], *, configmap_dir: Path | None = None) -> Flow:
    """Import or execute the entry point and return the Flow it defines."""
    if configmap_dir is None:
        configmap_dir = Path(os.environ.get(ENTRYPOINT_DIR_ENV) or ENTRYPOINT_DIR)
    attribute = entry_point.get("flow") or "flow"
    if "module" in entry_point:
        return _flow_from_module(entry_point["module"])
    if "script" in entry_point:
        return _flow_from_source(entry_point["script"], "spec.entryPoint.script", attribute)
    if "configMapRef" in entry_point:
        ref = entry_point["configMapRef"]
        path = configmap_dir / ref.get("key", "flow.py")
        try:
            source = path.read_text(encoding="utf-8")
        except OSError as error:
            raise EntryPointError(
                f"cannot read ConfigMap {ref.get('name')!r} key {ref.get('key', 'flow.py')!r} "
                f"at {path}: {error.strerror} (ConfigMap entry points are mounted only in a "
                "cluster; locally use `script` or `module`)"
            ) from None
        return _flow_from_source(source, f"ConfigMap {ref.get('name')}/{path.name}", attribute)
    if "taskGraph" in entry_point:
        from dioptra_runner.taskgraph import flow_from_task_graph

        return flow_from_task_graph(entry_point["taskGraph"])
    raise EntryPointError("spec.entryPoint names no entry point (module, script, configMapRef)")


def _flow_from_module(reference: str) -> Flow:
    module_name, _, attribute = reference.partition(":")
    attribute = attribute or "flow"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            from dioptra.pyplugs import nested_folder_hint

            raise EntryPointError(
                f"entry point module {module_name!r} not found in the plugin folders "
                f"{_plugin_folders()}{nested_folder_hint(missing)}"
            ) from None
        raise EntryPointError(
            f"entry point module {module_name!r} failed to import: {_summary(error)}"
            f"{_where_in_plugins(error)}",
            traceback.format_exc(),
        ) from None
    except Exception as error:
        raise EntryPointError(
            f"entry point module {module_name!r} failed to import: {_summary(error)}"
            f"{_where_in_plugins(error)}",
            traceback.format_exc(),
        ) from None
    return _pick_flow(vars(module), attribute, f"module {module_name!r}")


def _flow_from_source(source: str, origin: str, attribute: str) -> Flow:
    try:
        code = compile(source, f"<{origin}>", "exec")
    except SyntaxError as error:
        where = f"line {error.lineno}" + (f", column {error.offset}" if error.offset else "")
        raise EntryPointError(f"syntax error in {origin} at {where}: {error.msg}") from None
    module = types.ModuleType("dioptra_entrypoint")
    module.__file__ = f"<{origin}>"
    try:
        exec(code, module.__dict__)
    except Exception as error:
        line = _script_line(error, f"<{origin}>")
        raise EntryPointError(
            f"{origin} raised {_summary(error)}{_where_in_plugins(error)}"
            + (f" (at line {line} of the entry point)" if line else ""),
            traceback.format_exc(),
        ) from None
    return _pick_flow(module.__dict__, attribute, origin)


def _pick_flow(namespace: dict[str, Any], attribute: str, origin: str) -> Flow:
    if attribute not in namespace:
        flows = sorted(name for name, value in namespace.items() if isinstance(value, Flow))
        hint = f" (it defines Flow(s): {', '.join(flows)})" if flows else " (it defines no Flow)"
        raise EntryPointError(f"{origin} has no attribute {attribute!r}{hint}")
    candidate = namespace[attribute]
    if callable(candidate) and not isinstance(candidate, Flow):
        candidate = candidate()
    if not isinstance(candidate, Flow):
        raise EntryPointError(
            f"{origin} attribute {attribute!r} is a {type(candidate).__name__}, not a "
            "dioptra.flow.Flow"
        )
    return candidate


def _summary(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _script_line(error: BaseException, filename: str) -> int | None:
    line = None
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename == filename:
            line = frame.lineno
    return line


def _where_in_plugins(error: BaseException) -> str:
    """`` in plugin file <path>, line <n>`` for an error that arose inside a plugin, else "".

    A plugin module that does not compile, or that imports a library not installed, fails
    while the entry point imports it: naming the entry point's line alone would send the user
    to the wrong file.
    """
    folders = [str(Path(folder).resolve()) for folder in _plugin_folders()]

    def in_plugins(filename: str | None) -> bool:
        if not filename or filename.startswith("<"):
            return False
        resolved = str(Path(filename).resolve())
        return any(resolved.startswith(folder + os.sep) for folder in folders)

    if isinstance(error, SyntaxError) and in_plugins(error.filename):
        return f" in plugin file {error.filename}, line {error.lineno}"
    culprit = None
    for frame in traceback.extract_tb(error.__traceback__):
        if in_plugins(frame.filename):
            culprit = frame
    if culprit is None:
        return ""
    return f" in plugin file {culprit.filename}, line {culprit.lineno}"


def _plugin_folders() -> list[str]:
    prefixes = (sys.prefix, sys.base_prefix)
    return [p for p in sys.path[1:] if p and not p.startswith(prefixes)]
