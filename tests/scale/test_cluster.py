"""Redis Cluster: three masters with one replica each on loopback (``redis-cli --cluster
create``). The CLI and the clients through cluster clients; workers carrying on through a
``CLUSTER FAILOVER`` and a migration of the pipeline's slot under load, checked afterwards by
the fault checker (0 lost, one terminal state each).

Run with ``pytest -m cluster`` (kept out of the default run; sized by ``RRQ_FAULT_JOBS``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from rrq_flow.protocol.keys import KeyLayout
from tests.faults.harness import (
    LAYOUT,
    Fault,
    FaultRun,
    Processes,
    Settings,
    fault_jobs,
    make_jobs,
    mean_duration,
    scenario_timeout,
)
from tests.scale.scenario import cli, ended_after, finish
from tests.scale.topology import ClusterTopology, cluster_topology, node_client, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(scenario_timeout(240))]


@pytest.fixture
def topo() -> Iterator[ClusterTopology]:
    with cluster_topology() as t:
        yield t


class ClusterView:
    """What the fault harness needs of "its Redis": a seed URL and a cluster client."""

    def __init__(self, topo: ClusterTopology):
        self.topo = topo
        self.url = topo.seed_url

    def client(self, **kw: Any) -> redis.RedisCluster:
        return redis.RedisCluster(
            host="127.0.0.1",
            port=self.topo.nodes[0].port,
            decode_responses=True,
            socket_timeout=5,
            **kw,
        )


def cluster_yaml(topo: ClusterTopology) -> str:
    nodes = ", ".join(f'"{n}"' for n in topo.seed_nodes[1:3])
    return f", cluster: true, nodes: [{nodes}]"


def test_cli_surface_on_a_cluster(topo: ClusterTopology, tmp_path: Path) -> None:
    """validate, enqueue, status, workers, job, cancel, dlq, health and run, on a Cluster."""
    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\npipeline: clu\n"
        f"redis: {{url: '{topo.seed_url}', persistence: none{cluster_yaml(topo)}}}\n"
        "queues:\n"
        "  a: {handler: 'tests.handlers:echo', next: b}\n"
        "  b: {handler: 'tests.handlers:echo'}\n"
        "  bad: {handler: 'tests.handlers:always_fail', retry: {max_attempts: 1}}\n"
    )
    p = str(path)
    assert cli("validate", p).returncode == 0
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps({"args": [i]}) + "\n" for i in range(30)))
    out = cli("enqueue", p, "a", "--jsonl", str(jsonl))
    assert out.returncode == 0, out.stderr
    assert cli("enqueue", p, "bad", "--args", "[1]").returncode == 0
    assert cli("enqueue", p, "a", "--args", "[99]", "--job-id", "cxl").returncode == 0
    cancel = cli("cancel", p, "cxl")
    assert cancel.returncode == 0, cancel.stderr
    run = cli("run", p, "--burst")
    assert run.returncode == 1, run.stderr[-2000:]  # 1: a job ended dead ("bad")
    status = cli("status", p, "--json")
    assert status.returncode == 0, status.stderr
    counts = json.loads(status.stdout)["queues"]
    assert counts["a"]["done"] == 30 and counts["a"]["cancelled"] == 1
    assert counts["b"]["done"] == 30 and counts["bad"]["dead"] == 1
    assert cli("workers", p, "--json").returncode == 0
    assert cli("health", p, "--json").returncode in (0, 1)  # no worker left: unhealthy is right
    dead = cli("dlq", "list", p, "--json")
    assert dead.returncode == 0, dead.stderr
    dead_id = json.loads(dead.stdout)["entries"][0]["id"]
    assert cli("dlq", "show", p, dead_id).returncode == 0
    assert cli("job", p, dead_id, "--json").returncode == 0
    assert cli("dlq", "requeue", p, dead_id).returncode == 0
    assert cli("dlq", "purge", p, "bad", "--yes").returncode == 0


def _cluster_run(
    topo: ClusterTopology, procs: Processes, fault_dir: Path, seed: int, name: str
) -> tuple[FaultRun, list[Any]]:
    s = Settings()
    run = FaultRun(
        name,
        fault_dir,
        procs,
        seed,
        s,
        appendonly=False,
        redis_node=ClusterView(topo),
        redis_extra=cluster_yaml(topo),
    )
    n = fault_jobs()
    jobs = make_jobs(run.rng, n, seed=seed, mean=mean_duration(n, 2 * s.concurrency, 8.0))
    workers = [run.start_worker(), run.start_worker()]
    for w in workers:
        run.wait_started(w)
    run.produce(jobs, spread=10.0)
    return run, workers


def test_cluster_failover_under_load(
    topo: ClusterTopology, seed: int, procs: Processes, fault_dir: Path
) -> None:
    """``CLUSTER FAILOVER`` on the replica of the pipeline's master, mid-run: a coordinated
    switch (the master pauses its clients until the replica caught up), so nothing is lost and
    the workers carry on against the new master (MOVED) without exiting."""
    run, workers = _cluster_run(topo, procs, fault_dir, seed, "cluster-failover")
    time.sleep(run.rng.uniform(1.5, 3.0))
    key = LAYOUT.queue("probe").ready
    old = topo.owner_port(key)
    replica = topo.replica_of(old)
    t0 = time.time()
    with replica.client() as r:
        r.execute_command("CLUSTER", "FAILOVER")
    wait_for(lambda: topo.owner_port(key) == replica.port, 60, "the replica took the slot over")
    t1 = time.time()
    run.faults.append(Fault("cluster-failover", t0, t1, None, {"new_master": replica.port}))
    wait_for(lambda: ended_after(run, t1), 20, "a job finished after the failover")
    finish(run, workers, switch_seconds=round(t1 - t0, 2)).assert_ok()


def migrate_slot(topo: ClusterTopology, key: str, target_port: int) -> int:
    """Move ``key``'s slot to the master on ``target_port`` the way ``redis-cli --cluster
    reshard`` does: IMPORTING/MIGRATING, MIGRATE the keys in batches, then NODE everywhere.
    Returns the number of keys moved."""
    source_port = topo.owner_port(key)
    with node_client(source_port) as src, node_client(target_port) as dst:
        slot = int(src.execute_command("CLUSTER", "KEYSLOT", key))
        source_id, target_id = topo.node_id(source_port), topo.node_id(target_port)
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        while True:
            keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 20)
            if not keys:
                break
            src.execute_command(
                "MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "REPLACE", "KEYS", *keys
            )
            moved += len(keys)
            time.sleep(0.005)  # let clients in between batches: a migration under load
        for n in topo.masters():
            with n.client() as r:
                r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    return moved


def test_slot_migration_under_load(
    topo: ClusterTopology, seed: int, procs: Processes, fault_dir: Path
) -> None:
    """The pipeline's slot migrates to another master mid-run (ASK while it moves, MOVED
    after): the workers carry on, nothing is lost or finished twice."""
    run, workers = _cluster_run(topo, procs, fault_dir, seed, "cluster-migration")
    time.sleep(run.rng.uniform(1.5, 3.0))
    key = LAYOUT.queue("probe").ready
    old = topo.owner_port(key)
    target = next(m.port for m in topo.masters() if m.port != old)
    t0 = time.time()
    moved = migrate_slot(topo, key, target)
    t1 = time.time()
    assert topo.owner_port(key) == target
    run.faults.append(Fault("slot-migration", t0, t1, None, {"keys": moved, "to": target}))
    wait_for(lambda: ended_after(run, t1), 20, "a job finished after the migration")
    finish(run, workers, keys_moved=moved, seconds_migrating=round(t1 - t0, 2)).assert_ok()


def test_pipeline_keys_share_one_slot() -> None:
    """Every key of a pipeline carries the ``{pipeline}`` hash tag (one slot, one master), so
    every script and pipeline stays on one node."""
    from coredis._utils import hash_slot

    layout = KeyLayout("clu")
    keys = [layout.meta, layout.workers, layout.job("x"), layout.queue("a").ready]
    keys += [layout.queue("a").active, layout.queue("a").wake, layout.queue("a").dead]
    assert len({hash_slot(k.encode()) for k in keys}) == 1
