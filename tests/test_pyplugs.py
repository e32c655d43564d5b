"""The plugin registry behaves as Dioptra's pyplugs does."""

from __future__ import annotations

import pytest
from dioptra import pyplugs
from support.plugin_tree import PluginTree

TWO_FUNCS = '''
"""Tools for tests."""
from dioptra import pyplugs

@pyplugs.register(sort_value=2)
def second(x: int = 1) -> int:
    """Return x plus one.

    A longer explanation
    over two lines.
    """
    return x + 1

@pyplugs.register(sort_value=1)
def first() -> str:
    """Say hello."""
    return "hello"

def not_a_plugin() -> None:
    pass
'''


def test_register_returns_the_function_unchanged() -> None:
    def plain(a: int) -> int:
        return a * 2

    assert pyplugs.register(plain) is plain
    assert pyplugs.register(sort_value=3)(plain) is plain


def test_registry_is_keyed_by_package_module_and_function(plugin_tree: PluginTree) -> None:
    pkg = plugin_tree.package()
    plugin_tree.module(f"{pkg}.sub.tools", TWO_FUNCS)

    assert pyplugs.funcs(f"{pkg}.sub", "tools") == ["second", "first"]
    assert pyplugs.call(f"{pkg}.sub", "tools", "second", x=41) == 42


def test_plugins_are_imported_lazily_on_first_use(plugin_tree: PluginTree) -> None:
    import sys

    pkg = plugin_tree.package()
    plugin_tree.module(f"{pkg}.tools", TWO_FUNCS)
    assert f"{pkg}.tools" not in sys.modules

    pyplugs.get(pkg, "tools", "first")

    assert f"{pkg}.tools" in sys.modules


def test_names_lists_plugins_by_sort_value(plugin_tree: PluginTree) -> None:
    pkg = plugin_tree.package()
    plugin_tree.module(
        f"{pkg}.zeta",
        "from dioptra import pyplugs\n@pyplugs.register(sort_value=0)\ndef f(): pass\n",
    )
    plugin_tree.module(
        f"{pkg}.alpha",
        "from dioptra import pyplugs\n@pyplugs.register(sort_value=5)\ndef f(): pass\n",
    )
    plugin_tree.module(f"{pkg}.helpers", "X = 1\n")

    assert pyplugs.names(pkg) == ["zeta", "alpha"]


def test_a_plugins_sort_value_is_that_of_its_first_registered_function(
    plugin_tree: PluginTree,
) -> None:
    pkg = plugin_tree.package()
    plugin_tree.module(f"{pkg}.tools", TWO_FUNCS)  # registers sort_value 2, then 1
    plugin_tree.module(
        f"{pkg}.middle",
        "from dioptra import pyplugs\n@pyplugs.register(sort_value=1.5)\ndef f(): pass\n",
    )

    assert pyplugs.names(pkg) == ["middle", "tools"]


def test_plugins_with_the_same_sort_value_keep_their_registration_order(
    plugin_tree: PluginTree,
) -> None:
    pkg = plugin_tree.package()
    for module in ("zeta", "alpha"):
        plugin_tree.module(
            f"{pkg}.{module}", "from dioptra import pyplugs\n@pyplugs.register\ndef f(): pass\n"
        )
    pyplugs.get(pkg, "zeta")  # registered first
    pyplugs.get(pkg, "alpha")

    assert pyplugs.names(pkg) == ["zeta", "alpha"]


def test_funcs_lists_functions_in_registration_order_whatever_their_sort_value(
    plugin_tree: PluginTree,
) -> None:
    pkg = plugin_tree.package()
    plugin_tree.module(f"{pkg}.tools", TWO_FUNCS)

    assert pyplugs.funcs(pkg, "tools") == ["second", "first"]


def test_info_describes_a_plugin_from_its_docstring(plugin_tree: PluginTree) -> None:
    pkg = plugin_tree.package()
    plugin_tree.module(f"{pkg}.tools", TWO_FUNCS)

    record = pyplugs.info(pkg, "tools", "second")

    assert (record.package_name, record.plugin_name, record.func_name) == (pkg, "tools", "second")
    assert record.description == "Return x plus one."
    assert record.doc == "A longer explanation\nover two lines."
    assert record.module_doc == "Tools for tests."
    assert record.func(x=1) == 2


def test_info_without_a_function_name_gives_the_first_registered(
    plugin_tree: PluginTree,
) -> None:
    pkg = plugin_tree.package()
    plugin_tree.module(f"{pkg}.tools", TWO_FUNCS)

    assert pyplugs.info(pkg, "tools").func_name == "second"
    assert pyplugs.call(pkg, "tools") == 2


def test_a_description_keeps_the_line_breaks_of_its_first_paragraph() -> None:
    def wrapped() -> None:
        """Resize an image
        to the given size.

        Details.
        """

    package, _, plugin = wrapped.__module__.rpartition(".")
    (record,) = pyplugs.Registry.of(wrapped).functions(package, plugin).values()
    assert record.description == "Resize an image\n        to the given size."
    assert record.doc == "Details."


def test_exists_is_true_only_for_a_plugin_that_registers_something(plugin_tree: PluginTree) -> None:
    pkg = plugin_tree.package()
    plugin_tree.module(f"{pkg}.tools", TWO_FUNCS)
    plugin_tree.module(f"{pkg}.empty", "X = 1\n")

    assert pyplugs.exists(pkg, "tools")
    assert not pyplugs.exists(pkg, "empty")
    assert not pyplugs.exists(pkg, "missing")
    assert not pyplugs.exists("no_such_package_anywhere", "tools")


def test_factories_bind_the_package(plugin_tree: PluginTree) -> None:
    pkg = plugin_tree.package()
    plugin_tree.module(f"{pkg}.tools", TWO_FUNCS)

    assert pyplugs.names_factory(pkg)() == ["tools"]
    assert pyplugs.funcs_factory(pkg)("tools") == ["second", "first"]
    assert pyplugs.info_factory(pkg)("tools", "first").func_name == "first"
    assert pyplugs.exists_factory(pkg)("tools")
    assert pyplugs.get_factory(pkg)("tools", "second")(x=2) == 3
    assert pyplugs.call_factory(pkg)("tools", "second", x=3) == 4
    assert pyplugs.call_task_factory(pkg)("tools", "second", x=4) == 5
    assert pyplugs.get_task_factory(pkg)("tools", "second")(x=5) == 6


def test_call_task_outside_a_flow_calls_the_plugin_and_drops_upstream_tasks(
    plugin_tree: PluginTree,
) -> None:
    pkg = plugin_tree.package()
    plugin_tree.module(f"{pkg}.tools", TWO_FUNCS)

    assert pyplugs.call_task(pkg, "tools", "second", x=9, upstream_tasks=[]) == 10


def test_unknown_package_names_the_package_and_the_searched_folders(
    plugin_tree: PluginTree,
) -> None:
    with pytest.raises(pyplugs.UnknownPackageError) as caught:
        pyplugs.get("no_such_package_xyz.data", "images", "resize")

    message = str(caught.value)
    assert "'no_such_package_xyz.data'" in message
    assert str(plugin_tree.root) in message


def test_unknown_plugin_names_the_module_and_the_package_folder(plugin_tree: PluginTree) -> None:
    pkg = plugin_tree.package()

    with pytest.raises(pyplugs.UnknownPluginError) as caught:
        pyplugs.get(pkg, "nothere", "f")

    assert "'nothere'" in str(caught.value)
    assert str(plugin_tree.root / pkg) in str(caught.value)


def test_unknown_function_lists_what_the_plugin_registers(plugin_tree: PluginTree) -> None:
    pkg = plugin_tree.package()
    plugin_tree.module(f"{pkg}.tools", TWO_FUNCS)

    with pytest.raises(pyplugs.UnknownPluginFunctionError) as caught:
        pyplugs.get(pkg, "tools", "third")

    assert "'third'" in str(caught.value)
    assert "first, second" in str(caught.value)


def test_lookup_errors_are_import_errors_as_in_dioptra() -> None:
    for error in (
        pyplugs.UnknownPackageError,
        pyplugs.UnknownPluginError,
        pyplugs.UnknownPluginFunctionError,
    ):
        assert issubclass(error, ImportError)


@pytest.mark.parametrize("lookup", ["call", "get", "info", "exists"])
def test_a_plugin_importing_a_missing_library_raises_that_library_not_unknown_plugin(
    plugin_tree: PluginTree, lookup: str
) -> None:
    pkg = plugin_tree.package()
    plugin_tree.module(
        f"{pkg}.needs_lib",
        "import definitely_not_installed_lib\nfrom dioptra import pyplugs\n"
        "@pyplugs.register\ndef f(): pass\n",
    )

    with pytest.raises(ModuleNotFoundError) as caught:
        getattr(pyplugs, lookup)(pkg, "needs_lib", *(["f"] if lookup != "exists" else []))

    assert not isinstance(caught.value, pyplugs.PyplugsError)
    assert caught.value.name == "definitely_not_installed_lib"


def test_task_nout_marks_the_number_of_outputs() -> None:
    @pyplugs.task_nout(2)
    def pair() -> tuple[int, int]:
        return 1, 2

    assert pair._task_nout == 2  # type: ignore[attr-defined]
    assert pair() == (1, 2)


def test_a_registry_built_from_given_functions_answers_lookups_without_importing() -> None:
    def resize(size: int) -> int:
        """Resize."""
        return size

    resize.__module__ = "imaginary_pkg.images"
    made = pyplugs.Registry.of(resize)
    with pyplugs.using(made):
        assert pyplugs.names("imaginary_pkg") == ["images"]
        assert pyplugs.call("imaginary_pkg", "images", "resize", size=3) == 3
        assert pyplugs.info("imaginary_pkg", "images").description == "Resize."
    with pytest.raises(pyplugs.UnknownPackageError):
        pyplugs.get("imaginary_pkg", "images", "resize")  # the real registry never saw it


def test_forgetting_a_package_drops_its_subpackages_only() -> None:
    def one() -> None: ...

    def two() -> None: ...

    one.__module__, two.__module__ = "lab.a.m", "lab_b.m"
    made = pyplugs.Registry.of(one, two)
    made.forget("lab")
    assert made.plugins("lab.a") == {}
    assert list(made.plugins("lab_b")) == ["m"]
