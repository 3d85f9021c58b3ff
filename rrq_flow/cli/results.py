"""``rrq-flow results``: stream the results of a batch run's jobs, page by page."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rrq_flow.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    add_pipeline_argument,
    error,
    parse_run_arg,
)
from rrq_flow.cli.status import admin_session

HELP = """\
Print the jobs of one batch run in a queue (default: the pipeline's final stages, the queues
without `next`), in the order they were created, one JSON object per line:
{"id", "queue", "status", "result"} for a done job, "error" instead for a dead / failed /
cancelled one, status "expired" when its record is gone (result_ttl). It reads the run's index one
page at a time, so its memory does not grow with the run. --format json prints one JSON array.

examples:
  rrq-flow results pipeline.yaml --run 20261130-102400-3f9a1c
  rrq-flow results pipeline.yaml --run nightly --queue count --format json > counts.json
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "results",
        help="stream the results of a batch run",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_argument(p)
    p.add_argument("--run", required=True, metavar="RUN", type=parse_run_arg, help="the run id")
    p.add_argument("--queue", metavar="Q", help="this stage only (default: the final stages)")
    p.add_argument("--format", choices=("jsonl", "json"), default="jsonl")
    p.set_defaults(handler=run)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def run(args: argparse.Namespace) -> int:
    from rrq_flow.errors import RunNotFound

    out = sys.stdout
    with admin_session(args.pipeline) as admin:
        try:
            lines = admin.client.results(args.run, args.queue)
        except RunNotFound as exc:
            error(str(exc))
            return EXIT_FAILURE
        if args.format == "jsonl":
            for item in lines:
                out.write(_dumps(item) + "\n")
        else:
            out.write("[")
            for n, item in enumerate(lines):
                out.write(("\n" if n == 0 else ",\n") + _dumps(item))
            out.write("\n]\n")
    return EXIT_OK
