"""The Accepted condition of a spec that can run, with what the user should know about it.

Pure. A spec that passes the checks is accepted; one that asks for cached tasks (`spec.cache`,
or `cache: true` on a task-graph step) while no artifact store is named (`spec.artifacts.store`
or the chart's `artifacts.store`) is accepted too, since the run works, but with reason
CacheNotKept and a Warning Event: in a pod the cache then lives in the pod's own folder and
dies with it, so no later run, and no other point of a sweep, ever reuses an output. Saying
so once, at acceptance, is what the user needs to fix it before paying for the runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dioptra_api as c
from dioptra_api.conditions import Condition, make_condition

from dioptra_operator.settings import Settings

C = c.ConditionType
R = c.Reason


def asks_for_cache(spec: Mapping[str, Any]) -> bool:
    """Whether the spec caches tasks: `spec.cache`, or a task-graph step's `cache: true`.

    A plugin calling `pyplugs.call_task(..., cache=True)` is not visible in the spec; the
    runner warns in its log when it keeps cached outputs in the pod.
    """
    if spec.get("cache"):
        return True
    graph = (spec.get("entryPoint") or {}).get("taskGraph") or {}
    return any(isinstance(step, Mapping) and step.get("cache") for step in graph.get("steps") or [])


def has_artifact_store(spec: Mapping[str, Any], settings: Settings) -> bool:
    """Whether runs of this spec keep their outputs in a store that outlives the pod."""
    return bool((spec.get("artifacts") or {}).get("store") or settings.artifacts_store)


def accepted_condition(
    spec: Mapping[str, Any], settings: Settings, generation: int | None
) -> Condition:
    """Accepted=True: SpecAccepted, or CacheNotKept when cached outputs would die with the pod."""
    if asks_for_cache(spec) and not has_artifact_store(spec, settings):
        reason = R.CACHE_NOT_KEPT
    else:
        reason = R.SPEC_ACCEPTED
    return make_condition(C.ACCEPTED, True, reason, c.MESSAGES[reason], generation)
