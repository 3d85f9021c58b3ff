"""``redis.durability``: enqueue (and completion) batches wait until N replicas have them.

Real servers on loopback (1 master, 1 replica, 3 sentinels). Run with ``pytest -m sentinel``;
``RRQ_DURABILITY_REPS`` sets the kill-the-master repetitions (default 20).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import trio

from rrq_flow.client._core import JobSpec
from rrq_flow.config import load
from rrq_flow.config.model import PipelineConfig
from rrq_flow.connection import url_for
from rrq_flow.errors import DurabilityError
from rrq_flow.protocol.keys import KeyLayout
from rrq_flow.worker.worker import Worker
from tests.scale.topology import SentinelTopology, sentinel_topology, wait_for

pytestmark = [pytest.mark.sentinel, pytest.mark.timeout(1500)]


@pytest.fixture
def topo() -> Iterator[SentinelTopology]:
    with sentinel_topology() as t:
        yield t


def durable_pipeline(topo: SentinelTopology, path: Path, timeout: str = "1s") -> PipelineConfig:
    nodes = ", ".join(f'"{n}"' for n in topo.sentinel_nodes)
    path.write_text(
        "version: 1\npipeline: dur\n"
        f"redis: {{connect_timeout: 1s, command_timeout: 2s, persistence: none,\n"
        f"  sentinel: {{master: {topo.master_name}, nodes: [{nodes}]}},\n"
        f"  durability: {{replicas: 1, timeout: {timeout}}}}}\n"
        "queues:\n  q: {handler: 'tests.handlers:echo'}\n"
    )
    return load(path)


def test_enqueue_fails_clearly_when_the_replica_is_paused(
    topo: SentinelTopology, tmp_path: Path
) -> None:
    config = durable_pipeline(topo, tmp_path / "p.yaml", timeout="500ms")
    with config.sync_client() as client:
        # The replica is there: enqueue and a worker's completions go through.
        ids = client.enqueue_many("q", [JobSpec(args=(i,), job_id=f"ok-{i}") for i in range(5)])

        async def burst() -> int:
            worker = Worker(
                config, url=str(url_for(config.redis)), burst=True, handle_signals=False
            )
            with trio.fail_after(60):
                return await worker.run()

        assert trio.run(burst) == 0
        assert {client.job(i).status for i in ids} == {"done"}

        replica = topo.replica()
        replica.freeze()
        try:
            started = time.monotonic()
            with pytest.raises(DurabilityError) as caught:
                client.enqueue_many("q", [JobSpec(args=(i,), job_id=f"p-{i}") for i in range(3)])
            elapsed = time.monotonic() - started
            with pytest.raises(DurabilityError):
                client.enqueue("q", 1, job_id="single")

            async def async_enqueue() -> None:
                async with config.client() as aclient:
                    await aclient.enqueue("q", 2, job_id="async-one")

            with pytest.raises(DurabilityError) as caught_async:
                trio.run(async_enqueue)
        finally:
            replica.thaw()
    err = caught.value
    assert err.job_ids == ("p-0", "p-1", "p-2") and err.acked == 0 and err.replicas == 1
    assert "p-0, p-1, p-2" in str(err) and "same ids" in str(err)
    assert caught_async.value.job_ids == ("async-one",)
    assert elapsed < 30, "WAIT must give up after its timeout (generous bound)"
    # Enqueuing the same ids again once the replica is back is safe: no second job.
    with config.sync_client() as client:
        again = client.enqueue_many("q", [JobSpec(args=(i,), job_id=f"p-{i}") for i in range(3)])
        assert again == ["p-0", "p-1", "p-2"]


def _kill_master_once(topo: SentinelTopology, config: PipelineConfig, rep: int) -> tuple[int, int]:
    """One repetition: a producer thread, SIGKILL of the master, failover; asserts that every
    acknowledged id is on the new master (the killed node rejoined as its replica). Returns
    (acknowledged jobs, refused calls)."""
    acked: list[str] = []
    refused = 0
    stop = threading.Event()

    def produce() -> None:
        nonlocal refused
        n = 0
        with config.sync_client() as client:
            while not stop.is_set():
                ids = [f"r{rep}-{n + k}" for k in range(5)]
                n += 5
                try:
                    client.enqueue_many("q", [JobSpec(args=(i,), job_id=i) for i in ids])
                except (DurabilityError, redis.exceptions.RedisError, OSError):
                    refused += 1
                    time.sleep(0.05)
                else:
                    acked.extend(ids)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(acked) >= 50, 30, "the producer got going")
        old = topo.master_port()
        topo.node(old).kill()
        new = topo.wait_new_master(old, 60)
        # The new master has no replica yet, so durable enqueues are refused (DurabilityError)
        # until the killed node is back: restarted as the new master's replica, and healthy in
        # every sentinel's eyes, so that the next repetition's kill finds a replica to promote.
        topo.restart_as_replica(old, 60)
        before = len(acked)
        wait_for(lambda: len(acked) > before + 20, 30, "enqueues acknowledged again")
    finally:
        stop.set()
        thread.join(30)
    with topo.node(new).client() as r:
        pipe = r.pipeline(transaction=False)
        for job_id in acked:
            pipe.exists(KeyLayout("dur").job(job_id))
        present = pipe.execute()
    lost = [i for i, ok in zip(acked, present, strict=True) if not ok]
    assert not lost, f"repetition {rep}: {len(lost)} acknowledged enqueue(s) lost: {lost[:10]}"
    return len(acked), refused


def test_master_kill_loses_no_acknowledged_enqueue(topo: SentinelTopology, tmp_path: Path) -> None:
    """SIGKILL of the master under a steady producer, then Sentinel's failover: every enqueue
    acknowledged under ``durability: {replicas: 1}`` is on the new master. Repeated
    (``RRQ_DURABILITY_REPS``, default 20), the killed node rejoining as the replica each time."""
    config = durable_pipeline(topo, tmp_path / "p.yaml")
    reps = int(os.environ.get("RRQ_DURABILITY_REPS", "20"))
    figures = [_kill_master_once(topo, config, rep) for rep in range(reps)]
    print("durability master-kill (acknowledged jobs, refused calls) per repetition:", figures)
