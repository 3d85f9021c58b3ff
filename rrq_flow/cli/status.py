"""``rrq-flow status``: one table of every queue's jobs by state, then the live workers.

Also home of the helpers the other operations commands (workers, job, dlq, cancel, health)
share: opening an Admin with the CLI's exit codes, and formatting ages and tables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from rrq_flow.cli._common import (
    EXIT_OK,
    EXIT_REDIS,
    EXIT_USAGE,
    ExitWith,
    add_json_flag,
    add_pipeline_argument,
    error,
    load_pipeline,
    open_sync_client,
    parse_duration_arg,
    print_json,
    redis_errors,
    redis_failure,
)
from rrq_flow.textsafe import printable

if TYPE_CHECKING:
    from rrq_flow.client.admin import Admin, QueueStatus, WorkerInfo
    from rrq_flow.schedules import ScheduleState

HELP = """\
Show every queue of the pipeline: jobs ready now, scheduled for later, waiting to retry, running
(active), finished (done, cumulative), in the dead-letter queue (dead), how long the oldest ready
job has waited, and jobs finished in the last minute; then the live workers. A few Redis commands
in one round trip, whatever the number of jobs.

examples:
  rrq-flow status pipeline.yaml
  rrq-flow status pipeline.yaml --watch 2        # redraw every 2 s until Ctrl-C
  rrq-flow status pipeline.yaml --json | jq '.queues.fetch.ready'
"""

WORKERS_SHOWN = 10  # workers listed under the status table


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "status",
        help="jobs per queue and state, live workers",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_argument(p)
    p.add_argument(
        "--watch",
        metavar="SECONDS",
        type=parse_duration_arg,
        help="redraw every SECONDS until Ctrl-C (with --json: one JSON line per redraw)",
    )
    add_json_flag(p)
    p.set_defaults(handler=run)


# --- shared by the operations commands --------------------------------------------------------


@contextlib.contextmanager
def admin_session(pipeline: Any) -> Iterator[Admin]:
    """An Admin on the pipeline's Redis. Exit 2 for a bad file or an unknown queue, 3 when
    Redis cannot be reached (at the start or in the middle of the command)."""
    from rrq_flow.client.admin import Admin
    from rrq_flow.errors import UnknownQueueError

    config = load_pipeline(pipeline)
    client = open_sync_client(config)
    try:
        yield Admin(client)
    except UnknownQueueError as exc:
        error(str(exc))
        raise ExitWith(EXIT_USAGE) from None
    except redis_errors() as exc:
        error(redis_failure(exc, client.url))
        raise ExitWith(EXIT_REDIS) from None
    finally:
        client.close()


def fmt_age(seconds: float | None) -> str:
    """A short duration: 850ms, 42s, 5m07s, 3h12m, 2d04h; '-' for none."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def fmt_time(ts: float | None) -> str:
    """A Unix time as local ISO time, seconds precision; '-' for none."""
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def render_table(header: Sequence[str], rows: Sequence[Sequence[Any]], right: int = 1) -> str:
    """A plain text table; columns from index ``right`` on are right-aligned (numbers)."""
    cells = [[printable(c) for c in header], *[[printable(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        parts = [
            c.rjust(widths[i]) if i >= right else c.ljust(widths[i]) for i, c in enumerate(row)
        ]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --- status -----------------------------------------------------------------------------------


def status_json(
    queues: list[QueueStatus],
    workers: list[WorkerInfo],
    now: float,
    schedules: Sequence[ScheduleState] = (),
) -> dict[str, Any]:
    """The documented ``status --json`` shape."""
    alive = [w for w in workers if w.alive]
    return {
        "time": now,
        "queues": {q.queue: {k: v for k, v in q.as_dict().items() if k != "queue"} for q in queues},
        "workers": {
            "alive": len(alive),
            "stale": len(workers) - len(alive),
            "list": [
                {
                    "id": w.id,
                    "host": w.host,
                    "pid": w.pid,
                    "queues": w.queues,
                    "in_flight": w.in_flight,
                    "stopping": w.stopping,
                }
                for w in alive
            ],
        },
        "schedules": {s.name: s.as_dict() for s in schedules},
    }


def _status_row(q: QueueStatus) -> list[Any]:
    counts = [q.ready, q.scheduled, q.retrying, q.active, q.done, q.dead]
    return [q.queue, *counts, fmt_age(q.oldest_ready_age), q.throughput_per_min]


def _flow_line(q: QueueStatus) -> str:
    """``  fetch: paused until ..., rate 50/s (burst 1), max_running 4 (3 running)``."""
    f = q.flow
    if f is None or not (f.paused or f.rate_limit or f.max_running):
        return ""
    parts = []
    if f.paused:
        parts.append(
            "PAUSED until resumed"
            if f.paused_until is None
            else f"PAUSED until {fmt_time(f.paused_until)}"
        )
    if f.rate_limit:
        parts.append(f"rate {f.rate_limit} (burst {f.rate_burst})")
    if f.max_running:
        parts.append(f"max_running {f.max_running} ({f.running} running)")
    return f"  {q.queue}: " + ", ".join(parts)


def schedule_line(sc: ScheduleState) -> str:
    """``  nightly -> report  0 3 * * * (Europe/Berlin)  next 2026-12-01 03:00:00  last -``."""
    return (
        f"  {sc.name} -> {sc.queue}  {sc.cron} ({sc.timezone})  next {fmt_time(sc.next_tick)}  "
        f"last {fmt_time(sc.last_tick)}"
    )


def render_status(
    queues: list[QueueStatus],
    workers: list[WorkerInfo],
    schedules: Sequence[ScheduleState] = (),
) -> str:
    header = ["queue", "ready", "scheduled", "retrying", "active", "done", "dead"]
    header += ["oldest ready", "finished/min"]
    rows = [_status_row(q) for q in queues]
    out = [render_table(header, rows)]
    flow_lines = [line for q in queues if (line := _flow_line(q))]
    if flow_lines:
        out.append("\nflow control:")
        out += flow_lines
    alive = [w for w in workers if w.alive]
    stale = len(workers) - len(alive)
    line = f"\n{len(alive)} live worker(s)"
    if stale:
        line += f", {stale} stale (see `rrq-flow workers`)"
    out.append(line + (":" if alive else ""))
    for w in alive[:WORKERS_SHOWN]:
        flags = " (stopping)" if w.stopping else ""
        out.append(
            printable(
                f"  {w.id}  {w.host or '?'}:{w.pid or '?'}  {','.join(w.queues)}  "
                f"{w.in_flight} in flight{flags}"
            )
        )
    if len(alive) > WORKERS_SHOWN:
        out.append(f"  ... and {len(alive) - WORKERS_SHOWN} more")
    if schedules:
        out.append("\nschedules:")
        out += [schedule_line(sc) for sc in schedules]
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    if args.watch is not None and args.watch <= 0:
        error("--watch needs a positive number of seconds")
        return EXIT_USAGE
    with admin_session(args.pipeline) as admin:
        if args.watch is None:
            _show(admin, args.json)
            return EXIT_OK
        return _watch(admin, args.watch, args.json)


def status_snapshot(
    admin: Admin,
) -> tuple[list[QueueStatus], list[WorkerInfo], list[ScheduleState], float]:
    """What ``status`` shows (the dashboard's overview too): queues, workers, schedules, and
    the server time they were read at."""
    return admin.queue_status(), admin.workers(), admin.schedules(), admin.server_time()


def _show(admin: Admin, as_json: bool, *, compact: bool = False) -> None:
    queues, workers, schedules, now = status_snapshot(admin)
    if as_json:
        data = status_json(queues, workers, now, schedules)
        if compact:
            sys.stdout.write(json.dumps(data, separators=(",", ":")) + "\n")
        else:
            print_json(data)
    else:
        print(render_status(queues, workers, schedules))
    sys.stdout.flush()


def _watch(admin: Admin, every: float, as_json: bool) -> int:
    """Redraw until Ctrl-C; a Redis outage is shown and waited out, not fatal."""
    tty = sys.stdout.isatty() and not as_json
    try:
        while True:
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J")  # home, clear screen
            try:
                _show(admin, as_json, compact=True)
            except redis_errors() as exc:
                error(f"{redis_failure(exc, admin.client.url)}; retrying")
            if tty:
                print(f"\nevery {every:g}s, Ctrl-C to stop — {time.strftime('%H:%M:%S')}")
            time.sleep(every)
    except KeyboardInterrupt:
        return EXIT_OK
