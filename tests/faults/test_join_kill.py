"""Join under SIGKILL: workers are killed without warning (at seeded moments) while the branches of
a 1,000-branch group end; the group's accounting lives in the same script as each branch's end,
so the join job is created exactly once and runs with every value, in order.

Size: ``RRQ_JOIN_BRANCHES`` (default 1000); seeds: ``RRQ_FAULT_SEEDS`` (e.g. 10).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from rrq_flow.config import load
from tests.faults.harness import ROOT, Proc, Processes, RedisNode, scenario_timeout
from tests.faults.join_probe import JOIN_LOG_ENV

pytestmark = [pytest.mark.faults, pytest.mark.timeout(scenario_timeout(240.0))]

PIPELINE = """version: 1
pipeline: joinfault
redis: {{url: "{url}", connect_timeout: 1s, command_timeout: 2s}}
defaults:
  timeout: 5s
  lock_extension: 1s
  max_stalls: 10
  retry: {{max_attempts: 5, delay: 50ms, jitter: false}}
workers: {{shutdown_grace_period: 2s, heartbeat_interval: 0.5s}}
queues:
  fan: {{handler: "tests.faults.join_probe:fan", fan_out: true, next: branch}}
  branch: {{handler: "tests.faults.join_probe:branch", concurrency: 16, next: gather}}
  gather: {{handler: "tests.faults.join_probe:gather", join: true}}
"""


def test_sigkill_during_a_group_never_runs_its_join_twice_or_never(
    seed: int, procs: Processes, fault_dir: Path
) -> None:
    import random

    rng = random.Random(f"join:{seed}")
    branches = int(os.environ.get("RRQ_JOIN_BRANCHES", "1000"))
    node = RedisNode(procs, fault_dir / "redis", appendonly=True, fsync="everysec")
    node.start()
    pipeline = fault_dir / "pipeline.yaml"
    pipeline.write_text(PIPELINE.format(url=node.url))
    log = fault_dir / "joins.jsonl"
    env = dict(os.environ, PYTHONPATH=str(ROOT), **{JOIN_LOG_ENV: str(log)})
    logs = fault_dir / "logs"
    logs.mkdir()

    def start() -> Proc:
        cmd = [sys.executable, "-m", "rrq_flow", "run", str(pipeline)]
        return procs.spawn("worker", cmd, logs, env)

    workers = [start(), start()]
    config = load(pipeline)
    kills = 0
    with config.sync_client() as client:
        root = client.enqueue("fan", branches, run="g")
        deadline = time.monotonic() + scenario_timeout(240.0) - 30
        while not client.run("g").complete and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.2, 0.8))
            live = [w for w in workers if w.alive()]
            if kills < 4 and live and not client.run("g").complete:
                victim = rng.choice(live)
                victim.kill()
                victim.wait(10)
                kills += 1
                workers.append(start())
        info = client.wait_run("g", timeout=60)
        joins = list(client.results("g", "gather"))
        gather_stats = client.redis.hget("rrq:{joinfault}:q:gather:stats", "enqueued")
        leftover = client.redis.exists(f"rrq:{{joinfault}}:group:{root}")
    for w in workers:
        if w.alive():
            w.kill()
    runs = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    print(f"seed {seed}: {kills} kills, join executions {len(runs)}, run {info.counts()}")
    assert kills >= 1
    assert info.complete
    assert len(joins) == 1, joins  # one join job for the group: never two, never none
    assert gather_stats == "1" and not leftover
    assert joins[0]["status"] == "done" and joins[0]["result"] == branches, joins[0]
    # The join job may run again only if a kill interrupted it (at least once per job); every
    # execution saw the whole group, in fan-out order.
    assert runs and {r["id"] for r in runs} == {joins[0]["id"]}
    assert all(r["n"] == branches and r["in_order"] and r["failed"] == 0 for r in runs), runs
