"""Redis CPU per job on a three-master Redis Cluster: one pipeline, plain vs ``partitions: 3``.

Starts three redis-server masters (``--cluster-enabled yes``, ``redis-cli --cluster create``,
no replicas), then for each layout: enqueues N no-op jobs in batches, runs a burst of one worker
process until they are done, and reads every master's ``INFO cpu`` (Redis' own CPU: the main
figure, less the idle cluster-bus CPU measured just before over the same length of time) and
``INFO commandstats`` (the time inside EVALSHA, the scripts: rrq-flow's work) before and after.

Reports, per layout, Redis CPU per job on each master and in total, and for the partitioned
run the spread across masters (max/min - 1 and each master's deviation from the mean) and the
cost per job relative to the unpartitioned run.

    .venv/bin/python bench/partition_cost.py --n 20000 [--rounds 2]

Compare runs made close together: the machine's other load moves the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # the handler below, as module partition_cost

from rrq_flow.client._core import JobSpec  # noqa: E402
from rrq_flow.config import load  # noqa: E402
from rrq_flow.redis_server import RedisServerProcess, start_redis_server  # noqa: E402
from rrq_flow.worker.worker import Worker  # noqa: E402
from tests.scale.topology import _cluster_port  # noqa: E402  (port and bus port free)


async def noop(x: int) -> int:
    """The job: nothing, so that the figures are rrq-flow's and Redis' alone."""
    return x


def sample(nodes: list[redis.Redis]) -> list[tuple[float, float]]:
    """(Redis CPU seconds, usec inside script calls) of every master: EVALSHA, and FCALL where
    the workers call the scripts as functions (the field names keep saying evalsha)."""
    out = []
    for r in nodes:
        cpu = r.info("cpu")
        stats = r.info("commandstats")
        evalsha = sum(stats.get(f"cmdstat_{c}", {}).get("usec", 0) for c in ("evalsha", "fcall"))
        out.append((float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]), float(evalsha)))
    return out


def start_cluster(base: Path) -> tuple[list[RedisServerProcess], list[redis.Redis]]:
    servers = []
    for i in range(3):
        d = base / f"n{i}"
        servers.append(
            start_redis_server(
                d,
                port=_cluster_port(),
                appendonly=False,
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(d / "nodes.conf"),
                ],
            )
        )
    addrs = [f"127.0.0.1:{s.port}" for s in servers]
    subprocess.run(
        ["redis-cli", "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    clients = [redis.Redis(host="127.0.0.1", port=s.port, decode_responses=True) for s in servers]
    deadline = time.monotonic() + 30
    while not all("cluster_state:ok" in str(c.execute_command("CLUSTER", "INFO")) for c in clients):
        if time.monotonic() > deadline:
            raise RuntimeError("cluster did not come up")
        time.sleep(0.1)
    time.sleep(1.0)  # gossip settles
    return servers, clients


def run_once(
    base: Path,
    servers: list[RedisServerProcess],
    clients: list[redis.Redis],
    n: int,
    parts: int,
    name: str,
    batch: int,
) -> dict[str, Any]:
    seeds = ", ".join(f'"127.0.0.1:{s.port}"' for s in servers[1:])
    path = base / f"{name}.yaml"
    path.write_text(
        f"version: 1\npipeline: {name}\npartitions: {parts}\n"
        f"redis: {{url: 'redis://127.0.0.1:{servers[0].port}/0', persistence: none, cluster: true, "
        f"nodes: [{seeds}]}}\n"
        "queues:\n  q: {handler: 'partition_cost:noop', concurrency: 50}\n"
    )
    config = load(path)
    url = str(config.redis.url)
    idle0 = sample(clients)
    t_idle = time.perf_counter()
    time.sleep(2.0)
    idle1 = sample(clients)
    idle_rate = [
        (b[0] - a[0]) / (time.perf_counter() - t_idle) for a, b in zip(idle0, idle1, strict=True)
    ]
    before = sample(clients)
    started = time.perf_counter()
    with config.sync_client() as client:
        client.enqueue_many("q", [JobSpec(args=(i,)) for i in range(n)], batch_size=batch)

    async def burst() -> int:
        return await Worker(config, url=url, burst=True, handle_signals=False).run()

    code = trio.run(burst)
    elapsed = time.perf_counter() - started
    after = sample(clients)
    cpu = [
        max(0.0, (a[0] - b[0]) - rate * elapsed) * 1e6 / n
        for a, b, rate in zip(after, before, idle_rate, strict=True)
    ]
    evalsha = [(a[1] - b[1]) / n for a, b in zip(after, before, strict=True)]
    return {
        "partitions": parts,
        "jobs": n,
        "worker_exit": code,
        "seconds": round(elapsed, 2),
        "redis_cpu_usec_per_job_by_master": [round(c, 1) for c in cpu],
        "redis_cpu_usec_per_job": round(sum(cpu), 1),
        "evalsha_usec_per_job_by_master": [round(e, 1) for e in evalsha],
        "evalsha_usec_per_job": round(sum(evalsha), 1),
        "idle_cpu_usec_per_s_by_master": [round(r * 1e6) for r in idle_rate],
    }


def spread(values: list[float]) -> dict[str, float]:
    mean = statistics.fmean(values)
    return {
        "max_over_min": round(max(values) / min(values) - 1, 3)
        if min(values) > 0
        else float("inf"),
        "max_deviation_from_mean": round(max(abs(v / mean - 1) for v in values), 3),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--rounds", type=int, default=1, help="alternating runs of each layout")
    args = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="rrqpart-"))
    servers: list[RedisServerProcess] = []
    try:
        servers, clients = start_cluster(base)
        runs: list[dict[str, Any]] = []
        for i in range(args.rounds):
            runs.append(run_once(base, servers, clients, args.n, 1, f"plain{i}", args.batch))
            runs.append(run_once(base, servers, clients, args.n, 3, f"parts{i}", args.batch))
        plain = [r for r in runs if r["partitions"] == 1]
        parts = [r for r in runs if r["partitions"] == 3]
        summary = {
            "plain_cpu_usec_per_job": [r["redis_cpu_usec_per_job"] for r in plain],
            "partitioned_cpu_usec_per_job": [r["redis_cpu_usec_per_job"] for r in parts],
            "partitioned_over_plain_cpu": round(
                statistics.fmean(r["redis_cpu_usec_per_job"] for r in parts)
                / statistics.fmean(r["redis_cpu_usec_per_job"] for r in plain)
                - 1,
                3,
            ),
            "partitioned_over_plain_evalsha": round(
                statistics.fmean(r["evalsha_usec_per_job"] for r in parts)
                / statistics.fmean(r["evalsha_usec_per_job"] for r in plain)
                - 1,
                3,
            ),
            "partitioned_spread_cpu": [
                spread(r["redis_cpu_usec_per_job_by_master"]) for r in parts
            ],
            "partitioned_spread_evalsha": [
                spread(r["evalsha_usec_per_job_by_master"]) for r in parts
            ],
        }
        print(json.dumps({"runs": runs, "summary": summary}, indent=2))
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
