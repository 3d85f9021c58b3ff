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
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from rrq_flow._version import __version__

# In the order `--help` lists them.
COMMAND_MODULES = (
    "validate",
    "schema",
    "run",
    "enqueue",
    "runs",
    "results",
    "graph",
    "status",
    "workers",
    "job",
    "dlq",
    "cancel",
    "health",
    "dashboard",
    "pause",
    "schedules",
    "failover",
)

EPILOG = """\
exit codes: 0 ok, 1 failure found (invalid file, dead jobs, unhealthy), 2 usage or configuration
error, 3 Redis unreachable or its data lost.

Start with:  rrq-flow validate pipeline.yaml   then   rrq-flow run pipeline.yaml --burst
"""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that remembers its usage error, for the ``--json`` error object."""

    last_error: str | None = None

    def error(self, message: str) -> NoReturn:
        _Parser.last_error = f"{self.prog}: {message}"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    from rrq_flow.cli import _common

    argv = list(sys.argv[1:] if argv is None else argv)
    _common.begin()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code != 0 and "--json" in argv:  # a usage error: stderr has the usage already
            _common.note_error(_Parser.last_error or "usage error")
            return _common.finish(_common.EXIT_USAGE, as_json=True)
        raise
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        code: int = handler(args)
    except _common.ExitWith as exc:
        code = exc.code
    except Exception as exc:
        # The last line of defence: an error reply no command handled (OOM, MISCONF... on a
        # write) is one line and exit 3, not a traceback.
        from rrq_flow.redis_errors import is_error_reply

        if not is_error_reply(exc):
            raise
        _common.error(_common.redis_refusal(exc))
        code = _common.EXIT_REDIS
    except KeyboardInterrupt:
        _common.note_error("interrupted")
        code = 130
    return _common.finish(code, as_json=bool(getattr(args, "json", False)))


def run() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `rrq-flow dlq list ... | head`: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)
