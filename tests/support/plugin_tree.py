"""Write throwaway plugin packages to disk and forget them afterwards.

The pyplugs registry and ``sys.modules`` are process-global; each test gets
uniquely named packages, and the fixture removes what they registered.
"""

from __future__ import annotations

import itertools
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["PluginTree", "plugin_tree"]

_counter = itertools.count()


class PluginTree:
    """A folder of plugin packages whose package names are unique to one test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.packages: list[str] = []

    def package(self, name: str = "pkg") -> str:
        """A fresh top-level package name (``name_<n>``), created with an ``__init__.py``."""
        unique = f"{name}_{next(_counter)}"
        (self.root / unique).mkdir(parents=True)
        (self.root / unique / "__init__.py").write_text("")
        self.packages.append(unique)
        return unique

    def module(self, dotted: str, source: str) -> Path:
        """Write ``dotted`` (``pkg.sub.mod``) with ``source``, creating sub-packages."""
        parts = dotted.split(".")
        folder = self.root.joinpath(*parts[:-1])
        folder.mkdir(parents=True, exist_ok=True)
        for depth in range(1, len(parts)):
            init = self.root.joinpath(*parts[:depth], "__init__.py")
            if not init.exists():
                init.write_text("")
        path = folder / f"{parts[-1]}.py"
        path.write_text(textwrap.dedent(source))
        return path

    def forget(self) -> None:
        from dioptra import pyplugs

        for name in list(sys.modules):
            if any(name == p or name.startswith(p + ".") for p in self.packages):
                del sys.modules[name]
        for package in self.packages:
            pyplugs.registry().forget(package)


@pytest.fixture
def plugin_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PluginTree]:
    """A plugin folder on ``sys.path`` for this test only."""
    root = tmp_path / "plugins"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    tree = PluginTree(root)
    yield tree
    tree.forget()
