"""``rrq-flow dashboard``: a web UI to watch queues and workers and operate dead letters."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rrq_flow.cli._common import EXIT_OK, EXIT_USAGE, add_pipeline_argument, error

HELP = """\
Serve a web dashboard for the pipeline: every queue's jobs by state with an hour of throughput,
the live workers, each queue's jobs page by page, each job (arguments, result, every error with
its traceback, parent, children), and the dead letters (filter by queue and error type). It
refreshes itself every 2 s. A JSON API under /api/ answers with the shapes of the CLI's --json.

It is read-only unless started with --allow-actions; then requeue and purge need the token it
prints at start (or the one in RRQ_FLOW_DASHBOARD_TOKEN, at least 16 characters), traded once
for a session cookie at /login. It listens on 127.0.0.1 unless --host says otherwise: anyone who
can reach it can read job arguments, results and errors.

Needs the dashboard extra: pip install 'rrq-flow[dashboard]'.

examples:
  rrq-flow dashboard pipeline.yaml                       # http://127.0.0.1:8321/
  rrq-flow dashboard pipeline.yaml --allow-actions
  curl -s 127.0.0.1:8321/api/status | jq .queues
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "dashboard",
        help="web UI: queues, workers, jobs, dead letters (read-only unless --allow-actions)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_argument(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8321, help="port (default 8321; 0 picks a free one)")
    p.add_argument(
        "--allow-actions",
        action="store_true",
        help="allow requeue and purge (with the token printed at start)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        error("--port must be between 0 and 65535")
        return EXIT_USAGE
    try:
        import hypercorn  # noqa: F401
        import jinja2  # noqa: F401
        import starlette  # noqa: F401
    except ImportError as exc:
        error(f"the dashboard needs {exc.name}: pip install 'rrq-flow[dashboard]'")
        return EXIT_USAGE
    import trio

    from rrq_flow.cli.status import admin_session
    from rrq_flow.dashboard.security import ENV_TOKEN, Guard
    from rrq_flow.dashboard.server import serve

    try:
        guard = Guard.create(args.allow_actions)
    except ValueError as exc:
        error(str(exc))
        return EXIT_USAGE

    def announce(urls: list[str]) -> None:
        url = next((u for u in urls if u.startswith("http://")), urls[0]).rstrip("/") + "/"
        print(f"rrq-flow dashboard for {args.pipeline}: {url}")
        if not args.allow_actions:
            print("read-only (start with --allow-actions to requeue or purge)")
        elif guard.token_from_env:
            print(f"actions allowed: log in at {url}login with the token in {ENV_TOKEN}")
        else:
            print(f"actions allowed: log in at {url}login with the token {guard.token}")
        print("Ctrl-C to stop")
        sys.stdout.flush()

    with admin_session(args.pipeline) as admin:
        try:
            trio.run(serve, admin, guard, args.host, args.port, announce)
        except (OSError, BaseExceptionGroup) as exc:
            bind = _os_error(exc)
            if bind is None:
                raise
            error(f"cannot listen on {args.host}:{args.port}: {bind.strerror or bind}")
            return EXIT_USAGE
    return EXIT_OK


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError (a failed bind) in ``exc``, which trio may have wrapped in groups."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _os_error(inner)
            if found is not None:
                return found
    return None
