"""The `dioptra` command.

Subcommands import their implementation lazily so that the init container's
`dioptra plugins sync` never pays for importing Prefect or the Kubernetes client.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dioptra",
        description="Run Dioptra-style experiments: sync task plugins, run flows on Prefect 3.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    plugins = commands.add_parser("plugins", help="sync or publish task plugin folders")
    plugin_commands = plugins.add_subparsers(dest="plugins_command", metavar="COMMAND")
    plugin_commands.required = True
    from dioptra_sync.command import add_push_arguments, add_sync_arguments

    add_sync_arguments(
        plugin_commands.add_parser("sync", help="sync plugins from S3 into a local folder")
    )
    add_push_arguments(
        plugin_commands.add_parser("push", help="upload a local plugin folder to S3")
    )

    from dioptra_runner.run_command import add_run_arguments

    add_run_arguments(commands.add_parser("run", help="run an Experiment file"))
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = _build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    sys.exit(handler(args))
