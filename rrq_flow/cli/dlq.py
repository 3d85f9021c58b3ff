"""``rrq-flow dlq``: the dead-letter queue — list, show, requeue, purge."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from rrq_flow.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    add_json_flag,
    add_pipeline_argument,
    error,
    print_json,
)

if TYPE_CHECKING:
    from rrq_flow.client.admin import DeadLetters, RequeueResult

HELP = """\
Jobs that ran out of attempts, raised Fatal, or stalled too often are kept in the dead-letter
queue (DLQ) of their queue, with their payload and errors, until you requeue or purge them.

  list     the newest dead jobs (all queues, or one) with their last error
  show     one dead job in full, traceback included
  requeue  move dead jobs back to their queue: attempts reset, payload kept; atomic in Redis
  purge    delete dead jobs for good (needs --yes)

examples:
  rrq-flow dlq list pipeline.yaml
  rrq-flow dlq list pipeline.yaml resize --limit 200
  rrq-flow dlq show pipeline.yaml 3f2a9c...
  rrq-flow dlq requeue pipeline.yaml 3f2a9c... 81be07...
  rrq-flow dlq requeue pipeline.yaml --all --queue resize --dry-run
  rrq-flow dlq purge pipeline.yaml resize --yes
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "dlq",
        help="dead-letter queue: list, show, requeue, purge",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="dlq_command", metavar="ACTION")
    p.set_defaults(handler=lambda args: _usage(p))

    ls = sub.add_parser(
        "list",
        help="the newest dead jobs and their last error",
        description="List dead jobs, newest first, with how many each queue holds.\n\n"
        "examples:\n  rrq-flow dlq list pipeline.yaml\n"
        "  rrq-flow dlq list pipeline.yaml resize --limit 500 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_argument(ls)
    ls.add_argument("queue", metavar="QUEUE", nargs="?", help="only this queue")
    ls.add_argument("--limit", type=int, default=50, metavar="N", help="at most N (default 50)")
    add_json_flag(ls)
    ls.set_defaults(handler=run_list)

    show = sub.add_parser(
        "show",
        help="one dead job in full",
        description="Show a dead job: payload, attempts, last error with traceback, earlier "
        "errors. Exit 1 if there is no such job or it is not dead.\n\n"
        "example:\n  rrq-flow dlq show pipeline.yaml 3f2a9c...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_argument(show)
    show.add_argument("job_id", metavar="JOB_ID")
    add_json_flag(show)
    show.set_defaults(handler=run_show)

    rq = sub.add_parser(
        "requeue",
        help="move dead jobs back to their queue",
        description="Move dead jobs back to their queue, ready at once: attempts and stalls "
        "reset, payload and error history kept. Each batch moves atomically in Redis. Exit 1 if "
        "a given id is not found or not in the DLQ (the others are still moved).\n\n"
        "examples:\n  rrq-flow dlq requeue pipeline.yaml 3f2a9c... 81be07...\n"
        "  rrq-flow dlq requeue pipeline.yaml --all\n"
        "  rrq-flow dlq requeue pipeline.yaml --all --queue resize --dry-run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_argument(rq)
    rq.add_argument("job_ids", metavar="JOB_ID", nargs="*", help="the jobs to requeue")
    rq.add_argument("--all", action="store_true", help="every dead job (of --queue, or all)")
    rq.add_argument("--queue", metavar="QUEUE", help="only this queue's DLQ")
    rq.add_argument("--dry-run", action="store_true", help="say what would move, move nothing")
    add_json_flag(rq)
    rq.set_defaults(handler=run_requeue)

    purge = sub.add_parser(
        "purge",
        help="delete dead jobs for good (needs --yes)",
        description="Delete dead jobs — records, error history and DLQ entries — of one queue "
        "or of all. Without --yes nothing is deleted: it says what would be, and exits 2.\n\n"
        "examples:\n  rrq-flow dlq purge pipeline.yaml           # what would be deleted\n"
        "  rrq-flow dlq purge pipeline.yaml resize --yes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_argument(purge)
    purge.add_argument("queue", metavar="QUEUE", nargs="?", help="only this queue")
    purge.add_argument("--yes", action="store_true", help="really delete")
    add_json_flag(purge)
    purge.set_defaults(handler=run_purge)


def dlq_list_json(page: DeadLetters) -> dict[str, Any]:
    """The documented ``dlq list --json`` shape (the dashboard's /api/dlq too)."""
    return {
        "total": page.total,
        "counts": page.counts,
        "entries": [e.as_dict() for e in page.entries],
    }


def requeue_json(result: RequeueResult) -> dict[str, Any]:
    """The documented ``dlq requeue --json`` shape (the dashboard's /api/dlq/requeue too)."""
    return {
        "dry_run": result.dry_run,
        "count": result.count,
        "moved": result.moved,
        "not_found": result.not_found,
        "not_in_dlq": result.not_in_dlq,
    }


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_USAGE


def run_list(args: argparse.Namespace) -> int:
    from rrq_flow.cli.status import admin_session, fmt_age, render_table

    if args.limit < 0:
        error("--limit must be at least 0")
        return EXIT_USAGE
    with admin_session(args.pipeline) as admin:
        page = admin.dlq_list(args.queue, args.limit)
        now = admin.server_time()
    if args.json:
        print_json(dlq_list_json(page))
        return EXIT_OK
    if page.total == 0:
        print("the dead-letter queue is empty")
        return EXIT_OK
    rows = [
        (
            e.id,
            e.queue,
            fmt_age(now - e.died_at) + " ago",
            f"{e.attempts if e.attempts is not None else '?'}/{e.max_attempts or '?'}",
            e.dead_reason or "?",
            _short(f"{e.error_type or 'Error'}: {e.error_message or ''}"),
        )
        for e in page.entries
    ]
    print(render_table(("id", "queue", "died", "attempts", "reason", "last error"), rows, 99))
    counts = ", ".join(f"{q} {n}" for q, n in page.counts.items() if n)
    shown = f"showing {len(page.entries)} of {page.total}" if page.total > len(page.entries) else ""
    print(f"\n{page.total} dead ({counts}){'; ' + shown if shown else ''}")
    return EXIT_OK


def _short(text: str, width: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def run_show(args: argparse.Namespace) -> int:
    from rrq_flow.cli.job import render_job
    from rrq_flow.cli.status import admin_session
    from rrq_flow.errors import JobNotFound

    with admin_session(args.pipeline) as admin:
        try:
            detail = admin.dlq_show(args.job_id)
        except JobNotFound as exc:
            error(str(exc))
            return EXIT_FAILURE
    if detail.info.status != "dead":
        error(
            f"job {args.job_id} is not in the dead-letter queue (status {detail.info.status}); "
            f"see `rrq-flow job {args.pipeline} {args.job_id}`"
        )
        return EXIT_FAILURE
    if args.json:
        print_json(detail.as_dict())
    else:
        print(render_job(detail))
    return EXIT_OK


def run_requeue(args: argparse.Namespace) -> int:
    from rrq_flow.cli.status import admin_session

    if args.all == bool(args.job_ids):
        error("give JOB_ID ... or --all (not both)")
        return EXIT_USAGE
    with admin_session(args.pipeline) as admin:
        result = admin.dlq_requeue(
            None if args.all else args.job_ids, queue=args.queue, dry_run=args.dry_run
        )
    if args.json:
        print_json(requeue_json(result))
    else:
        verb = "would requeue" if result.dry_run else "requeued"
        per_queue = ", ".join(f"{q} {len(ids)}" for q, ids in result.moved.items())
        print(f"{verb} {result.count} job(s)" + (f" ({per_queue})" if per_queue else ""))
        for jid in result.not_found:
            error(f"no job {jid!r} (never enqueued, or purged)")
        for jid in result.not_in_dlq:
            where = f" of queue {args.queue!r}" if args.queue else ""
            error(f"job {jid} is not in the dead-letter queue{where}: left as it is")
    return EXIT_FAILURE if result.not_found or result.not_in_dlq else EXIT_OK


def run_purge(args: argparse.Namespace) -> int:
    from rrq_flow.cli.status import admin_session

    with admin_session(args.pipeline) as admin:
        if not args.yes:
            counts = admin.dlq_counts(args.queue)
            total = sum(counts.values())
            detail = ", ".join(f"{q} {n}" for q, n in counts.items() if n)
            error(
                f"would delete {total} dead job(s) for good"
                + (f" ({detail})" if detail else "")
                + "; add --yes to do it"
            )
            return EXIT_USAGE
        purged = admin.dlq_purge(args.queue)
    total = sum(purged.values())
    if args.json:
        print_json({"count": total, "purged": purged})
    else:
        detail = ", ".join(f"{q} {n}" for q, n in purged.items() if n)
        print(f"deleted {total} dead job(s)" + (f" ({detail})" if detail else ""))
    return EXIT_OK
