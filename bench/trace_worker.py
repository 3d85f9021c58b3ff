#!/usr/bin/env python3
# ruff: noqa: RUF002
"""Where does a job's time go? A diagnostic companion of bench.py (nothing here is a figure
of the benchmark itself).

Runs one rrq-flow Worker *in this process* (the same Worker class `rrq-flow run` uses), with
timestamps recorded around its Redis calls by wrapping them at runtime (rrq_flow is not
modified), against a private redis-server; the producer is a separate process.

  pickup   an idle worker; jobs enqueued one at a time every 5 ms (as bench.py "latency").
           Splits each job's enqueue->start latency into: producer t0 -> the idle wait's
           pipeline (BLPOP + claim.lua) returns in the worker, then reply -> handler start.
  waves    2,000 × trio.sleep(0.05) at concurrency 50 (as bench.py "sleep"). For each wave of
           50: last job end of the previous wave -> claim sent -> claim reply -> first start of
           the wave, plus the complete calls in that gap.

    python bench/trace_worker.py pickup [--n 500]
    python bench/trace_worker.py waves
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EVENTS: list[tuple[str, float, float]] = []  # (what, t_start, t_end) in time.time()
STARTS: list[tuple[float, float, float]] = []  # (t0, start, end) per job


def instrument() -> None:
    import coredis

    from rrq_flow.worker import redis_calls

    orig_blpop = coredis.Redis.blpop

    async def blpop(self, *a, **kw):  # type: ignore[no-untyped-def]
        t = time.time()
        r = await orig_blpop(self, *a, **kw)
        EVENTS.append(("blpop" if r else "blpop-timeout", t, time.time()))
        return r

    coredis.Redis.blpop = blpop  # type: ignore[method-assign]
    orig_once = redis_calls.RedisCaller.once

    async def once(self, call):  # type: ignore[no-untyped-def]
        t = time.time()
        r = await orig_once(self, call)
        EVENTS.append((call.script.name, t, time.time()))
        return r

    redis_calls.RedisCaller.once = once  # type: ignore[method-assign]

    # Claims and acknowledgements go through each runner's own connection (FastCalls), which
    # falls back to RedisCaller.once only after an error: time both (never the same call twice).
    from rrq_flow.worker import fast_calls

    orig_fast = fast_calls.FastCalls.once

    async def fast_once(self, call, on_unknown=None):  # type: ignore[no-untyped-def]
        t = time.time()
        n = len(EVENTS)
        r = await orig_fast(self, call, on_unknown)
        if len(EVENTS) == n:  # not already timed by the fallback
            EVENTS.append((call.script.name, t, time.time()))
        return r

    fast_calls.FastCalls.once = fast_once  # type: ignore[method-assign]

    from rrq_flow.worker import queue_runner

    orig_wait = queue_runner.QueueRunner._wait_then_claim

    async def wait_then_claim(self, call, timeout):  # type: ignore[no-untyped-def]
        t = time.time()
        r = await orig_wait(self, call, timeout)
        if r is not None and r.jobs:
            EVENTS.append(("wakeclaim", t, time.time()))
        return r

    queue_runner.QueueRunner._wait_then_claim = wait_then_claim  # type: ignore[method-assign]


async def handler(t0: float, sleep_s: float = 0.0) -> int:
    import trio

    start = time.time()
    if sleep_s:
        await trio.sleep(sleep_s)
    STARTS.append((t0, start, time.time()))
    return 1


PRODUCER = textwrap.dedent("""
    import sys, time
    from rrq_flow.config import load
    from rrq_flow.client.sync_client import SyncClient
    cfg, url, n, spacing, sleep_s, mode = sys.argv[1:7]
    n, spacing, sleep_s = int(n), float(spacing) / 1000, float(sleep_s)
    c = SyncClient(load(cfg), url=url)
    c.redis.ping()
    if mode == "bulk":
        c.enqueue_many("bench", [(time.time(), sleep_s) for _ in range(n)])
    else:
        start = time.perf_counter()
        for i in range(n):
            d = start + i * spacing - time.perf_counter()
            if d > 0:
                time.sleep(d)
            c.enqueue("bench", time.time(), sleep_s)
    c.close()
""")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("mode", choices=("pickup", "waves"))
    p.add_argument("--n", type=int, default=None)
    a = p.parse_args()

    import trio

    from rrq_flow.config import load
    from rrq_flow.redis_server import start_redis_server
    from rrq_flow.worker.worker import Worker

    instrument()
    tmp = Path(tempfile.mkdtemp(prefix="rrqflow-trace-"))
    server = start_redis_server(tmp / "redis", appendonly=False)
    try:
        conc = 10 if a.mode == "pickup" else 50
        cfg = tmp / "trace.yaml"
        cfg.write_text(
            f"version: 1\npipeline: trace\nredis:\n  url: {server.url}\nqueues:\n"
            f"  bench:\n    handler: bench_handlers:job\n    concurrency: {conc}\n"
        )
        config = load(cfg)
        env = dict(os.environ, PYTHONPATH=str(HERE))
        prod = [sys.executable, "-c", PRODUCER, str(cfg), server.url]
        if a.mode == "pickup":
            n = a.n or 500
            worker = Worker(
                config,
                url=server.url,
                handlers={"bench": handler},
                handle_signals=False,
                serve_metrics=False,
            )

            async def go() -> None:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(worker.run)
                    await trio.sleep(0.5)
                    await trio.to_thread.run_sync(
                        lambda: subprocess.run(
                            [*prod, str(n), "5", "0", "spaced"], env=env, check=True
                        )
                    )
                    await trio.sleep(0.3)
                    worker.request_stop("done")

            trio.run(go)
            pickup_report(n)
        else:
            n = a.n or 2000
            subprocess.run([*prod, str(n), "0", "0.05", "bulk"], env=env, check=True)
            worker = Worker(
                config,
                url=server.url,
                handlers={"bench": handler},
                burst=True,
                handle_signals=False,
                serve_metrics=False,
            )
            trio.run(worker.run)
            waves_report(conc)
    finally:
        server.stop()


def q(xs: list[float], f: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(f * (len(xs) - 1) + 0.5))]


def show(name: str, xs: list[float]) -> None:
    xs = [x * 1000 for x in xs]
    print(
        f"  {name:<48} p50 {q(xs, 0.5):6.3f}  p90 {q(xs, 0.9):6.3f}  "
        f"mean {statistics.fmean(xs):6.3f} ms"
    )


def pickup_report(n: int) -> None:
    jobs = sorted(STARTS)
    waits = sorted(e for e in EVENTS if e[0] == "wakeclaim")
    parts: dict[str, list[float]] = {k: [] for k in ("total", "a", "d")}
    for t0, start, _ in jobs:
        woke = [e for e in waits if t0 <= e[2] <= start]
        if not woke:
            continue
        w = woke[-1]
        parts["total"].append(start - t0)
        parts["a"].append(w[2] - t0)
        parts["d"].append(start - w[2])
    print(f"pickup: {len(parts['total'])}/{len(jobs)} jobs started by an idle wait's claim")
    show("enqueue->start (total)", parts["total"])
    show("a. producer t0 -> BLPOP + claim pipeline returns", parts["a"])
    show("d. claim reply -> handler starts", parts["d"])


def waves_report(conc: int) -> None:
    jobs = sorted(STARTS, key=lambda r: r[1])
    waves = [jobs[i : i + conc] for i in range(0, len(jobs), conc)]
    claims = sorted(e for e in EVENTS if e[0] == "claim")
    completes = sorted(e for e in EVENTS if e[0] == "complete")
    gap, g_a, g_b, g_c, spread, dur, ncompl = [], [], [], [], [], [], []
    for prev, cur in itertools.pairwise(waves):
        last_end = max(r[2] for r in prev)
        first_start = min(r[1] for r in cur)
        gap.append(first_start - last_end)
        spread.append(max(r[1] for r in cur) - first_start)
        ncompl.append(sum(1 for e in completes if last_end - 0.06 <= e[1] <= first_start))
        dur += [r[2] - r[1] for r in cur]
        # With jobs claimed ahead (the default for jobs under 100 ms) the next wave is usually
        # buffered already: a claim inside the gap is the exception, timed when there is one.
        cl = [e for e in claims if e[1] >= last_end - 0.002 and e[2] <= first_start]
        if cl:
            c = cl[0]
            g_a.append(c[1] - last_end)
            g_b.append(c[2] - c[1])
            g_c.append(first_start - c[2])
    span = max(r[2] for r in jobs) - min(r[1] for r in jobs)
    print(
        f"waves: {len(waves)} waves of {conc}; span {span:.3f}s; claims {len(claims)}, "
        f"completes {len(completes)}"
    )
    show("job duration (sleep 50 ms + overshoot)", dur)
    show("gap: last end of wave k -> first start of k+1", gap)
    print(f"  gaps with a claim inside: {len(g_a)} of {len(gap)}")
    if g_a:
        show("  a. last end -> claim call starts", g_a)
        show("  b. claim call round trip", g_b)
        show("  c. claim returned -> first start", g_c)
    show("spread of starts within a wave", spread)
    first = min(r[1] for r in jobs)
    show(
        "start of wave k - k x 50 ms (drift)",
        [w[0][1] - first - i * 0.05 for i, w in enumerate(waves)],
    )
    print(f"  complete calls overlapping a gap: median {statistics.median(ncompl):.0f}")


if __name__ == "__main__":
    main()
