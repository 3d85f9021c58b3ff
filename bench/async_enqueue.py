#!/usr/bin/env python3
"""One job per call from the async ``Client``, under trio and under asyncio, tree against tree.

Each tree (a directory holding an ``rrq_flow`` package, e.g. a ``git worktree`` of another
commit) runs in a fresh process with ``PYTHONPATH=TREE``: it opens a ``Client``, enqueues one job
(connecting, loading the library), then N jobs one ``await client.enqueue(...)`` after the other
(``--tasks T``: from T concurrent tasks, N/T each), under ``trio.run`` and then under
``asyncio.run``, into one private redis-server (no persistence), emptied before each run.
Trees alternate over ``--reps`` rounds; printed: the median wall time per call (all tasks
together) of each tree and loop.

    .venv/bin/python bench/async_enqueue.py                       # this tree, N=3000, 5 reps
    .venv/bin/python bench/async_enqueue.py --trees /tmp/old . --n 2000 --reps 3 --tasks 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from rrq_flow.redis_server import start_redis_server  # noqa: E402

CHILD = """
import asyncio, json, sys, time
import trio
from rrq_flow.client.async_client import Client
from rrq_flow.config.model import PipelineConfig, QueueConfig, RedisSettings

url, n, tasks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg = PipelineConfig(
    pipeline="bench",
    queues={"bench": QueueConfig(name="bench", handler="bench_handlers:noop")},
    redis=RedisSettings(url=url),
)

async def produce(client: Client, calls: int) -> None:
    for _ in range(calls):
        await client.enqueue("bench", time.time(), 0)

async def with_trio() -> float:
    async with Client(cfg, url=url) as client:
        await client.enqueue("bench", 0.0, 0)
        t = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(tasks):
                nursery.start_soon(produce, client, n // tasks)
        return (time.perf_counter() - t) / n * 1e6

async def with_asyncio() -> float:
    async with Client(cfg, url=url) as client:
        await client.enqueue("bench", 0.0, 0)
        t = time.perf_counter()
        await asyncio.gather(*(produce(client, n // tasks) for _ in range(tasks)))
        return (time.perf_counter() - t) / n * 1e6

print(json.dumps({"trio": trio.run(with_trio), "asyncio": asyncio.run(with_asyncio())}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trees", nargs="+", default=[str(HERE.parent)])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=1, help="concurrent producer tasks (N split)")
    args = ap.parse_args()
    trees = [str(Path(t).resolve()) for t in args.trees]
    with tempfile.TemporaryDirectory(prefix="rrqasync-") as tmp:
        server = start_redis_server(Path(tmp), appendonly=False)
        try:
            r = redis.Redis(port=server.port)
            runs: dict[str, list[dict[str, float]]] = {t: [] for t in trees}
            for rep in range(args.reps):
                for tree in trees if rep % 2 == 0 else trees[::-1]:
                    r.flushall()
                    out = subprocess.run(
                        [sys.executable, "-c", CHILD, server.url, str(args.n), str(args.tasks)],
                        env={"PYTHONPATH": tree, "PATH": "/usr/bin:/bin"},
                        cwd=tmp,
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout
                    runs[tree].append(json.loads(out.strip().splitlines()[-1]))
                    print(f"[rep {rep}] {tree}: {runs[tree][-1]}", file=sys.stderr, flush=True)
        finally:
            server.stop()
    print(f"N = {args.n} calls per run from {args.tasks} task(s), medians of {args.reps} runs\n")
    print("| tree | trio: wall µs per call | asyncio: wall µs per call |\n|---|---|---|")
    for tree, results in runs.items():
        trio_us = statistics.median(x["trio"] for x in results)
        asyncio_us = statistics.median(x["asyncio"] for x in results)
        print(f"| {tree} | {trio_us:.0f} | {asyncio_us:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
