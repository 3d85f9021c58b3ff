"""The ``rrq-flow`` command line.

Each sub-command lives in its own module of this package with a ``register(subparsers)`` function
that adds its parser and sets ``handler`` to a function ``(args) -> exit code``. Heavy imports
(trio, Redis clients) happen inside the handlers so that ``--help`` stays instant.

Exit codes shared by every command: 0 success, 1 the command ran and found a failure (invalid
file, dead jobs, unhealthy), 2 usage or configuration error, 3 Redis unreachable or data lost.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from rrq_flow._version import __version__

# In the order `--help` lists them.
COMMAND_MODULES = (
    "validate",
    "schema",
    "run",
    "enqueue",
    "status",
    "workers",
    "job",
    "dlq",
    "cancel",
    "health",
)

EPILOG = """\
exit codes: 0 ok, 1 failure found (invalid file, dead jobs, unhealthy), 2 usage or configuration
error, 3 Redis unreachable or its data lost.

Start with:  rrq-flow validate pipeline.yaml   then   rrq-flow run pipeline.yaml --burst
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rrq-flow",
        description="Declarative batch pipelines on trio and Redis that do not lose work.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rrq-flow {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"rrq_flow.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"rrq_flow.cli.{name}":
                continue  # not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    from rrq_flow.cli._common import ExitWith

    try:
        code: int = handler(args)
    except ExitWith as exc:
        return exc.code
    except KeyboardInterrupt:
        return 130
    return code


def run() -> None:
    sys.exit(main())
