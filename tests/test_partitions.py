"""``partitions: 3`` on a plain Redis: routing, hand-offs, burst drain, reads and refusals.

Everything runs for real (redis-server, workers); the Cluster side is tests/scale/test_cluster.py.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest
import redis
import trio

from rrq_flow import current_job
from rrq_flow.client._core import JobSpec
from rrq_flow.client.sync_client import SyncClient
from rrq_flow.config.model import PipelineConfig, RetryPolicy, ScheduleConfig
from rrq_flow.protocol.keys import KeyLayout
from rrq_flow.protocol.partitions import (
    PartitionsChanged,
    key_slot,
    layouts_for,
    partition_index,
)
from rrq_flow.worker.worker import EXIT_CONFIG, EXIT_OK, Worker
from tests.conftest import make_pipeline, make_queue, run_burst
from tests.test_cli_ops import cli, cli_json

N = 3


def partitioned(cfg: PipelineConfig, n: int = N) -> PipelineConfig:
    return dataclasses.replace(cfg, partitions=n)


def chain(redis_url: str, *stages: str) -> PipelineConfig:
    """A partitioned pipeline of ``stages`` (queue=handler), each handing off to the next."""
    names = [s.split("=")[0] for s in stages]
    queues = [
        make_queue(n, f"tests.stage_handlers:{s.split('=')[1]}", next=tuple(names[i + 1 : i + 2]))
        for i, (n, s) in enumerate(zip(names, stages, strict=True))
    ]
    return partitioned(make_pipeline(redis_url, *queues))


def jobs_by_partition(r: redis.Redis, pipeline: str = "t") -> dict[int | None, set[str]]:
    """Every job record, by the partition whose keys hold it (test-only KEYS)."""
    out: dict[int | None, set[str]] = {}
    layouts: list[tuple[int | None, KeyLayout]] = [(None, KeyLayout(pipeline))]
    layouts += list(enumerate(layouts_for(pipeline, N)))
    for part, layout in layouts:
        prefix = layout.prefix + "job:"
        out[part] = {k[len(prefix) :] for k in r.keys(prefix + "*")}
    return out


def test_partition_of_a_key_is_stable_and_spread() -> None:
    assert partition_index("abc", 1) == 0
    assert partition_index("abc", 3) == partition_index("abc", 3)
    spread = Counter(partition_index(f"job-{i}", 3) for i in range(3000))
    assert set(spread) == {0, 1, 2} and min(spread.values()) > 800


def test_partition_tags_spread_over_the_slot_ranges() -> None:
    for pipeline in ("t", "clu", "thumbnails"):
        for n in (2, 3, 5):
            layouts = layouts_for(pipeline, n)
            ranges = [key_slot(lay.tag) * n // 16384 for lay in layouts]
            assert ranges == list(range(n))
            assert all(
                lay.prefix.startswith(f"rrq:{{{pipeline}.{k}") for k, lay in enumerate(layouts)
            )
    assert layouts_for("t", 1) == (KeyLayout("t"),)


async def test_enqueue_spreads_and_a_chain_runs_in_each_partition(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    cfg = chain(redis_url, "a=double", "b=plus_one", "c=sink")
    with SyncClient(cfg) as client:
        ids = client.enqueue_many("a", [[i] for i in range(60)])
        assert len(ids) == len(set(ids)) == 60
        single = client.enqueue("a", 1000, job_id="single")
        assert single == "single"
        before = jobs_by_partition(sync_redis)
        assert not before[None]  # nothing under the unpartitioned tag
        assert all(before[k] for k in range(N))  # every partition got some
        for k in range(N):
            assert all(partition_index(i, N) == k for i in before[k])
        _, code = await run_burst(cfg)
        assert code == EXIT_OK
        after = jobs_by_partition(sync_redis)
        # Each child is in its parent's partition, ids derived from the parent's.
        for k in range(N):
            roots = before[k]
            assert {i.split(":")[0] for i in after[k]} == roots
        assert sum(len(v) for v in after.values()) == 3 * 61
        assert client.wait("single", timeout=5) == 2000
        info = client.job(f"{ids[0]}:b:0")
        assert info.status == "done" and info.result == 1
        assert client.children(ids[0]) == [f"{ids[0]}:b:0"]
        assert client.wait(ids[5], timeout=5, descendants=True) == {"done": 3}


async def test_fan_out_and_join_stay_in_one_partition(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    cfg = partitioned(
        make_pipeline(
            redis_url,
            make_queue("split", "tests.join_handlers:items", next=("each",), fan_out=True),
            make_queue("each", "tests.join_handlers:work", next=("gather",)),
            make_queue("gather", "tests.join_handlers:total", join=True),
        )
    )
    with SyncClient(cfg) as client:
        parents = [client.enqueue("split", 120, job_id=f"fan{i}") for i in range(4)]
        _, code = await run_burst(cfg)
        assert code == EXIT_OK
        for p in parents:
            assert client.wait(p, timeout=5, descendants=True) == {"done": 122}
            join = client.job(f"{p}:gather:join")
            assert join.status == "done"
    found = jobs_by_partition(sync_redis)
    for p in parents:
        k = partition_index(p, N)
        assert f"{p}:gather:join" in found[k]
        assert sum(1 for i in found[k] if i.startswith(p + ":")) == 121


async def test_unique_key_routes_by_key_so_it_stays_unique(redis_url: str) -> None:
    cfg = partitioned(make_pipeline(redis_url))
    with SyncClient(cfg) as client:
        first = client.enqueue("q", 1, unique_key="same")
        ids = {client.enqueue("q", i, unique_key="same", job_id=f"other{i}") for i in range(10)}
        assert ids == {first}


async def test_runs_and_results_add_up_over_partitions(redis_url: str) -> None:
    cfg = chain(redis_url, "a=double", "b=plus_one")
    with SyncClient(cfg) as client:
        client.enqueue_many("a", [[i] for i in range(30)], run="nightly")
        _, code = await run_burst(cfg)
        assert code == EXIT_OK
        info = client.wait_run("nightly", timeout=5)
        assert info.total == info.finished == 60 and info.finished_at is not None
        assert info.queues["b"]["done"] == 30
        assert sorted(r["result"] for r in client.results("nightly")) == [
            2 * i + 1 for i in range(30)
        ]
        assert [r.id for r in client.runs()] == ["nightly"]


async def test_changing_partitions_is_refused_while_jobs_are_held(redis_url: str) -> None:
    plain = make_pipeline(redis_url)
    with SyncClient(plain) as client:
        client.enqueue("q", 1)
    with SyncClient(partitioned(plain)) as client, pytest.raises(PartitionsChanged) as err:
        client.enqueue("q", 2)
    assert "partitions: 1" in str(err.value) and "drain" in str(err.value)
    _, code = await run_burst(partitioned(plain))
    assert code == EXIT_CONFIG
    _, code = await run_burst(plain)  # drained with the old setting
    assert code == EXIT_OK
    with SyncClient(partitioned(plain)) as client:
        client.enqueue("q", 3)  # empty now: the change is taken and recorded
    with SyncClient(plain) as client, pytest.raises(PartitionsChanged):
        client.enqueue("q", 4)


# --- the command line over partitions ----------------------------------------------------------


@pytest.fixture
def pipeline(tmp_path: Path, redis_url: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"""version: 1
pipeline: t
partitions: {N}
redis: {{url: "{redis_url}", connect_timeout: 1s, command_timeout: 2s}}
workers: {{heartbeat_interval: 500ms, shutdown_grace_period: 2s}}
queues:
  ok: {{handler: 'tests.handlers:echo', next: after}}
  after: {{handler: 'tests.handlers:echo'}}
  bad:
    handler: 'tests.handlers:always_fail'
    retry: {{max_attempts: 1, delay: 10ms, jitter: false}}
"""
    )
    return path


def test_cli_commands_see_every_partition(
    pipeline: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lines = tmp_path / "jobs.jsonl"
    lines.write_text("".join(json.dumps({"args": [i]}) + "\n" for i in range(30)))
    code, out, _ = cli(capsys, "enqueue", pipeline, "ok", "--jsonl", lines, "--run", "r1")
    assert code == 0
    ok_ids = out.split()
    assert len(ok_ids) == 30 and {partition_index(i, N) for i in ok_ids} == {0, 1, 2}
    bad_ids = [f"bad{i}" for i in range(9)]
    for jid in bad_ids:
        assert cli(capsys, "enqueue", pipeline, "bad", "--job-id", jid)[0] == 0
    assert {partition_index(i, N) for i in bad_ids} == {0, 1, 2}
    victim = "victim"
    assert cli(capsys, "enqueue", pipeline, "ok", "--job-id", victim, "--defer", "1h")[0] == 0

    code, data = cli_json(capsys, "status", pipeline)
    status = data["queues"]
    assert status["ok"]["ready"] == 30 and status["ok"]["scheduled"] == 1
    assert status["bad"]["ready"] == 9

    code, data = cli_json(capsys, "cancel", pipeline, victim)
    assert code == 0 and data["verdict"] == "cancelled"

    code, _, err = cli(capsys, "run", pipeline, "--burst", "--progress", "off")
    assert code == 1  # dead letters

    code, data = cli_json(capsys, "status", pipeline)
    status = data["queues"]
    assert status["ok"]["done"] == 30 and status["after"]["done"] == 30
    assert status["bad"]["dead"] == 9 and status["ok"]["cancelled"] == 1
    code, data = cli_json(capsys, "dlq", "list", pipeline, "--limit", "100")
    assert code == 0 and sorted(e["id"] for e in data["entries"]) == bad_ids
    code, data = cli_json(capsys, "dlq", "show", pipeline, "bad7")
    assert data["job"]["status"] == "dead"
    child = f"{ok_ids[3]}:after:0"
    code, data = cli_json(capsys, "job", pipeline, child)
    assert code == 0 and data["job"]["status"] == "done" and data["parent"]["id"] == ok_ids[3]
    code, data = cli_json(capsys, "runs", pipeline)
    assert code == 0
    (run,) = data["runs"] if isinstance(data, dict) else data
    assert run["total"] == run["finished"] == 60
    code, out, _ = cli(capsys, "results", pipeline, "--run", "r1")
    assert code == 0 and len(out.splitlines()) == 30

    code, data = cli_json(capsys, "dlq", "requeue", pipeline, "bad1", "bad2", "nope")
    assert data["count"] == 2 and data["not_found"] == ["nope"]
    code, data = cli_json(capsys, "dlq", "purge", pipeline, "--yes")
    assert code == 0
    code, data = cli_json(capsys, "status", pipeline)
    status = data["queues"]
    assert status["bad"]["dead"] == 0 and status["bad"]["ready"] == 2

    code, data = cli_json(capsys, "health", pipeline)
    assert code == 1  # no worker: the same verdict as without partitions

    # Changing the count while jobs are held: one line, exit 2, at run start and in enqueue.
    changed = pipeline.read_text().replace(f"partitions: {N}", "partitions: 2")
    pipeline.write_text(changed)
    code, _, err = cli(capsys, "run", pipeline, "--burst", "--progress", "off")
    assert code == 2 and "partitions: 3" in err and "drain" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = cli(capsys, "enqueue", pipeline, "ok")
    assert code == 2 and "partitions: 3" in err and len(err.strip().splitlines()) == 1


def test_validate_refuses_flow_limits_with_partitions(tmp_path: Path) -> None:
    from rrq_flow.config.validate import check_file

    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\npipeline: t\npartitions: 3\nqueues:\n"
        "  q: {handler: 'tests.handlers:echo', max_running: 2}\n"
    )
    (problem,) = check_file(path).problems
    assert (problem.line, problem.path) == (5, "queues.q.max_running")
    assert "per partition" in problem.message
    path.write_text("version: 1\npipeline: t\npartitions: 0\nqueues:\n  q: {handler: x:y}\n")
    (problem,) = check_file(path).problems
    assert (problem.line, problem.col, problem.path) == (3, 13, "partitions")


STARTS: list[str] = []
RUNNING = [0, 0]  # now, peak


async def tracked(x: int) -> int:
    """Records the order jobs start in and the most running at once (in this process)."""
    STARTS.append(current_job().id)
    RUNNING[0] += 1
    RUNNING[1] = max(RUNNING)
    await trio.sleep(0.01)
    RUNNING[0] -= 1
    return x


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_concurrency_is_shared_and_partitions_take_turns(
    redis_url: str, concurrency: int
) -> None:
    STARTS.clear()
    RUNNING[:] = [0, 0]
    cfg = partitioned(
        make_pipeline(
            redis_url, make_queue("q", "tests.test_partitions:tracked", concurrency=concurrency)
        )
    )
    with SyncClient(cfg) as client:
        ids = client.enqueue_many("q", [[i] for i in range(60)])
    assert len({partition_index(i, N) for i in ids}) == N
    _, code = await run_burst(cfg)
    assert code == EXIT_OK and len(STARTS) == 60
    assert RUNNING[1] == concurrency  # a per-process total, not N times it
    # Every partition gets its turns from the start: none waits for another to drain.
    first = Counter(partition_index(i, N) for i in STARTS[:30])
    assert min(first.get(k, 0) for k in range(N)) >= 5, first


async def test_cron_ticks_go_to_the_partition_of_their_id(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    base = make_pipeline(redis_url, make_queue("q"), make_queue("other"))
    tick = ScheduleConfig(name="tick", queue="q", cron="* * * * * *", catch_up="all")
    cfg = dataclasses.replace(partitioned(base), schedules={"tick": tick})
    worker = Worker(cfg, url=redis_url, queues=["other"], max_duration=2.5, handle_signals=False)
    with trio.fail_after(60):
        assert await worker.run() == EXIT_OK
    found = {
        k: set(sync_redis.zrange(lay.queue("q").ready, 0, -1))
        for k, lay in enumerate(layouts_for("t", N))
    }
    ids = set().union(*found.values())
    assert ids and all(i.startswith("schedule:tick:") for i in ids)
    assert all(partition_index(i, N) == k for k, part in found.items() for i in part)
    assert not sync_redis.zcard(KeyLayout("t").queue("q").ready)  # none in the home layout


async def test_dashboard_pages_read_every_partition(redis_url: str) -> None:
    from rrq_flow.client.admin import Admin
    from rrq_flow.client.browse import dead_counts, purge_dead, queue_jobs, throughput

    cfg = partitioned(
        make_pipeline(
            redis_url,
            make_queue("q", retry=RetryPolicy(max_attempts=1)),
            make_queue("bad", "tests.handlers:always_fail", retry=RetryPolicy(max_attempts=1)),
        )
    )
    with SyncClient(cfg) as client:
        ids = client.enqueue_many("q", [[i] for i in range(12)])
        bad = client.enqueue_many("bad", [JobSpec(job_id=f"bad{i}") for i in range(6)])
        admin = Admin(client)
        page = queue_jobs(admin, "q", "ready", limit=5)
        assert page.total == 12 and len(page.jobs) == 5
        assert all(row.status == "queued" for row in page.jobs)
        _, code = await run_burst(cfg)
        assert code == 1  # the dead ones
        dead = queue_jobs(admin, "bad", "dead", limit=50)
        assert sorted(r.id for r in dead.jobs) == sorted(bad)
        assert all(r.status == "dead" and r.error_type == "ValueError" for r in dead.jobs)
        assert sum(throughput(admin)[1]["q"].values()) == 12
        assert dead_counts(admin, [*bad, ids[0]]) == {"bad": 6}
        assert purge_dead(admin, bad[:4]) == {"bad": 4}
        assert admin.dlq_counts() == {"q": 0, "bad": 2}
