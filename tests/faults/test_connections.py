"""Scenario 6: connections dropped and Redis frozen.

``CLIENT KILL TYPE normal`` cuts every client connection (workers' and producer's; a call in
flight may or may not have been executed), and SIGSTOP freezes redis-server for a while shorter
than a lease, and longer than a lease and than the command timeout (the workers' leases run out
by Redis' clock, their calls time out and are retried). Nothing may be lost and each job must
end in exactly one terminal state; the workers must carry on by themselves.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

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

pytestmark = [pytest.mark.faults, pytest.mark.timeout(scenario_timeout())]


def test_dropped_connections_and_frozen_redis(seed: int, procs: Processes, fault_dir: Path) -> None:
    s = Settings()
    run = FaultRun("connections", fault_dir, procs, seed, s)
    n = fault_jobs()
    # A few jobs hang past the timeout on their first attempt: timeouts fire during freezes.
    mean = mean_duration(n, 2 * s.concurrency, 5.0)
    jobs = make_jobs(run.rng, n, seed=seed, mean=mean, hang_ratio=min(0.02, 5 / n))
    workers = [run.start_worker(), run.start_worker()]
    for w in workers:
        run.wait_started(w)
    run.produce(jobs, spread=4.0)

    freeze_short = 0.3 * s.lock_extension
    freeze_long = 2.5 * s.lock_extension  # also past the 2 s command timeout
    plan = ["client-kill", "client-kill", "freeze-short", "freeze-long"]
    plan += ["client-kill"] * (n // 2000) + ["freeze-long"] * (n // 5000)
    run.rng.shuffle(plan)
    killed = 0
    admin = run.redis.client()
    try:
        for kind in plan:
            time.sleep(run.rng.uniform(0.3, 0.9))
            t0 = time.time()
            if kind == "client-kill":
                killed += int(admin.client_kill_filter(_type="normal"))
            else:
                run.redis.freeze()
                time.sleep(freeze_short if kind == "freeze-short" else freeze_long)
                run.redis.thaw()
            run.faults.append(Fault(kind, t0, time.time()))
    finally:
        run.redis.thaw()
        admin.close()

    run.producer.join(60)  # type: ignore[union-attr]
    run.wait_drained(90)
    assert [w.alive() for w in workers] == [True, True], run.log_tail()
    codes = run.stop_workers()
    rep = check(run)
    rep.figures.update(connections_killed=killed, plan=plan)
    report(rep.figures)
    rep.assert_ok()
    assert codes == [0, 0], run.log_tail()
    assert killed > 0
