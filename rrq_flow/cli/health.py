"""``rrq-flow health``: exit 0 when every queue is served by a live worker, for probes."""

from __future__ import annotations

import argparse
from typing import Any

from rrq_flow.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    add_json_flag,
    add_pipeline_argument,
    print_json,
)
from rrq_flow.textsafe import printable

HELP = """\
Check that every queue (or each --queue) is served by at least one live worker that is not
shutting down. A worker is live while its last heartbeat is at most 2.5 heartbeat intervals old;
a live worker is unhealthy (and listed as a reason) while it holds jobs and its claim or
acknowledgement loop has made no progress for longer than lock_extension.
Exit 0 when healthy, 1 with the reason(s) on stderr when not, 3 when Redis cannot be reached:
made for container probes and cron monitors.

examples:
  rrq-flow health pipeline.yaml
  rrq-flow health pipeline.yaml --queue fetch --queue resize
  # Kubernetes: livenessProbe: {exec: {command: [rrq-flow, health, /app/pipeline.yaml]}}
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "health",
        help="exit 0 if every queue has a live worker, else 1 (for probes)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_argument(p)
    p.add_argument(
        "--queue",
        metavar="QUEUE",
        action="append",
        help="check only this queue (repeat for several; default: all)",
    )
    add_json_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from rrq_flow.cli.status import admin_session

    with admin_session(args.pipeline) as admin:
        health = admin.health(args.queue)
    if args.json:
        print_json(
            {"ok": health.ok, "reasons": health.reasons, "live_workers": health.live_workers}
        )
    elif health.ok:
        counts = ", ".join(f"{q} {n}" for q, n in health.live_workers.items())
        print(f"ok: live workers per queue: {counts}")
    for reason in health.reasons:
        print(f"unhealthy: {printable(reason)}", file=sys.stderr)
    return EXIT_OK if health.ok else EXIT_FAILURE
