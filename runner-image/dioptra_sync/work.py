"""Small shared helpers for sync and push: error funnel, thread pool, sizes for humans."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from dioptra_sync.errors import SyncError
from dioptra_sync.messages import explain

T = TypeVar("T")


def guard(endpoint: str, source: object, key: str | None, work: Callable[[], T]) -> T:
    """Run `work`, turning any S3 or OS error into a one-line `SyncError`."""
    try:
        return work()
    except SyncError:
        raise
    except Exception as error:  # every failure must become one line, never a traceback
        raise explain(error, source=str(source), endpoint=endpoint, key=key) from None


def run_parallel(items: Sequence[Any], workers: int, work: Callable[[Any], T]) -> list[T]:
    """Run `work` on every item with a thread pool; stop at the first error and re-raise it."""
    if not items:
        return []
    if len(items) == 1 or workers <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        futures: list[Future[T]] = [pool.submit(work, item) for item in items]
        wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            if future.done() and future.exception() is not None:
                for pending in futures:
                    pending.cancel()
                raise future.exception()  # type: ignore[misc]
        return [future.result() for future in futures]


def mib(count: int) -> str:
    return f"{count / 1048576:.1f} MiB"


def plural(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
