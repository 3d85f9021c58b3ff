"""``rrq-flow pause`` and ``rrq-flow resume``: stop a queue from starting jobs, and let it go on."""

from __future__ import annotations

import argparse
import time
from typing import Any

from rrq_flow.cli._common import (
    EXIT_OK,
    add_json_flag,
    add_pipeline_argument,
    parse_duration_arg,
    print_json,
)

PAUSE_HELP = """\
Pause a queue across all workers and hosts: jobs already running finish, nothing new starts
until the pause ends (after --for, or at `rrq-flow resume`). Jobs keep their place and no
attempt is used. `status` shows the queue as paused; a burst run waits for it (its progress
line says so). Pausing again replaces the previous pause.

examples:
  rrq-flow pause pipeline.yaml fetch              # until `rrq-flow resume`
  rrq-flow pause pipeline.yaml fetch --for 10m
"""

RESUME_HELP = """\
End a queue's pause now; idle workers start its jobs at once.

examples:
  rrq-flow resume pipeline.yaml fetch
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "pause",
        help="stop a queue from starting jobs (for a while, or until resume)",
        description=PAUSE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_argument(p)
    p.add_argument("queue", metavar="QUEUE")
    p.add_argument(
        "--for",
        dest="duration",
        metavar="DURATION",
        type=parse_duration_arg,
        default=None,
        help="how long (30s, 10m, 1h); default: until `rrq-flow resume`",
    )
    add_json_flag(p)
    p.set_defaults(handler=run_pause)
    r = subparsers.add_parser(
        "resume",
        help="end a queue's pause",
        description=RESUME_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_argument(r)
    r.add_argument("queue", metavar="QUEUE")
    add_json_flag(r)
    r.set_defaults(handler=run_resume)


def run_pause(args: argparse.Namespace) -> int:
    from rrq_flow.cli.status import admin_session

    with admin_session(args.pipeline) as admin:
        until = admin.pause(args.queue, args.duration)
    if args.json:
        print_json({"queue": args.queue, "paused": True, "paused_until": until})
    elif until is None:
        print(f"queue {args.queue} paused until `rrq-flow resume`")
    else:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(until))
        print(f"queue {args.queue} paused until {stamp}")
    return EXIT_OK


def run_resume(args: argparse.Namespace) -> int:
    from rrq_flow.cli.status import admin_session

    with admin_session(args.pipeline) as admin:
        was_paused = admin.resume(args.queue)
    if args.json:
        print_json({"queue": args.queue, "paused": False, "was_paused": was_paused})
    else:
        print(f"queue {args.queue} resumed" if was_paused else f"queue {args.queue} was not paused")
    return EXIT_OK
