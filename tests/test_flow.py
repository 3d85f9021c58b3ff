"""Flow control with real Redis and real worker processes: rate limits, max_running, pause.

Times that are checked come from the Redis server's clock (a job's ``started_at`` is written by
the claim script), so the checks are about the limiter, not about how fast a loaded machine
runs the workers. Sizes follow issue 14; ``RRQ_FLOW_RATE_JOBS`` makes the rate test smaller.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path

import pytest
import redis
import trio

from rrq_flow.client.admin import Admin
from rrq_flow.client.jsonl import parse_job_line
from rrq_flow.client.sync_client import SyncClient
from rrq_flow.config import load
from rrq_flow.protocol.keys import KeyLayout
from rrq_flow.worker.progress import Progress
from tests.conftest import make_pipeline, make_queue, run_burst
from tests.test_cli_run import CLI, ROOT, _history, cli, write_pipeline

# slow: real worker processes for seconds each (~3-4 min in all under load): CI's second step.
pytestmark = [pytest.mark.flow, pytest.mark.slow, pytest.mark.timeout(300)]

LAYOUT = KeyLayout("t")


def _enqueue(p: Path, queue: str, lines: list[str], tmp_path: Path) -> None:
    jobs = tmp_path / f"{queue}.jsonl"
    jobs.write_text("".join(line + "\n" for line in lines))
    out = cli("enqueue", str(p), queue, "--jsonl", str(jobs))
    assert out.returncode == 0, out.stderr


def _workers(p: Path, n: int, *extra: str) -> list[subprocess.Popen[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return [
        subprocess.Popen(
            [*CLI, "run", str(p), "--burst", *extra],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]


def _wait(procs: list[subprocess.Popen[str]], timeout: float = 90) -> None:
    errors = [proc.communicate(timeout=timeout)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * len(procs), errors


def _started_at(r: redis.Redis, ids: list[str]) -> list[int]:
    pipe = r.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(LAYOUT.job(job_id), "started_at")
    return sorted(int(v) for v in pipe.execute())


def test_rate_limit_holds_across_two_processes(
    tmp_path: Path, redis_url: str, sync_redis: redis.Redis
) -> None:
    n = int(os.environ.get("RRQ_FLOW_RATE_JOBS", "300"))
    p = write_pipeline(
        tmp_path,
        redis_url,
        "  q: {handler: 'tests.flow_handlers:noop', concurrency: 20, rate_limit: 50/s}",
    )
    ids = [f"j{i}" for i in range(n)]
    _enqueue(p, "q", [f'{{"job_id": "{i}"}}' for i in ids], tmp_path)
    _wait(_workers(p, 2))
    starts = _started_at(sync_redis, ids)
    span = (starts[-1] - starts[0]) / 1000
    ideal = (n - 1) / 50
    # 300 jobs: 5.98 s at exactly 50/s; the bounds are 5.8 s .. 6.6 s.
    assert ideal - 0.18 <= span <= ideal + 0.62, span
    # No window of one second (server clock, closed) holds more than 51 starts.
    j = 0
    for i, t in enumerate(starts):
        while starts[j] < t - 1000:
            j += 1
        assert i - j + 1 <= 51, (t, i - j + 1)


def test_max_running_caps_jobs_across_three_processes(tmp_path: Path, redis_url: str) -> None:
    p = write_pipeline(
        tmp_path,
        redis_url,
        "  q: {handler: 'tests.handlers:record', concurrency: 10, max_running: 4}",
    )
    history = tmp_path / "history.txt"
    _enqueue(p, "q", [f'["{history}", 0.3]' for _ in range(60)], tmp_path)
    _wait(_workers(p, 3))
    events = _history(history)
    assert len(events) == 60
    timeline = sorted(
        (at, 0 if kind == "end" else 1) for e in events.values() for kind, at in e
    )  # an end before a start at the same instant
    running = peak = 0
    for _, delta in timeline:
        running += 1 if delta else -1
        peak = max(peak, running)
    assert peak == 4


def test_pause_for_two_seconds_stops_starts_then_resumes(
    tmp_path: Path, redis_url: str, sync_redis: redis.Redis
) -> None:
    p = write_pipeline(
        tmp_path,
        redis_url,
        "  q: {handler: 'tests.handlers:sleep_for', concurrency: 2}",
    )
    ids = [f"j{i}" for i in range(60)]
    _enqueue(p, "q", [f'{{"job_id": "{i}", "args": [0.05]}}' for i in ids], tmp_path)
    procs = _workers(p, 1)
    # Pause once the run is under way (in this process: a CLI start may take seconds here).
    while int(sync_redis.hget(LAYOUT.queue("q").stats, "done") or 0) < 4:
        assert procs[0].poll() is None
        time.sleep(0.005)
    with load(p).sync_client() as client:
        until_s = Admin(client).pause("q", 2.0)
    assert until_s is not None
    until = round(until_s * 1000)
    paused_at = until - 2000
    _wait(procs)
    starts = _started_at(sync_redis, ids)
    assert len(starts) == 60
    inside = [t for t in starts if paused_at <= t < until]
    assert inside == []
    assert any(t < paused_at for t in starts) and any(t >= until for t in starts)


def test_pause_without_end_holds_a_burst_until_resume(
    tmp_path: Path, redis_url: str, sync_redis: redis.Redis
) -> None:
    p = write_pipeline(tmp_path, redis_url, "  q: {handler: 'tests.flow_handlers:noop'}")
    assert cli("pause", str(p), "q").returncode == 0
    _enqueue(p, "q", ["[]"] * 5, tmp_path)
    procs = _workers(p, 1)
    status = cli("status", str(p), "--json")
    flow = json.loads(status.stdout)["queues"]["q"]["flow"]
    assert flow["paused"] is True and flow["paused_until"] is None
    assert "PAUSED until resumed" in cli("status", str(p)).stdout
    # The paused queue holds jobs: the burst does not call it drained.
    with pytest.raises(subprocess.TimeoutExpired):
        procs[0].communicate(timeout=2.5)
    assert sync_redis.hget(LAYOUT.queue("q").stats, "done") is None
    resumed = cli("resume", str(p), "q")
    assert resumed.returncode == 0 and "resumed" in resumed.stdout
    err = procs[0].communicate(timeout=60)[1]
    assert procs[0].returncode == 0, err
    assert sync_redis.hget(LAYOUT.queue("q").stats, "done") == "5"


def test_pause_queue_from_a_handler_stops_the_queue(
    tmp_path: Path, redis_url: str, sync_redis: redis.Redis
) -> None:
    p = write_pipeline(
        tmp_path, redis_url, "  q: {handler: 'tests.flow_handlers:pause_once', concurrency: 1}"
    )
    ids = ["first", "second", "third"]
    _enqueue(p, "q", [f'{{"job_id": "{i}", "args": [1.5]}}' for i in ids], tmp_path)
    _wait(_workers(p, 1))
    until = int(sync_redis.hget(LAYOUT.queue("q").flow, "paused_until") or 0)
    first_end = int(sync_redis.hget(LAYOUT.job("first"), "finished_at") or 0)
    assert first_end >= until - 1500  # the pause was in place before its outcome was sent
    later = _started_at(sync_redis, ["second", "third"])
    assert all(t >= until for t in later), (later, until)


def test_higher_priority_jobs_run_next(
    tmp_path: Path, redis_url: str, sync_redis: redis.Redis
) -> None:
    p = write_pipeline(
        tmp_path, redis_url, "  q: {handler: 'tests.handlers:sleep_for', concurrency: 1}"
    )
    _enqueue(p, "q", ['{"job_id": "busy", "args": [1.0]}'], tmp_path)
    procs = _workers(p, 1)
    while sync_redis.hget(LAYOUT.job("busy"), "status") != "active":
        assert procs[0].poll() is None
        time.sleep(0.005)
    low = [f'{{"job_id": "low{i}", "args": [0]}}' for i in range(50)]
    high = [f'{{"job_id": "high{i}", "args": [0], "priority": 10}}' for i in range(5)]
    with load(p).sync_client() as client:
        client.enqueue_many("q", [parse_job_line(json.loads(line)) for line in low + high])
    _wait(procs)
    order = sorted(
        (int(sync_redis.hget(LAYOUT.job(i), "started_at") or 0), i)
        for i in ["busy"] + [f"low{k}" for k in range(50)] + [f"high{k}" for k in range(5)]
    )
    # FIFO within a priority is by enqueue time in ms; one batch shares it (then by id).
    assert order[0][1] == "busy"
    assert {i for _, i in order[1:6]} == {f"high{k}" for k in range(5)}
    assert {i for _, i in order[6:]} == {f"low{k}" for k in range(50)}


async def test_progress_line_says_a_queue_is_paused(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_pipeline(redis_url, make_queue("q", "tests.flow_handlers:noop"))
    with SyncClient(cfg) as client:
        client.enqueue_many("q", [[] for _ in range(3)])
        Admin(client).pause("q")
    progress = Progress(cfg, redis_url, ["q"], live=False, log_every=0.1)

    def paused_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "PAUSED until resumed" in r.getMessage()]

    with caplog.at_level(logging.INFO, logger="rrq_flow.progress"):
        async with trio.open_nursery() as nursery:
            await nursery.start(progress.run)
            nursery.start_soon(run_burst, cfg)
            with trio.fail_after(30):
                while not paused_lines():
                    await trio.sleep(0.05)
            with SyncClient(cfg) as client:
                Admin(client).resume("q")
            with trio.fail_after(30):
                while progress.now["q"].done < 3:
                    await trio.sleep(0.05)
            progress.finish()
    assert paused_lines()[0].startswith("progress: q: 0/3 done")


def test_enqueue_priority_flag_and_bad_priorities(
    tmp_path: Path, redis_url: str, sync_redis: redis.Redis
) -> None:
    p = write_pipeline(tmp_path, redis_url, "  q: {handler: 'tests.flow_handlers:noop'}")
    out = cli("enqueue", str(p), "q", "--job-id", "urgent", "--priority", "7")
    assert out.returncode == 0, out.stderr
    assert sync_redis.hget(LAYOUT.job("urgent"), "priority") == "7"
    assert sync_redis.zrange(LAYOUT.queue("q").ready + ":p:7", 0, -1) == ["urgent"]
    bad = cli("enqueue", str(p), "q", "--priority", "10000000")
    assert bad.returncode == 2 and "priority must be from" in bad.stderr
    lines = tmp_path / "bad.jsonl"
    lines.write_text('{"args": [], "priority": "high"}\n')
    bad_line = cli("enqueue", str(p), "q", "--jsonl", str(lines))
    assert bad_line.returncode == 2 and ":1: priority must be an integer" in bad_line.stderr
