"""Scenario 4: redis-server restarted under load, with AOF persistence.

``clean``: SIGTERM (Redis writes its AOF out and exits) with ``appendfsync everysec``.
``crash``: SIGKILL with ``appendfsync always`` — with ``everysec`` a crash may lose the last
second of writes Redis had already acknowledged (see docs/guarantees.md), so only ``always``
can promise that nothing acknowledged is lost.

Redis stays down for a seeded while, then comes back on the same port and data directory.
The workers must ride it out and reconnect by themselves (none exits), and every invariant
holds: nothing acknowledged lost, one terminal state each, no stale result.
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


@pytest.mark.parametrize(("mode", "fsync"), [("clean", "everysec"), ("crash", "always")])
def test_redis_restart_loses_nothing(
    mode: str, fsync: str, seed: int, procs: Processes, fault_dir: Path
) -> None:
    s = Settings()
    run = FaultRun(f"redis-restart-{mode}", fault_dir, procs, seed, s, fsync=fsync)
    n = fault_jobs()
    jobs = make_jobs(run.rng, n, seed=seed, mean=mean_duration(n, 2 * s.concurrency))
    workers = [run.start_worker(), run.start_worker()]
    for w in workers:
        run.wait_started(w)
    run.produce(jobs, spread=4.0)

    downtimes = []
    for _ in range(2 + n // 4000):
        time.sleep(run.rng.uniform(0.4, 1.2))
        t0 = time.time()
        if mode == "clean":
            run.redis.stop()
        else:
            run.redis.kill()
        down = run.rng.uniform(0.2, 2.0)
        time.sleep(down)
        run.redis.start()
        run.faults.append(Fault(f"redis-{mode}", t0, time.time(), None, {"down": down}))
        downtimes.append(round(down, 2))

    run.producer.join(60)  # type: ignore[union-attr]
    run.wait_drained(90)
    assert [w.alive() for w in workers] == [True, True], run.log_tail()
    codes = run.stop_workers()
    rep = check(run)
    logs = run.worker_logs()
    rep.figures.update(downtimes=downtimes, fsync=fsync)
    report(rep.figures)
    rep.assert_ok()
    assert codes == [0, 0], run.log_tail()
    assert "Redis unreachable" in logs and "Redis reachable again" in logs
    assert "lost the data" not in logs
