"""``rrq-flow run``: start the workers of a pipeline (one process, or a supervisor of N)."""

from __future__ import annotations

import argparse
from typing import Any

from rrq_flow.cli._common import (
    EXIT_REDIS,
    EXIT_USAGE,
    ExitWith,
    add_pipeline_argument,
    detail,
    error,
    load_pipeline,
    open_sync_client,
    parse_duration_arg,
    parse_run_arg,
    print_json,
    redis_errors,
    redis_failure,
    redis_refusal,
    redis_refusals,
)
from rrq_flow.cli.input_stream import InputFile, check_inputs, enqueue_inputs

HELP = """\
Run the pipeline's workers. Without --burst they serve until SIGTERM/SIGINT: the first signal
stops claiming and lets in-flight jobs finish within workers.shutdown_grace_period, then cancels
them and puts them back in their queue (no attempt used); a second signal cancels at once.

With --burst they process until every selected queue has nothing ready, nothing running and no
retry pending (jobs deferred into the future by a producer do not count), then exit — for cron.
--input QUEUE=FILE enqueues a JSON Lines file first (checked whole first: all or nothing;
streamed, so memory does not grow with the file) as one batch run: --run NAME names it,
otherwise a run id is generated and printed; read its results afterwards with
`rrq-flow results PIPELINE --run ID`.

Before any worker starts, Redis is checked: one without AOF persistence is refused (a crash
would lose acknowledged jobs without notice) unless the pipeline says redis.persistence: none,
and a maxmemory-policy other than noeviction is warned about once.

exit codes: 0 every job finished in the run succeeded; 1 at least one was dead-lettered or
failed; 2 usage or configuration error (a Redis without AOF too); 3 Redis unreachable at start
or its data lost.

examples:
  rrq-flow run pipeline.yaml
  rrq-flow run pipeline.yaml --burst --input fetch=urls.jsonl
  rrq-flow run pipeline.yaml --queue resize --processes 4 --log-format json
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run",
        help="run the workers (until stopped, or --burst until drained)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_argument(p)
    p.add_argument(
        "--queue", action="append", metavar="Q", help="serve only this queue (repeatable)"
    )
    p.add_argument("--burst", action="store_true", help="exit once the queues are drained")
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="QUEUE=FILE",
        help="enqueue a JSON Lines file into QUEUE first (repeatable; FILE '-' is stdin)",
    )
    p.add_argument(
        "--run",
        metavar="NAME",
        type=parse_run_arg,
        help="batch-run id for the --input jobs (default: a generated one, printed)",
    )
    p.add_argument("--max-jobs", type=int, metavar="N", help="stop (cleanly) after N jobs")
    p.add_argument(
        "--max-duration",
        type=parse_duration_arg,
        metavar="DURATION",
        help="stop (cleanly) after this long, e.g. 10m",
    )
    p.add_argument(
        "--processes", type=int, metavar="N", help="worker processes (default: workers.processes)"
    )
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument(
        "--log-level",
        default=None,
        metavar="LEVEL",
        help="DEBUG, INFO, WARNING... (default INFO without the one line per finished job; "
        "give --log-level INFO to see those lines too)",
    )
    p.add_argument(
        "--progress",
        choices=("auto", "on", "off"),
        default="auto",
        help="live progress display (auto: when stderr is a terminal)",
    )
    p.add_argument("--json", action="store_true", help="print the end-of-run summary as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rrq_flow.embedded import redis_url_for
    from rrq_flow.errors import (
        ConfigError,
        EmbeddedRedisError,
        RedisSettingsError,
        UnknownQueueError,
    )
    from rrq_flow.logs import setup_logging
    from rrq_flow.worker.progress import progress_for

    setup_logging(args.log_format, args.log_level)
    config = load_pipeline(args.pipeline, check_imports=True)
    queues = args.queue or list(config.queues)
    try:
        for name in queues:
            config.queue(name)
    except UnknownQueueError as exc:
        error(str(exc))
        return EXIT_USAGE
    if args.max_jobs is not None and args.max_jobs < 1:
        error("--max-jobs must be at least 1")
        return EXIT_USAGE
    processes = config.workers.processes if args.processes is None else args.processes
    if processes < 1:
        error("--processes must be at least 1")
        return EXIT_USAGE
    inputs = check_inputs(args.input, config)  # the first pass, before connecting
    if args.run is not None and not inputs:
        error("--run names the batch run of the --input jobs: give --input QUEUE=FILE too")
        return EXIT_USAGE
    if inputs and args.run is None:
        from rrq_flow.runs import new_run_id

        args.run = new_run_id()
    try:
        with redis_url_for(config) as url:
            # Authentication, permissions, TLS: one clear line and exit 3 before anything
            # starts (a progress display or N worker processes would each fail on their own).
            open_sync_client(config, url).close()
            _check_server(config, url)
            if inputs:
                _enqueue_inputs(config, url, inputs, args.run)
            progress = progress_for(args.progress, config, url, queues, burst=args.burst)
            if processes == 1:
                code, stats, wall, reason = _run_in_process(args, config, url, queues, progress)
            else:
                from rrq_flow.supervisor import Supervisor

                sup = Supervisor(
                    config,
                    url=url,
                    processes=processes,
                    queues=args.queue,
                    burst=args.burst,
                    max_jobs=args.max_jobs,
                    max_duration=args.max_duration,
                    log_format=args.log_format,
                    log_level=args.log_level,
                    progress=progress,
                )
                code = sup.run()
                stats, wall, reason = sup.stats, sup.wall_time, sup.stop_reason
    except EmbeddedRedisError as exc:
        error(str(exc))
        return EXIT_REDIS
    except RedisSettingsError as exc:
        error(str(exc))
        return EXIT_USAGE
    except ConfigError as exc:
        for problem in exc.problems:
            detail(problem)
        return EXIT_USAGE
    if stats is not None and (args.burst or stats.finished):
        _print_summary(args, stats, wall, reason, code)
    return code


def _check_server(config: Any, url: str) -> None:
    """Refuse a Redis without AOF (unless redis.persistence: none); warn about eviction once.

    Also the first contact with Redis: one that cannot be reached is reported here at once.
    """
    import logging

    import redis

    from rrq_flow.client.sync_client import SyncClient
    from rrq_flow.server_checks import judge, read_info

    client = SyncClient(config, url=url, fail_fast=True)
    try:
        info = read_info(client.redis)
    except (redis.exceptions.RedisError, OSError) as exc:
        error(redis_failure(exc, url))
        raise ExitWith(EXIT_REDIS) from None
    finally:
        client.close()
    verdict = judge(config, url, info)
    for warning in verdict.warnings:
        logging.getLogger("rrq_flow.run").warning("%s", warning)
    if verdict.refusal is not None:
        error(verdict.refusal)
        raise ExitWith(EXIT_USAGE)


def _enqueue_inputs(config: Any, url: str, inputs: list[InputFile], run: str | None) -> None:
    from rrq_flow.client.sync_client import SyncClient

    client = SyncClient(config, url=url)
    try:
        enqueue_inputs(client, inputs, run)
    except (*redis_errors(), *redis_refusals()) as exc:
        error(redis_refusal(exc) if isinstance(exc, redis_refusals()) else redis_failure(exc, url))
        done = ", ".join(f"{f.enqueued} of {f.jobs} from {f.path}" for f in inputs)
        detail(f"enqueued before the failure: {done} (run {run})")
        raise ExitWith(EXIT_REDIS) from None
    finally:
        client.close()


def _run_in_process(
    args: argparse.Namespace, config: Any, url: str, queues: list[str], progress: Any
) -> tuple[int, Any, float, str]:
    import trio

    from rrq_flow.worker.runtime import run_worker_loop
    from rrq_flow.worker.worker import Worker

    worker = Worker(
        config,
        url=url,
        queues=queues,
        burst=args.burst,
        max_jobs=args.max_jobs,
        max_duration=args.max_duration,
    )

    async def main() -> int:
        if progress is None:
            return await worker.run()
        async with trio.open_nursery() as nursery:
            await nursery.start(progress.run)
            try:
                code = await worker.run()
            finally:
                progress.finish()
        return code

    code = run_worker_loop(main)
    return code, worker.stats, worker.wall_time, worker.stop_reason or "stopped"


def _print_summary(
    args: argparse.Namespace, stats: Any, wall: float, reason: str, code: int
) -> None:
    from rrq_flow.worker.summary import render_summary

    if args.json:
        queues = {name: t.as_dict() for name, t in stats.queues.items()}
        print_json(
            {
                "exit_code": code,
                "reason": reason,
                "run": args.run,
                "wall_seconds": round(wall, 3),
                "finished": stats.finished,
                "jobs_per_second": round(stats.finished / wall, 1) if wall > 0 else 0.0,
                "queues": queues,
            }
        )
    else:
        print(render_summary(stats, wall, reason))
        if args.run is not None:
            print(f"run {args.run}: rrq-flow results {args.pipeline} --run {args.run}")
