"""Toy steps that show how data and ordering edges connect plugins in a flow."""

import random

from dioptra import pyplugs


@pyplugs.register
def make_items(n: int, seed: int = 0) -> dict[str, object]:
    """Draw ``n`` integers in [0, 100) and describe how they were made.

    Returns ``{"items": [...], "meta": {"n": ..., "seed": ...}}`` so a later step can read
    either part (``$steps.items.meta`` in a task graph, ``items["meta"]`` in a script).
    """
    if n < 2:
        raise ValueError(f"n must be at least 2 to split the items in two, got {n}")
    generator = random.Random(seed)
    return {"items": [generator.randrange(100) for _ in range(n)], "meta": {"n": n, "seed": seed}}


@pyplugs.register
def check_items(data: dict[str, object]) -> None:
    """Fail the flow early when the items are unusable; its output is never needed.

    A flow orders later steps after it with ``upstream_tasks=[...]`` (``dependsOn`` in a
    task graph), so they do not run when the check fails.
    """
    items = data["items"]
    if not isinstance(items, list) or not all(isinstance(i, int) for i in items):
        raise ValueError("items must be a list of integers")


@pyplugs.register
@pyplugs.task_nout(2)
def split(data: dict[str, list[int]]) -> tuple[list[int], list[int]]:
    """Split the items into a first and a second half (two outputs a flow can unpack)."""
    items = data["items"]
    middle = len(items) // 2
    return items[:middle], items[middle:]


@pyplugs.register
def report(first: list[int], second: list[int], meta: dict[str, int]) -> dict[str, object]:
    """Summarise both halves in one small JSON dict, ready for ``status.results``."""
    return {
        "n": meta["n"],
        "seed": meta["seed"],
        "first_half_sum": sum(first),
        "second_half_sum": sum(second),
        "total": sum(first) + sum(second),
    }
