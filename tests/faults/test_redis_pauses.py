"""Redis itself stops serving for a while; no job may pay for it (issue 10, reproduction 5).

``pause``: redis-server is SIGSTOPped twice for 2.5 s with a 1 s lease and ``max_stalls: 1``:
every running job's lease runs out by Redis' clock, but Redis was not serving, so none of them
may be counted as a stall (none ends dead/stalled, no record counts a stall).
``busy``: another client runs a long script (``BUSY`` replies to everyone else, the busy
threshold lowered to make it quick) while jobs run: 0 lost, the workers carry on.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis

from tests.faults.checker import check
from tests.faults.harness import (
    Fault,
    FaultRun,
    Processes,
    Settings,
    fault_jobs,
    make_jobs,
    mean_duration,
    report,
    scenario_timeout,
)

# slow as well: left out of the default run (about 40 s here), run by .ci/run after it.
pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(scenario_timeout())]


def test_redis_pauses_are_not_the_jobs_stalls(seed: int, procs: Processes, fault_dir: Path) -> None:
    s = Settings(max_stalls=1, timeout=10.0)
    run = FaultRun("redis-pause", fault_dir, procs, seed, s)
    n = fault_jobs()
    jobs = make_jobs(run.rng, n, seed=seed, mean=mean_duration(n, 2 * s.concurrency, 6.0))
    workers = [run.start_worker(), run.start_worker()]
    for w in workers:
        run.wait_started(w)
    run.produce(jobs, spread=3.0)
    try:
        for _ in range(2):
            time.sleep(run.rng.uniform(0.5, 1.5))
            t0 = time.time()
            run.redis.freeze()
            time.sleep(2.5 * s.lock_extension)
            run.redis.thaw()
            run.faults.append(Fault("redis-pause", t0, time.time()))
    finally:
        run.redis.thaw()
    run.producer.join(60)  # type: ignore[union-attr]
    run.wait_drained(90)
    assert [w.alive() for w in workers] == [True, True], run.log_tail()
    codes = run.stop_workers()
    rep = check(run, expect_no_stalls=True)
    report(rep.figures)
    rep.assert_ok()
    assert codes == [0, 0], run.log_tail()


def test_busy_redis_loses_nothing(seed: int, procs: Processes, fault_dir: Path) -> None:
    s = Settings()
    run = FaultRun("redis-busy", fault_dir, procs, seed, s)
    n = fault_jobs()
    jobs = make_jobs(run.rng, n, seed=seed, mean=mean_duration(n, 2 * s.concurrency))
    workers = [run.start_worker(), run.start_worker()]
    for w in workers:
        run.wait_started(w)
    admin = run.redis.client()
    admin.config_set("lua-time-limit", 50)
    run.produce(jobs, spread=3.0)
    busy = []
    try:
        for _ in range(2 + n // 4000):
            time.sleep(run.rng.uniform(0.3, 1.0))
            length = run.rng.uniform(0.5, 2.0)
            t0 = time.time()
            spin_for(run, admin, length)
            run.faults.append(Fault("redis-busy", t0, time.time()))
            busy.append(round(length, 2))
    finally:
        admin.close()
    run.producer.join(60)  # type: ignore[union-attr]
    run.wait_drained(90)
    assert [w.alive() for w in workers] == [True, True], run.log_tail()
    codes = run.stop_workers()
    rep = check(run)
    rep.figures.update(busy=busy)
    report(rep.figures)
    rep.assert_ok()
    assert codes == [0, 0], run.log_tail()
    assert "BUSY" in run.worker_logs()


def spin_for(run: FaultRun, admin: redis.Redis, seconds: float) -> None:
    """Another client runs a script that spins; it is killed after ``seconds``."""

    def spin() -> None:
        r = run.redis.client()
        try:
            r.eval("while true do end", 0)
        except redis.ResponseError:
            pass  # killed
        finally:
            r.close()

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    time.sleep(seconds)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            admin.script_kill()
            break
        except redis.ResponseError:  # NOTBUSY: not started yet
            time.sleep(0.02)
    spinner.join(10)
