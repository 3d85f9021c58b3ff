"""Multi-stage pipelines: hand-off atomic with completion, fan-out, outbox, burst across stages."""

from __future__ import annotations

import json

import redis

from rrq_flow.client.sync_client import SyncClient
from rrq_flow.protocol.keys import KeyLayout
from rrq_flow.worker.worker import EXIT_OK
from tests.conftest import make_pipeline, make_queue, run_burst

FAST = {"max_attempts": 3, "delay": 0.01, "jitter": False}


def all_jobs(r: redis.Redis, pipeline: str = "t") -> dict[str, dict[str, str]]:
    """Every job record (test-only KEYS: fine on the suite's private Redis)."""
    prefix = KeyLayout(pipeline).prefix + "job:"
    return {
        k[len(prefix) :]: r.hgetall(k) for k in r.keys(prefix + "*") if not k.endswith(":errors")
    }


async def test_chain_of_three_stages_delivers_every_item(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    cfg = make_pipeline(
        redis_url,
        make_queue("a", "tests.stage_handlers:double", next=("b",)),
        make_queue("b", "tests.stage_handlers:plus_one", next=("c",)),
        make_queue("c", "tests.stage_handlers:sink"),
    )
    with SyncClient(cfg) as client:
        client.enqueue_many("a", [[i] for i in range(50)])
        _, code = await run_burst(cfg)
    assert code == EXIT_OK
    jobs = all_jobs(sync_redis)
    finals = sorted(
        int(j["result"].split("[")[1].split("]")[0]) for j in jobs.values() if j["queue"] == "c"
    )
    assert finals == [i * 2 + 1 for i in range(50)]
    assert all(j["status"] == "done" for j in jobs.values())
    assert len(jobs) == 150


async def test_fan_out_of_1000_items_yields_exactly_1000_children(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    cfg = make_pipeline(
        redis_url,
        make_queue("split", "tests.stage_handlers:numbers", next=("each",), fan_out=True),
        make_queue("each", "tests.stage_handlers:double", concurrency=50),
    )
    with SyncClient(cfg) as client:
        parent = client.enqueue("split", 1000)
        _, code = await run_burst(cfg)
        info = client.job(parent)
        ids = client.children(parent)
        children = [client.job(c) for c in ids]
    assert code == EXIT_OK
    assert info.children == len(ids) == len(set(ids)) == 1000
    assert sorted(c.result for c in children) == [2 * i for i in range(1000)]
    assert {c.parent for c in children} == {parent}
    assert len(all_jobs(sync_redis)) == 1001


async def test_none_result_and_empty_fan_out_end_the_branch(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    cfg = make_pipeline(
        redis_url,
        make_queue("n", "tests.stage_handlers:ends_branch", next=("sink",)),
        make_queue("e", "tests.stage_handlers:empty_fan_out", next=("sink",), fan_out=True),
        make_queue("sink", "tests.stage_handlers:sink"),
    )
    with SyncClient(cfg) as client:
        client.enqueue("n", 1)
        client.enqueue("e", 1)
        _, code = await run_burst(cfg)
    assert code == EXIT_OK
    assert [j["queue"] for j in all_jobs(sync_redis).values()].count("sink") == 0


async def test_outbox_of_a_failing_attempt_never_appears_and_of_the_retry_once(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    cfg = make_pipeline(
        redis_url,
        make_queue("route", "tests.stage_handlers:route_with_outbox", retry=FAST),
        make_queue("side", "tests.stage_handlers:sink", keep_args=True),
    )
    with SyncClient(cfg) as client:
        parent = client.enqueue("route", 7)
        _, code = await run_burst(cfg)
        side = [
            {"kwargs": json.dumps(client.job(i).kwargs, separators=(",", ":")), **j}
            for i, j in all_jobs(sync_redis).items()
            if j["queue"] == "side"
        ]
        assert client.job(parent).attempts == 2
    assert code == EXIT_OK
    assert len(side) == 1
    assert side[0]["kwargs"] == '{"attempt":2}'  # from the succeeding retry, not attempt 1
    assert side[0]["parent"] == parent


async def test_burst_waits_for_downstream_stages(redis_url: str) -> None:
    cfg = make_pipeline(
        redis_url,
        make_queue("slow", "tests.handlers:sleep_for", next=("after",)),
        make_queue("after", "tests.stage_handlers:sink"),
    )
    with SyncClient(cfg) as client:
        parent = client.enqueue("slow", 0.3)
        worker, code = await run_burst(cfg)
        child = client.job(client.children(parent)[0])
    assert code == EXIT_OK
    assert child.status == "done" and child.result == {"args": [0.3], "kwargs": {}}
    assert worker.stats.queues["after"].done == 1


async def test_max_jobs_stops_cleanly_after_n_jobs(redis_url: str) -> None:
    cfg = make_pipeline(redis_url, make_queue("q", "tests.handlers:echo", concurrency=5))
    with SyncClient(cfg) as client:
        ids = client.enqueue_many("q", [[i] for i in range(30)])
        worker, code = await run_burst(cfg, max_jobs=12)
        statuses = [client.job(i).status for i in ids]
    assert code == EXIT_OK
    assert statuses.count("done") == 12
    assert statuses.count("queued") == 18
    assert worker.stop_reason == "max jobs reached"


async def test_max_duration_stops_cleanly(redis_url: str) -> None:
    cfg = make_pipeline(redis_url, make_queue("q", "tests.handlers:sleep_for", concurrency=2))
    with SyncClient(cfg) as client:
        ids = client.enqueue_many("q", [[0.2] for _ in range(20)])
        worker, code = await run_burst(cfg, max_duration=0.5)
        statuses = [client.job(i).status for i in ids]
    assert code == EXIT_OK
    assert worker.stop_reason == "max duration 0.5s reached"
    assert 2 <= statuses.count("done") <= 8
    assert statuses.count("done") + statuses.count("queued") == 20  # nothing lost, none active
