"""``executor: process``: a sync, CPU-bound handler runs in a separate process, and a timeout
really stops it (the process is killed, unlike a thread, which can only be abandoned).

The handlers live in this module (a process handler is imported by reference in the child).
Each test runs the worker inside ``trio_parallel.cache_scope()``, so the handler processes it
spawned are shut down when the test ends.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
import trio_parallel

from rrq_flow.client.sync_client import SyncClient
from tests.conftest import make_pipeline, make_queue, run_burst
from tests.faults.harness import pid_alive, wait_until

HERE = "tests.test_executor_process"


def cpu_bound(n: int) -> dict[str, int]:
    total = 0
    for i in range(n):
        total += i * i % 7
    return {"pid": os.getpid(), "total": total}


def spin_forever(pid_file: str) -> None:
    with open(pid_file, "a") as f:
        f.write(f"{os.getpid()}\n")
    while True:  # CPU-bound and deaf to everything: only killing the process stops it
        pass


async def test_sync_handler_runs_in_a_separate_process(redis_url: str) -> None:
    q = make_queue("q", f"{HERE}:cpu_bound", executor="process", concurrency=2)
    cfg = make_pipeline(redis_url, q)
    with SyncClient(cfg) as client:
        ids = client.enqueue_many("q", [[200_000] for _ in range(3)])
        async with trio_parallel.cache_scope():
            _, code = await run_burst(cfg)
        results = [client.job(i).result for i in ids]
    assert code == 0
    expected = sum(i * i % 7 for i in range(200_000))
    assert all(r["total"] == expected for r in results)
    assert all(r["pid"] != os.getpid() for r in results)  # not the worker's process


async def test_timeout_kills_the_handler_process_and_follows_the_retry_policy(
    redis_url: str, tmp_path: Path
) -> None:
    retry = {"max_attempts": 2, "delay": 0.01, "jitter": False}
    q = make_queue("q", f"{HERE}:spin_forever", executor="process", timeout=0.5, retry=retry)
    cfg = make_pipeline(redis_url, q)
    pid_file = tmp_path / "pids.txt"
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q", str(pid_file))
        started = time.monotonic()
        async with trio_parallel.cache_scope():
            _, code = await run_burst(cfg)
            elapsed = time.monotonic() - started
            pids = [int(line) for line in pid_file.read_text().split()]
            # Each attempt's process is gone: killed at the timeout, not left spinning (checked
            # inside the cache scope, whose exit would shut its processes down anyway).
            assert wait_until(lambda: not any(pid_alive(p) for p in pids), 5.0), pids
        info = client.job(job_id)
    assert len(pids) == 2 and pids[0] != pids[1] and os.getpid() not in pids
    assert code == 1
    assert info.status == "dead" and info.attempts == 2
    assert [e["message"] for e in info.errors] == ["timed out after 0.5s"] * 2
    assert elapsed < 120  # generous: this machine may be loaded; a hang would be far longer


def context_in_process(x: int) -> dict[str, object]:
    from rrq_flow import current_job

    ctx = current_job()
    ctx.logger.info("inside process job %s", ctx.id)
    ctx.enqueue("q2", x + 1)
    return {
        "pid": os.getpid(),
        "id": ctx.id,
        "queue": ctx.queue,
        "attempt": ctx.attempt,
        "max_attempts": ctx.max_attempts,
        "epoch": ctx.epoch,
        "parent": ctx.parent,
        "deadline_left": ctx.deadline - time.time(),
    }


async def test_current_job_works_in_a_process_handler(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Reproduction 6: current_job() used to raise (cannot pickle '_contextvars.ContextVar')."""
    caplog.set_level(logging.INFO, logger="rrq_flow.job")
    q = make_queue("q", f"{HERE}:context_in_process", executor="process", timeout=30)
    cfg = make_pipeline(redis_url, q, make_queue("q2", "tests.handlers:echo"))
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q", 1)
        async with trio_parallel.cache_scope():
            worker, code = await run_burst(cfg)
        info = client.job(job_id)
    assert code == 0, info.error
    r = info.result
    assert r["pid"] != os.getpid() and r["id"] == job_id and r["queue"] == "q"
    assert (r["attempt"], r["max_attempts"], r["epoch"], r["parent"]) == (1, 3, 1, None)
    assert 0 < r["deadline_left"] <= 31
    assert worker.stats.queues["q2"].done == 1  # the outbox reached Redis
    (record,) = [r for r in caplog.records if "inside process job" in r.getMessage()]
    assert record.__dict__.get("job_id") == job_id


def returns_an_object() -> object:
    return object()


def raises_system_exit() -> None:
    raise SystemExit("bye")


async def test_process_handler_outcomes_that_cannot_be_pickled_back(redis_url: str) -> None:
    """An unpicklable result used to hang the call until the timeout; SystemExit would end the
    pool's process. Both are outcomes like any other, recorded at once."""
    retry = {"max_attempts": 2, "delay": 0.01, "jitter": False}
    q = make_queue("q", f"{HERE}:returns_an_object", executor="process", timeout=60, retry=retry)
    q2 = make_queue("q2", f"{HERE}:raises_system_exit", executor="process", timeout=60, retry=retry)
    cfg = make_pipeline(redis_url, q, q2)
    with SyncClient(cfg) as client:
        obj, exiting = client.enqueue("q"), client.enqueue("q2")
        async with trio_parallel.cache_scope():
            _, code = await run_burst(cfg)
        obj_info, exit_info = client.job(obj), client.job(exiting)
    assert code == 1
    assert obj_info.status == "dead" and obj_info.attempts == 1
    assert "not JSON" in obj_info.error["message"]
    assert exit_info.status == "dead" and exit_info.attempts == 2
    assert exit_info.error["type"] == "SystemExit" and exit_info.error["message"] == "bye"
