"""The `dioptra` command.

Subcommands import their implementation lazily so that the init container's
`dioptra plugins sync` never pays for importing Prefect or the Kubernetes client, nor for the
`run` command's own modules (about 20 ms of a no-op sync's ~0.1 s).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn


class _Parser(argparse.ArgumentParser):
    """argparse's parser, remembering its last error for ``dioptra run --output json``."""

    last_error: str | None = None

    def error(self, message: str) -> NoReturn:
        _Parser.last_error = f"{self.prog}: {message}"
        super().error(message)


def _build_parser(arguments: Sequence[str]) -> argparse.ArgumentParser:
    parser = _Parser(
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

    run = commands.add_parser("run", help="run an Experiment file")
    if arguments[:1] != ["plugins"]:
        from dioptra_runner.run_command import add_run_arguments

        add_run_arguments(run)
    _add_server_commands(commands)
    _add_sweep_commands(commands, arguments)
    return parser


def _add_sweep_commands(
    commands: argparse._SubParsersAction[_Parser], arguments: Sequence[str]
) -> None:
    """``dioptra sweep summarize``: a sweep's plot and MLflow parent run, in its summary Job."""
    sweep = commands.add_parser("sweep", help="a sweep run in the cluster: its summary")
    sweep_commands = sweep.add_subparsers(dest="sweep_command", metavar="COMMAND")
    sweep_commands.required = True
    summarize = sweep_commands.add_parser(
        "summarize",
        help="draw the plot, keep it in the artifact store, open the MLflow parent run",
    )
    if arguments[:1] == ["sweep"]:
        from dioptra_runner.sweep_summary import add_summarize_arguments

        add_summarize_arguments(summarize)


def _add_server_commands(commands: argparse._SubParsersAction[_Parser]) -> None:
    """``dioptra server status|stop``: the local Prefect server that runs share on a laptop."""
    server = commands.add_parser("server", help="the local Prefect server kept between runs")
    server_commands = server.add_subparsers(dest="server_command", metavar="COMMAND")
    server_commands.required = True
    status = server_commands.add_parser(
        "status", help="show its address, PID, uptime, idle timeout and log, or that none runs"
    )
    status.set_defaults(handler=_server_status)
    stop = server_commands.add_parser(
        "stop", help="stop it now (runs using it fail); the next run starts a new one"
    )
    stop.set_defaults(handler=_server_stop)


def _server_status(args: argparse.Namespace) -> int:
    from dioptra_runner.local_server import status_command  # lazy: not for `plugins sync`

    return status_command(args)


def _server_stop(args: argparse.Namespace) -> int:
    from dioptra_runner.local_server import stop_command

    return stop_command(args)


def _asks_for_json(arguments: list[str]) -> bool:
    pairs = itertools.pairwise(arguments)
    return "run" in arguments and (
        "--output=json" in arguments or any(a == "--output" and b == "json" for a, b in pairs)
    )


def _hand_off_to_warm_runner(arguments: list[str]) -> int | None:
    """A local ``dioptra run`` is forked by the warm runner when one is ready (Prefect
    imported already); its exit code, or None to run here."""
    if arguments[:1] != ["run"] or "--in-cluster" in arguments:
        return None
    import os

    from dioptra_runner import warm_runner

    if warm_runner.in_warm_child():
        return None
    from dioptra_runner.local_server import Paths, enabled
    from dioptra_runner.prefect_warmup import uses_external_server

    if not enabled(os.environ) or uses_external_server(os.environ):
        return None
    return warm_runner.hand_off(Paths.default().folder, [sys.argv[0], *arguments])


def main(argv: Sequence[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    code = _hand_off_to_warm_runner(arguments)
    if code is not None:
        sys.exit(code)
    parser = _build_parser(arguments)
    try:
        args = parser.parse_args(arguments)
    except SystemExit as stop:
        # `dioptra run --output json` promises one JSON document on stdout, even for a
        # command line argparse refuses (its usage and error went to stderr already).
        if stop.code == 2 and _asks_for_json(arguments):
            from dioptra_runner.summary import write_json_error

            message = _Parser.last_error or "invalid command line"
            write_json_error(argparse.Namespace(), None, 2, "InvalidArguments", message, 0.0)
        raise
    handler: Callable[[argparse.Namespace], int] = args.handler
    sys.exit(handler(args))
