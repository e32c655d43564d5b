"""`dioptra-operator`: run the kopf operator with our handlers and settings.

Arguments are kopf's own (`--all-namespaces`, `--namespace X`, `--standalone`, `--peering`,
`--liveness URL`, `--verbose`...), so the Helm chart can pass them straight through.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import kopf
from dioptra_api import GROUP
from kopf import cli as kopf_cli

from dioptra_operator import handlers, prometheus
from dioptra_operator.settings import Settings


@kopf.on.startup()
def configure(*, settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    """All of kopf's non-default settings, and our own Settings from the environment."""
    handlers.SETTINGS = Settings.from_env()
    # Sync handlers share a thread pool; kopf's default (~CPU count + 4) left bursts of
    # Experiments waiting 1.7 s at p50 for a Job; 16 brings that to ~0.2 s (TESTING-NOTES).
    settings.execution.max_workers = 16
    # Our annotations and finalizer (if kopf ever needs one) carry our API group, not kopf's.
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # kopf's own log lines about an Experiment (a handler that failed, and why) become
    # Warning Events on it, so `kubectl describe` shows them; INFO lines stay in the log. Our
    # handlers post their own Events for each condition transition, at any level.
    settings.posting.loggers = True
    settings.posting.level = logging.WARNING
    # Give up on an API call after a while instead of hanging a worker forever.
    settings.networking.request_timeout = 60
    prometheus.serve(handlers.SETTINGS.metrics_port)
    logger.info("dioptra-operator started (runner image %s)", handlers.SETTINGS.runner_image)


@kopf.on.cleanup()
def stop_background_work(**_: Any) -> None:
    handlers.POD_WATCH.stop()


def main(argv: list[str] | None = None) -> None:
    """Console script: `dioptra-operator [kopf run options]`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["run"]:  # `dioptra-operator run ...` reads like `kopf run ...`: accept both
        args = args[1:]
    try:
        kopf_cli.main(args=["run", *args], prog_name="dioptra-operator", standalone_mode=True)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
