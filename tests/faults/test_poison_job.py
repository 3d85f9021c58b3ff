"""Scenario 7: a job that kills its worker process every time it runs.

Run under the supervisor (``workers.processes: 2``, burst mode), which restarts crashed
workers. Every crash leaves the job in ``active`` until its lease runs out; the reaper counts a
stall each time, and after ``max_stalls`` (3) re-queues the 4th stall dead-letters it with
dead_reason "stalled" — 4 crashes, under the supervisor's crash-loop limit (5 deaths in 30 s).
The rest of the pipeline keeps flowing: every other job ends as its payload says.

Jobs that happened to run beside the poison job in the crashed process stall too (the reaper
cannot tell which job killed the process); the checker accepts such a job dead "stalled" only
when its record really shows more than max_stalls stalls, and the figures count them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults.checker import check
from tests.faults.harness import (
    Fault,
    FaultRun,
    Job,
    Processes,
    Settings,
    fault_jobs,
    make_jobs,
    mean_duration,
    read_histories,
    report,
    scenario_timeout,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(scenario_timeout())]


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_job_crashing_its_worker_is_dead_lettered_as_stalled(
    how: str, seed: int, procs: Processes, fault_dir: Path
) -> None:
    s = Settings(processes=2)
    run = FaultRun(f"poison-{how}", fault_dir, procs, seed, s)
    n = fault_jobs()
    jobs = make_jobs(run.rng, n, seed=seed, mean=mean_duration(n, 2 * s.concurrency, 6.0))
    poison = Job(f"s{seed}-poison", {"crash": how})
    jobs.insert(run.rng.randrange(len(jobs) // 4), poison)
    run.produce(jobs, spread=0.5).join(60)  # all in before the burst run starts
    started = time.time()
    supervisor = run.start_worker("--burst")
    code = supervisor.wait(90)
    took = time.time() - started

    crashes = [e for e in read_histories(run.history) if e["ev"] == "crash"]
    deaths = {e["pid"]: e["t"] for e in crashes}  # a crashing process dies right after
    run.faults.extend(Fault("crash", e["t"], e["t"], e["pid"]) for e in crashes)
    rep = check(run, deaths=deaths)
    info = rep.records[poison.id]
    rep.figures.update(crashes=len(crashes), supervisor_exit=code, burst_seconds=round(took, 1))
    report(rep.figures)
    rep.assert_ok()
    log = supervisor.stderr()
    assert "crash loop" not in log
    assert code in (0, 1), log[-3000:]  # drained (1: the dead-lettered jobs)
    assert (info.status, info.dead_reason) == ("dead", "stalled")
    assert info.stalls == s.max_stalls + 1 == len(crashes)
    assert log.count("died unexpectedly") == len(crashes)
    others = [i for i in rep.records if i != poison.id]
    done = sum(1 for i in others if rep.records[i].status == "done")
    assert done >= 0.9 * len(others), f"only {done}/{len(others)} other jobs done"
