"""``rrq-flow job``: everything about one job — state, payload, result or error with traceback,
earlier attempts' errors, the worker holding it, its parent and children."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from rrq_flow.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    add_json_flag,
    add_pipeline_argument,
    error,
    print_json,
)
from rrq_flow.textsafe import printable

if TYPE_CHECKING:
    from rrq_flow.client.admin import JobDetail

HELP = """\
Show one job: status, queue, arguments, attempts, timestamps, the result (done) or the last
error with its traceback (retrying, dead, failed), the errors of earlier attempts (newest first,
the last 10 kept), which worker holds it while it runs, and its parent and children when it is
part of a multi-stage pipeline (how many, and the first 20). Exit 1 when there is no such job
(never enqueued, or its record expired after result_ttl).

examples:
  rrq-flow job pipeline.yaml 3f2a9c...
  rrq-flow job pipeline.yaml 3f2a9c... --json | jq .job.error.traceback -r
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "job",
        help="everything about one job (result, errors with traceback, worker, stages)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_argument(p)
    p.add_argument("job_id", metavar="JOB_ID", help="the job's id (as printed by enqueue)")
    add_json_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rrq_flow.cli.status import admin_session
    from rrq_flow.errors import JobNotFound

    with admin_session(args.pipeline) as admin:
        try:
            detail = admin.job(args.job_id)
        except JobNotFound as exc:
            error(str(exc))
            return EXIT_FAILURE
    if args.json:
        print_json(detail.as_dict())
    else:
        print(render_job(detail))
    return EXIT_OK


def _compact(value: Any, limit: int = 2000) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def render_job(detail: JobDetail) -> str:
    """The human-readable form shared by ``job`` and ``dlq show``."""
    from rrq_flow.cli.status import fmt_age, fmt_time

    info = detail.info
    lines = [f"job {info.id}", f"  queue        {info.queue}", f"  status       {info.status}"]
    if info.dead_reason:
        lines.append(f"  dead reason  {info.dead_reason}")
    if info.cancel_requested and not info.finished:
        lines.append("  cancel       requested (the worker stops it at its next lease renewal)")
    lines.append(f"  attempts     {info.attempts} of {info.max_attempts}")
    if info.stalls:
        lines.append(f"  stalls       {info.stalls} (lease lost: its worker died or hung)")
    lines.append(f"  args         {_compact(info.args)}")
    if info.kwargs:
        lines.append(f"  kwargs       {_compact(info.kwargs)}")
    if info.unique_key:
        lines.append(f"  unique key   {info.unique_key}")
    lines.append(f"  enqueued     {fmt_time(info.enqueued_at)}")
    if info.ready_at and info.ready_at != info.enqueued_at:
        lines.append(f"  ready at     {fmt_time(info.ready_at)}")
    if info.started_at:
        lines.append(f"  started      {fmt_time(info.started_at)}")
    if info.finished_at:
        took = ""
        if info.started_at and info.status == "done":
            took = f" (ran {fmt_age(info.finished_at - info.started_at)})"
        lines.append(f"  finished     {fmt_time(info.finished_at)}{took}")
    if info.status == "active":
        owner = info.owner or "?"
        if detail.owner is not None:
            w = detail.owner
            state = "alive" if w.alive else f"stale, last heartbeat {fmt_age(w.last_beat_age)} ago"
            owner += f" ({w.host or '?'} pid {w.pid or '?'}, {state})"
        lines.append(f"  worker       {owner}")
        lines.append(f"  lease until  {fmt_time(info.lease_until)}")
    if detail.parent is not None:
        p = detail.parent
        lines.append(f"  parent       {p.id} ({p.queue or '?'}, {p.status or 'expired'})")
    if info.children or detail.children:
        lines.append(f"  children     {info.children}")
        for c in detail.children:
            lines.append(f"    {c.id} ({c.queue or '?'}, {c.status or 'expired'})")
        if info.children > len(detail.children):
            lines.append(f"    ... and {info.children - len(detail.children)} more")
    if info.status == "done":
        lines.append(f"  result       {_compact(info.result)}")
    err = detail.last_error
    if err is not None:
        lines.append("")
        lines.append(f"last error (attempt {err.get('attempt', '?')}): {_error_line(err)}")
        tb = str(err.get("traceback") or "").rstrip()
        if tb:
            lines += ["  " + line for line in tb.split("\n")]  # a \r stays, escaped
    earlier = detail.earlier_errors
    if earlier:
        lines.append("")
        lines.append("earlier attempts (newest first):")
        for e in earlier:
            lines.append(f"  attempt {e.get('attempt', '?')}: {_error_line(e)}")
    # Each entry is one line: handler data cannot add lines, move the cursor or clear the screen.
    return "\n".join(printable(line) for line in lines)


def _error_line(err: dict[str, Any]) -> str:
    kind, message = err.get("type") or "Error", err.get("message") or ""
    return f"{kind}: {message}" if message else str(kind)
