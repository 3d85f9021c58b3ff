"""The operations commands (status, workers, job, dlq, cancel, health) as a user runs them, on a
YAML pipeline and the real test Redis: exit codes, text, and every documented --json key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
import trio

from rrq_flow.cli import main
from rrq_flow.client.sync_client import SyncClient
from rrq_flow.config import load
from rrq_flow.protocol.keys import KeyLayout
from rrq_flow.worker.worker import Worker
from tests.conftest import run_burst

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = KeyLayout("t")

STATUS_QUEUE_KEYS = {
    "ready", "scheduled", "retrying", "active", "done", "dead", "failed", "cancelled",
    "enqueued", "oldest_ready_age", "throughput_per_min", "flow",
}  # fmt: skip
WORKER_KEYS = {
    "id", "host", "pid", "queues", "in_flight", "started_at", "uptime", "last_beat",
    "last_beat_age", "interval", "version", "burst", "stopping", "alive", "holds", "stuck_for",
    "stuck",
}  # fmt: skip
DEAD_ENTRY_KEYS = {
    "id", "queue", "died_at", "attempts", "max_attempts", "dead_reason", "error_type",
    "error_message",
}  # fmt: skip


@pytest.fixture
def pipeline(tmp_path: Path, redis_url: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"""version: 1
pipeline: t
redis: {{url: "{redis_url}", connect_timeout: 1s, command_timeout: 2s}}
workers: {{heartbeat_interval: 500ms, shutdown_grace_period: 2s}}
queues:
  ok: {{handler: 'tests.handlers:echo', next: after}}
  after: {{handler: 'tests.handlers:echo'}}
  bad:
    handler: 'tests.handlers:always_fail'
    retry: {{max_attempts: 2, delay: 10ms, jitter: false}}
  slow: {{handler: 'tests.handlers:sleep_for', lock_extension: 300ms}}
"""
    )
    return path


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, Any]:
    code, out, _ = cli(capsys, *args, "--json")
    return code, json.loads(out)


async def cli_in_thread(
    capsys: pytest.CaptureFixture[str], *args: str | Path
) -> tuple[int, str, str]:
    """Run a command while a worker runs on this trio loop."""
    code = await trio.to_thread.run_sync(main, [str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# --- status -----------------------------------------------------------------------------------


async def test_status_counts_and_json_shape(
    pipeline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load(pipeline)
    with SyncClient(cfg) as client:
        client.enqueue_many("ok", [[i] for i in range(3)])
        client.enqueue("bad")
        await run_burst(cfg, queues=["ok", "after", "bad"])
        client.enqueue("ok", "waiting")
        client.enqueue("ok", "later", defer=3600)
    code, out, _ = cli(capsys, "status", pipeline)
    assert code == 0
    lines = out.splitlines()
    header = ["queue", "ready", "scheduled", "retrying", "active", "done", "dead"]
    assert lines[0].split()[:7] == header
    ok_row = next(line for line in lines if line.startswith("ok "))
    assert ok_row.split()[1:7] == ["1", "1", "0", "0", "3", "0"]
    assert next(line for line in lines if line.startswith("bad ")).split()[6] == "1"
    assert "0 live worker(s)" in out
    code, data = cli_json(capsys, "status", pipeline)
    assert code == 0 and set(data) == {"time", "queues", "workers", "schedules"}
    assert list(data["queues"]) == ["ok", "after", "bad", "slow"]
    for q in data["queues"].values():
        assert set(q) == STATUS_QUEUE_KEYS
    ok, bad, after = data["queues"]["ok"], data["queues"]["bad"], data["queues"]["after"]
    assert (ok["ready"], ok["scheduled"], ok["done"], ok["enqueued"]) == (1, 1, 3, 5)
    assert ok["throughput_per_min"] == 3 and ok["oldest_ready_age"] >= 0
    assert (after["done"], bad["dead"], bad["throughput_per_min"]) == (3, 1, 1)
    assert data["workers"] == {"alive": 0, "stale": 0, "list": []}


def test_status_watch_redraws_until_interrupted(
    pipeline: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []

    def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr("rrq_flow.cli.status.time.sleep", fake_sleep)
    code, out, _ = cli(capsys, "status", pipeline, "--watch", "2", "--json")
    assert code == 0 and sleeps == [2.0, 2.0, 2.0]
    docs = [json.loads(line) for line in out.splitlines()]
    assert len(docs) == 3 and all(
        set(d) == {"time", "queues", "workers", "schedules"} for d in docs
    )


# --- workers and health -----------------------------------------------------------------------


async def test_workers_and_health_with_a_running_worker(
    pipeline: Path, capsys: pytest.CaptureFixture[str], sync_redis: redis.Redis
) -> None:
    code, out, err = await cli_in_thread(capsys, "health", pipeline)
    assert code == 1 and "no live worker serves queue 'ok'" in err
    cfg = load(pipeline)
    worker = Worker(cfg, url=str(cfg.redis.url), handle_signals=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        with trio.fail_after(5):
            while sync_redis.zscore(LAYOUT.workers, worker.worker_id) is None:
                await trio.sleep(0.01)
        code, out, err = await cli_in_thread(capsys, "health", pipeline)
        assert code == 0 and out.startswith("ok:")
        code, out, err = await cli_in_thread(capsys, "health", pipeline, "--queue", "bad", "--json")
        health = json.loads(out)
        assert code == 0 and health == {"ok": True, "reasons": [], "live_workers": {"bad": 1}}
        code, out, err = await cli_in_thread(capsys, "workers", pipeline)
        assert code == 0 and worker.worker_id in out and "alive" in out
        code, out, err = await cli_in_thread(capsys, "workers", pipeline, "--json")
        listing = json.loads(out)
        assert set(listing) == {"time", "workers"}
        (w,) = listing["workers"]
        assert set(w) == WORKER_KEYS
        assert w["id"] == worker.worker_id and w["pid"] == os.getpid() and w["alive"]
        assert w["queues"] == ["ok", "after", "bad", "slow"] and w["interval"] == 0.5
        code, out, err = await cli_in_thread(capsys, "status", pipeline, "--json")
        assert json.loads(out)["workers"]["alive"] == 1
        worker.request_stop("test over")
    # A worker that went silent (killed) turns stale after 2.5 intervals and fails the check.
    sync_redis.zadd(LAYOUT.workers, {"ghost": 1})
    code, out, err = await cli_in_thread(capsys, "health", pipeline, "--json")
    health = json.loads(out)
    assert code == 1 and not health["ok"] and len(health["reasons"]) == 4
    code, out, err = await cli_in_thread(capsys, "workers", pipeline, "--json")
    assert [(w["id"], w["alive"]) for w in json.loads(out)["workers"]] == [("ghost", False)]


def test_health_of_an_unknown_queue_is_a_usage_error(
    pipeline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "health", pipeline, "--queue", "nope")
    assert code == 2 and "unknown queue 'nope'" in err and "ok, after, bad, slow" in err


# --- job --------------------------------------------------------------------------------------


async def test_job_shows_result_errors_and_stages(
    pipeline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load(pipeline)
    with SyncClient(cfg) as client:
        ok_id = client.enqueue("ok", "x")
        bad_id = client.enqueue("bad")
        await run_burst(cfg, queues=["ok", "after", "bad"])
    code, out, _ = cli(capsys, "job", pipeline, ok_id)
    assert code == 0 and "status       done" in out and '"args": ["x"]' in out
    assert "children     1" in out
    code, data = cli_json(capsys, "job", pipeline, ok_id)
    assert set(data) == {"job", "parent", "children", "owner"}
    assert data["job"]["status"] == "done" and data["job"]["result"]["args"] == ["x"]
    assert data["owner"] is None and data["parent"] is None
    (child,) = data["children"]
    assert set(child) == {"id", "queue", "status"} and child["status"] == "done"
    _, child_data = cli_json(capsys, "job", pipeline, child["id"])
    assert child_data["parent"] == {"id": ok_id, "queue": "ok", "status": "done"}
    code, out, _ = cli(capsys, "job", pipeline, bad_id)
    assert code == 0 and "status       dead" in out
    assert "last error (attempt 2): ValueError: bad input" in out and "Traceback" in out
    assert "earlier attempts (newest first):\n  attempt 1: ValueError: bad input" in out
    _, bad = cli_json(capsys, "job", pipeline, bad_id)
    assert bad["job"]["error"]["type"] == "ValueError" and len(bad["job"]["errors"]) == 2
    code, out, err = cli(capsys, "job", pipeline, "nope")
    assert code == 1 and out == "" and "no job 'nope'" in err


async def test_ids_victim_errors_then_victim_both_end_dead_and_show(
    pipeline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 10 reproduction 3: with ids ``victim:errors`` and then ``victim`` and a failing
    handler, fail.lua hit WRONGTYPE half-way and lost ``victim``. Both now end dead, counted by
    status, and ``rrq-flow job`` shows them."""
    cfg = load(pipeline)
    with SyncClient(cfg) as client:
        client.enqueue("bad", job_id="victim:errors")
        client.enqueue("bad", job_id="victim")
        await run_burst(cfg, queues=["bad"])
        assert {client.job(i).status for i in ("victim:errors", "victim")} == {"dead"}
    code, data = cli_json(capsys, "status", pipeline)
    assert code == 0 and data["queues"]["bad"]["dead"] == 2
    assert data["queues"]["bad"]["active"] == 0
    for job_id in ("victim", "victim:errors"):
        code, out, err = cli(capsys, "job", pipeline, job_id)
        assert code == 0 and "status       dead" in out and err == ""
        assert job_id in out


async def test_job_shows_the_worker_holding_an_active_job(
    pipeline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load(pipeline)
    worker = Worker(cfg, url=str(cfg.redis.url), queues=["slow"], handle_signals=False)
    with SyncClient(cfg) as client:
        job_id = client.enqueue("slow", 30)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            with trio.fail_after(5):
                while client.job(job_id).status != "active":
                    await trio.sleep(0.01)
            await trio.sleep(0.6)  # a heartbeat with the job in flight
            code, out, _ = await cli_in_thread(capsys, "job", pipeline, job_id, "--json")
            data = json.loads(out)
            assert code == 0 and data["job"]["owner"] == worker.worker_id
            assert data["owner"]["id"] == worker.worker_id and data["owner"]["alive"]
            assert data["owner"]["in_flight"] == 1
            code, out, _ = await cli_in_thread(capsys, "job", pipeline, job_id)
            assert f"worker       {worker.worker_id}" in out and "alive" in out
            worker.request_stop("test over")
            worker.hard_stop.set()  # release the job now, no grace period


# --- cancel -----------------------------------------------------------------------------------


async def test_cancel_in_every_state(
    pipeline: Path, capsys: pytest.CaptureFixture[str], sync_redis: redis.Redis
) -> None:
    cfg = load(pipeline)
    with SyncClient(cfg) as client:
        queued = client.enqueue("ok", 1)
        scheduled = client.enqueue("ok", 2, defer=3600)
        retrying = client.enqueue("bad")
        # Make 'retrying' wait: a burst worker on 'bad' with a long backoff is overkill; move
        # it by hand the way fail.lua does.
        sync_redis.zrem(LAYOUT.queue("bad").ready, retrying)
        sync_redis.zadd(LAYOUT.queue("bad").retry, {retrying: 10**13})
        sync_redis.hset(LAYOUT.job(retrying), "status", "retrying")
        for job_id, before in (
            (queued, "queued"),
            (scheduled, "scheduled"),
            (retrying, "retrying"),
        ):
            code, data = cli_json(capsys, "cancel", pipeline, job_id)
            assert code == 0
            assert data == {"id": job_id, "queue": data["queue"], "verdict": "cancelled"} | {
                "status_before": before
            }
            assert client.job(job_id).status == "cancelled"
        code, out, _ = cli(capsys, "cancel", pipeline, queued)
        assert code == 0 and "already finished (cancelled)" in out
        done = client.enqueue("after", 3)
        await run_burst(cfg, queues=["after"])
        code, _, err = cli(capsys, "cancel", pipeline, done)
        assert code == 1 and "already finished (done)" in err
        code, data = cli_json(capsys, "cancel", pipeline, "nope")
        assert code == 1 and data["verdict"] == "missing"

        # Active: the worker sees the request at its next lease renewal (lock_extension 0.3 s).
        running = client.enqueue("slow", 30)
        worker = Worker(cfg, url=str(cfg.redis.url), queues=["slow"], handle_signals=False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            with trio.fail_after(5):
                while client.job(running).status != "active":
                    await trio.sleep(0.01)
            code, out, err = await cli_in_thread(capsys, "cancel", pipeline, running)
            assert code == 0 and "cancellation requested" in out
            with trio.fail_after(3):
                while client.job(running).status != "cancelled":
                    await trio.sleep(0.01)
            worker.request_stop("test over")
        assert client.job(running).attempts == 1


# --- dead letters -----------------------------------------------------------------------------


async def test_dlq_list_show_and_their_json(
    pipeline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load(pipeline)
    with SyncClient(cfg) as client:
        ids = client.enqueue_many("bad", [[] for _ in range(3)])
        ok_id = client.enqueue("after", 1)
        await run_burst(cfg, queues=["bad", "after"])
    code, out, _ = cli(capsys, "dlq", "list", pipeline)
    assert code == 0 and "ValueError: bad input" in out and "3 dead (bad 3)" in out
    code, data = cli_json(capsys, "dlq", "list", pipeline, "bad", "--limit", "2")
    assert code == 0 and set(data) == {"total", "counts", "entries"}
    assert data["total"] == 3 and data["counts"] == {"bad": 3} and len(data["entries"]) == 2
    entry = data["entries"][0]
    assert set(entry) == DEAD_ENTRY_KEYS and entry["id"] in ids
    assert (entry["queue"], entry["attempts"], entry["dead_reason"]) == (
        "bad",
        2,
        "out of attempts",
    )
    code, out, _ = cli(capsys, "dlq", "show", pipeline, ids[0])
    assert code == 0 and "Traceback" in out and "dead reason  out of attempts" in out
    code, data = cli_json(capsys, "dlq", "show", pipeline, ids[0])
    assert code == 0 and data["job"]["status"] == "dead"
    code, _, err = cli(capsys, "dlq", "show", pipeline, ok_id)
    assert code == 1 and "not in the dead-letter queue (status done)" in err
    code, _, err = cli(capsys, "dlq", "list", pipeline, "nope")
    assert code == 2 and "unknown queue 'nope'" in err


async def test_dlq_requeue_of_a_thousand_dead_jobs_then_they_run(
    pipeline: Path, capsys: pytest.CaptureFixture[str], sync_redis: redis.Redis
) -> None:
    cfg = load(pipeline)
    n = 1000
    with SyncClient(cfg) as client:
        ids = client.enqueue_many("bad", [[] for _ in range(n)])
        # First run: the handler fails, every job ends dead.
        _, code = await run_burst(cfg, queues=["bad"])
        assert code == 1 and sync_redis.zcard(LAYOUT.queue("bad").dead) == n
        code, data = cli_json(capsys, "dlq", "requeue", pipeline, "--all", "--dry-run")
        assert code == 0 and data["dry_run"] and data["count"] == n
        assert set(data) == {"dry_run", "count", "moved", "not_found", "not_in_dlq"}
        assert sync_redis.zcard(LAYOUT.queue("bad").dead) == n  # nothing moved
        code, out, _ = cli(capsys, "dlq", "requeue", pipeline, "--all", "--queue", "bad")
        assert code == 0 and out.strip() == f"requeued {n} job(s) (bad {n})"
        assert sync_redis.zcard(LAYOUT.queue("bad").dead) == 0
        assert sync_redis.zcard(LAYOUT.queue("bad").ready) == n
        info = client.job(ids[0])
        assert (info.status, info.attempts) == ("queued", 0)
        # Second run, the bug fixed: every requeued job runs to done.
        from tests.handlers import echo

        _, code = await run_burst(cfg, queues=["bad"], handlers={"bad": echo})
        assert code == 0
    _, status = cli_json(capsys, "status", pipeline)
    assert (status["queues"]["bad"]["done"], status["queues"]["bad"]["dead"]) == (n, 0)


async def test_dlq_requeue_by_id_and_usage_errors(
    pipeline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load(pipeline)
    with SyncClient(cfg) as client:
        a, b = client.enqueue_many("bad", [[], []])
        await run_burst(cfg, queues=["bad"])
        code, data = cli_json(capsys, "dlq", "requeue", pipeline, a, "nope")
        assert code == 1 and data["moved"] == {"bad": [a]} and data["not_found"] == ["nope"]
        assert client.job(a).status == "queued" and client.job(b).status == "dead"
    code, _, err = cli(capsys, "dlq", "requeue", pipeline)
    assert code == 2 and "--all" in err
    code, _, err = cli(capsys, "dlq", "requeue", pipeline, b, "--all")
    assert code == 2
    code, _, err = cli(capsys, "dlq", "requeue", pipeline, "--all", "--queue", "nope")
    assert code == 2 and "unknown queue" in err


async def test_dlq_purge_needs_yes_then_deletes_the_records(
    pipeline: Path, capsys: pytest.CaptureFixture[str], sync_redis: redis.Redis
) -> None:
    cfg = load(pipeline)
    with SyncClient(cfg) as client:
        ids = client.enqueue_many("bad", [[] for _ in range(5)])
        await run_burst(cfg, queues=["bad"])
    code, out, err = cli(capsys, "dlq", "purge", pipeline)
    assert code == 2 and out == ""
    assert "would delete 5 dead job(s) for good (bad 5); add --yes" in err
    assert sync_redis.zcard(LAYOUT.queue("bad").dead) == 5
    code, data = cli_json(capsys, "dlq", "purge", pipeline, "bad", "--yes")
    assert code == 0 and data == {"count": 5, "purged": {"bad": 5}}
    assert sync_redis.zcard(LAYOUT.queue("bad").dead) == 0
    assert not any(sync_redis.exists(LAYOUT.job(i), LAYOUT.job_errors(i)) for i in ids)
    code, out, _ = cli(capsys, "dlq", "purge", pipeline, "--yes")
    assert code == 0 and out.strip() == "deleted 0 dead job(s)"


# --- Redis unreachable ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["status", "P"],
        ["workers", "P"],
        ["job", "P", "x"],
        ["dlq", "list", "P"],
        ["dlq", "requeue", "P", "--all"],
        ["dlq", "purge", "P", "--yes"],
        ["cancel", "P", "x"],
        ["health", "P"],
    ],
)
def test_redis_unreachable_exits_3_with_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        f"""version: 1
pipeline: t
redis: {{url: "unix://{tmp_path}/nothing.sock", connect_timeout: 1s}}
queues:
  ok: {{handler: 'tests.handlers:echo'}}
"""
    )
    code, out, err = cli(capsys, *(str(path) if a == "P" else a for a in command))
    assert code == 3 and out == ""
    assert err.startswith(f"rrq-flow: cannot reach Redis at unix://{tmp_path}/nothing.sock")
    assert len(err.strip().splitlines()) == 1


def test_cli_client_does_not_retry_a_refused_connection(tmp_path: Path) -> None:
    """redis-py retries with backoff by default (about 4 s to say "down"); the CLI asks once.
    Producers keep the default: a web app rides out a Redis restart."""
    path = tmp_path / "p.yaml"
    path.write_text(
        f'version: 1\npipeline: t\nredis: {{url: "unix://{tmp_path}/x.sock"}}\n'
        "queues:\n  ok: {handler: 'tests.handlers:echo'}\n"
    )
    config = load(path)
    with SyncClient(config, fail_fast=True) as cli_client, SyncClient(config) as producer:
        assert cli_client.redis.get_retry().get_retries() == 0
        assert producer.redis.get_retry().get_retries() > 0


def test_console_command_end_to_end(pipeline: Path) -> None:
    """The installed entry point, not just main(): help teaches, --json parses."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = [sys.executable, "-m", "rrq_flow"]
    for command in (["status"], ["workers"], ["dlq", "list"], ["health"]):
        helptext = subprocess.run(
            [*run, *command, "--help"], capture_output=True, text=True, cwd=ROOT, env=env
        )
        assert helptext.returncode == 0 and "example" in helptext.stdout
    out = subprocess.run(
        [*run, "status", str(pipeline), "--json"], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert out.returncode == 0, out.stderr
    assert set(json.loads(out.stdout)) == {"time", "queues", "workers", "schedules"}
