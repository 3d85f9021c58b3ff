"""Redis-side cost of one job's claim + completion, with and without flow control settings.

Less sensitive to a loaded machine than a throughput run: it measures the redis-server's own
CPU time (INFO cpu) for N jobs claimed 10 at a time and completed 10 at a time by this process,
on a private redis-server. Run it with PYTHONPATH pointing at the tree to measure; one JSON line.

    python bench/flow_script_cost.py [--n 20000] [--rate] [--cap]
"""

from __future__ import annotations

import argparse
import inspect
import json
import tempfile
import time
from pathlib import Path

import redis

from rrq_flow.protocol.keys import KeyLayout
from rrq_flow.protocol.ops import Completion, NewJob, Protocol, parse_claim
from rrq_flow.protocol.scripts import call_sync, preload_sync
from rrq_flow.redis_server import start_redis_server


def cpu_us(r: redis.Redis) -> float:
    info = r.info("cpu")
    return (float(info["used_cpu_user"]) + float(info["used_cpu_sys"])) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rate", action="store_true", help="rate_limit far above the load")
    ap.add_argument("--cap", action="store_true", help="max_running far above the load")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_redis_server(Path(tmp), unix_socket=Path(tmp) / "r.sock", appendonly=False)
        try:
            r = redis.Redis(unix_socket_path=str(Path(tmp) / "r.sock"), decode_responses=True)
            preload_sync(r)
            p = Protocol(KeyLayout("b"))
            r.hset(KeyLayout("b").meta, "generation", "g")
            for i in range(0, a.n, 1000):
                jobs = [NewJob(f"j{k}") for k in range(i, min(a.n, i + 1000))]
                c = p.enqueue("q", 3, "g", jobs)
                call_sync(r, c.script, c.keys, c.args)
            extra = {}
            if "flow" in inspect.signature(p.claim).parameters:
                from rrq_flow.protocol.ops import FlowLimits

                extra["flow"] = FlowLimits(
                    interval_ms=1e-5 if a.rate else 0.0,
                    max_running=10**6 if a.cap else 0,
                    lookahead_ms=50,
                )
            cpu0, t0 = cpu_us(r), time.perf_counter()
            done = 0
            while done < a.n:
                c = p.claim("q", "g", "w", 10, 30000, 60000, **extra)
                reply = parse_claim(call_sync(r, c.script, c.keys, c.args))
                if not reply.jobs:
                    break
                c = p.complete(
                    "q", "w", 60000, [Completion(j.id, j.epoch, "1") for j in reply.jobs]
                )
                call_sync(r, c.script, c.keys, c.args)
                done += len(reply.jobs)
            wall, cpu = time.perf_counter() - t0, cpu_us(r) - cpu0
            print(
                json.dumps(
                    {"done": done, "redis_cpu_us_per_job": cpu / done, "jobs_per_s": done / wall}
                )
            )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
