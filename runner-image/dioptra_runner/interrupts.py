"""Stopping a run on SIGINT (Ctrl-C) or SIGTERM (what Kubernetes sends on delete or suspend).

`stop_on_signals` installs the run's handlers. The first signal raises `StopRequested` in the
main thread, wherever it is: loading the flow, waiting for Prefect, or waiting for the flow
runs (which run in other threads). The runner then cancels the flow runs through
`SignalStop.cancellation` and raises `RunInterrupted`; `run_command` turns that into the final
status, the summary and the exit code. A second signal while that is under way exits at once,
with the same code and no traceback.

Tasks that were running are abandoned, not stopped (Python cannot stop a thread), and the
interpreter would wait for their threads at exit: `SignalStop.exit_at_shutdown` ends the
process instead, once everything else is done, after the clean-ups registered with
`SignalStop.on_exit` (the embedded Prefect server's stop is the last of them).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, NoReturn

from dioptra.graph import Cancellation

__all__ = [
    "EXIT_CODES",
    "STOP_SIGNALS",
    "RunInterrupted",
    "SignalStop",
    "StopRequested",
    "stop_on_signals",
]

# The shell's convention: 128 + the signal's number.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_LOG = logging.getLogger("dioptra.run")


def exit_code(signum: int) -> int:
    return EXIT_CODES.get(signal.Signals(signum), 128 + signum)


class RunInterrupted(Exception):
    """The run was stopped by a signal; `runs` holds the PointRuns as far as they got."""

    def __init__(self, signum: int, runs: list[Any]) -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        self.code = exit_code(signum)
        self.runs = runs
        super().__init__(f"stopped by {self.signal_name}")


class StopRequested(BaseException):
    """Raised in the main thread by the first stop signal.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` in plugin or
    library code on the way takes it for an error of its own.
    """

    def __init__(self, signum: int, stop: SignalStop) -> None:
        self.signum = signum
        self.stop = stop
        super().__init__(signal.Signals(signum).name)


ExitCallback = Callable[[bool], None]


class SignalStop:
    """The stop-signal state of one ``dioptra run``.

    ``cancellation`` is what the flow runs watch; ``signum`` the first signal received.
    Callbacks given to ``on_exit`` run when the process ends without Python's own shutdown
    (a second signal, or abandoned task threads), last registered first; they get
    ``hurry=True`` on a second signal (do not wait for anything).
    """

    def __init__(self) -> None:
        self.cancellation = Cancellation()
        self.signum: int | None = None
        self._exit_callbacks: list[ExitCallback] = []
        self._exit_armed = False

    @property
    def code(self) -> int:
        return exit_code(self.signum) if self.signum is not None else 1

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def on_exit(self, callback: ExitCallback) -> None:
        self._exit_callbacks.append(callback)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: stop the run on the first signal, exit at once on the next."""
        if self.signum is not None:
            self.exit_now(hurry=True)
        self.signum = signum
        raise StopRequested(signum, self)

    def cancel(self) -> None:
        """Ask the flow runs to stop (after StopRequested was caught)."""
        self.cancellation.cancel(self.signal_name or "cancelled")

    def exit_now(self, *, hurry: bool = False) -> NoReturn:
        """Run the exit callbacks, flush what was written, and end the process with ``code``."""
        for callback in reversed(self._exit_callbacks):
            with contextlib.suppress(Exception):
                callback(hurry)
        if not hurry:
            with contextlib.suppress(Exception):
                logging.shutdown()  # flushes the run's log file
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(self.code)

    def exit_at_shutdown(self) -> None:
        """End the process with ``code`` when the main thread is done, without joining threads.

        At interpreter exit Python joins every non-daemon thread (the thread pools' workers
        among them) before it runs ``atexit``: an abandoned task's thread would keep the
        process alive until the task ends. Threading's own exit hooks run first, before
        those joins; ending the process there skips only the joins.
        """
        if self._exit_armed:
            return
        self._exit_armed = True
        register = getattr(threading, "_register_atexit", None)
        if register is None:  # not CPython: at least the clean-ups and the code are kept
            atexit.register(self.exit_now)
            return
        register(self.exit_now)


_ACTIVE: SignalStop | None = None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[SignalStop]:
    """Install the run's SIGINT/SIGTERM handlers for the block; restore the previous ones after.

    Nested use shares the outer block's handlers (the command may install them before the
    run starts). Outside the main thread, where Python cannot install handlers, it yields a
    SignalStop that no signal ever reaches. Once a signal was received the handlers stay:
    the process is on its way out, and a second signal must still exit at once.
    """
    global _ACTIVE
    if _ACTIVE is not None:
        yield _ACTIVE
        return
    stop = SignalStop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {signum: signal.signal(signum, stop.handle) for signum in STOP_SIGNALS}
    _ACTIVE = stop
    try:
        yield stop
    finally:
        _ACTIVE = None
        if stop.signum is None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
