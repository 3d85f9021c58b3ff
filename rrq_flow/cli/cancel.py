"""``rrq-flow cancel``: cancel one job, waiting or running."""

from __future__ import annotations

import argparse
from typing import Any

from rrq_flow.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    add_json_flag,
    add_pipeline_argument,
    error,
    print_json,
)
from rrq_flow.textsafe import printable

HELP = """\
Cancel a job. A waiting job (queued, scheduled, retrying) is cancelled at once. A running job is
marked: its worker sees the request at its next lease renewal (within a third of the queue's
lock_extension), cancels the handler and records the job as cancelled; it is not retried. A
finished job is left as it is.

exit status: 0 cancelled, cancelling, or already cancelled; 1 no such job, or it already
finished otherwise (done, dead, failed).

examples:
  rrq-flow cancel pipeline.yaml 3f2a9c...
  rrq-flow cancel pipeline.yaml 3f2a9c... --json
"""

MESSAGES = {
    "cancelled": "job {id} cancelled (it was {before})",
    "cancelling": (
        "job {id} is running: cancellation requested; its worker stops it at the next lease "
        "renewal (`rrq-flow job` shows when it is cancelled)"
    ),
    "finished": "job {id} already finished ({before}): nothing to cancel",
    "missing": "no job {id!r} (never enqueued, or its record expired)",
}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "cancel",
        help="cancel a job (waiting: at once; running: at its worker)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_argument(p)
    p.add_argument("job_id", metavar="JOB_ID")
    add_json_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rrq_flow.cli.status import admin_session

    with admin_session(args.pipeline) as admin:
        outcome = admin.cancel(args.job_id)
    ok = outcome.verdict in ("cancelled", "cancelling") or (
        outcome.verdict == "finished" and outcome.status_before == "cancelled"
    )
    if args.json:
        print_json(
            {
                "id": outcome.id,
                "queue": outcome.queue,
                "verdict": outcome.verdict,
                "status_before": outcome.status_before,
            }
        )
    else:
        text = MESSAGES[outcome.verdict].format(id=outcome.id, before=outcome.status_before)
        if ok:
            print(printable(text))
        else:
            error(text)
    return EXIT_OK if ok else EXIT_FAILURE
