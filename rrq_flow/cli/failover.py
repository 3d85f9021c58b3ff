"""``rrq-flow failover``: a planned Sentinel failover that loses no acknowledged write."""

from __future__ import annotations

import argparse
from typing import Any

from rrq_flow.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_REDIS,
    EXIT_USAGE,
    ExitWith,
    add_json_flag,
    add_pipeline_argument,
    error,
    load_pipeline,
    parse_duration_arg,
    print_json,
    redis_errors,
    redis_failure,
)

FAILOVER_HELP = """\
Move the pipeline's Redis master to a replica through Redis Sentinel (redis.sentinel) without
losing an acknowledged write: writes are paused on the master (CLIENT PAUSE WRITE) until a
replica has all of them, then SENTINEL FAILOVER promotes it, the old master is made its
replica and writes resume. Workers and producers follow by themselves; the writes held by the
pause are retried on the new master. A plain `SENTINEL FAILOVER` does not pause the old master
and can lose its last second of writes (docs/scaling.md). Needs a Redis user allowed CLIENT,
INFO and REPLICAOF, and SENTINEL FAILOVER on the sentinels.

examples:
  rrq-flow failover pipeline.yaml
  rrq-flow failover pipeline.yaml --timeout 1m --json
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "failover",
        help="planned Sentinel failover without losing acknowledged writes",
        description=FAILOVER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_argument(p)
    p.add_argument(
        "--timeout",
        metavar="DURATION",
        type=parse_duration_arg,
        default=30.0,
        help="how long to wait for the replica to catch up and for the switch (default 30s)",
    )
    add_json_flag(p)
    p.set_defaults(handler=run_failover)


def run_failover(args: argparse.Namespace) -> int:
    from rrq_flow.connection import url_for
    from rrq_flow.planned_failover import FailoverError, planned_failover

    config = load_pipeline(args.pipeline)
    settings = config.redis
    if settings.sentinel is None:
        error(f"{args.pipeline}: rrq-flow failover needs redis.sentinel (a Sentinel master)")
        raise ExitWith(EXIT_USAGE)
    url = str(url_for(settings) or "")
    try:
        result = planned_failover(url, settings, timeout=args.timeout)
    except FailoverError as exc:
        error(str(exc))
        return EXIT_FAILURE
    except redis_errors() as exc:
        error(redis_failure(exc, url))
        return EXIT_REDIS
    if args.json:
        print_json(
            {
                "old_master": result.old_master,
                "new_master": result.new_master,
                "writes_paused_seconds": result.paused_seconds,
            }
        )
    else:
        print(
            f"master moved from {result.old_master} to {result.new_master}; "
            f"writes were held for {result.paused_seconds:.2f}s"
        )
    return EXIT_OK
