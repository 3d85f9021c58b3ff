"""``rrq-flow workers``: every worker in the heartbeat index, alive or stale."""

from __future__ import annotations

import argparse
from typing import Any

from rrq_flow.cli._common import EXIT_OK, add_json_flag, add_pipeline_argument, print_json

HELP = """\
List the workers of the pipeline from their heartbeats: id, host, pid, queues, jobs in flight,
uptime and the age of the last heartbeat. A worker is "alive" while its last heartbeat is at most
2.5 heartbeat intervals old (one late beat does not flip it), "stale" after that; stale entries
disappear after 20 intervals. A worker that is draining after SIGTERM shows "stopping"; one that
holds jobs while its claim or acknowledgement loop has made no progress for longer than
lock_extension (Redis refusing its writes: OOM, MISCONF...) shows "stuck" (--json: holds,
stuck_for, stuck).

examples:
  rrq-flow workers pipeline.yaml
  rrq-flow workers pipeline.yaml --json | jq '.workers[] | select(.alive) | .host'
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "workers",
        help="list workers: host, pid, queues, in flight, last heartbeat",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_argument(p)
    add_json_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rrq_flow.cli.status import admin_session, fmt_age, render_table

    with admin_session(args.pipeline) as admin:
        workers = admin.workers()
        now = admin.server_time()
    if args.json:
        print_json({"time": now, "workers": [w.as_dict() for w in workers]})
        return EXIT_OK
    if not workers:
        print("no workers (none has sent a heartbeat recently)")
        return EXIT_OK
    header = ("id", "host", "pid", "queues", "in flight", "uptime", "last beat", "state")
    rows = [
        (
            w.id,
            w.host or "?",
            w.pid or "?",
            ",".join(w.queues) or "?",
            w.in_flight,
            fmt_age(w.uptime),
            fmt_age(w.last_beat_age) + " ago",
            ("alive" if w.alive else "stale")
            + (", stopping" if w.stopping else "")
            + (f", stuck {w.stuck_for:.0f}s" if w.stuck else ""),
        )
        for w in workers
    ]
    print(render_table(header, rows, right=4))
    alive = sum(w.alive for w in workers)
    print(f"\n{alive} alive, {len(workers) - alive} stale")
    return EXIT_OK
