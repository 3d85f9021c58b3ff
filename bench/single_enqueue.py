"""One job per call: rrq-flow's ``SyncClient.enqueue`` against BullMQ's ``Queue.add``, side by side.

Issue 16's target 6b ("one ``enqueue`` per call at least as fast as ``Queue.add``"). Each system's
peerbench adapter enqueues N jobs one call at a time, each call awaited before the next (the
adapters' ``--spacing-ms`` mode with a spacing too small to ever sleep), into one private
redis-server (no persistence), interleaved over ``--reps`` repetitions (the order rotates). Per
system, the medians of: calls per second as the adapter times them (its connection is made
before the timed loop), and Redis CPU (``INFO cpu``) and script time (``INFO commandstats``, the
top-level calls) per job.

    .venv/bin/python bench/single_enqueue.py                    # rrqflow + bullmq, N=5000, 3 reps
    .venv/bin/python bench/single_enqueue.py --n 2000 --reps 1 --md out.md

Needs the peerbench venvs (``/work/shared/bench-peers/setup.sh``) for BullMQ; rrq-flow runs from
``$RRQFLOW_VENV`` (default: the venv running this script).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import redis
from cost_per_job import measured_enqueue, phase, session  # bench/, beside it

SPACING_MS = "0.000001"  # never sleeps: each call starts when the previous one has returned


def one(name: str, cmd: list[str], r: redis.Redis, env: dict[str, str], n: int) -> dict[str, Any]:
    s0, s1, stdout = measured_enqueue(r, cmd, name, env, n, "--spacing-ms", SPACING_MS)
    reply = json.loads(stdout.strip().splitlines()[-1])
    cost = phase(s0, s1, n)
    return {
        "calls_per_s": n / float(reply["seconds"]),
        "us_per_call": float(reply["seconds"]) * 1e6 / n,
        "redis_cpu_us": cost["redis_cpu_us"],
        "commandstats_us": cost["commandstats_us"],
        "method": reply.get("method", ""),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--systems", default="rrqflow bullmq", help="adapter names (peer_<name>)")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--md", help="write the markdown table here")
    args = ap.parse_args()
    systems = args.systems.split()
    with session(systems, "rrqsingle-") as ses:
        r = ses.r
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
        for rep, s in ses.interleaved(systems, args.reps):
            res = one(next(iter(ses.variants[s])), ses.cmds[s], r, ses.env, args.n)
            print(f"[rep {rep}] {s}: {res}", file=sys.stderr, flush=True)
            runs[s].append(res)
        lines = [
            f"N = {args.n} jobs, one call at a time, medians of {args.reps} interleaved "
            f"repetitions; redis-server {r.info('server')['redis_version']}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
            "",
            "| system | method | calls/s | µs per call | Redis CPU µs/job | commandstats µs/job |",
            "|---|---|---|---|---|---|",
        ]
        for s in systems:
            med = {
                k: statistics.median(x[k] for x in runs[s])
                for k in ("calls_per_s", "us_per_call", "redis_cpu_us", "commandstats_us")
            }
            lines.append(
                f"| {s} | {runs[s][0]['method']} | {med['calls_per_s']:,.0f} | "
                f"{med['us_per_call']:.0f} | {med['redis_cpu_us']:.1f} | "
                f"{med['commandstats_us']:.1f} |"
            )
        md = "\n".join(lines) + "\n"
        print(md)
        if args.md:
            Path(args.md).write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
