"""Scenario 2: SIGSTOP a worker for three times its lease, then SIGCONT.

While the worker is frozen its leases run out, the other worker's reaper re-queues its jobs
(new epoch) and runs them. When it wakes up, its handlers may still finish: two executions of
one job overlapped, which is allowed only because the first lease had expired, and the woken
worker's outcome must be rejected (``outcome rejected``) or dropped (``lease lost``); the stored
result must be the new owner's.
"""

from __future__ import annotations

import itertools
import re
import signal
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

STALE_LINE = re.compile(
    r"job (?P<a>\S+): outcome rejected|job=(?P<b>\S+)\] lease lost|"
    r"lease renewal of job (?P<c>\S+) answered"
)


def stale_jobs(log: str) -> set[str]:
    """Jobs a worker's log says it was fenced off from."""
    return {next(g for g in m.groups() if g) for m in STALE_LINE.finditer(log)}


def test_sigstop_past_the_lease_then_sigcont(seed: int, procs: Processes, fault_dir: Path) -> None:
    # timeout well past the stop, so a woken handler is fenced by the lease, not by its timeout
    s = Settings(timeout=10.0)
    run = FaultRun("sigstop", fault_dir, procs, seed, s)
    n = fault_jobs()
    # Longer jobs than usual, so a frozen worker often wakes up in the middle of one.
    jobs = make_jobs(run.rng, n, seed=seed, mean=mean_duration(n, 2 * s.concurrency, 6.0))
    workers = [run.start_worker(), run.start_worker()]
    for w in workers:
        run.wait_started(w)
    run.produce(jobs, spread=3.0)

    frozen: dict[int, set[str]] = {}  # pid -> jobs it was running when stopped
    for _ in range(2 + n // 4000):
        time.sleep(run.rng.uniform(0.2, 0.8))
        victim = run.rng.choice(workers)
        run.wait_in_flight(victim.pid)
        t0 = time.time()
        victim.signal(signal.SIGSTOP)
        running = set(run.in_flight(victim.pid))
        time.sleep(3 * s.lock_extension)
        victim.signal(signal.SIGCONT)
        t1 = time.time()
        run.faults.append(Fault("stop", t0, t1, victim.pid, {"running": len(running)}))
        frozen.setdefault(victim.pid, set()).update(running)
        time.sleep(0.5)  # let it notice before the next fault

    run.producer.join(60)  # type: ignore[union-attr]
    run.wait_drained(90)
    codes = run.stop_workers()
    rep = check(run)

    fenced: set[str] = set()
    for w in workers:
        fenced |= stale_jobs(w.stderr()) & frozen.get(w.pid, set())
    not_fenced = set().union(*frozen.values()) - fenced
    # History view of the same thing: the stale execution ended after the new owner started.
    stale_after_new = 0
    for job_id in set().union(*frozen.values()):
        runs = sorted(rep.executions.get(job_id, []), key=lambda x: x.start)
        for a, b in itertools.pairwise(runs):
            if a.end is not None and a.end > b.start and a.how == "end":
                stale_after_new += 1
    rep.figures.update(
        frozen_jobs=sum(len(v) for v in frozen.values()),
        fenced=len(fenced),
        stale_end_after_new_start=stale_after_new,
    )
    report(rep.figures)
    rep.assert_ok()
    assert codes == [0, 0], run.log_tail()
    assert frozen and any(frozen.values()), "no stop hit a running job"
    # Every job a frozen worker held was fenced off when it woke up (rejected or dropped).
    assert not not_fenced, f"no stale verdict logged for {sorted(not_fenced)[:10]}"
