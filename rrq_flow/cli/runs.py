"""``rrq-flow runs``: the recent batch runs of a pipeline, with their jobs by state per stage."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rrq_flow.cli._common import EXIT_OK, add_json_flag, add_pipeline_argument, print_json
from rrq_flow.cli.status import admin_session, fmt_time, render_table

HELP = """\
List the most recent batch runs (newest first): when each started and finished, and its jobs by
state per stage (pending = not yet terminal). A run is named by `run --input ... [--run NAME]`,
`enqueue --run NAME` or `client.enqueue(..., run=NAME)`; a run's record expires result_ttl after
its last job ended.

examples:
  rrq-flow runs pipeline.yaml
  rrq-flow runs pipeline.yaml --limit 5 --json
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "runs",
        help="recent batch runs and their jobs by state",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_argument(p)
    p.add_argument("--limit", type=int, default=20, metavar="N", help="runs shown (default 20)")
    add_json_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    with admin_session(args.pipeline) as admin:
        runs = admin.client.runs(max(1, args.limit))
    if args.json:
        print_json({"runs": [r.as_dict() for r in runs]})
        return EXIT_OK
    if not runs:
        print("no runs (name one with `run --input Q=FILE` or `enqueue --run NAME`)")
        return EXIT_OK
    blocks = []
    for r in runs:
        state = f"finished {fmt_time(r.finished_at)}" if r.complete else f"{r.pending} pending"
        head = f"run {r.id}: started {fmt_time(r.started_at)}, {state}, {r.total} job(s)"
        rows = [
            [q, c["enqueued"], c["pending"], c["done"], c["dead"], c["failed"], c["cancelled"]]
            for q, c in r.queues.items()
        ]
        table = render_table(
            ["stage", "jobs", "pending", "done", "dead", "failed", "cancelled"], rows
        )
        blocks.append(head + "\n" + table)
    sys.stdout.write("\n\n".join(blocks) + "\n")
    return EXIT_OK
