"""Show task progress as a flow runs: a live table on a terminal, plain lines otherwise."""

from __future__ import annotations

import threading
import time
from typing import IO, Any

from dioptra.flow import CACHED, CANCELLED, COMPLETED, FAILED, NOT_RUN, RUNNING, TaskOutcome
from dioptra_api.clock import format_duration

_STYLES = {
    COMPLETED: "green",
    CACHED: "green",
    FAILED: "bold red",
    NOT_RUN: "yellow",
    RUNNING: "cyan",
    CANCELLED: "magenta",
}


class ProgressBoard:
    """A TaskListener that renders one line per task with its state and duration."""

    def __init__(self, stream: IO[str], *, live: bool) -> None:
        self._stream = stream
        self._outcomes: dict[str, TaskOutcome] = {}
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._live: Any = None
        if live:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(
                self._render(),
                console=Console(file=stream),
                refresh_per_second=8,
                transient=False,
                get_renderable=self._render,
            )

    def __enter__(self) -> ProgressBoard:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()

    def declare(self, outcomes: list[TaskOutcome]) -> None:
        """Show every task up front as Pending, in definition order."""
        with self._lock:
            for outcome in outcomes:
                self._outcomes.setdefault(outcome.name, outcome)

    def task_changed(self, outcome: TaskOutcome) -> None:
        with self._lock:
            self._outcomes[outcome.name] = outcome
        if self._live is None and outcome.state in (COMPLETED, FAILED, NOT_RUN, CANCELLED):
            elapsed = time.monotonic() - self._started
            duration = format_duration(outcome.duration)
            detail = f" ({duration})" if duration else ""
            if outcome.message and outcome.state != COMPLETED:
                detail += f": {outcome.message}"
            shown = outcome.shown_state
            self._stream.write(f"[{elapsed:6.1f}s] {shown:<9} {outcome.name}{detail}\n")
            self._stream.flush()

    def _render(self) -> Any:
        from rich.table import Table

        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        table.add_column("task")
        table.add_column("state")
        table.add_column("duration", justify="right")
        with self._lock:
            outcomes = list(self._outcomes.values())
        for outcome in outcomes:
            duration = outcome.duration
            if duration is None and outcome.state == RUNNING and outcome.start_time:
                import datetime as dt

                duration = (dt.datetime.now(dt.UTC) - outcome.start_time).total_seconds()
            shown = outcome.shown_state
            style = _STYLES.get(shown, "dim")
            table.add_row(outcome.name, f"[{style}]{shown}[/]", format_duration(duration))
        return table
