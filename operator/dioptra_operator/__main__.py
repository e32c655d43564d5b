"""`dioptra-operator`: run the kopf operator with our handlers and settings.

Arguments are kopf's own (`--all-namespaces`, `--namespace X`, `--standalone`, `--peering`,
`--liveness URL`, `--verbose`...), so the Helm chart can pass them straight through.
"""

from __future__ import annotations

import sys

from kopf import cli as kopf_cli

from dioptra_operator import (
    handlers,  # noqa: F401  (registers every handler with kopf)
    k8s,
)


def main(argv: list[str] | None = None) -> None:
    """Console script: `dioptra-operator [kopf run options]`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["run"]:  # `dioptra-operator run ...` reads like `kopf run ...`: accept both
        args = args[1:]
    if not {"-h", "--help"} & set(args):
        problem = k8s.configuration_problem()
        if problem:
            sys.stderr.write(f"dioptra-operator: {problem}\n")
            raise SystemExit(2)
    try:
        kopf_cli.main(args=["run", *args], prog_name="dioptra-operator", standalone_mode=True)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
