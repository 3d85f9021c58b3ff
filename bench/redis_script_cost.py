"""Redis CPU per job, script by script: enqueue (bulk and one by one), claim, complete.

On a private redis-server (unix socket), for N no-op jobs, each phase runs on its own so that its
cost can be read from the server's counters: ``INFO commandstats`` (``usec`` of EVALSHA: time
inside the scripts, their inner commands included) and ``INFO cpu`` (the server's whole CPU:
scripts, parsing, replies, socket I/O). Claims and completions go 10 jobs per call, like a worker
at concurrency 10; bulk enqueues 1,000 jobs per call, like ``enqueue_many``. Each phase is
repeated ``--rounds`` times on fresh data and the median is reported, per job, in microseconds.

    PYTHONPATH=. .venv/bin/python bench/redis_script_cost.py [--n 20000] [--rounds 3]

Run it with PYTHONPATH pointing at the tree to measure (the script only uses
``rrq_flow.protocol``, so it runs against older trees too), and compare trees run close together:
both counters are CPU or wall time on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import uuid
from collections.abc import Callable
from typing import Any

import redis
from redis_memory import WORKER, payload_json, private_redis  # bench/, beside this file

from rrq_flow.protocol.keys import KeyLayout
from rrq_flow.protocol.ops import Completion, NewJob, Protocol, parse_claim
from rrq_flow.protocol.scripts import call_sync


def counters(r: redis.Redis) -> tuple[float, float, int]:
    """(server CPU us, EVALSHA usec, commands run inside scripts)."""
    cpu = r.info("cpu")
    stats = r.info("commandstats")
    ev = stats.get("cmdstat_evalsha", {"usec": 0, "calls": 0})
    inner = sum(
        int(v["calls"])
        for k, v in stats.items()
        if k not in ("cmdstat_evalsha", "cmdstat_info", "cmdstat_eval", "cmdstat_script|load")
    )
    used = (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])) * 1e6
    return used, float(ev["usec"]), inner


def phase(r: redis.Redis, jobs: int, body: Callable[[], None]) -> dict[str, float]:
    c0 = counters(r)
    body()
    c1 = counters(r)
    return {
        "cpu_us_per_job": (c1[0] - c0[0]) / jobs,
        "script_us_per_job": (c1[1] - c0[1]) / jobs,
        # Deterministic (no clock): redis.call()s per job, the work the scripts ask for.
        "commands_per_job": (c1[2] - c0[2]) / jobs,
    }


def one_round(r: redis.Redis, n: int, payload: str) -> dict[str, dict[str, float]]:
    r.flushall()
    layout = KeyLayout("cost")
    p = Protocol(layout)
    r.hset(layout.meta, "generation", "g")
    out: dict[str, dict[str, float]] = {}
    ids = [uuid.uuid4().hex for _ in range(n)]

    def bulk() -> None:
        for i in range(0, n, 1000):
            c = p.enqueue("q", 3, "g", [NewJob(j, payload) for j in ids[i : i + 1000]])
            call_sync(r, c.script, c.keys, c.args)

    out["enqueue_bulk"] = phase(r, n, bulk)
    single = ids[: n // 10]

    def one_by_one() -> None:
        for j in single:
            c = p.enqueue("one", 3, "g", [NewJob(j + "s", payload)])
            call_sync(r, c.script, c.keys, c.args)

    out["enqueue_one"] = phase(r, len(single), one_by_one)
    claimed: list[Any] = []

    def claim() -> None:
        while True:
            c = p.claim("q", "g", WORKER, 10, 30000, 60000)
            reply = parse_claim(call_sync(r, c.script, c.keys, c.args))
            if not reply.jobs:
                return
            claimed.append(reply.jobs)

    out["claim"] = phase(r, n, claim)

    def complete() -> None:
        for batch in claimed:
            done = [Completion(j.id, j.epoch, "null") for j in batch]
            c = p.complete("q", WORKER, 86_400_000, done)
            call_sync(r, c.script, c.keys, c.args)

    out["complete"] = phase(r, n, complete)
    assert sum(len(b) for b in claimed) == n
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--payload", type=int, default=20, help="bytes of the args JSON")
    a = ap.parse_args()
    payload = payload_json(a.payload)
    with private_redis() as r:
        rounds = [one_round(r, a.n, payload) for _ in range(a.rounds)]
    result: dict[str, Any] = {"jobs": a.n, "rounds": a.rounds, "payload_bytes": len(payload)}
    for name in rounds[0]:
        result[name] = {
            k: round(statistics.median(r[name][k] for r in rounds), 2)
            for k in ("cpu_us_per_job", "script_us_per_job", "commands_per_job")
        }
    result["claim_plus_complete"] = {
        k: round(result["claim"][k] + result["complete"][k], 2)
        for k in ("cpu_us_per_job", "script_us_per_job", "commands_per_job")
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
