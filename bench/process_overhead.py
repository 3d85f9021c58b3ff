"""Per-job overhead of ``executor: process`` (issue 16, target 8: ≤ 1 ms, no-op handler, c=2).

Pool warm (the pool is started, and ``--warm`` calls are made and dropped, first):

- **executor round trip**: the queue's real runner (``rrq_flow.worker.executor.make_runner`` with
  ``executor: process``, concurrency C, its ``ProcessChannel`` serving) called back to back by C
  concurrent tasks with a no-op ``def`` handler. Per call: the time from the call to its return
  (p50, mean, p99) — what the process path adds to a job over running the handler in the loop
  (argument and result hand-off, the "started" message, context and logger set-up, result
  encoding) — ``C / calls per second``, the time a slot is held per job, and the CPU (worker
  and pool processes) per call, which a busy machine does not inflate as it does wall time.
- **end to end** (``--e2e N``): N jobs through an in-process burst ``Worker`` on a private
  redis-server, the same queue with ``executor: process`` and, for comparison, ``executor:
  async`` on an ``async def`` no-op; per job ``C / rate`` for each and the difference (the claim,
  acknowledgement and Redis costs, which both have, cancel out).

    .venv/bin/python bench/process_overhead.py                # 3 reps of 3,000 calls, c=2
    .venv/bin/python bench/process_overhead.py --e2e 3000     # and the end-to-end figure
    .venv/bin/python bench/process_overhead.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
# The pool's processes import the handler by name: this folder must be on their path too.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(HERE), str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
)

import bench_handlers  # noqa: E402

from rrq_flow.config.model import QueueConfig  # noqa: E402
from rrq_flow.worker.context import JobContext  # noqa: E402
from rrq_flow.worker.executor import make_runner, start_process_pool  # noqa: E402
from rrq_flow.worker.process_job import ProcessChannel  # noqa: E402


def cpu_s() -> float:
    """CPU seconds (user + sys) of this process and of its live children (the pool)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    total = ru.ru_utime + ru.ru_stime
    me = str(os.getpid())
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def executor_round_trip(n: int, concurrency: int, warm: int) -> dict[str, float]:
    cfg = QueueConfig(
        name="q", handler="bench_handlers:noop", concurrency=concurrency, executor="process"
    )
    channel = ProcessChannel()
    _, run = make_runner(cfg, bench_handlers.noop, channel)
    import logging

    logger = logging.getLogger("rrq_flow.job")
    times: list[float] = []

    async def one(i: int, keep: bool) -> None:
        ctx = JobContext(
            id=f"j{i}",
            queue="q",
            attempt=1,
            max_attempts=3,
            epoch=1,
            enqueued_at=time.time(),
            deadline=time.time() + 60,
            worker_id="w",
            parent=None,
            logger=logger,
        )
        t = time.perf_counter()
        result = await run([i], {}, ctx, lambda: None)
        if keep:
            times.append(time.perf_counter() - t)
        assert result == i, result

    async def loop(start: int, count: int, keep: bool) -> None:
        for i in range(start, start + count):
            await one(i, keep)

    async with trio.open_nursery() as nursery:
        await channel.open()
        nursery.start_soon(channel.serve)
        await start_process_pool(concurrency)
        async with trio.open_nursery() as warmers:
            for k in range(concurrency):
                warmers.start_soon(loop, k * warm, warm, False)
        per = n // concurrency
        c0, t0 = cpu_s(), time.perf_counter()
        async with trio.open_nursery() as workers:
            for k in range(concurrency):
                workers.start_soon(loop, 10**7 + k * per, per, True)
        wall, cpu = time.perf_counter() - t0, cpu_s() - c0
        nursery.cancel_scope.cancel()
    calls = per * concurrency
    return {
        "calls": calls,
        "call_p50_ms": pct(times, 0.5) * 1e3,
        "call_mean_ms": statistics.fmean(times) * 1e3,
        "call_p99_ms": pct(times, 0.99) * 1e3,
        "slot_ms_per_job": wall * concurrency / calls * 1e3,
        # Worker + pool CPU per call: on a loaded machine the wall figures above include
        # waiting for a core at every hand-off; this one does not.
        "cpu_ms_per_call": cpu / calls * 1e3,
    }


def end_to_end(n: int, concurrency: int) -> dict[str, float]:
    from rrq_flow.client._core import JobSpec
    from rrq_flow.config import load
    from rrq_flow.redis_server import start_redis_server
    from rrq_flow.worker.worker import Worker

    base = Path(tempfile.mkdtemp(prefix="rrqproc-"))
    server = start_redis_server(base / "r", unix_socket=base / "r.sock", appendonly=False)
    out: dict[str, float] = {}
    try:
        for kind, handler in (("process", "noop"), ("async", "async_noop")):
            path = base / f"{kind}.yaml"
            path.write_text(
                f"version: 1\npipeline: po\nredis: {{url: '{server.url}', persistence: none}}\n"
                f"queues:\n  q: {{handler: 'bench_handlers:{handler}', "
                f"concurrency: {concurrency}, executor: {kind}}}\n"
            )
            config = load(path)
            with config.sync_client() as client:
                client.redis.flushall()
                client.enqueue_many("q", [JobSpec(args=(i,)) for i in range(n)])

            async def burst(config: Any = config) -> tuple[int, float]:
                worker = Worker(config, url=server.url, burst=True, handle_signals=False)
                t0 = time.perf_counter()
                code = await worker.run()
                return code, time.perf_counter() - t0

            code, wall = trio.run(burst)
            if code != 0:
                raise RuntimeError(f"{kind} worker exited {code}")
            out[f"{kind}_slot_ms_per_job"] = wall * concurrency / n * 1e3
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    out["process_minus_async_ms"] = out["process_slot_ms_per_job"] - out["async_slot_ms_per_job"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="timed calls per repetition")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--warm", type=int, default=200, help="untimed calls per slot first")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--e2e", type=int, default=0, help="also N jobs end to end (0: not)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    runs = []
    for rep in range(a.reps):
        r: dict[str, Any] = trio.run(executor_round_trip, a.n, a.concurrency, a.warm)
        if a.e2e:
            r.update(end_to_end(a.e2e, a.concurrency))
        print(f"[rep {rep}] " + json.dumps({k: round(v, 3) for k, v in r.items()}), file=sys.stderr)
        runs.append(r)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    if a.json:
        print(json.dumps({"runs": runs, "median": med}, indent=1))
        return 0
    print(f"executor: process, no-op handler, c={a.concurrency}, medians of {a.reps}:")
    for k, v in med.items():
        print(f"  {k:28s} {v:10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
