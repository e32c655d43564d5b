"""Report a run's progress to its Experiment's status: the runner's only Kubernetes API client.

Why a background thread that coalesces: a flow of 200 tasks calls ``update`` hundreds of times,
but the API server (and every watcher of the Experiment, the operator included) should see a
handful of patches. ``update`` only records the wanted state and returns at once; a thread
sends at most one JSON merge patch per ``min_interval`` to ``experiments/<name>/status``,
holding only the top-level keys whose values changed since the last successful patch.

Why it never raises: status is a report on the experiment, not part of it. An API failure is
retried with backoff (what was pending stays pending and merges with newer updates), then
logged without credentials and dropped; a 404 (the Experiment was deleted) stops reporting
with one log line; ``close`` flushes what is pending and always returns within its timeout.

The ``kubernetes`` package is imported lazily, inside this module only, so ``dioptra run`` on a
laptop (``NullStatusReporter``) never pays for it.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from dioptra_api import (
    GROUP,
    NAME_ENV,
    NAMESPACE_ENV,
    PLURAL,
    RUN_ACCOUNT_FIELDS,
    RUN_STATUS,
    VERSION,
)

if TYPE_CHECKING:
    import kubernetes.client

__all__ = [
    "KubernetesStatusReporter",
    "NullStatusReporter",
    "PointStatusReporter",
    "RunStatusReporter",
    "StatusReporter",
    "StatusReporterError",
    "changed_fields",
    "read_experiment",
    "to_json_value",
]

_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

# Backoff between attempts of one patch: doubles from the first value up to the cap (seconds).
_FIRST_BACKOFF = 0.2
_MAX_BACKOFF = 5.0
# One API call never waits longer than this (connect, read), nor past close()'s deadline.
_CALL_TIMEOUT = (3.0, 10.0)

logger = logging.getLogger(__name__)


class StatusReporterError(ValueError):
    """The reporter cannot be set up from the environment (a one-line message for users)."""


class StatusReporter(Protocol):
    """Where the runner sends progress: the Experiment's status, or nowhere."""

    def update(self, **fields: Any) -> None:
        """Merge top-level status fields into the pending state; never blocks, never raises."""

    def close(self, timeout: float = 10.0) -> None:
        """Send everything pending, then stop; returns within ``timeout`` seconds."""


class NullStatusReporter:
    """The reporter of ``dioptra run`` on a laptop: there is no Experiment to write to."""

    def update(self, **fields: Any) -> None:
        """Ignore the fields."""

    def close(self, timeout: float = 10.0) -> None:
        """Nothing to flush."""


class _Entry:
    """The accumulated fields of one nested status object (``run``, or a sweep point's entry).

    Why accumulate: the inner reporter coalesces by top-level key, so it must always be handed
    the whole nested object; sending only the latest fields would drop earlier ones still
    pending.
    """

    def __init__(self) -> None:
        self._fields: dict[str, Any] = {}
        self._lock = threading.Lock()

    def merged(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._fields.update(fields)
            return dict(self._fields)


class RunStatusReporter:
    """Reports a run's own account (phase, message, timings) under ``status.run``.

    Why: the operator alone writes the top-level ``phase``, ``message`` and timings, folding
    in what the runner says here together with what the Job and its Pods show (one owner per
    field, docs/architecture.md). The runner's other fields (``tasks``, ``progress``,
    ``results``, ``plugins``) have no other writer and stay at the top level.
    """

    def __init__(self, inner: StatusReporter) -> None:
        self.inner = inner
        self._run = _Entry()

    def update(self, **fields: Any) -> None:
        """Route the run's account under ``run`` and hand the rest through."""
        account = {name: fields.pop(name) for name in RUN_ACCOUNT_FIELDS & fields.keys()}
        if account:
            fields[RUN_STATUS] = self._run.merged(account)
        self.inner.update(**fields)

    def close(self, timeout: float = 10.0) -> None:
        """Flush through the inner reporter."""
        self.inner.close(timeout)


class PointStatusReporter:
    """Reports one sweep point's run under ``status.sweepPoints.<key>``, never at the top level.

    Why: in the cluster each point of a sweep runs in its own Pod of the sweep's Indexed Job
    (the key comes from its completion index), so several runners report to the same
    Experiment at once; their ``tasks``/``results`` would overwrite each other.
    Each runner instead writes its own entry of the ``sweepPoints`` map (a JSON merge patch of
    ``{"sweepPoints": {key: {...}}}`` leaves the other points alone), and the operator
    summarizes the entries into ``status.sweep``.

    A sweep may have up to a thousand points, and the Experiment must stay far below the API
    server's object size limit, so an entry stays small: the per-task list (``tasks``) is
    left out (``tasksDone``/``tasksTotal``/``progress`` remain), and the synced plugin
    manifest (``plugins``, the same for every point syncing the same sources) goes to the top
    level once, each point keeping only its digest (``pluginsSha256``) to show a difference.
    """

    # The kept outputs' list too (its counts, artifactsKept and tasksCached, stay).
    _LEFT_OUT = frozenset({"tasks", "plugins", "artifacts", "artifactsOmitted"})

    def __init__(self, inner: StatusReporter, key: str) -> None:
        self.inner = inner
        self.key = key
        self._entry = _Entry()

    def update(self, **fields: Any) -> None:
        """Merge the fields into this point's entry and hand the whole entry to the inner one."""
        plugins = fields.get("plugins")
        top: dict[str, Any] = {}
        if plugins is not None:
            top["plugins"] = plugins
            fields["pluginsSha256"] = _digest(plugins)
        entry = self._entry.merged(
            {name: value for name, value in fields.items() if name not in self._LEFT_OUT}
        )
        self.inner.update(sweepPoints={self.key: entry}, **top)

    def close(self, timeout: float = 10.0) -> None:
        """Flush through the inner reporter."""
        self.inner.close(timeout)


def _digest(value: Any) -> str:
    """SHA-256 of a JSON value in its canonical form (sorted keys, no spaces)."""
    try:
        canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        canonical = repr(value)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def to_json_value(value: Any) -> Any:
    """A JSON-only deep copy: later changes by the caller cannot leak into a pending patch.

    Datetimes become RFC 3339 UTC strings (what the CRD's ``date-time`` fields expect),
    timedeltas seconds, and anything else unknown its ``str()``.
    """
    return json.loads(json.dumps(value, default=_json_default))


def changed_fields(sent: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level keys of ``wanted`` whose values differ from what was last ``sent``."""
    missing = object()
    return {key: value for key, value in wanted.items() if sent.get(key, missing) != value}


_URL_CREDENTIALS = re.compile(r"//[^/@\s]+@")


def _describe(error: BaseException) -> str:
    """A one-line description of a failed call, with no bodies, headers or URL credentials."""
    status = getattr(error, "status", None)
    if isinstance(status, int) and status:
        reason = getattr(error, "reason", None) or ""
        return f"HTTP {status} {reason}".strip()
    text = _URL_CREDENTIALS.sub("//", str(error)).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


class _Outcome(enum.Enum):
    SENT = "sent"
    RETRY = "retry"  # a server or network failure: the same patch may work later
    REFUSED = "refused"  # forbidden or invalid: it never will


def _server_message(error: BaseException) -> str:
    """The API server's own reason for a refusal (never headers or credentials)."""
    try:
        return str(json.loads(getattr(error, "body", None) or "{}").get("message", ""))[:500]
    except (ValueError, AttributeError):
        return ""


class KubernetesStatusReporter:
    """Patches ``experiments/<name>/status`` from a background thread, coalescing updates."""

    def __init__(
        self,
        name: str,
        namespace: str,
        *,
        api_client: kubernetes.client.ApiClient | None = None,
        min_interval: float = 0.25,
        max_attempts: int = 5,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.min_interval = min_interval
        self.max_attempts = max(1, max_attempts)
        self._api_client = api_client
        self._owns_client = api_client is None
        self._wanted: dict[str, Any] = {}  # the whole status as the runner wants it
        self._sent: dict[str, Any] = {}  # what the API server has acknowledged
        self._cond = threading.Condition()
        self._closing = False
        self._deadline: float | None = None  # set by close(): flush until then
        self._stopped = False  # 404 or no configuration: nothing more will be sent
        self._last_send = 0.0
        self._thread = threading.Thread(
            target=self._run, name=f"dioptra-status-{namespace}/{name}", daemon=True
        )
        self._thread.start()

    @classmethod
    def from_environment(cls) -> KubernetesStatusReporter:
        """The reporter for the Job's pod: names from its env, in-cluster config or kubeconfig.

        The API configuration itself is loaded lazily in the background thread, so a bad
        kubeconfig is logged there and never fails the run.
        """
        name = os.environ.get(NAME_ENV, "").strip()
        namespace = os.environ.get(NAMESPACE_ENV, "").strip()
        if not namespace and _SERVICE_ACCOUNT_NAMESPACE.exists():
            namespace = _SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        if not name or not namespace:
            missing = NAME_ENV if not name else NAMESPACE_ENV
            raise StatusReporterError(
                f"{missing} is not set: cannot tell which Experiment to report status to"
            )
        return cls(name, namespace)

    # -- the caller's side -------------------------------------------------------------------------

    def update(self, **fields: Any) -> None:
        try:
            snapshot = {key: to_json_value(value) for key, value in fields.items()}
        except (TypeError, ValueError) as e:  # e.g. circular structures
            logger.warning("Ignoring a status update that is not JSON: %s", e)
            return
        with self._cond:
            if self._closing or self._stopped:
                return
            self._wanted.update(snapshot)
            self._cond.notify_all()

    def close(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            self._closing = True
            self._deadline = deadline
            self._cond.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            logger.warning(
                "Gave up sending the last status of Experiment %s/%s after %.1fs",
                self.namespace,
                self.name,
                timeout,
            )

    # -- the background thread ---------------------------------------------------------------------

    def _remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # never let the thread die with a traceback on the runner's stderr
            logger.warning("Status reporting stopped unexpectedly: %s", _describe(e))
        finally:
            if self._owns_client and self._api_client is not None:
                with contextlib.suppress(Exception):  # closing is best effort
                    self._api_client.close()

    def _loop(self) -> None:
        attempt = 0
        while True:
            with self._cond:
                # Wait for something to send, for the coalescing interval, or for a backoff.
                while True:
                    if self._stopped:
                        return
                    changes = changed_fields(self._sent, self._wanted)
                    remaining = self._remaining()
                    if self._closing and (
                        not changes or (remaining is not None and remaining <= 0)
                    ):
                        return
                    delay = self._last_send + self._delay(attempt) - time.monotonic()
                    if self._closing and attempt == 0:
                        delay = 0.0  # flush now; a backoff is still honoured
                    if changes and delay <= 0:
                        break
                    wait = delay if changes else None
                    if remaining is not None:
                        wait = remaining if wait is None else min(wait, remaining)
                    self._cond.wait(wait)
                self._last_send = time.monotonic()
            outcome = self._send(changes)
            if outcome is not _Outcome.RETRY:
                # Sent, or refused for good (retrying the same patch cannot help): these keys
                # are sent again only when they change.
                with self._cond:
                    self._sent.update(changes)
                attempt = 0
                continue
            if self._stopped:
                return
            attempt += 1
            if attempt >= self.max_attempts:
                logger.warning(
                    "Dropped a status update of Experiment %s/%s after %d failed attempts",
                    self.namespace,
                    self.name,
                    attempt,
                )
                with self._cond:
                    self._sent.update(changes)  # resend these keys only when they change again
                attempt = 0

    def _delay(self, attempt: int) -> float:
        if attempt == 0:
            return self.min_interval
        return max(self.min_interval, min(_MAX_BACKOFF, _FIRST_BACKOFF * 2 ** (attempt - 1)))

    def _send(self, changes: dict[str, Any]) -> _Outcome:
        """One patch attempt. A 404 or a missing configuration stops reporting."""
        try:
            api = self._custom_objects_api()
        except Exception as e:
            logger.warning(
                "Cannot report the status of Experiment %s/%s: no Kubernetes configuration (%s)",
                self.namespace,
                self.name,
                _describe(e),
            )
            self._stop()
            return _Outcome.RETRY
        remaining = self._remaining()
        limit = _CALL_TIMEOUT[1] if remaining is None else max(0.1, remaining)
        timeout = (min(_CALL_TIMEOUT[0], limit), min(_CALL_TIMEOUT[1], limit))
        try:
            api.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                self.name,
                {"status": changes},
                _request_timeout=timeout,
                _content_type="application/merge-patch+json",
            )
        except Exception as e:
            status = getattr(e, "status", None)
            if status == 404:
                logger.warning(
                    "Experiment %s/%s no longer exists: status reporting stopped",
                    self.namespace,
                    self.name,
                )
                self._stop()
                return _Outcome.RETRY
            if isinstance(status, int) and 400 <= status < 500 and status not in (409, 429):
                logger.warning(
                    "The API server refused a status update of Experiment %s/%s (%s): %s",
                    self.namespace,
                    self.name,
                    _describe(e),
                    _server_message(e),
                )
                return _Outcome.REFUSED
            logger.debug(
                "Status patch of Experiment %s/%s failed: %s",
                self.namespace,
                self.name,
                _describe(e),
            )
            return _Outcome.RETRY
        return _Outcome.SENT

    def _stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _custom_objects_api(self) -> Any:
        import kubernetes.client

        if self._api_client is None:
            self._api_client = _client_from_environment()
        return kubernetes.client.CustomObjectsApi(self._api_client)


def _client_from_environment() -> kubernetes.client.ApiClient:
    """In-cluster configuration when running in a pod, else ``KUBECONFIG`` / ``~/.kube/config``."""
    import kubernetes.client
    import kubernetes.config

    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        # KUBECONFIG is read now, not when `kubernetes.config` was first imported.
        kubernetes.config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration
        )
    return kubernetes.client.ApiClient(configuration)


def read_experiment(name: str, namespace: str, *, attempts: int = 3) -> dict[str, Any]:
    """The Experiment as the API server has it now, status included (``dioptra sweep
    summarize`` reads its points' reports from it).

    Read through the status subresource, the one the runner's Role names (``get`` and
    ``patch`` on ``experiments/status``). A server or network failure is retried a few times;
    then, or for a refusal, StatusReporterError in one line, without credentials.
    """
    import kubernetes.client

    try:
        client = _client_from_environment()
    except Exception as e:
        raise StatusReporterError(f"no Kubernetes configuration ({_describe(e)})") from None
    try:
        api = kubernetes.client.CustomObjectsApi(client)
        for attempt in range(max(1, attempts)):
            try:
                found = api.get_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, PLURAL, name, _request_timeout=_CALL_TIMEOUT
                )
                return cast(dict[str, Any], found)
            except Exception as e:
                status = getattr(e, "status", None)
                final = attempt + 1 >= max(1, attempts)
                refused = isinstance(status, int) and 400 <= status < 500 and status != 429
                if final or refused:
                    raise StatusReporterError(
                        f"cannot read Experiment {namespace}/{name}: {_describe(e)}"
                    ) from None
                time.sleep(min(_MAX_BACKOFF, _FIRST_BACKOFF * 2**attempt))
        raise AssertionError("unreachable")
    finally:
        with contextlib.suppress(Exception):
            client.close()
