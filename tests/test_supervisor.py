"""The supervisor (``workers.processes`` > 1) as a user runs it: real processes, real signals,
real Redis. Every process a test starts is killed at the end, descendants included."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from rrq_flow.config import load
from rrq_flow.protocol.keys import KeyLayout
from tests.faults.harness import Proc, Processes, children_of, pid_alive, wait_until

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = KeyLayout("sup")
Q = LAYOUT.queue("q")


@pytest.fixture
def procs() -> Iterator[Processes]:
    registry = Processes()
    try:
        yield registry
    finally:
        registry.cleanup()


def write_pipeline(
    tmp_path: Path, redis_url: str, handler: str, *, grace: str = "5s", concurrency: int = 4
) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"""version: 1
pipeline: sup
redis: {{url: "{redis_url}", connect_timeout: 1s, command_timeout: 2s}}
defaults: {{lock_extension: 1s, retry: {{max_attempts: 2, delay: 10ms, jitter: false}}}}
workers: {{processes: 2, heartbeat_interval: 500ms, shutdown_grace_period: {grace}}}
queues:
  q: {{handler: "{handler}", concurrency: {concurrency}}}
"""
    )
    return path


def start(procs: Processes, tmp_path: Path, pipeline: Path, *args: str) -> Proc:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "rrq_flow", "run", str(pipeline), *args]
    return procs.spawn("supervisor", cmd, tmp_path, env)


def enqueue(
    pipeline: Path, args: list[list[object]], kwargs: dict[str, object] | None = None
) -> list[str]:
    from rrq_flow.client._core import JobSpec

    with load(pipeline).sync_client() as client:
        return client.enqueue_many("q", [JobSpec(args=tuple(a), kwargs=kwargs) for a in args])


def wait_workers(procs: Processes, sup: Proc, count: int, timeout: float = 30.0) -> list[int]:
    """Until ``count`` workers have started (per the log) and are children of ``sup``; they are
    remembered for the cleanup (they outlive a killed supervisor if the lifeline fails)."""
    ok = wait_until(
        lambda: sup.stderr().count("worker started") >= count and len(children_of(sup.pid)) == 2,
        timeout,
    )
    assert ok, sup.stderr()[-3000:]
    workers = children_of(sup.pid)
    procs.extra_pids.update(workers)
    return workers


def wait_active(r: redis.Redis, n: int, timeout: float = 20.0) -> None:
    assert wait_until(lambda: r.zcard(Q.active) == n, timeout), r.zcard(Q.active)


def states(r: redis.Redis, ids: list[str]) -> list[tuple[str, str]]:
    return [tuple(r.hmget(LAYOUT.job(i), "status", "attempts")) for i in ids]  # type: ignore[misc]


def test_burst_with_two_processes_exits_drained_with_one_merged_summary(
    tmp_path: Path, redis_url: str, procs: Processes
) -> None:
    p = write_pipeline(tmp_path, redis_url, "tests.handlers:sleep_for", concurrency=10)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("[0.01]\n" * 300)
    sup = start(procs, tmp_path, p, "--burst", "--input", f"q={jobs}")
    code = sup.wait(60)
    out, err = sup.stdout(), sup.stderr()
    assert code == 0, err[-3000:]
    assert out.count("rrq-flow run finished (drained)") == 1  # one summary, not one per worker
    row = next(line for line in out.splitlines() if line.startswith("q "))
    assert row.split()[1:4] == ["300", "0", "0"]  # done, retried, dead: the two workers merged
    assert "300 jobs finished" in out
    assert "worker 0 started" in err and "worker 1 started" in err
    assert err.count("stopping: drained") == 2


def test_a_worker_that_dies_is_restarted(
    tmp_path: Path, redis_url: str, procs: Processes, sync_redis: redis.Redis
) -> None:
    p = write_pipeline(tmp_path, redis_url, "tests.handlers:echo")
    sup = start(procs, tmp_path, p)
    before = wait_workers(procs, sup, 2)
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: "died unexpectedly (signal SIGKILL)" in sup.stderr(), 10)
    after = wait_workers(procs, sup, 3)  # the restarted one logged "worker started" too
    assert victim not in after and before[1] in after
    ids = enqueue(p, [[i] for i in range(20)])
    assert wait_until(lambda: all(s == ("done", "1") for s in states(sync_redis, ids)), 20)
    sup.signal(signal.SIGTERM)
    assert sup.wait(15) == 0


@pytest.mark.slow  # five worker deaths (a fault scenario, ~20 s under load): CI's second step
def test_a_crash_loop_stops_the_supervisor_with_exit_4(
    tmp_path: Path, redis_url: str, procs: Processes
) -> None:
    p = write_pipeline(tmp_path, redis_url, "tests.faults.probe:probe")
    enqueue(p, [[] for _ in range(30)], {"crash": "exit"})
    sup = start(procs, tmp_path, p)
    code = sup.wait(60)
    err = sup.stderr()
    assert code == 4, err[-3000:]
    assert re.search(r"crash loop: 5 worker deaths within 30s; stopping", err)
    assert not children_of(sup.pid)


@pytest.mark.slow  # SIGKILL + lease expiry + a second run (~25 s under load): CI's second step
def test_sigkill_of_the_supervisor_stops_its_workers_and_the_next_run_recovers(
    tmp_path: Path, redis_url: str, procs: Processes, sync_redis: redis.Redis
) -> None:
    p = write_pipeline(tmp_path, redis_url, "tests.handlers:sleep_for", concurrency=3)
    ids = enqueue(p, [[2.0] for _ in range(6)])
    sup = start(procs, tmp_path, p)
    workers = wait_workers(procs, sup, 2)
    wait_active(sync_redis, 6)
    sup.signal(signal.SIGKILL)
    sup.wait(5)
    killed = time.monotonic()
    # The lifeline: each worker sees the pipe close, stops at once and releases its jobs.
    assert wait_until(lambda: not any(pid_alive(w) for w in workers), 5), "orphan workers"
    assert time.monotonic() - killed < 5
    assert states(sync_redis, ids) == [("queued", "0")] * 6  # released, no attempt used
    again = start(procs, tmp_path, p, "--burst")
    assert again.wait(60) == 0, again.stderr()[-3000:]
    assert states(sync_redis, ids) == [("done", "1")] * 6


def test_first_sigterm_drains_in_flight_jobs(
    tmp_path: Path, redis_url: str, procs: Processes, sync_redis: redis.Redis
) -> None:
    p = write_pipeline(tmp_path, redis_url, "tests.handlers:sleep_for", grace="20s", concurrency=2)
    ids = enqueue(p, [[1.5] for _ in range(4)])
    sup = start(procs, tmp_path, p)
    wait_workers(procs, sup, 2)
    wait_active(sync_redis, 4)
    t0 = time.monotonic()
    sup.signal(signal.SIGTERM)
    assert sup.wait(25) == 0
    assert time.monotonic() - t0 < 10  # the jobs finished; no waiting out the 20 s grace
    assert states(sync_redis, ids) == [("done", "1")] * 4


def test_second_sigterm_cancels_at_once(
    tmp_path: Path, redis_url: str, procs: Processes, sync_redis: redis.Redis
) -> None:
    p = write_pipeline(tmp_path, redis_url, "tests.handlers:sleep_for", grace="20s", concurrency=2)
    ids = enqueue(p, [[60] for _ in range(4)])
    sup = start(procs, tmp_path, p)
    workers = wait_workers(procs, sup, 2)
    wait_active(sync_redis, 4)
    t0 = time.monotonic()
    sup.signal(signal.SIGTERM)
    time.sleep(0.3)
    sup.signal(signal.SIGTERM)
    assert sup.wait(10) == 0, sup.stderr()[-3000:]
    assert time.monotonic() - t0 < 10  # far below the 20 s grace
    assert not any(pid_alive(w) for w in workers)
    assert states(sync_redis, ids) == [("queued", "0")] * 4  # released, no attempt used
    assert "again: workers cancel in-flight jobs now" in sup.stderr()


@pytest.mark.slow  # a signal storm while exiting (a fault scenario, ~17 s under load)
def test_sigterms_while_the_supervisor_exits_do_not_kill_it(
    tmp_path: Path, redis_url: str, procs: Processes
) -> None:
    p = write_pipeline(tmp_path, redis_url, "tests.handlers:echo")
    sup = start(procs, tmp_path, p)
    wait_workers(procs, sup, 2)
    while sup.alive():
        sup.signal(signal.SIGTERM)
        time.sleep(0.005)
    assert sup.wait(5) == 0, sup.stderr()[-3000:]
