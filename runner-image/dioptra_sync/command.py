"""`dioptra plugins sync` and `dioptra plugins push`: argument parsing and printing only.

The work is in `engine`; here a `SyncError` becomes its one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dioptra_sync.errors import SyncError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
MAX_OVERRIDES_SHOWN = 5


def add_sync_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Sync plugin files from S3 (or local folders) into DIR. Sources are merged in order: "
        "a later source wins on the same path. Only changed objects are downloaded."
    )
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="s3://bucket/prefix, file:///abs/path or a folder",
    )
    parser.add_argument(
        "--dest",
        metavar="DIR",
        default=os.environ.get("DIOPTRA_PLUGIN_DIR"),
        help="destination folder (default: $DIOPTRA_PLUGIN_DIR)",
    )
    _add_common(parser)
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help="accept a source with no objects instead of failing",
    )
    parser.add_argument(
        "--deps-cache",
        metavar="DIR",
        type=Path,
        default=None,
        help="where plugin packages' requirements are installed, one folder per resolved set "
        "(default: $DIOPTRA_DEPS_CACHE, else ~/.cache/dioptra/deps)",
    )
    parser.set_defaults(handler=run_sync)


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Upload a plugin folder to s3://bucket/prefix, skipping __pycache__, .pyc and dotfiles. "
        "Only changed files are uploaded."
    )
    parser.add_argument("folder", metavar="LOCAL_DIR", help="the plugin folder to upload")
    parser.add_argument("destination", metavar="S3_URI", help="s3://bucket/prefix")
    _add_common(parser)
    parser.add_argument(
        "--delete",
        action="store_true",
        help="also delete objects under the prefix that the folder does not have",
    )
    parser.add_argument(
        "--bundle",
        action="store_true",
        help=(
            "upload the folder as one tar.gz named by its digest (PREFIX/bundles/) and point "
            "PREFIX/bundle.json at it; sync it by naming either as a source. As for sources, "
            "./acme packs acme/..., ./plugins/ packs the folder's contents"
        ),
    )
    parser.set_defaults(handler=run_push)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoint-url",
        metavar="URL",
        default=None,
        help="S3 endpoint (default: boto3's chain, e.g. $AWS_ENDPOINT_URL; AWS when unset)",
    )
    parser.add_argument(
        "--workers",
        type=_positive,
        default=None,
        metavar="N",
        help="parallel transfers (default: 16)",
    )


def _positive(text: str) -> int:
    value = int(text) if text.isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def run_sync(args: argparse.Namespace) -> int:
    if not args.dest:
        print(
            "dioptra plugins sync: no destination: pass --dest DIR or set DIOPTRA_PLUGIN_DIR",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from dioptra_sync.engine import DEFAULT_WORKERS, sync_sources

    try:
        report = sync_sources(
            args.sources,
            Path(args.dest),
            endpoint_url=args.endpoint_url,
            allow_empty=args.allow_empty,
            workers=args.workers or DEFAULT_WORKERS,
        )
        # After the files: the plugin packages' own requirements (nothing runs without any).
        from dioptra_sync.deps import install_plugin_deps

        deps = install_plugin_deps(Path(args.dest), getattr(args, "deps_cache", None))
    except SyncError as error:
        print(f"dioptra plugins sync: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("dioptra plugins sync: interrupted", file=sys.stderr)
        return 130
    print(report.summary())
    if deps is not None:
        print(deps.summary())
    if report.overrides:
        shown = ", ".join(
            f"{o.path} ({o.winner} over {o.loser})" for o in report.overrides[:MAX_OVERRIDES_SHOWN]
        )
        more = len(report.overrides) - MAX_OVERRIDES_SHOWN
        print(f"later sources win: {shown}" + (f" and {more} more" if more > 0 else ""))
    return EXIT_OK


def run_push(args: argparse.Namespace) -> int:
    from dioptra_sync.engine import DEFAULT_WORKERS
    from dioptra_sync.push import BundlePushReport, PushReport, push_bundle, push_folder

    if args.bundle and args.delete:
        print("dioptra plugins push: --delete does not apply to --bundle", file=sys.stderr)
        return EXIT_USAGE
    try:
        report: PushReport | BundlePushReport
        if args.bundle:
            report = push_bundle(args.folder, args.destination, endpoint_url=args.endpoint_url)
        else:
            report = push_folder(
                Path(args.folder),
                args.destination,
                endpoint_url=args.endpoint_url,
                delete=args.delete,
                workers=args.workers or DEFAULT_WORKERS,
            )
    except SyncError as error:
        print(f"dioptra plugins push: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("dioptra plugins push: interrupted", file=sys.stderr)
        return 130
    print(report.summary())
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`python -m dioptra_sync {sync,push} ...`: the same commands without the CLI."""
    parser = argparse.ArgumentParser(prog="python -m dioptra_sync")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    add_sync_arguments(commands.add_parser("sync", help="sync plugins into a folder"))
    add_push_arguments(commands.add_parser("push", help="upload a plugin folder to S3"))
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code
