"""Scenario 5: redis-server killed without persistence and restarted empty.

Queued and running jobs are gone; nothing can bring them back, but it must not go unnoticed.
Every worker — a single process and a supervisor with two workers — must stop with exit code 3
and say "Redis lost the data" (the pipeline's generation id is gone or different), instead of
idling silently on an empty Redis.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults.harness import (
    LAYOUT,
    Fault,
    FaultRun,
    Processes,
    Settings,
    fault_jobs,
    make_jobs,
    mean_duration,
    report,
    scenario_timeout,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(scenario_timeout())]

DETECT_WITHIN = 10.0  # seconds after Redis is back


def test_restart_without_persistence_is_detected(
    seed: int, procs: Processes, fault_dir: Path
) -> None:
    s = Settings()
    run = FaultRun("data-loss", fault_dir, procs, seed, s, appendonly=False)
    n = fault_jobs()
    jobs = make_jobs(run.rng, n, seed=seed, mean=mean_duration(n, 3 * s.concurrency, 8.0))
    single = run.start_worker()
    supervised = run.start_worker("--processes", "2", name="supervisor")
    run.wait_started(single)
    assert wait_until(lambda: supervised.stderr().count("worker started") == 2, 20)
    producer = run.produce(jobs, spread=2.0)
    time.sleep(run.rng.uniform(0.5, 1.5))
    t0 = time.time()
    run.redis.kill()
    producer.stop.set()
    producer.join(30)
    time.sleep(run.rng.uniform(0.1, 1.0))
    run.redis.start()
    back = time.time()
    run.faults.append(Fault("redis-kill-empty", t0, back))

    codes = {}
    for proc in (single, supervised):
        remaining = max(0.1, back + DETECT_WITHIN - time.time())
        codes[proc.name] = proc.wait(remaining)
    took = time.time() - back

    r = run.redis.client()
    acked = [e.job.id for e in producer.log if e.status == "ok"]
    gone = sum(1 for i in acked if not r.exists(LAYOUT.job(i)))
    r.close()
    report(
        {
            "scenario": run.name,
            "seed": seed,
            "jobs_acknowledged_before_crash": len(acked),
            "jobs_gone": gone,
            "detected_within_s": round(took, 2),
            "exit_codes": codes,
        }
    )
    assert codes == {single.name: 3, supervised.name: 3}, run.log_tail()
    assert "Redis lost the data of pipeline 'faults'" in single.stderr()
    assert "Redis lost the data of pipeline 'faults'" in supervised.stderr()
    assert gone > 0  # the loss was real, and it was reported instead of ignored
