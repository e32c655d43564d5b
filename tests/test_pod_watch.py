"""The Pod watch: which Experiments are checked for a missing Pod, and when (pure, fake clock)."""

from __future__ import annotations

from dioptra_operator.pod_watch import PodWatch


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_experiment_is_checked_only_after_the_grace_period() -> None:
    clock = Clock()
    watch = PodWatch(lambda *_: None, grace=10, interval=5, clock=clock)
    watch.waiting("lab", "exp", "exp-g1", lambda: False)
    clock.now = 9.9
    assert watch.due() == []
    clock.now = 10
    assert watch.due() == [("lab", "exp", "exp-g1")]


def test_an_overdue_experiment_is_checked_again_every_interval() -> None:
    clock = Clock()
    watch = PodWatch(lambda *_: None, grace=10, interval=5, clock=clock)
    watch.waiting("lab", "exp", "exp-g1", lambda: False)
    clock.now = 10
    assert watch.due()
    clock.now = 14
    assert watch.due() == []
    clock.now = 15
    assert watch.due() == [("lab", "exp", "exp-g1")]


def test_seeing_the_same_job_again_does_not_postpone_its_check() -> None:
    clock = Clock()
    watch = PodWatch(lambda *_: None, grace=10, interval=5, clock=clock)
    watch.waiting("lab", "exp", "exp-g1", lambda: False)
    clock.now = 9
    watch.waiting("lab", "exp", "exp-g1", lambda: False)
    clock.now = 10
    assert watch.due() == [("lab", "exp", "exp-g1")]


def test_a_new_job_restarts_the_grace_period() -> None:
    clock = Clock()
    watch = PodWatch(lambda *_: None, grace=10, interval=5, clock=clock)
    watch.waiting("lab", "exp", "exp-g1", lambda: False)
    clock.now = 9
    watch.waiting("lab", "exp", "exp-g2", lambda: False)
    clock.now = 10
    assert watch.due() == []
    clock.now = 19
    assert watch.due() == [("lab", "exp", "exp-g2")]


def test_an_experiment_whose_pod_appeared_is_dropped() -> None:
    clock = Clock()
    has_pod = [False]
    watch = PodWatch(lambda *_: None, grace=10, interval=5, clock=clock)
    watch.waiting("lab", "exp", "exp-g1", lambda: has_pod[0])
    has_pod[0] = True
    clock.now = 10
    assert watch.due() == []
    has_pod[0] = False
    clock.now = 100
    assert watch.due() == []  # forgotten, not merely skipped


def test_done_forgets_the_experiment() -> None:
    clock = Clock()
    watch = PodWatch(lambda *_: None, grace=10, interval=5, clock=clock)
    watch.waiting("lab", "exp", "exp-g1", lambda: False)
    watch.done("lab", "exp")
    clock.now = 10
    assert watch.due() == []
