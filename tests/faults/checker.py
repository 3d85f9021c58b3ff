"""Reads a fault run's histories and final Redis state and checks the invariants.

Every scenario ends here. Violations are collected (not raised one by one) so a failing run
says everything that went wrong at once.

- lost: acknowledged (ok) enqueues that did not reach a terminal state (must be 0);
- each job that exists is terminal exactly once: its status is terminal, it sits in no queue,
  retry or active set, it is in the dead set iff dead, and the queue's done/dead counters equal
  the number of done/dead records (a second terminal transition would count twice);
- no unexpected jobs: every job record has an id the producer sent (ok or unknown);
- fencing: no two executions of a job share an epoch; two executions overlap in time only when
  a fault (a stopped or cut-off worker, a frozen or restarted Redis) lay between the first one's
  start and the second one's, and the stored result is the one of the highest epoch that ran
  (a stale completion never overwrote the later owner's);
- counts reconcile: done + dead = jobs that exist; ``claims`` >= observed starts; no attempt
  beyond max_attempts; each job ends as its payload says (done, or dead for the right reason),
  except that any job may end dead "stalled" if it really stalled more than max_stalls times.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from rrq_flow.client.jobinfo import TERMINAL_STATES, JobInfo
from tests.faults.harness import KEYS, LAYOUT, Fault, FaultRun, read_histories

END_EVENTS = ("end", "fail", "cancel", "crash")


@dataclass
class Execution:
    id: str
    epoch: int
    attempt: int
    pid: int
    start: float
    end: float | None = None  # None: never ended (its process died, see deaths)
    how: str = ""  # end | fail | cancel | crash | died


@dataclass
class Report:
    scenario: str
    seed: int
    figures: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    executions: dict[str, list[Execution]] = field(default_factory=dict)
    records: dict[str, JobInfo] = field(default_factory=dict)

    def violation(self, text: str) -> None:
        self.violations.append(text)

    def assert_ok(self) -> None:
        if self.violations:
            shown = "\n  ".join(self.violations[:40])
            more = len(self.violations) - 40
            raise AssertionError(
                f"{self.scenario} seed {self.seed}: {len(self.violations)} violation(s)"
                f"{f' ({more} not shown)' if more > 0 else ''}:\n  {shown}\nfigures: "
                f"{self.figures}"
            )


def executions_from(
    events: list[dict[str, Any]], deaths: dict[int, float]
) -> dict[str, list[Execution]]:
    by_job: dict[str, list[Execution]] = defaultdict(list)
    open_: dict[tuple[str, int, int], Execution] = {}
    for ev in events:
        key = (ev["id"], ev["epoch"], ev["pid"])
        if ev["ev"] == "start":
            ex = Execution(ev["id"], ev["epoch"], ev["attempt"], ev["pid"], ev["t"])
            by_job[ev["id"]].append(ex)
            open_[key] = ex
        elif ev["ev"] in END_EVENTS and key in open_:
            ex = open_.pop(key)
            ex.end, ex.how = ev["t"], ev["ev"]
    for ex in open_.values():
        if ex.pid in deaths:
            ex.end, ex.how = deaths[ex.pid], "died"
    return by_job


def _fault_explains(faults: list[Fault], a: Execution, b: Execution) -> bool:
    """A lease can only have run out if a fault hit a's worker (or Redis) between a's start and
    b's start."""
    for f in faults:
        if f.kind in ("kill", "term", "term2"):
            continue  # a dead or draining worker does not keep running a job beside its successor
        if (f.pid is None or f.pid == a.pid) and f.t0 <= b.start and f.t1 >= a.start:
            return True
    return False


def check(
    run: FaultRun,
    *,
    deaths: dict[int, float] | None = None,
    expect_no_stalls: bool = False,
) -> Report:
    """Check every invariant on ``run`` (after it drained); returns the report with figures."""
    settings = run.settings
    assert run.producer is not None
    rep = Report(run.name, run.seed)
    log = run.producer.log
    sent = {e.job.id: e for e in log}
    ok = {i for i, e in sent.items() if e.status == "ok"}
    unknown = {i for i, e in sent.items() if e.status == "unknown"}
    failed = {i for i, e in sent.items() if e.status == "failed"}

    r = run.redis.client()
    try:
        pipe = r.pipeline(transaction=False)
        ids = sorted(sent)
        for job_id in ids:
            pipe.hgetall(LAYOUT.job(job_id))
        records = dict(zip(ids, pipe.execute(), strict=True))
        all_jobs = set()
        for key in r.scan_iter(match=LAYOUT.job("*"), count=1000):
            all_jobs.add(key[len(LAYOUT.job("")) :])
        ready = set(r.zrange(KEYS.ready, 0, -1))
        retry = set(r.zrange(KEYS.retry, 0, -1))
        active = set(r.zrange(KEYS.active, 0, -1))
        dead_set = set(r.zrange(KEYS.dead, 0, -1))
        stats = {str(k): str(v) for k, v in r.hgetall(KEYS.stats).items()}
    finally:
        r.close()

    infos = {i: JobInfo.from_record(rec, job_id=i) for i, rec in records.items() if rec}
    rep.records = infos
    present = set(infos)

    # lost / unexpected
    lost = sorted(i for i in ok if i not in infos or infos[i].status not in TERMINAL_STATES)
    for i in lost[:20]:
        state = infos[i].status if i in infos else "missing"
        rep.violation(f"lost: {i} was acknowledged but is {state}")
    unexpected = sorted(all_jobs - set(sent))
    for i in unexpected[:20]:
        rep.violation(f"unexpected job {i}: never enqueued")
    for i in sorted(failed & present)[:20]:
        rep.violation(f"job {i}: its enqueue failed before sending, yet it exists")

    # one terminal state each, recorded once
    n_done = n_dead = 0
    for i, info in infos.items():
        if info.status not in TERMINAL_STATES:
            if i not in lost:
                rep.violation(f"job {i} (unknown enqueue) is {info.status}, not terminal")
            continue
        places = [n for n, s in (("ready", ready), ("retry", retry), ("active", active)) if i in s]
        if places:
            rep.violation(f"job {i} is {info.status} but still in {places}")
        if (info.status == "dead") != (i in dead_set):
            rep.violation(f"job {i} is {info.status}; in the dead set: {i in dead_set}")
        n_done += info.status == "done"
        n_dead += info.status in ("dead", "failed")
    if int(stats.get("done", 0)) != n_done:
        rep.violation(f"done counter {stats.get('done')} != {n_done} done records")
    if int(stats.get("dead", 0)) + int(stats.get("failed", 0)) != n_dead:
        rep.violation(f"dead counter {stats.get('dead')} != {n_dead} dead records")
    stray = (ready | retry | active | dead_set) - present
    if stray:
        rep.violation(f"index entries without a job record: {sorted(stray)[:10]}")

    # executions and fencing
    events = read_histories(run.history)
    execs = executions_from(events, deaths or {})
    rep.executions = execs
    for i in sorted(set(execs) - set(sent))[:20]:
        rep.violation(f"a handler ran job {i}, which was never enqueued")
    overlaps = duplicates = collateral = 0
    # duplicates: jobs executed more than once for one attempt (re-run after a fault)
    for i, runs in execs.items():
        rec = infos.get(i)
        epochs = [x.epoch for x in runs]
        if len(set(epochs)) != len(epochs):
            rep.violation(f"job {i}: two executions with one epoch: {sorted(epochs)}")
        attempts = [x.attempt for x in runs]
        if len(set(attempts)) != len(attempts):
            duplicates += 1  # ran again without using an attempt: a fault's doing
        for x in runs:
            if x.attempt > settings.max_attempts:
                rep.violation(f"job {i}: attempt {x.attempt} > max_attempts")
        ordered = sorted(runs, key=lambda x: x.start)
        for k, a in enumerate(ordered):
            for b in ordered[k + 1 :]:
                if a.end is not None and a.end <= b.start:
                    continue
                overlaps += 1
                if b.epoch <= a.epoch:
                    rep.violation(f"job {i}: epoch {b.epoch} started beside epoch {a.epoch}")
                elif not _fault_explains(run.faults, a, b):
                    rep.violation(
                        f"job {i}: epochs {a.epoch} (pid {a.pid}) and {b.epoch} (pid {b.pid}) "
                        "overlapped with no fault that could have expired the first lease"
                    )
        if rec is None:
            rep.violation(f"job {i} ran but has no record")
            continue
        if rec.claims < len(runs):
            rep.violation(f"job {i}: claims {rec.claims} < {len(runs)} observed starts")
        if rec.status == "done":
            winner = rec.result or {}
            top = max(epochs)
            if winner.get("epoch") != rec.epoch or rec.epoch != top:
                rep.violation(
                    f"job {i}: stored result of epoch {winner.get('epoch')} (record epoch "
                    f"{rec.epoch}), but the last execution had epoch {top}: a stale completion"
                    f" [{_post_mortem(rec, runs)}]"
                )
            ended = [x for x in runs if x.epoch == winner.get("epoch") and x.how == "end"]
            if not ended or ended[0].pid != winner.get("pid"):
                rep.violation(f"job {i}: result {winner} matches no finished execution")

    # every job ends as its payload says
    max_stalls = settings.max_stalls
    for i, info in infos.items():
        if info.attempts > settings.max_attempts:
            rep.violation(f"job {i}: attempts {info.attempts} > {settings.max_attempts}")
        if expect_no_stalls and info.stalls:
            rep.violation(f"job {i}: stalled {info.stalls} time(s) in a scenario without stalls")
        if info.status not in TERMINAL_STATES:
            continue
        want_status, want_reason = sent[i].job.expected(settings.max_attempts)
        got = (info.status, info.dead_reason)
        if got == (want_status, want_reason):
            continue
        if got == ("dead", "stalled") and info.stalls > max_stalls:
            collateral += 1  # it really stalled too often (ran beside a crashing job)
            continue
        rep.violation(f"job {i}: ended {got}, expected {(want_status, want_reason)}")

    rep.figures = {
        "scenario": run.name,
        "seed": run.seed,
        "jobs": len(sent),
        "enqueue_ok": len(ok),
        "enqueue_unknown": len(unknown),
        "unknown_present": len(unknown & present),
        "enqueue_failed": len(failed),
        "enqueue_retried": sum(1 for e in log if e.calls > 1),
        "faults": len(run.faults),
        "fault_kinds": sorted({f.kind for f in run.faults}),
        "lost": len(lost),
        "unexpected": len(unexpected),
        "done": n_done,
        "dead": n_dead,
        "executions": sum(len(v) for v in execs.values()),
        "duplicates": duplicates,
        "overlaps": overlaps,
        "stalled_dead_collateral": collateral,
        "seconds": round(run.elapsed(), 1),
    }
    if n_done + n_dead != len(present):
        rep.violation(f"done {n_done} + dead {n_dead} != {len(present)} jobs that exist")
    return rep


def _post_mortem(rec: JobInfo, runs: list[Execution]) -> str:
    """What a violation message needs to tell a fencing bug from a Redis persistence anomaly:
    the record's counters (epoch = claims + stalls when every change went through the scripts
    once) and every observed execution."""
    seen = ", ".join(f"epoch {x.epoch} pid {x.pid} {x.how or 'running'}" for x in runs)
    errors = [e.get("type") for e in rec.errors]
    return (
        f"claims {rec.claims}, stalls {rec.stalls}, attempts {rec.attempts}, owner "
        f"{rec.owner!r}, errors {errors}; executions: {seen}"
    )
