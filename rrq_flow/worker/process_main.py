"""Entry point of one worker process started by the supervisor (``python -m`` this module).

The supervisor passes the read end of a pipe (the lifeline). If the supervisor dies — even by
SIGKILL — the kernel closes the write end, the read end reports EOF, and this worker stops at
once (in-flight jobs cancelled and released), so no orphan keeps running or holding leases.

The Redis URL arrives on another pipe (``--url-fd``), read once at start: a password in argv
would be readable by every local user.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import trio

from rrq_flow.logs import setup_logging
from rrq_flow.worker.runtime import run_worker_loop

log = logging.getLogger("rrq_flow.worker")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rrq-flow-worker")
    p.add_argument("pipeline", type=Path)
    p.add_argument(
        "--url-fd",
        type=int,
        required=True,
        help="file descriptor to read the Redis URL from (never argv: it may hold a password)",
    )
    p.add_argument("--queue", action="append")
    p.add_argument("--burst", action="store_true")
    p.add_argument("--max-jobs", type=int)
    p.add_argument("--stats-file", type=Path)
    p.add_argument("--lifeline-fd", type=int)
    p.add_argument("--log-format", default="text")
    p.add_argument("--log-level", default=None)
    p.add_argument("--no-metrics-server", action="store_true")
    return p.parse_args(argv)


async def watch_lifeline(fd: int, worker: object) -> None:
    from rrq_flow.worker.worker import Worker

    assert isinstance(worker, Worker)
    os.set_blocking(fd, False)
    while True:
        await trio.lowlevel.wait_readable(fd)
        try:
            data = os.read(fd, 64)
        except BlockingIOError:
            continue
        if not data:
            log.error("supervisor is gone: stopping now, in-flight jobs go back to their queue")
            worker.request_stop("supervisor gone")
            worker.hard_stop.set()
            return


def read_url(fd: int) -> str:
    """The Redis URL the supervisor wrote to the pipe ``fd`` (read to the end, then closed)."""
    chunks = []
    with os.fdopen(fd, "rb") as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def main(argv: list[str] | None = None) -> int:
    from rrq_flow.config.imports import demote_working_directory

    demote_working_directory()  # started with -m: the cwd must not shadow installed packages
    args = parse_args(argv)
    url = read_url(args.url_fd)
    setup_logging(args.log_format, args.log_level)
    from rrq_flow.config import load
    from rrq_flow.errors import ConfigError
    from rrq_flow.worker.worker import EXIT_CONFIG, Worker

    try:
        config = load(args.pipeline)
        worker = Worker(
            config,
            url=url,
            queues=args.queue,
            burst=args.burst,
            max_jobs=args.max_jobs,
            serve_metrics=not args.no_metrics_server,
        )
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG

    async def run() -> int:
        async with trio.open_nursery() as nursery:
            if args.lifeline_fd is not None:
                nursery.start_soon(watch_lifeline, args.lifeline_fd, worker)
            code = await worker.run()
            nursery.cancel_scope.cancel()
        return code

    code = run_worker_loop(run)
    if args.stats_file is not None:
        payload = {
            "stats": worker.stats.to_json(),
            "wall": worker.wall_time,
            "reason": worker.stop_reason,
            "code": code,
        }
        tmp = args.stats_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload))
        tmp.replace(args.stats_file)
    return code


if __name__ == "__main__":
    sys.exit(main())
