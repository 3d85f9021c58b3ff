"""``rrq-flow enqueue``: add one job, or a JSON Lines file of jobs (all or nothing)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from rrq_flow.cli._common import (
    EXIT_OK,
    EXIT_REDIS,
    EXIT_USAGE,
    ExitWith,
    add_json_flag,
    add_pipeline_argument,
    error,
    load_pipeline,
    open_jobs_file,
    open_sync_client,
    parse_duration_arg,
    parse_run_arg,
    print_json,
    redis_errors,
    redis_refusal,
    redis_refusals,
)

HELP = """\
Enqueue one job (positional args as a JSON array, keyword args as a JSON object), or many from a
JSON Lines file: one job per line, either a JSON array of args or an object with any of args /
kwargs / job_id / unique_key / defer / priority / run (docs/configuration.md, "JSON Lines input").
Every line is checked first; a bad line is reported with its number and nothing from the file is
enqueued. Then the file is read again and enqueued in batches (its size does not matter); the job
ids are printed one per line, each batch's once it is in. Arguments may nest at most 100 levels
deep and must be valid UTF-8 text (exit 2 otherwise). --run NAME puts the jobs (those whose line
names no run) and everything descending from them into a batch run: see `rrq-flow runs` and
`results`.

examples:
  rrq-flow enqueue pipeline.yaml fetch --args '["https://example.com/a.png"]'
  rrq-flow enqueue pipeline.yaml fetch --kwargs '{"url": "..."}' --unique-key a.png --defer 10s
  rrq-flow enqueue pipeline.yaml fetch --jsonl urls.jsonl --run nightly-2026-11-30
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "enqueue",
        help="add jobs to a queue",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_argument(p)
    p.add_argument("queue", metavar="QUEUE", help="the queue (stage) to add the jobs to")
    p.add_argument("--args", metavar="JSON_ARRAY", help="positional arguments, e.g. '[1, \"a\"]'")
    p.add_argument("--kwargs", metavar="JSON_OBJECT", help="keyword arguments, e.g. '{\"n\": 1}'")
    p.add_argument("--job-id", metavar="ID", help="your own id: enqueueing it twice makes one job")
    p.add_argument(
        "--unique-key", metavar="KEY", help="no second unfinished job with this key (returns it)"
    )
    p.add_argument(
        "--defer", metavar="DURATION", type=parse_duration_arg, help="start no sooner than this"
    )
    p.add_argument(
        "--priority",
        metavar="P",
        type=int,
        default=0,
        help="integer, higher is claimed first (default 0); with --jsonl: for lines without one",
    )
    p.add_argument(
        "--jsonl", metavar="FILE", help="read jobs from a JSON Lines file ('-' for stdin)"
    )
    p.add_argument(
        "--run", metavar="NAME", type=parse_run_arg, help="batch-run id the jobs belong to"
    )
    add_json_flag(p)
    p.set_defaults(handler=run)


def _json_arg(text: str | None, kind: type, flag: str) -> Any:
    from rrq_flow.client.payload import JsonLimitError, loads

    if text is None:
        return kind()
    try:
        value = loads(text)
    except json.JSONDecodeError as exc:
        error(f"{flag}: not JSON: {exc.msg} (column {exc.colno})")
        raise ExitWith(EXIT_USAGE) from None
    except JsonLimitError as exc:
        error(f"{flag}: {exc}")
        raise ExitWith(EXIT_USAGE) from None
    if not isinstance(value, kind):
        error(f"{flag}: must be a JSON {'array' if kind is list else 'object'}")
        raise ExitWith(EXIT_USAGE)
    return value


def run(args: argparse.Namespace) -> int:
    from rrq_flow.errors import UnknownQueueError

    config = load_pipeline(args.pipeline)
    try:
        config.queue(args.queue)
    except UnknownQueueError as exc:
        error(str(exc))
        return EXIT_USAGE
    if args.jsonl is not None:
        return _enqueue_jsonl(args, config)
    return _enqueue_one(args, config)


def _enqueue_one(args: argparse.Namespace, config: Any) -> int:
    """One job from --args / --kwargs / --job-id / --unique-key / --defer / --priority."""
    from rrq_flow.client._core import ClientCore, JobSpec
    from rrq_flow.errors import PayloadError
    from rrq_flow.protocol.ids import job_id_problem

    if args.job_id is not None and (problem := job_id_problem(args.job_id)) is not None:
        error(f"--job-id: {problem}")
        return EXIT_USAGE
    job_args = _json_arg(args.args, list, "--args")
    job_kwargs = _json_arg(args.kwargs, dict, "--kwargs")
    spec = JobSpec(
        tuple(job_args),
        job_kwargs,
        args.job_id,
        args.unique_key,
        args.defer,
        priority=args.priority,
    )
    try:  # checked before connecting: bad input is exit 2 whether or not Redis is up
        ClientCore(config).build_job(args.queue, spec)
    except (PayloadError, ValueError) as exc:
        error(str(exc))
        return EXIT_USAGE
    client = open_sync_client(config)
    try:
        started = time.perf_counter()
        ids = client.enqueue_many(args.queue, [spec], run=args.run)
        elapsed = time.perf_counter() - started
    except (PayloadError, ValueError) as exc:
        error(str(exc))
        return EXIT_USAGE
    except redis_refusals() as exc:
        error(redis_refusal(exc))
        return EXIT_REDIS
    except redis_errors() as exc:
        error(
            f"Redis failed while enqueueing: {exc}. The job may be in all the same: give it a "
            "--job-id to make a re-run enqueue it once"
        )
        return EXIT_REDIS
    finally:
        client.close()
    return _report(args, ids, len(ids), elapsed)


def _enqueue_jsonl(args: argparse.Namespace, config: Any) -> int:
    """A JSON Lines file, streamed (rrq_flow.cli.input_stream): every line is checked in a first
    pass (a bad line: exit 2, nothing enqueued), then the file is read again and enqueued in
    batches, each batch's ids printed once it is in. Memory does not grow with the file, except
    that --json keeps the ids for its one JSON object."""
    from rrq_flow.cli.input_stream import check_file, enqueue_file

    if any(x is not None for x in (args.args, args.kwargs, args.job_id, args.unique_key)):
        error("--jsonl reads every job from the file: drop --args/--kwargs/--job-id/--unique-key")
        return EXIT_USAGE
    try:
        stream = open_jobs_file(args.jsonl)
    except OSError as exc:
        error(f"cannot read {args.jsonl}: {exc.strerror}")
        return EXIT_USAGE
    with stream:
        checked = check_file(
            stream,
            config,
            args.queue,
            path=args.jsonl,
            label=args.jsonl,
            priority=args.priority,
            run=args.run,
        )
    ids: list[str] = []

    def took(batch: list[str]) -> None:
        if args.json:
            ids.extend(batch)
        else:
            sys.stdout.write("".join(f"{i}\n" for i in batch))
            sys.stdout.flush()

    try:
        client = open_sync_client(config)
    except BaseException:
        checked.close()
        raise
    try:
        started = time.perf_counter()
        enqueue_file(client, checked, args.run, took)
        elapsed = time.perf_counter() - started
    except (*redis_errors(), *redis_refusals()) as exc:
        refused = isinstance(exc, redis_refusals())
        error(
            f"{redis_refusal(exc) if refused else f'Redis failed while enqueueing: {exc}'}. "
            f"{checked.enqueued} of the file's {checked.jobs} jobs were enqueued before the "
            "failure (the batch that failed may be in too); give the lines job_id values to "
            "make a re-run enqueue each job once"
        )
        return EXIT_REDIS
    finally:
        client.close()
    return _report(args, ids, checked.enqueued, elapsed)


def _report(args: argparse.Namespace, ids: list[str], count: int, elapsed: float) -> int:
    """--json: one object with every id. Else the ids, one per line (a --jsonl file's were
    printed batch by batch already: then a line on stderr says how many and how fast)."""
    if args.json:
        summary = {"queue": args.queue, "run": args.run, "count": count}
        print_json({**summary, "seconds": round(elapsed, 4), "ids": ids})
    elif args.jsonl is None:
        sys.stdout.write("".join(f"{i}\n" for i in ids))
    else:
        rate = count / elapsed if elapsed > 0 else 0
        print(
            f"enqueued {count} job(s) into {args.queue} in {elapsed:.2f}s ({rate:,.0f}/s)",
            file=sys.stderr,
        )
    return EXIT_OK
