"""Scenario 3: SIGTERM a worker (once: drain; twice: cancel now), and a handler that ignores
cancellation.

One worker runs a mix of short and long jobs. At seeded moments it gets SIGTERM (or SIGTERM
twice): it must exit within the grace period plus a margin (at once after the second signal),
the jobs it was running that did not finish must be back in the queue the moment it has exited
(status queued, in the ready set: no waiting for a lease to expire) with their attempt given
back, and nothing may stall. A new worker then takes over.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.faults.checker import check
from tests.faults.harness import (
    KEYS,
    LAYOUT,
    Fault,
    FaultRun,
    Job,
    Processes,
    Settings,
    fault_jobs,
    make_jobs,
    mean_duration,
    read_history_file,
    report,
    scenario_timeout,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(scenario_timeout())]

# Seconds past the grace period a worker may take to exit on a busy machine. Generous: which jobs
# were cancelled at the grace period is checked from the outcomes below, not from this clock.
MARGIN = 6.0


def job_states(run: FaultRun, ids: list[str]) -> dict[str, tuple[str, int, bool]]:
    """(status, attempts, in the ready set) per job."""
    r = run.redis.client()
    try:
        pipe = r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(LAYOUT.job(job_id), "status", "attempts")
            pipe.zscore(KEYS.ready, job_id)
        out = pipe.execute()
    finally:
        r.close()
    return {
        job_id: (out[2 * k][0], int(out[2 * k][1]), out[2 * k + 1] is not None)
        for k, job_id in enumerate(ids)
    }


def last_events(run: FaultRun, pid: int) -> dict[tuple[str, int], tuple[str, float]]:
    """(job id, epoch) -> how and when the execution in ``pid`` ended (per its history)."""
    out: dict[tuple[str, int], tuple[str, float]] = {}
    for ev in read_history_file(run.history / f"history-{pid}.jsonl"):
        if ev["ev"] in ("end", "fail", "cancel"):
            out[(ev["id"], ev["epoch"])] = (ev["ev"], ev["t"])
    return out


def test_sigterm_drains_then_releases(seed: int, procs: Processes, fault_dir: Path) -> None:
    s = Settings(grace=1.0, timeout=5.0)
    run = FaultRun("sigterm", fault_dir, procs, seed, s)
    n = fault_jobs()
    long = 2.5  # longer than the grace period: such a job is interrupted and released
    jobs = make_jobs(run.rng, n, seed=seed, mean=mean_duration(n, s.concurrency, 5.0))
    # Eight long jobs spread evenly over the producer's run, so a SIGTERM finds one running.
    step = n // 8
    for i in range(run.rng.randrange(step), n, step):
        jobs[i] = Job(jobs[i].id, {"duration": long})
    is_long = {j.id for j in jobs if j.kwargs["duration"] == long}
    worker = run.start_worker()
    run.wait_started(worker)
    run.produce(jobs, spread=3.0)

    released = finished_in_grace = 0
    exits: list[tuple[str, float]] = []
    modes = ["term", "term2"] + [run.rng.choice(["term", "term2"]) for _ in range(n // 2000)]
    for mode in modes:
        time.sleep(run.rng.uniform(0.3, 1.0))
        pid = worker.pid
        wait_until(lambda: bool(is_long & set(run.in_flight(pid))), 3.0)  # noqa: B023
        running = run.in_flight(worker.pid)
        t0 = time.time()
        worker.signal(signal.SIGTERM)
        cancel_at = t0 + s.grace  # when still-running jobs get cancelled
        if mode == "term2":
            time.sleep(0.1)
            cancel_at = time.time()
            worker.signal(signal.SIGTERM)
        code = worker.wait(s.grace + 10)
        took = time.time() - t0
        states = job_states(run, sorted(running))  # right after the exit
        run.faults.append(Fault(mode, t0, time.time(), worker.pid))
        exits.append((mode, took))
        assert code == 0, worker.stderr()[-2000:]
        limit = (s.grace if mode == "term" else 0.0) + MARGIN
        assert took <= limit, f"{mode}: exited after {took:.2f}s > {limit:.2f}s"
        outcomes = last_events(run, worker.pid)
        for job_id, ev in running.items():
            status, attempts, in_ready = states[job_id]
            how, at = outcomes[(job_id, ev["epoch"])]
            if how in ("end", "fail"):
                # It finished (or failed) before the cancellation, and that was recorded.
                finished_in_grace += 1
                assert at <= cancel_at + 0.2, f"{job_id} ran on past the cancellation"
                assert status in ("done", "dead", "retrying"), (job_id, status)
                continue
            assert how == "cancel", (job_id, how)
            released += 1
            # Back in the queue now, attempt given back (claim counted it: attempt - 1).
            assert (status, in_ready) == ("queued", True), (job_id, status, in_ready)
            assert attempts == ev["attempt"] - 1, (job_id, attempts, ev["attempt"])
        worker = run.start_worker()
        run.wait_started(worker)

    run.producer.join(60)  # type: ignore[union-attr]
    run.wait_drained(90)
    codes = run.stop_workers()
    rep = check(run, expect_no_stalls=True)
    rep.figures.update(
        released=released,
        finished_in_grace=finished_in_grace,
        exit_seconds={m: round(max(t for k, t in exits if k == m), 2) for m, _ in exits},
    )
    report(rep.figures)
    rep.assert_ok()
    assert codes == [0]
    assert "ignored cancellation" not in run.worker_logs()  # a clean exit, not the last resort
    assert released > 0, "no SIGTERM interrupted a job"


def test_handler_ignoring_cancellation_cannot_keep_the_worker_alive(
    procs: Processes, fault_dir: Path
) -> None:
    """A handler that swallows trio.Cancelled: after the grace period and the cancel margin the
    worker releases what it holds and exits anyway (the last resort); the job is queued."""
    s = Settings(grace=1.0, timeout=60.0)
    run = FaultRun("swallow-cancel", fault_dir, procs, 0, s)
    stubborn = Job("stubborn", {"duration": 60.0, "swallow_cancel": True})
    polite = [Job(f"polite-{i}", {"duration": 60.0}) for i in range(3)]
    run.produce([stubborn, *polite], spread=0.0).join(10)
    worker = run.start_worker()
    assert wait_until(lambda: len(run.in_flight(worker.pid)) == 4, 20)
    t0 = time.time()
    worker.signal(signal.SIGTERM)
    code = worker.wait(30)
    took = time.time() - t0
    states = job_states(run, ["stubborn", *(j.id for j in polite)])
    shutdown_margin = 2.0  # rrq_flow.worker.worker.SHUTDOWN_MARGIN
    assert took <= s.grace + shutdown_margin + MARGIN, f"exited after {took:.2f}s"
    assert code == 0
    assert "ignored cancellation" in worker.stderr()
    assert states == {i: ("queued", 0, True) for i in states}, states


def test_sigterms_while_the_worker_exits_do_not_kill_it(procs: Processes, fault_dir: Path) -> None:
    """SIGTERM after SIGTERM until the worker is gone: it still exits 0, its jobs released (a
    signal landing after its handlers were uninstalled used to kill it: exit -15)."""
    s = Settings(grace=1.0)
    run = FaultRun("sigterm-storm", fault_dir, procs, 0, s)
    run.produce([Job(f"j{i}", {"duration": 0.3}) for i in range(4)], spread=0.0).join(10)
    worker = run.start_worker()
    assert wait_until(lambda: len(run.in_flight(worker.pid)) == 4, 20)
    while worker.alive():
        worker.signal(signal.SIGTERM)
        time.sleep(0.005)
    assert worker.wait(5) == 0, worker.stderr()[-2000:]
    assert "cancelling in-flight jobs now" in worker.stderr()
    assert job_states(run, [f"j{i}" for i in range(4)]) == {
        f"j{i}": ("queued", 0, True) for i in range(4)
    }
