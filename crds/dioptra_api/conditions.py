"""Pure helpers for `status.conditions` in the metav1.Condition shape.

Conditions are merged by type. Re-running `set_condition` with the same input changes nothing,
which is what lets handlers be replayed safely and emit Events only on real transitions.
"""

from __future__ import annotations

from typing import Any

Condition = dict[str, Any]

_COMPARED = ("status", "reason", "message", "observedGeneration")


def set_condition(
    conditions: list[Condition] | None, new: Condition, now: str
) -> tuple[list[Condition], bool]:
    """Return `conditions` with `new` merged in by type, and whether anything changed.

    `lastTransitionTime` is set to `now` for a new type or when `status` flips; a change of
    reason or message alone keeps the old transition time (metav1.Condition semantics).
    The input list is not modified.
    """
    result = [dict(c) for c in conditions or []]
    for index, old in enumerate(result):
        if old.get("type") != new["type"]:
            continue
        if all(old.get(key) == new.get(key) for key in _COMPARED):
            return result, False
        merged = {**old, **new}
        if old.get("status") != new.get("status") or "lastTransitionTime" not in old:
            merged["lastTransitionTime"] = now
        else:
            merged["lastTransitionTime"] = old["lastTransitionTime"]
        result[index] = merged
        return result, True
    result.append({**new, "lastTransitionTime": now})
    return result, True


def set_conditions(
    conditions: list[Condition] | None, wanted: list[Condition], now: str
) -> tuple[list[Condition], list[Condition]]:
    """`set_condition` for each wanted condition, in order; the result and those that changed."""
    result = list(conditions or [])
    changed: list[Condition] = []
    for new in wanted:
        result, did_change = set_condition(result, new, now)
        if did_change:
            changed.append(new)
    return result, changed


def find_condition(conditions: list[Condition] | None, type_: str) -> Condition | None:
    """The condition of the given type, or None."""
    for condition in conditions or []:
        if condition.get("type") == type_:
            return condition
    return None


def make_condition(
    type_: str, status: bool, reason: str, message: str, generation: int | None = None
) -> Condition:
    """A condition without a transition time (set_condition adds it)."""
    condition: Condition = {
        "type": type_,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition
