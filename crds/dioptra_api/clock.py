"""Times as the API writes them, and one duration format for status and tables alike."""

from __future__ import annotations

import datetime as dt

__all__ = ["duration_between", "format_duration", "now", "parse_time", "rfc3339"]


def rfc3339(moment: dt.datetime | None) -> str | None:
    """RFC 3339 in UTC with a Z and whole seconds, as Kubernetes writes times."""
    if moment is None:
        return None
    return moment.astimezone(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def now() -> str:
    """The current time in the API's format."""
    return str(rfc3339(dt.datetime.now(dt.UTC)))


def parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def format_duration(seconds: float | None) -> str:
    """A short duration like kubectl's: `4.2s`, `45s`, `3m7s`, `2h5m` ("" for None).

    Below ten seconds a fraction is kept (a quick run's time is worth a decimal).
    """
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    if seconds < 10 and seconds != int(seconds):
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m"


def duration_between(start: str, end: str) -> str:
    """The duration between two API times (e.g. startTime and completionTime)."""
    return format_duration((parse_time(end) - parse_time(start)).total_seconds())
