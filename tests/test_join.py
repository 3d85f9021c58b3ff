"""Fan-in: ``join: true`` queues run once per group with the values in fan-out order — against
real Redis and a real worker (the SIGKILL test is in tests/faults/test_join_kill.py)."""

from __future__ import annotations

from typing import Any

import trio

from rrq_flow.config.model import PipelineConfig
from tests.conftest import make_pipeline, make_queue, run_burst

J = "tests.join_handlers"


def _run(cfg: PipelineConfig, queue: str, *args: Any) -> str:
    """Enqueue one job as run "join-test", run a burst worker; the root job's id."""
    with cfg.sync_client() as client:
        root = client.enqueue(queue, *args, run="join-test")
        trio.run(run_burst, cfg)
        info = client.wait_run("join-test", timeout=60)
        assert info.complete, info
        return root


def _joins(cfg: PipelineConfig, queue: str) -> list[Any]:
    with cfg.sync_client() as client:
        return [r for r in client.results("join-test", queue)]


def _fan_work_join(redis_url: str) -> PipelineConfig:
    """gen fans out to work, whose results go to the join gather."""
    return make_pipeline(
        redis_url,
        make_queue("gen", f"{J}:items", next=("work",), fan_out=True),
        make_queue("work", f"{J}:work", next=("gather",), concurrency=20),
        make_queue("gather", f"{J}:gather", join=True),
        name="join",
    )


def test_a_fan_out_of_500_joins_once_with_every_value_in_order(redis_url: str) -> None:
    cfg = _fan_work_join(redis_url)
    root = _run(cfg, "gen", 500)
    joins = _joins(cfg, "gather")
    assert len(joins) == 1 and joins[0]["status"] == "done"
    out = joins[0]["result"]
    assert out["values"] == [x * 2 for x in range(500)]
    assert out["group"] == {
        "id": root,
        "size": 500,
        "arrived": 500,
        "failed": [],
        "failed_count": 0,
    }
    with cfg.sync_client() as client:
        assert client.wait(root, timeout=10, descendants=True) == {"done": 502}
        assert not client.redis.keys("rrq:{join}:group:*")  # closed groups leave nothing


def _failing(redis_url: str, on_failure: str) -> PipelineConfig:
    return make_pipeline(
        redis_url,
        make_queue("gen", f"{J}:items", next=("work",), fan_out=True),
        make_queue(
            "work", f"{J}:work_or_die", next=("gather",), concurrency=20, retry={"max_attempts": 1}
        ),
        make_queue("gather", f"{J}:gather", join=True, join_on_failure=on_failure),
        name="join",
    )


def test_dead_branches_are_listed_and_the_join_runs_once_with_the_rest(redis_url: str) -> None:
    cfg = _failing(redis_url, "run")
    _run(cfg, "gen", 500)
    joins = _joins(cfg, "gather")
    assert len(joins) == 1
    out = joins[0]["result"]
    assert out["values"] == [x * 2 for x in range(500) if x % 50 != 7]
    group = out["group"]
    assert group["size"] == 500 and group["arrived"] == 490 and group["failed_count"] == 10
    failed = sorted(group["failed"], key=lambda f: f["id"])
    assert len(failed) == 10 and {f["state"] for f in failed} == {"dead"}
    assert all("poison" in f["error"]["message"] for f in failed)


def test_join_on_failure_dead_letter_dead_letters_the_join_listing_the_branches(
    redis_url: str,
) -> None:
    cfg = _failing(redis_url, "dead_letter")
    root = _run(cfg, "gen", 500)
    joins = _joins(cfg, "gather")
    assert len(joins) == 1 and joins[0]["status"] == "dead"
    message = joins[0]["error"]["message"]
    assert message.startswith(f"10 branch(es) of group {root} failed")
    assert f"{root}:work:7" in message
    with cfg.sync_client() as client:
        job = client.job(joins[0]["id"])
        assert job.dead_reason == "join" and job.attempts == 0


def test_nested_fan_outs_nest_groups(redis_url: str) -> None:
    cfg = make_pipeline(
        redis_url,
        make_queue("gen", f"{J}:items", next=("sub",), fan_out=True),
        make_queue("sub", f"{J}:sub_items", next=("work",), fan_out=True),
        make_queue("work", f"{J}:work", next=("inner",)),
        make_queue("inner", f"{J}:total", join=True, next=("outer",)),
        make_queue("outer", f"{J}:gather", join=True),
        name="join",
    )
    _run(cfg, "gen", 4)
    inner = sorted(r["result"] for r in _joins(cfg, "inner"))
    assert inner == [sum((x * 10 + k) * 2 for k in range(3)) for x in range(4)]
    outer = _joins(cfg, "outer")
    assert len(outer) == 1
    assert outer[0]["result"]["values"] == [
        sum((x * 10 + k) * 2 for k in range(3)) for x in range(4)
    ]
    assert outer[0]["result"]["group"]["size"] == 4


def test_branches_ending_early_and_a_group_of_one(redis_url: str) -> None:
    cfg = make_pipeline(
        redis_url,
        make_queue("gen", f"{J}:items", next=("work",), fan_out=True),
        make_queue("work", f"{J}:work_or_none", next=("gather",)),
        make_queue("gather", f"{J}:gather", join=True),
        make_queue("single", f"{J}:work", next=("gather",)),
        name="join",
    )
    _run(cfg, "gen", 6)
    out = _joins(cfg, "gather")[0]["result"]
    assert out["values"] == [0, 2, 4] and out["group"]["failed"] == []
    with cfg.sync_client() as client:
        client.enqueue("single", 21, run="one")
        trio.run(run_burst, cfg)
        client.wait_run("one", timeout=30)
        [one] = list(client.results("one", "gather"))
    assert one["result"]["values"] == [42]
    assert one["result"]["group"]["size"] == 1 and one["result"]["group"]["arrived"] == 1


def test_an_empty_fan_out_joins_with_nothing(redis_url: str) -> None:
    cfg = make_pipeline(
        redis_url,
        make_queue("gen", f"{J}:items", next=("work",), fan_out=True),
        make_queue("work", f"{J}:work", next=("gather",)),
        make_queue("gather", f"{J}:gather", join=True),
        name="join",
    )
    _run(cfg, "gen", 0)
    out = _joins(cfg, "gather")[0]["result"]
    assert out["values"] == [] and out["group"]["size"] == 0


def test_a_join_input_over_max_payload_bytes_is_dead_lettered_clearly(redis_url: str) -> None:
    cfg = make_pipeline(
        redis_url,
        make_queue("gen", f"{J}:items", next=("work",), fan_out=True),
        make_queue("work", f"{J}:big", next=("gather",)),
        make_queue("gather", f"{J}:gather", join=True, max_payload_bytes=2000),
        name="join",
    )
    _run(cfg, "gen", 10)
    [join] = _joins(cfg, "gather")
    assert join["status"] == "dead"
    assert "over max_payload_bytes (2000) of queue gather" in join["error"]["message"]


def test_wait_for_descendants_includes_a_join_that_does_not_exist_yet(redis_url: str) -> None:
    cfg = make_pipeline(
        redis_url,
        make_queue("gen", f"{J}:items", next=("work",), fan_out=True),
        make_queue("work", f"{J}:work", next=("gather",)),
        make_queue("gather", f"{J}:gather", join=True),
        name="join",
    )

    async def main() -> dict[str, int]:
        async with cfg.client() as client:
            root = await client.enqueue("gen", 50)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_burst, cfg)
                counts: dict[str, int] = await client.wait(root, timeout=60, descendants=True)
            return counts

    assert trio.run(main) == {"done": 52}


def test_a_process_join_sees_its_group(redis_url: str) -> None:
    cfg = make_pipeline(
        redis_url,
        make_queue("gen", f"{J}:items", next=("work",), fan_out=True),
        make_queue("work", f"{J}:work", next=("gather",)),
        make_queue("gather", f"{J}:gather_in_process", join=True, executor="process"),
        name="join",
    )
    _run(cfg, "gen", 3)
    assert _joins(cfg, "gather")[0]["result"] == {"values": [0, 2, 4], "size": 3}


def test_a_staged_fan_out_of_1000_joins_once_in_fan_out_order(redis_url: str) -> None:
    """More than INLINE_CHILDREN items: the group opens at the commit, the expand chunks create
    the branches, and only the last chunk lets the group close (issue 10, fan-out size)."""
    cfg = _fan_work_join(redis_url)
    root = _run(cfg, "gen", 1000)
    [join] = _joins(cfg, "gather")
    assert join["status"] == "done"
    assert join["result"]["values"] == [x * 2 for x in range(1000)]
    assert join["result"]["group"] == {
        "id": root,
        "size": 1000,
        "arrived": 1000,
        "failed": [],
        "failed_count": 0,
    }
    with cfg.sync_client() as client:
        parent = client.job(root)
        assert parent.status == "done" and parent.children == 1000
        # it went through the bounded steps (stage, commit, expand), not one complete.lua call
        assert client.redis.hget(f"rrq:{{join}}:job:{root}", "fanout_total") == "1000"
        assert client.wait(root, timeout=10, descendants=True) == {"done": 1002}
        assert not client.redis.keys("rrq:{join}:group:*")
        assert not client.redis.keys("rrq:{join}:fanout:*")


def test_a_staged_fan_out_straight_into_a_join_keeps_every_value(redis_url: str) -> None:
    """The items themselves are the join's values (children of kind 'join', staged)."""
    cfg = make_pipeline(
        redis_url,
        make_queue("gen", f"{J}:items", next=("gather",), fan_out=True),
        make_queue("gather", f"{J}:gather", join=True),
        name="join",
    )
    root = _run(cfg, "gen", 1000)
    [join] = _joins(cfg, "gather")
    assert join["result"]["values"] == list(range(1000))
    assert join["result"]["group"]["size"] == 1000 and join["result"]["group"]["id"] == root


def test_a_staged_fan_out_with_dead_branches_joins_once_with_the_rest(redis_url: str) -> None:
    cfg = _failing(redis_url, "run")
    _run(cfg, "gen", 1000)
    [join] = _joins(cfg, "gather")
    out = join["result"]
    assert out["values"] == [x * 2 for x in range(1000) if x % 50 != 7]
    group = out["group"]
    assert group["size"] == 1000 and group["arrived"] == 980 and group["failed_count"] == 20
    assert {f["state"] for f in group["failed"]} == {"dead"}
