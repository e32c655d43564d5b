"""constraints.txt, the one lock of the project's Python packages, as the tests compare with it."""

from __future__ import annotations

from pathlib import Path

CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"


def normalized(name: str) -> str:
    """A distribution name as pip compares them (case and `_`/`-` do not matter)."""
    return name.lower().replace("_", "-")


def locked_versions() -> dict[str, str]:
    """Normalized name -> the exact version constraints.txt pins."""
    lines = CONSTRAINTS.read_text().splitlines()
    pairs = (line.split("==", 1) for line in lines if line and not line.startswith("#"))
    return {normalized(name): version for name, version in pairs}
