"""The task plugin registry, compatible with Dioptra's ``dioptra.pyplugs``.

A plugin is a function decorated with :func:`register`. It is filed under
package -> plugin (its module's last name) -> function, all derived from
``func.__module__``, so ``dioptra_builtins.data.images.resize`` is package
``dioptra_builtins.data``, plugin ``images``, function ``resize``.

Plugin modules are imported lazily, on first use, from whatever is on
``sys.path`` (typically the folders that ``plugin_dirs()`` adds). An import
error *inside* a plugin module (say it imports a library that is not installed)
propagates as itself, so the user learns which library is missing; only a
package, plugin or function that does not exist becomes one of this module's
``Unknown*`` errors, whose messages say what was looked for and where.

``call_task`` is the bridge to flows: inside ``with Flow(...)`` it records a
task node (nothing runs); outside a flow it simply calls the plugin.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from dioptra.graph import FlowGraph, TaskNode, TaskOptions, current_flow

__all__ = [
    "PluginInfo",
    "PyplugsError",
    "Registry",
    "UnknownPackageError",
    "UnknownPluginError",
    "UnknownPluginFunctionError",
    "call",
    "call_factory",
    "call_task",
    "call_task_factory",
    "exists",
    "exists_factory",
    "funcs",
    "funcs_factory",
    "get",
    "get_factory",
    "get_task",
    "get_task_factory",
    "info",
    "info_factory",
    "names",
    "names_factory",
    "register",
    "registry",
    "task_nout",
    "using",
]

F = TypeVar("F", bound=Callable[..., Any])


class PyplugsError(ImportError):
    """Base of the registry's lookup errors.

    An ImportError subclass, as in Dioptra, so existing ``except ImportError``
    handlers keep working.
    """


class UnknownPackageError(PyplugsError):
    """No importable package has the requested name."""


class UnknownPluginError(PyplugsError):
    """The package exists but holds no such plugin module, or it registers nothing."""


class UnknownPluginFunctionError(PyplugsError):
    """The plugin module exists but registered no function with that name."""


@dataclass(frozen=True)
class PluginInfo:
    """What the registry knows about one plugin function."""

    package_name: str
    plugin_name: str
    func_name: str
    func: Callable[..., Any]
    description: str
    doc: str
    module_doc: str
    sort_value: float

    @property
    def qualified_name(self) -> str:
        """``package.plugin.func``, the name users write in task graphs and see in the UI."""
        return ".".join(p for p in (self.package_name, self.plugin_name, self.func_name) if p)


class Registry:
    """Registered plugins, package -> plugin -> function name -> PluginInfo.

    One registry is active (:func:`registry`); ``@register`` files functions into it. Tests
    build one from given functions (:meth:`of`) and make it active with :func:`using`,
    instead of importing plugin folders (stevedore's ``make_test_instance``).
    """

    def __init__(self) -> None:
        self._plugins: dict[str, dict[str, dict[str, PluginInfo]]] = {}

    @classmethod
    def of(cls, *functions: Callable[..., Any], sort_value: float = 0) -> Registry:
        """A registry holding exactly these functions (filed by their ``__module__``)."""
        made = cls()
        for function in functions:
            made.add(_plugin_info(function, sort_value))
        return made

    def add(self, plugin_info: PluginInfo) -> None:
        package, plugin = plugin_info.package_name, plugin_info.plugin_name
        self._plugins.setdefault(package, {}).setdefault(plugin, {})[plugin_info.func_name] = (
            plugin_info
        )

    def plugins(self, package: str) -> dict[str, dict[str, PluginInfo]]:
        """The plugins of one package registered so far (nothing is imported)."""
        return self._plugins.get(package, {})

    def functions(self, package: str, plugin: str) -> dict[str, PluginInfo]:
        """The functions of one plugin registered so far, in registration order."""
        return self.plugins(package).get(plugin, {})

    def forget(self, package: str) -> None:
        """Drop a package and its subpackages (a test's plugin folder going away)."""
        for name in [p for p in self._plugins if p == package or p.startswith(package + ".")]:
            del self._plugins[name]


_active = Registry()


def registry() -> Registry:
    """The registry ``@register`` files plugins into and lookups read from."""
    return _active


@contextlib.contextmanager
def using(replacement: Registry) -> Iterator[Registry]:
    """Make `replacement` the active registry inside the block (for tests)."""
    global _active
    previous, _active = _active, replacement
    try:
        yield replacement
    finally:
        _active = previous


def _plugin_info(plugin_func: Callable[..., Any], sort_value: float) -> PluginInfo:
    package, _, plugin = plugin_func.__module__.rpartition(".")
    # As Dioptra: the description is the docstring up to its first blank line, as written.
    description, _, rest = (plugin_func.__doc__ or "").partition("\n\n")
    module = sys.modules.get(plugin_func.__module__)
    return PluginInfo(
        package_name=package,
        plugin_name=plugin,
        func_name=plugin_func.__name__,
        func=plugin_func,
        description=description,
        doc=textwrap.dedent(rest).strip(),
        module_doc=(module.__doc__ or "") if module else "",
        sort_value=sort_value,
    )


@overload
def register(func: F, /) -> F: ...
@overload
def register(*, sort_value: float = 0) -> Callable[[F], F]: ...
def register(func: Any = None, /, *, sort_value: float = 0) -> Any:
    """Register ``func`` as a plugin and return it unchanged.

    Works bare (``@register``) and with options (``@register(sort_value=2)``).
    """

    def add_to_registry(plugin_func: F) -> F:
        _active.add(_plugin_info(plugin_func, sort_value))
        return plugin_func

    if func is None:
        return add_to_registry
    return add_to_registry(func)


def task_nout(nout: int) -> Callable[[F], F]:
    """Declare that a plugin returns ``nout`` values, so a flow can unpack its task node."""
    if nout < 1:
        raise ValueError(f"task_nout needs a positive count, got {nout}")

    def mark(func: F) -> F:
        func._task_nout = nout  # type: ignore[attr-defined]
        return func

    return mark


def names(package: str) -> list[str]:
    """The plugins (modules) of ``package`` that register something.

    Ordered as Dioptra orders them: by the ``sort_value`` of each plugin's first registered
    function, then in the order the plugins were registered.
    """
    _import_all(package)
    plugins = {name: funcs for name, funcs in _active.plugins(package).items() if funcs}
    return sorted(plugins, key=lambda p: next(iter(plugins[p].values())).sort_value)


def funcs(package: str, plugin: str) -> list[str]:
    """The function names one plugin registers, in registration order (as Dioptra)."""
    return list(_plugin_functions(package, plugin))


def info(package: str, plugin: str, func: str | None = None) -> PluginInfo:
    """Everything known about one plugin function (the first registered when ``func`` is None)."""
    registered = _plugin_functions(package, plugin)
    if func is None:
        return next(iter(registered.values()))
    try:
        return registered[func]
    except KeyError:
        known = ", ".join(sorted(registered)) or "none"
        raise UnknownPluginFunctionError(
            f"plugin '{package}.{plugin}' registers no function {func!r} "
            f"(it registers: {known}); decorate it with @pyplugs.register"
        ) from None


def exists(package: str, plugin: str) -> bool:
    """Whether ``package.plugin`` is a plugin module that registers at least one function.

    A plugin module that fails to import for another reason (a missing library)
    raises that error: it exists, but it is broken, and the user must see why.
    """
    try:
        _plugin_functions(package, plugin)
    except (UnknownPackageError, UnknownPluginError):
        return False
    return True


def get(package: str, plugin: str, func: str | None = None) -> Callable[..., Any]:
    """The plugin function itself."""
    return info(package, plugin, func).func


def call(package: str, plugin: str, func: str | None = None, *args: Any, **kwargs: Any) -> Any:
    """Call a plugin function now and return its result."""
    return get(package, plugin, func)(*args, **kwargs)


def get_task(package: str, plugin: str, func: str | None = None) -> Callable[..., Any]:
    """The plugin as a task: inside a ``Flow`` definition calling it adds a node.

    Outside a flow definition calling it runs the plugin directly (``upstream_tasks``
    is accepted and ignored), which keeps plugins easy to try out in a REPL.
    """
    return _as_task(info(package, plugin, func))


def call_task(package: str, plugin: str, func: str | None = None, *args: Any, **kwargs: Any) -> Any:
    """Add a task node calling this plugin to the flow being defined (see :func:`get_task`).

    ``cache=True`` (an option of ours, never passed to the plugin) lets the run reuse a
    stored output when the plugin function's source and every input are the same as before.
    """
    cache = bool(kwargs.pop("cache", False))
    flow = current_flow()
    if flow is not None:
        options = TaskOptions(cache=True) if cache else None
        return add_plugin_task(flow, package, plugin, func, args, kwargs, options)
    return _as_task(info(package, plugin, func))(*args, **kwargs)


def add_plugin_task(
    flow: FlowGraph,
    package: str,
    plugin: str,
    func: str | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: TaskOptions | None = None,
    *,
    name: str | None = None,
) -> TaskNode:
    """Record a call of a registered plugin in `flow`; a missing plugin is noted, not raised.

    Noting instead of raising lets the flow list every missing plugin at once before anything
    runs. A plugin module that exists but fails to import (say a library is not installed)
    raises here, with its own error, as Dioptra does. (Not Dioptra API: the runner's task
    graphs use it to name their steps.)
    """
    qualified = ".".join(p for p in (package, plugin, func or "") if p)
    try:
        found = info(package, plugin, func)
    except PyplugsError as error:
        return flow.add_task(
            None, qualified, args, kwargs, name=name, problem=str(error), options=options
        )
    return flow.add_task(found.func, found.qualified_name, args, kwargs, name=name, options=options)


def _as_task(plugin_info: PluginInfo) -> Callable[..., Any]:
    """A callable that records a node inside a flow definition and calls the plugin outside."""

    @functools.wraps(plugin_info.func)
    def plugin_task(*args: Any, **kwargs: Any) -> Any:
        flow = current_flow()
        if flow is not None:
            return flow.add_task(plugin_info.func, plugin_info.qualified_name, args, kwargs)
        kwargs.pop("upstream_tasks", None)
        return plugin_info.func(*args, **kwargs)

    return plugin_task


def names_factory(package: str) -> Callable[[], list[str]]:
    """``names`` bound to one package."""
    return functools.partial(names, package)


def funcs_factory(package: str) -> Callable[[str], list[str]]:
    """``funcs`` bound to one package."""
    return functools.partial(funcs, package)


def info_factory(package: str) -> Callable[..., PluginInfo]:
    """``info`` bound to one package."""
    return functools.partial(info, package)


def exists_factory(package: str) -> Callable[[str], bool]:
    """``exists`` bound to one package."""
    return functools.partial(exists, package)


def get_factory(package: str) -> Callable[..., Callable[..., Any]]:
    """``get`` bound to one package."""
    return functools.partial(get, package)


def call_factory(package: str) -> Callable[..., Any]:
    """``call`` bound to one package."""
    return functools.partial(call, package)


def get_task_factory(package: str) -> Callable[..., Callable[..., Any]]:
    """``get_task`` bound to one package."""
    return functools.partial(get_task, package)


def call_task_factory(package: str) -> Callable[..., Any]:
    """``call_task`` bound to one package."""
    return functools.partial(call_task, package)


def _plugin_functions(package: str, plugin: str) -> dict[str, PluginInfo]:
    """The registered functions of one plugin, importing its module on first use."""
    registered = _active.functions(package, plugin)
    if registered:
        return registered
    module_name = f"{package}.{plugin}" if package else plugin
    try:
        importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if missing == module_name:
            raise UnknownPluginError(
                f"no plugin {plugin!r} in package {package!r}: "
                f"{module_name.replace('.', '/')}.py not found in {_package_folders(package)}"
            ) from None
        if missing and _is_prefix(missing, package):
            raise UnknownPackageError(
                f"no plugin package {package!r}: {missing!r} not found on the plugin path "
                f"{_searched_folders()}{nested_folder_hint(missing)}"
            ) from None
        raise
    registered = _active.functions(package, plugin)
    if not registered:
        raise UnknownPluginError(
            f"module {module_name!r} registers no plugin functions; "
            "decorate them with @pyplugs.register"
        )
    return registered


def _import_all(package: str) -> None:
    """Import every plugin module of a package so that ``names`` sees them all.

    A module that fails to import is skipped here (one broken plugin must not
    hide the others from a listing); using it later raises its real error.
    """
    try:
        pkg = importlib.import_module(package)
    except ModuleNotFoundError as error:
        if error.name and _is_prefix(error.name, package):
            if _active.plugins(package):
                return  # registered without a module to import (Registry.of)
            raise UnknownPackageError(
                f"no plugin package {package!r} on the plugin path {_searched_folders()}"
                f"{nested_folder_hint(error.name)}"
            ) from None
        raise
    for folder in getattr(pkg, "__path__", []):
        for entry in sorted(os.listdir(folder)):
            if entry.endswith(".py") and not entry.startswith("_"):
                try:
                    _plugin_functions(package, entry[:-3])
                except ImportError:
                    continue


def _is_prefix(module: str, package: str) -> bool:
    return package == module or package.startswith(module + ".")


def _package_folders(package: str) -> list[str]:
    pkg = sys.modules.get(package)
    return list(getattr(pkg, "__path__", [])) or _searched_folders()


def nested_folder_hint(package: str) -> str:
    """A hint when the package sits one folder too deep in a plugin folder, else "".

    Plugin sources follow rsync's trailing-slash rule: `./plugins` syncs as the folder
    `plugins/`, `./plugins/` syncs its contents. A package found at `<dir>/plugins/<package>`
    was almost certainly meant to be synced by its contents. (Not Dioptra API.)
    """
    top = package.partition(".")[0]
    for folder in _searched_folders():
        try:
            children = sorted((e for e in os.scandir(folder) if e.is_dir()), key=lambda e: e.name)
        except (OSError, TypeError):
            continue
        for child in children:
            if os.path.isdir(os.path.join(child.path, top)):
                return (
                    f"; found {top!r} one folder down, in {child.path}: the source was synced "
                    f"as the folder {child.name}/ - end the source with a slash "
                    f"(e.g. ./{child.name}/ or s3://bucket/{child.name}/) to sync its contents"
                )
    return ""


def _searched_folders() -> list[str]:
    """The import path minus the interpreter's own folders: where user plugins can live."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    return [
        entry or os.getcwd()
        for entry in sys.path
        if not any(os.path.realpath(entry or ".").startswith(prefix) for prefix in prefixes)
    ]
