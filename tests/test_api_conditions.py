"""Pure condition merging (metav1.Condition semantics)."""

from __future__ import annotations

from dioptra_api.conditions import find_condition, make_condition, set_condition, set_conditions

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def test_a_new_condition_type_is_appended_with_the_current_time() -> None:
    result, changed = set_condition([], make_condition("Complete", True, "Succeeded", "ok"), T0)
    assert changed
    assert result == [
        {
            "type": "Complete",
            "status": "True",
            "reason": "Succeeded",
            "message": "ok",
            "lastTransitionTime": T0,
        }
    ]


def test_setting_the_same_condition_again_changes_nothing() -> None:
    first, _ = set_condition([], make_condition("Stalled", True, "ImagePullFailed", "m"), T0)
    again, changed = set_condition(
        first, make_condition("Stalled", True, "ImagePullFailed", "m"), T1
    )
    assert not changed
    assert again == first


def test_a_new_reason_keeps_the_transition_time_when_status_holds() -> None:
    first, _ = set_condition([], make_condition("Stalled", True, "ImagePullFailed", "m"), T0)
    second, changed = set_condition(
        first, make_condition("Stalled", True, "SecretNotFound", "s"), T1
    )
    assert changed
    assert second[0]["reason"] == "SecretNotFound"
    assert second[0]["lastTransitionTime"] == T0


def test_a_status_flip_moves_the_transition_time() -> None:
    first, _ = set_condition([], make_condition("Suspended", True, "Suspended", "m"), T0)
    second, changed = set_condition(first, make_condition("Suspended", False, "Resumed", "r"), T1)
    assert changed
    assert second[0]["lastTransitionTime"] == T1


def test_other_condition_types_are_left_alone() -> None:
    first, _ = set_condition([], make_condition("Accepted", True, "SpecAccepted", "ok"), T0)
    second, _ = set_condition(first, make_condition("Failed", True, "OOMKilled", "oom"), T1)
    assert find_condition(second, "Accepted") == first[0]
    assert [c["type"] for c in second] == ["Accepted", "Failed"]


def test_the_input_list_is_not_modified() -> None:
    first, _ = set_condition([], make_condition("Accepted", True, "SpecAccepted", "ok"), T0)
    snapshot = [dict(c) for c in first]
    set_condition(first, make_condition("Accepted", False, "InvalidSpec", "bad"), T1)
    assert first == snapshot


def test_observed_generation_is_recorded_and_compared() -> None:
    first, _ = set_condition([], make_condition("Accepted", True, "SpecAccepted", "ok", 1), T0)
    second, changed = set_condition(
        first, make_condition("Accepted", True, "SpecAccepted", "ok", 2), T1
    )
    assert changed
    assert second[0]["observedGeneration"] == 2
    assert second[0]["lastTransitionTime"] == T0


def test_setting_several_conditions_returns_only_those_that_changed() -> None:
    accepted = make_condition("Accepted", True, "SpecAccepted", "ok")
    conditions, _ = set_condition([], accepted, T0)
    created = make_condition("JobCreated", True, "JobCreated", "job x")
    merged, changed = set_conditions(conditions, [accepted, created], T1)
    assert [c["type"] for c in merged] == ["Accepted", "JobCreated"]
    assert changed == [created]
