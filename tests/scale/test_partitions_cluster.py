"""``partitions: 3`` on the three-master Redis Cluster: the pipeline's keys on every master, a
multi-stage chain, fan-outs with their joins and a burst of two worker processes, all through
the command line (cluster clients). Behaviour only; the cost figures are bench/partition_cost.py.

Run with ``pytest -m cluster`` (kept out of the default run).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from rrq_flow.protocol.partitions import layouts_for, partition_index
from tests.scale.scenario import cli
from tests.scale.test_cluster import cluster_yaml
from tests.scale.topology import ClusterTopology, cluster_topology, node_client

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

N = 3


@pytest.fixture
def topo() -> Iterator[ClusterTopology]:
    with cluster_topology() as t:
        yield t


def test_partitions_spread_one_pipeline_over_every_master(
    topo: ClusterTopology, tmp_path: Path
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        f"version: 1\npipeline: clu\npartitions: {N}\n"
        f"redis: {{url: '{topo.seed_url}', persistence: none{cluster_yaml(topo)}}}\n"
        "workers: {processes: 2}\n"
        "queues:\n"
        "  a: {handler: 'tests.stage_handlers:double', next: b}\n"
        "  b: {handler: 'tests.stage_handlers:plus_one', next: c}\n"
        "  c: {handler: 'tests.stage_handlers:sink'}\n"
        "  split: {handler: 'tests.join_handlers:items', fan_out: true, next: each}\n"
        "  each: {handler: 'tests.join_handlers:work', next: gather}\n"
        "  gather: {handler: 'tests.join_handlers:total', join: true}\n"
    )
    p = str(path)
    masters = {m.port for m in topo.masters()}
    owners = {topo.owner_port(lay.prefix + "x") for lay in layouts_for("clu", N)}
    assert owners == masters  # one partition per master

    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps({"args": [i]}) + "\n" for i in range(90)))
    out = cli("enqueue", p, "a", "--jsonl", str(jsonl), "--run", "r1")
    assert out.returncode == 0, out.stderr
    ids = out.stdout.split()
    assert {partition_index(i, N) for i in ids} == {0, 1, 2}
    fans = [f"fan{i}" for i in range(6)]
    for f in fans:
        assert cli("enqueue", p, "split", "--args", "[120]", "--job-id", f).returncode == 0
    assert {partition_index(f, N) for f in fans} == {0, 1, 2}
    for port in masters:  # every master holds some of the pipeline's jobs
        with node_client(port) as r:
            assert r.keys("rrq:{clu.*}:job:*"), port

    run = cli("run", p, "--burst", "--progress", "off")
    assert run.returncode == 0, run.stderr[-2000:]  # every partition drained, nothing dead
    status = cli("status", p, "--json")
    assert status.returncode == 0, status.stderr
    counts = json.loads(status.stdout)["queues"]
    assert [counts[q]["done"] for q in ("a", "b", "c")] == [90, 90, 90]
    assert counts["each"]["done"] == 6 * 120 and counts["gather"]["done"] == 6
    assert all(counts[q]["ready"] == counts[q]["active"] == 0 for q in counts)
    for f in fans:
        job = cli("job", p, f"{f}:gather:join", "--json")
        assert job.returncode == 0, job.stderr
        assert json.loads(job.stdout)["job"]["result"] == 2 * sum(range(120))
    results = cli("results", p, "--run", "r1")
    assert results.returncode == 0, results.stderr
    assert sorted(
        json.loads(line)["result"]["args"][0] for line in results.stdout.splitlines()
    ) == sorted(2 * i + 1 for i in range(90))
    runs = cli("runs", p, "--json")
    assert runs.returncode == 0, runs.stderr
    assert cli("dlq", "list", p, "--json").returncode == 0
    assert cli("workers", p, "--json").returncode == 0
