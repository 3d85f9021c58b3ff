"""Redis CPU per job: what one pipeline (one hash tag, so one Redis core) can carry.

Starts a private redis-server (and, with ``--durability``, a replica of it), enqueues N no-op
jobs in batches, runs a burst worker until they are done, and reads ``INFO cpu`` (Redis' own
CPU: the figure) and ``INFO commandstats`` (a breakdown by command) before and after. With
``--durability`` the pipeline has ``redis.durability: {replicas: 1}``: the figures include WAIT
and feeding the replica.

    .venv/bin/python bench/redis_cost.py --n 20000
    .venv/bin/python bench/redis_cost.py --n 20000 --durability

Redis' CPU time moves less with other load on the machine than wall-clock rates do; still,
compare runs made close together.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the handler below, as module redis_cost

from rrq_flow.client._core import JobSpec  # noqa: E402
from rrq_flow.config import load  # noqa: E402
from rrq_flow.redis_server import start_redis_server  # noqa: E402
from rrq_flow.worker.worker import Worker  # noqa: E402


async def noop(x: int) -> int:
    """The job: nothing, so that the figures are rrq-flow's and Redis' alone."""
    return x


def stats(r: redis.Redis) -> tuple[dict[str, dict[str, float]], float]:
    commands = {k.removeprefix("cmdstat_"): v for k, v in r.info("commandstats").items()}
    cpu = r.info("cpu")
    return commands, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def measure(n: int, durability: bool, batch: int) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="rrqcost-"))
    servers = []
    try:
        master = start_redis_server(base / "m", port=None, appendonly=False)
        servers.append(master)
        if durability:
            replica = start_redis_server(
                base / "r",
                appendonly=False,
                extra_args=["--replicaof", "127.0.0.1", str(master.port)],
            )
            servers.append(replica)
            time.sleep(1.0)
        url = master.url
        extra = ", durability: {replicas: 1, timeout: 1s}" if durability else ""
        path = base / "p.yaml"
        path.write_text(
            f"version: 1\npipeline: cost\nredis: {{url: '{url}', persistence: none{extra}}}\n"
            "queues:\n  q: {handler: 'redis_cost:noop', concurrency: 50}\n"
        )
        config = load(path)
        r = redis.Redis(host="127.0.0.1", port=master.port, decode_responses=True)
        r.config_resetstat()
        before, cpu0 = stats(r)
        started = time.perf_counter()
        with config.sync_client() as client:
            client.enqueue_many("q", [JobSpec(args=(i,)) for i in range(n)], batch_size=batch)
        enqueued = time.perf_counter()

        async def burst() -> int:
            worker = Worker(config, url=url, burst=True, handle_signals=False)
            return await worker.run()

        code = trio.run(burst)
        finished = time.perf_counter()
        after, cpu1 = stats(r)
        per_command = {
            name: round((v["usec"] - before.get(name, {}).get("usec", 0)) / n, 2)
            for name, v in after.items()
            if v["usec"] - before.get(name, {}).get("usec", 0) > 0
        }
        cpu_per_job = (cpu1 - cpu0) * 1e6 / n
        return {
            "jobs": n,
            "durability": durability,
            "worker_exit": code,
            # Redis' own CPU (getrusage, INFO cpu) per job: scripts, replies, socket I/O.
            "redis_cpu_usec_per_job": round(cpu_per_job, 1),
            "jobs_per_redis_core_s": round(1e6 / cpu_per_job) if cpu_per_job else None,
            # commandstats usec is time inside each command (on a busy machine it includes being
            # descheduled), and a script's inner commands are counted twice (inside EVALSHA and
            # on their own): a breakdown, not a sum.
            "commandstats_usec_per_job": dict(
                sorted(per_command.items(), key=lambda kv: -kv[1])[:8]
            ),
            "enqueue_jobs_per_s": round(n / (enqueued - started)),
            "process_jobs_per_s": round(n / (finished - enqueued)),
        }
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--durability", action="store_true")
    args = p.parse_args()
    print(json.dumps(measure(args.n, args.durability, args.batch), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
