"""Every public function of the builtins is a registered, documented plugin under its module.

The functions are discovered by walking the package, not listed here, so a new builtin that
forgets ``@pyplugs.register`` or a docstring fails these tests.
"""

import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import dioptra_builtins
import pytest
from dioptra import pyplugs
from dioptra.flow import Flow


def _public_functions() -> list[tuple[str, str, str, Callable[..., Any]]]:
    """(package, plugin, name, function) for each public function defined in a builtin module."""
    found: list[tuple[str, str, str, Callable[..., Any]]] = []
    for module_info in pkgutil.walk_packages(dioptra_builtins.__path__, "dioptra_builtins."):
        if module_info.ispkg or module_info.name.rsplit(".", 1)[1].startswith("_"):
            continue
        module = importlib.import_module(module_info.name)
        package, _, plugin = module_info.name.rpartition(".")
        for name, func in inspect.getmembers(module, inspect.isfunction):
            if func.__module__ == module.__name__ and not name.startswith("_"):
                found.append((package, plugin, name, func))
    return found


PUBLIC_FUNCTIONS = _public_functions()


def test_the_builtins_offer_the_plugins_the_examples_use() -> None:
    names = {f"{package}.{plugin}.{name}" for package, plugin, name, _ in PUBLIC_FUNCTIONS}
    assert {
        "dioptra_builtins.data.images.resize",
        "dioptra_builtins.data.images.rotate",
        "dioptra_builtins.random.rng.init_rng",
        "dioptra_builtins.random.sample.draw_random_integer",
        "dioptra_builtins.attacks.evasion.fgsm",
        "dioptra_builtins.metrics.report.summarize",
    } <= names


@pytest.mark.parametrize(
    ("package", "plugin", "name", "func"),
    PUBLIC_FUNCTIONS,
    ids=[f"{p}.{m}.{n}" for p, m, n, _ in PUBLIC_FUNCTIONS],
)
def test_each_builtin_function_is_registered_with_a_one_line_description(
    package: str, plugin: str, name: str, func: Callable[..., Any]
) -> None:
    assert pyplugs.exists(package, plugin)
    assert name in pyplugs.funcs(package, plugin)
    assert pyplugs.get(package, plugin, name) is func
    info = pyplugs.info(package, plugin, name)
    assert info.description and "\n" not in (func.__doc__ or "").strip().split("\n\n")[0]


@pytest.mark.parametrize(
    "package", sorted({package for package, _, _, _ in PUBLIC_FUNCTIONS}), ids=str
)
def test_names_lists_every_plugin_module_of_each_builtin_package(package: str) -> None:
    plugins = {plugin for p, plugin, _, _ in PUBLIC_FUNCTIONS if p == package}
    assert set(pyplugs.names(package)) == plugins


@pytest.mark.parametrize(
    ("package", "plugin", "name", "func"),
    PUBLIC_FUNCTIONS,
    ids=[f"{p}.{m}.{n}" for p, m, n, _ in PUBLIC_FUNCTIONS],
)
def test_each_builtin_function_has_type_hints_for_every_parameter_and_its_return(
    package: str, plugin: str, name: str, func: Callable[..., Any]
) -> None:
    signature = inspect.signature(func)
    unannotated = [p for p in signature.parameters.values() if p.annotation is p.empty]
    assert unannotated == []
    assert signature.return_annotation is not signature.empty


def test_the_shared_dataset_module_is_not_a_plugin() -> None:
    assert not pyplugs.exists("dioptra_builtins.datasets", "arrays")


def test_init_rng_declares_two_outputs_so_a_flow_can_unpack_it() -> None:
    with Flow("unpack") as flow:
        _seed, rng = pyplugs.call_task("dioptra_builtins.random", "rng", "init_rng", seed=3)
        pyplugs.call_task("dioptra_builtins.random", "sample", "draw_random_integer", rng=rng)
    assert flow.problems() == []
    assert [node.task for node in flow.tasks[1].dependencies] == [
        "dioptra_builtins.random.rng.init_rng"
    ]


def test_importing_the_art_plugins_prints_no_pytorch_warning_but_keeps_others() -> None:
    code = (
        "import warnings\n"
        "import dioptra_builtins.attacks.evasion, dioptra_builtins.defenses.preprocessing\n"
        "import dioptra_builtins.metrics.performance\n"
        "warnings.warn('a real warning')\n"
    )
    env = dict(os.environ, PYTHONWARNINGS="default")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "PyTorch" not in result.stderr
    assert "UserWarning: a real warning" in result.stderr
