"""``rrq-flow schedules``: each cron schedule with its next and last tick."""

from __future__ import annotations

import argparse
from typing import Any

from rrq_flow.cli._common import EXIT_OK, add_json_flag, add_pipeline_argument, print_json

HELP = """\
List the pipeline's cron schedules (the `schedules:` section): the queue each feeds, its
expression and time zone, the next tick and the last tick a worker enqueued. Ticks are
enqueued by running (non-burst) workers, each tick exactly once.

examples:
  rrq-flow schedules pipeline.yaml
  rrq-flow schedules pipeline.yaml --json
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "schedules",
        help="cron schedules: next and last tick",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_argument(p)
    add_json_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rrq_flow.cli.status import admin_session, schedule_line

    with admin_session(args.pipeline) as admin:
        schedules = admin.schedules()
    if args.json:
        print_json({s.name: s.as_dict() for s in schedules})
    elif not schedules:
        print("no schedules (add a `schedules:` section to the pipeline file)")
    else:
        for s in schedules:
            print(schedule_line(s).strip())
    return EXIT_OK
