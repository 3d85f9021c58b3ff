"""A model-based test of the job protocol: random sequences of every transition, run through the
real Lua scripts on the real redis-server, checked after every step against a Python model.

Sized by RRQ_MODEL_EXAMPLES (default 60) and RRQ_MODEL_STEPS (default 40); run it larger by hand:
``RRQ_MODEL_EXAMPLES=2000 .venv/bin/pytest tests/test_protocol_model.py``.

Time: the scripts read the server clock, so the model avoids depending on it. Retry delays are
0 ms (a retry is always due at the next claim), leases are long (60 s) and "expire" only when a
rule rewrites a lease score to 0, and deferred jobs are an hour out until a rule makes them due.
Ready jobs are enqueued at an absolute model time ("=<tick>", long past) and retry scores are set
to a tick too, so which job a claim takes does not depend on how many ms the steps took: a failing
example replays the same way.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from rrq_flow.protocol.ops import (
    ChildJob,
    Completion,
    Failure,
    NewJob,
    Protocol,
    pack_args,
    parse_expand,
    split_args,
)
from tests.test_protocol_scripts import GEN, Proto


def _args_for(job_id: str) -> str:
    """A job's args JSON: short (kept in the record) for some ids, long (args:<id>) for others."""
    return f'["{job_id}"]' if sum(map(ord, job_id)) % 2 else f'["{job_id}","{"x" * 64}"]'


def _args_inline(j: MJob) -> bool:
    return len(pack_args(j.args, "{}").encode()) <= 64


EXAMPLES = int(os.environ.get("RRQ_MODEL_EXAMPLES", "60"))
STEPS = int(os.environ.get("RRQ_MODEL_STEPS", "40"))

LEASE_MS = 60_000
HARD_MS = 120_000
TTL_MS = 3_600_000
FAR = "+3600000"
WORKERS = ("w0", "w1", "w2")
TERMINAL = frozenset({"done", "dead", "failed", "cancelled"})
EXPIRING = frozenset({"done", "failed", "cancelled"})  # terminal states whose record has a TTL
WAITING = frozenset({"queued", "scheduled", "retrying"})


@dataclass(frozen=True)
class QCfg:
    max_attempts: int
    max_stalls: int
    dead_letter: bool
    keep_args: bool  # a done job keeps its args:<id> (always kept in every other state)


QUEUES = {
    "a": QCfg(max_attempts=2, max_stalls=0, dead_letter=True, keep_args=False),
    "b": QCfg(max_attempts=3, max_stalls=1, dead_letter=False, keep_args=True),
}
QUEUE_NAMES = sorted(QUEUES)
# Job ids, including ones that look like other jobs' keys (``j0:errors`` once broke ``j0``).
JOB_IDS = [f"j{n}" for n in range(40)] + ["j0:errors", "j1:children", "errors:j2", "job:j3"]


@dataclass
class MJob:
    id: str
    queue: str
    state: str
    max_attempts: int
    args: str
    parent: str = ""
    unique_key: str = ""
    epoch: int = 0
    attempts: int = 0
    stalls: int = 0
    owner: str | None = None  # None: the field was never written
    settled: str | None = None
    cancel_requested: bool = False
    has_errors: bool = False
    children: list[str] = field(default_factory=list)  # the child index of a done parent
    pending: list[ChildJob] = field(default_factory=list)  # staged, not yet created (expanding)
    expired: bool = False  # its active score was rewritten into the past
    due: bool = False  # scheduled, and its queue score was rewritten into the past
    claims: list[tuple[str, int]] = field(default_factory=list)


def _has(*states: str):
    """Precondition: the model has a job in one of ``states``."""
    return precondition(lambda self: any(j.state in states for j in self.jobs.values()))


class ProtocolMachine(RuleBasedStateMachine):
    def __init__(self, r: redis.Redis, functions: bool):
        super().__init__()
        r.flushall()
        self.r = r
        self.p = Proto(r, functions=functions)
        self.p.p = Protocol(self.p.layout, frozenset(n for n, q in QUEUES.items() if q.keep_args))
        # The generation a worker writes at start (HSETNX, as enqueue does): claims may come first.
        r.hset(self.p.layout.meta, "generation", GEN)
        self.jobs: dict[str, MJob] = {}
        self.uniques: dict[str, str] = {}
        self.stats: dict[str, Counter[str]] = {q: Counter() for q in QUEUES}
        self.seen_epoch: dict[str, int] = {}
        self.clock = 1000  # model time (ms) for ready jobs: deterministic claim order

    def _tick(self) -> str:
        self.clock += 1
        return f"={self.clock}"

    # --- model helpers -----------------------------------------------------------------------

    def _ids(self, *states: str) -> list[str]:
        return sorted(i for i, j in self.jobs.items() if not states or j.state in states)

    def _add(
        self, queue: str, job_id: str, args: str, when: str, unique: str, parent: str
    ) -> tuple[str, str]:
        if job_id in self.jobs:
            return job_id, "exists"
        if unique:
            holder = self.uniques.get(unique)
            if holder is not None and self.jobs[holder].state not in TERMINAL:
                return holder, "unique"
        self.jobs[job_id] = MJob(
            id=job_id,
            queue=queue,
            state="scheduled" if when == FAR else "queued",
            max_attempts=QUEUES[queue].max_attempts,
            args=args,
            parent=parent,
            unique_key=unique,
        )
        if unique:
            self.uniques[unique] = job_id
        self.stats[queue]["enqueued"] += 1
        return job_id, "new"

    @staticmethod
    def _args_kept(j: MJob) -> bool:
        return j.state != "done" or QUEUES[j.queue].keep_args

    def _finish(self, j: MJob, state: str) -> None:
        j.state = state
        if j.unique_key and self.uniques.get(j.unique_key) == j.id:
            del self.uniques[j.unique_key]

    def _dead_or_failed(self, j: MJob) -> str:
        if QUEUES[j.queue].dead_letter:
            self._finish(j, "dead")
            self.stats[j.queue]["dead"] += 1
            return "DEAD"
        self._finish(j, "failed")
        self.stats[j.queue]["failed"] += 1
        return "FAILED"

    def _owner_check(self, j: MJob, worker: str, epoch: int, op: str) -> str | None:
        """check_owner in common.lua: None when the caller owns the attempt, else its verdict."""
        if j.epoch != epoch or j.owner != worker:
            return "STALE"
        if j.state == "active":
            return None
        return "ALREADY_DONE" if j.settled == op else "STALE"

    def _claimable_queues(self) -> list[str]:
        ready = ("queued", "retrying")
        return sorted(
            {
                j.queue
                for j in self.jobs.values()
                if j.state in ready or (j.state == "scheduled" and j.due)
            }
        )

    def _pick(self, data: st.DataObject, *states: str) -> MJob:
        return self.jobs[data.draw(st.sampled_from(self._ids(*states)), label="job")]

    # --- rules -------------------------------------------------------------------------------

    @rule(
        queue=st.sampled_from(QUEUE_NAMES),
        specs=st.lists(
            st.tuples(
                st.sampled_from(JOB_IDS),
                st.sampled_from(["", "", FAR]),
                st.sampled_from(["", "", "", "", "", "u0", "u1"]),
            ),
            min_size=1,
            max_size=6,
        ),
    )
    def enqueue(self, queue: str, specs: list[tuple[str, str, str]]) -> None:
        jobs = [NewJob(i, _args_for(i), "{}", when or self._tick(), uk) for i, when, uk in specs]
        reply = self.p.enqueue(*jobs, queue=queue, max_attempts=QUEUES[queue].max_attempts)
        expected = [self._add(queue, j.id, j.args_json, j.when, j.unique_key, "") for j in jobs]
        assert reply == expected

    @precondition(lambda self: bool(self._claimable_queues()))
    @rule(worker=st.sampled_from(WORKERS), data=st.data(), n=st.integers(1, 4))
    def claim(self, worker: str, data: st.DataObject, n: int) -> None:
        queue = data.draw(st.sampled_from(self._claimable_queues()), label="queue")
        q = self.p.q(queue)
        now = self.p.server_ms()
        ready = self.r.zrange(q.ready, 0, -1, withscores=True)
        retry = self.r.zrange(q.retry, 0, -1, withscores=True)
        # Retries (0 ms delay) are all due; jobs deferred an hour are not.
        due = sorted([(s, i) for i, s in ready if s <= now] + [(s, i) for i, s in retry])
        expected = [i for _, i in due[:n]]
        reply = self.p.claim(worker, n, queue=queue, lease_ms=LEASE_MS, hard_ms=HARD_MS)
        assert not reply.lost
        assert [c.id for c in reply.jobs] == expected
        for j in self.jobs.values():
            if j.queue == queue and j.state == "retrying":
                j.state = "queued"
        for c in reply.jobs:
            j = self.jobs[c.id]
            j.epoch += 1
            j.attempts += 1
            j.state, j.owner, j.settled, j.expired = "active", worker, "", False
            j.claims.append((worker, j.epoch))
            assert (c.epoch, c.attempt, c.max_attempts) == (j.epoch, j.attempts, j.max_attempts)
            assert (c.args_json, c.parent) == (j.args, j.parent)

    @_has("active")
    @rule(data=st.data())
    def refresh(self, data: st.DataObject) -> None:
        j = self._pick(data, "active")
        assert j.owner is not None
        verdict = self.p.refresh(j.owner, [(j.id, j.epoch)], queue=j.queue, lease_ms=LEASE_MS)
        if j.cancel_requested:
            assert verdict == ["CANCEL"]
        else:
            assert verdict == ["OK"]
            j.expired = False

    @_has("active")
    @rule(data=st.data(), nchildren=st.integers(0, 2))
    def complete(self, data: st.DataObject, nchildren: int) -> None:
        j = self._pick(data, "active")
        assert j.owner is not None
        cq = QUEUE_NAMES[(QUEUE_NAMES.index(j.queue) + 1) % len(QUEUE_NAMES)]
        children = [
            ChildJob(
                cq, f"{j.id}.{k}", f'["{j.id}",{k}]', "{}", QUEUES[cq].max_attempts, self._tick()
            )
            for k in range(nchildren)
        ]
        done = Completion(j.id, j.epoch, f'"{j.id}"', children)
        assert self.p.complete(j.owner, [done], queue=j.queue, ttl=TTL_MS) == ["OK"]
        for ch in children:
            self._add(cq, ch.id, ch.args_json, "", "", j.id)
        j.children = [ch.id for ch in children]
        self._finish(j, "done")
        j.settled = "complete"
        self.stats[j.queue]["done"] += 1

    @_has("active")
    @rule(data=st.data(), nchildren=st.integers(1, 4), split=st.integers(0, 4))
    def complete_staged(self, data: st.DataObject, nchildren: int, split: int) -> None:
        """A big fan-out: stage the children in two calls, commit: the parent is expanding."""
        j = self._pick(data, "active")
        assert j.owner is not None
        cq = QUEUE_NAMES[(QUEUE_NAMES.index(j.queue) + 1) % len(QUEUE_NAMES)]
        children = [
            ChildJob(cq, f"{j.id}:{cq}:{k}", f'["{j.id}",{k}]', "{}", QUEUES[cq].max_attempts)
            for k in range(nchildren)
        ]
        cut = min(split, nchildren)
        for offset, chunk in ((0, children[:cut]), (cut, children[cut:])):
            if chunk:
                call = self.p.p.stage(j.queue, j.owner, j.id, j.epoch, offset, LEASE_MS, chunk)
                assert self.p.run(call) == "OK"
        done = Completion(j.id, j.epoch, "null", (), staged=nchildren)
        assert self.p.complete(j.owner, [done], queue=j.queue, ttl=TTL_MS) == ["OK"]
        j.state, j.settled, j.pending, j.children = "expanding", "complete", children, []

    @_has("expanding")
    @rule(data=st.data(), limit=st.integers(1, 3), by_id=st.booleans())
    def expand(self, data: st.DataObject, limit: int, by_id: bool) -> None:
        """Any worker creates the next chunk; the last one makes the parent done."""
        j = self._pick(data, "expanding")
        if not by_id:  # a takeover: the one idle longest (the oldest expanding of its queue)
            oldest = self.r.zrange(self.p.q(j.queue).expanding, 0, 0)
            j = self.jobs[oldest[0]]
        call = self.p.p.expand(j.queue, j.id if by_id else "", limit, TTL_MS, 0)
        reply = parse_expand(self.p.run(call))
        chunk, j.pending = j.pending[:limit], j.pending[limit:]
        for ch in chunk:
            self._add(ch.queue, ch.id, ch.args_json, "", "", j.id)
        j.children += [ch.id for ch in chunk]
        assert (reply.parent, reply.created) == (j.id, len(chunk))
        if j.pending:
            assert reply.state == "MORE"
        else:
            assert reply.state == "DONE"
            self._finish(j, "done")
            self.stats[j.queue]["done"] += 1

    def _fail(self, data: st.DataObject, action: str) -> None:
        j = self._pick(data, "active")
        assert j.owner is not None
        failure = Failure(j.id, j.epoch, f'{{"attempt":{j.attempts}}}', action, 0)
        verdict = self.p.fail(
            j.owner,
            [failure],
            queue=j.queue,
            ttl=TTL_MS,
            dead_letter=QUEUES[j.queue].dead_letter,
        )
        j.settled, j.has_errors = "fail", True
        if action == "cancel" or (action == "retry" and j.cancel_requested):
            expected = "CANCELLED"
            self._finish(j, "cancelled")
            self.stats[j.queue]["cancelled"] += 1
        elif action == "retry" and j.attempts < j.max_attempts:
            expected = "RETRY"
            j.state = "retrying"
            self.r.zadd(self.p.q(j.queue).retry, {j.id: int(self._tick()[1:])}, xx=True)
            self.stats[j.queue]["retried"] += 1
        else:
            expected = self._dead_or_failed(j)
        assert verdict == [expected]

    # One rule per action, so that each is chosen as often as any other rule.
    @_has("active")
    @rule(data=st.data())
    def fail_retry(self, data: st.DataObject) -> None:
        self._fail(data, "retry")

    @_has("active")
    @rule(data=st.data())
    def fail_dead(self, data: st.DataObject) -> None:
        self._fail(data, "dead")

    @_has("active")
    @rule(data=st.data())
    def fail_cancel(self, data: st.DataObject) -> None:
        self._fail(data, "cancel")

    @_has("active")
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        j = self._pick(data, "active")
        assert j.owner is not None
        verdict = self.p.release(j.owner, [(j.id, j.epoch)], queue=j.queue)
        j.settled = "release"
        if j.cancel_requested:  # an operator's cancel is honoured, not run again
            assert verdict == ["CANCELLED"]
            self._finish(j, "cancelled")
            self.stats[j.queue]["cancelled"] += 1
            return
        assert verdict == ["OK"]
        j.attempts -= 1
        j.state = "queued"
        self.stats[j.queue]["released"] += 1

    @_has("active")
    @rule(data=st.data())
    def expire_lease(self, data: st.DataObject) -> None:
        """The worker froze or died: its lease runs out (score rewritten to 0)."""
        j = self._pick(data, "active")
        self.p.expire_lease(j.id, j.queue)
        j.expired = True

    @precondition(lambda self: any(j.expired for j in self.jobs.values()))
    @rule(data=st.data())
    def reap(self, data: st.DataObject) -> None:
        # Mostly a queue with an expired lease; sometimes the other (nothing to reap there).
        expired = sorted({j.queue for j in self.jobs.values() if j.expired})
        queue = data.draw(st.sampled_from(expired + QUEUE_NAMES[:1]), label="queue")
        cfg = QUEUES[queue]
        reply = self.p.reap(
            queue=queue,
            guard_ms=0,
            max_stalls=cfg.max_stalls,
            dead_letter=cfg.dead_letter,
            ttl=TTL_MS,
        )
        requeued, dead = 0, []
        for i in self._ids("active"):
            j = self.jobs[i]
            if j.queue != queue or not j.expired:
                continue
            j.epoch += 1
            j.stalls += 1
            j.owner, j.settled, j.has_errors, j.expired = "", "reap", True, False
            self.stats[queue]["stalled"] += 1
            if j.cancel_requested:
                self._finish(j, "cancelled")
                self.stats[queue]["cancelled"] += 1
            elif j.stalls > cfg.max_stalls:
                self._dead_or_failed(j)
                dead.append(i)
            else:
                j.attempts -= 1
                j.state = "queued"
                requeued += 1
        if requeued:
            self.stats[queue]["reaped"] += requeued
        assert not reply.guarded
        assert (reply.requeued, reply.dead) == (requeued, dead)

    @_has("dead")
    @rule(data=st.data(), by_ids=st.booleans(), dry_run=st.booleans())
    def requeue(self, data: st.DataObject, by_ids: bool, dry_run: bool) -> None:
        queue = data.draw(st.sampled_from(QUEUE_NAMES), label="queue")
        dead = [i for i in self._ids("dead") if self.jobs[i].queue == queue]
        if by_ids:
            pool = [*sorted(self.jobs), "nope"]
            ids = data.draw(st.lists(st.sampled_from(pool), max_size=4, unique=True), label="ids")
            expected = [i for i in ids if i in dead]
            reply = self.p.requeue(ids, queue=queue, dry_run=dry_run)
        else:
            expected = dead
            reply = sorted(self.p.requeue(None, queue=queue, dry_run=dry_run))
        assert reply == expected
        if dry_run:
            return
        for i in expected:
            j = self.jobs[i]
            j.state, j.attempts, j.stalls, j.settled = "queued", 0, 0, ""
            j.cancel_requested = False
        if expected:
            self.stats[queue]["requeued"] += len(expected)

    @_has(*WAITING)
    @rule(data=st.data())
    def cancel_waiting(self, data: st.DataObject) -> None:
        j = self._pick(data, *WAITING)
        before = j.state
        assert self.p.cancel(j.id, queue=j.queue, ttl=TTL_MS) == ["CANCELLED", before]
        self._finish(j, "cancelled")
        j.settled = "cancel"
        self.stats[j.queue]["cancelled"] += 1

    @_has("active")
    @rule(data=st.data())
    def cancel_active(self, data: st.DataObject) -> None:
        j = self._pick(data, "active")
        assert self.p.cancel(j.id, queue=j.queue, ttl=TTL_MS) == ["CANCELLING", "active"]
        j.cancel_requested = True

    @_has(*TERMINAL)
    @rule(data=st.data())
    def cancel_finished_or_missing(self, data: st.DataObject) -> None:
        finished = self._ids(*TERMINAL)
        job_id = data.draw(st.sampled_from([*finished, "nope"]), label="job")
        if job_id == "nope":
            assert self.p.cancel(job_id, queue="a") == ["MISSING", ""]
        else:
            j = self.jobs[job_id]
            assert self.p.cancel(j.id, queue=j.queue) == ["FINISHED", j.state]

    @precondition(
        lambda self: any(j.state == "scheduled" and not j.due for j in self.jobs.values())
    )
    @rule(data=st.data())
    def make_due(self, data: st.DataObject) -> None:
        ids = [i for i in self._ids("scheduled") if not self.jobs[i].due]
        j = self.jobs[data.draw(st.sampled_from(ids), label="job")]
        self.r.zadd(self.p.q(j.queue).ready, {j.id: 0}, xx=True)
        j.due = True

    @precondition(lambda self: any(j.claims for j in self.jobs.values()))
    @rule(data=st.data())
    def stale_or_repeated_op(self, data: st.DataObject) -> None:
        """A worker acting on an attempt it no longer owns (old epoch, another worker), or
        repeating a settled call after a lost reply: nothing may change."""
        j = self.jobs[data.draw(st.sampled_from([i for i in self._ids() if self.jobs[i].claims]))]
        # First choices (which Hypothesis favours): repeat the job's last call as it was made.
        ops = ["refresh", "complete", "fail", "release"]
        last = {"complete": "complete", "fail": "fail", "release": "release"}.get(j.settled or "")
        op = data.draw(st.sampled_from([last, *ops] if last else ops), label="op")
        choices = [j.claims[-1], *j.claims[:-1], (j.claims[-1][0], j.epoch + 1)]
        choices += [(w, j.epoch) for w in WORKERS]
        worker, epoch = data.draw(st.sampled_from(choices), label="as")
        if op == "refresh":
            owns = j.state == "active" and (worker, epoch) == (j.owner, j.epoch)
            expected = None if owns else "STALE"
        else:
            expected = self._owner_check(j, worker, epoch, op)
        if expected is None:
            return  # that would be a legitimate call, covered by the other rules
        before = self.p.snapshot()
        q = j.queue
        if op == "refresh":
            verdict = self.p.refresh(worker, [(j.id, epoch)], queue=q)
        elif op == "complete":
            verdict = self.p.complete(worker, [Completion(j.id, epoch, '"x"')], queue=q)
        elif op == "fail":
            verdict = self.p.fail(worker, [Failure(j.id, epoch, "{}", "retry", 0)], queue=q)
        else:
            verdict = self.p.release(worker, [(j.id, epoch)], queue=q)
        assert verdict == [expected]
        assert self.p.snapshot() == before

    # --- invariants --------------------------------------------------------------------------

    @invariant()
    def redis_matches_model(self) -> None:
        layout = self.p.layout
        ids = sorted(self.jobs)
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(layout.job(i))
            pipe.pttl(layout.job(i))
            pipe.pttl(layout.job_errors(i))
            pipe.lrange(layout.job_children(i), 0, -1)
            pipe.pttl(layout.job_children(i))
            pipe.get(layout.job_args(i))
            pipe.pttl(layout.job_args(i))
        replies = pipe.execute()
        for n, i in enumerate(ids):
            j = self.jobs[i]
            rec, ttl, errors_ttl, children, children_ttl, blob, args_ttl = replies[
                7 * n : 7 * n + 7
            ]
            assert rec, f"job {i} lost its record"
            assert rec["status"] == j.state, (i, rec, j)
            assert rec["queue"] == j.queue
            epoch = int(rec["epoch"])
            assert epoch == j.epoch and epoch >= self.seen_epoch.get(i, 0)
            self.seen_epoch[i] = epoch
            assert int(rec["attempts"]) == j.attempts, (i, rec, j)
            assert 0 <= j.attempts <= j.max_attempts
            assert int(rec.get("stalls", 0)) == j.stalls
            # The arguments live in the record (short) or args:<id> (long); a done job drops
            # them unless its queue keeps them.
            packed = rec.get("packed_args")
            if self._args_kept(j) and _args_inline(j):
                assert blob is None and split_args(packed) == (j.args, "{}"), (i, rec)
            elif self._args_kept(j):
                assert packed is None and split_args(blob) == (j.args, "{}"), (i, blob)
                assert (args_ttl > 0) == (j.state in EXPIRING)
            else:
                assert blob is None and packed is None, (i, blob, rec)
            assert rec.get("owner") == j.owner
            assert rec.get("settled") == j.settled
            assert (rec.get("cancel_requested") == "1") == j.cancel_requested
            assert rec.get("parent", "") == j.parent
            # Nothing unfinished ever expires; everything of a finished job eventually does
            # (dead-lettered jobs stay until requeued or purged).
            assert (ttl > 0) == (j.state in EXPIRING) and ttl != -2
            if j.has_errors:
                assert errors_ttl != -2 and (errors_ttl > 0) == (j.state in EXPIRING)
            else:
                assert errors_ttl == -2
            # A done parent counts its children and lists them in its index, expiring with it.
            assert children == j.children
            assert int(rec.get("children", "0")) == len(j.children)
            if j.children:  # the index expires with the record once the parent is done
                assert (children_ttl > 0) == (j.state == "done")

        # Each job is in exactly the one index its state implies.
        for name in QUEUE_NAMES:
            q = self.p.q(name)
            mine = [j for j in self.jobs.values() if j.queue == name]
            index = {
                q.ready: {j.id for j in mine if j.state in ("queued", "scheduled")},
                q.retry: {j.id for j in mine if j.state == "retrying"},
                q.active: {j.id for j in mine if j.state == "active"},
                q.dead: {j.id for j in mine if j.state == "dead"},
                q.expanding: {j.id for j in mine if j.state == "expanding"},
            }
            for key, expected in index.items():
                assert set(self.r.zrange(key, 0, -1)) == expected, key
            for j in mine:
                if j.state == "active":
                    assert (self.r.zscore(q.active, j.id) == 0) == j.expired
            stats = {k: int(v) for k, v in self.r.hgetall(q.stats).items()}
            assert stats == {k: v for k, v in self.stats[name].items() if v}, name

        # No unexpected keys: exactly the model's jobs, error lists, child indexes, unique keys.
        keys = set(self.r.keys("*"))
        expected_jobs = {layout.job(i) for i in ids}
        expected_jobs |= {layout.job_errors(i) for i in ids if self.jobs[i].has_errors}
        expected_jobs |= {layout.job_children(i) for i in ids if self.jobs[i].children}
        expected_jobs |= {
            layout.job_args(i)
            for i in ids
            if self._args_kept(self.jobs[i]) and not _args_inline(self.jobs[i])
        }
        expected_jobs |= {layout.fanout(i, self.jobs[i].epoch) for i in ids if self.jobs[i].pending}
        per_job = tuple(
            layout.prefix + t for t in ("job:", "errors:", "children:", "fanout:", "args:")
        )
        assert {k for k in keys if k.startswith(per_job)} == expected_jobs
        held = {k: self.r.get(k) for k in keys if k.startswith(layout.prefix + "unique:")}
        assert held == {layout.unique(u): i for u, i in self.uniques.items()}
        queue_keys = {layout.meta}
        for name in QUEUE_NAMES:
            q = self.p.q(name)
            queue_keys |= {q.ready, q.retry, q.active, q.dead, q.wake, q.stats, q.tput}
            queue_keys |= {q.expanding}
        assert keys - expected_jobs - set(held) <= queue_keys


# Its time depends on the machine's load (70 s alone, 120 s+ with 8 test suites on 2 cores).
@pytest.mark.slow  # 60 x 40 model steps in all, half each way (~35-70 s): CI's second step
@pytest.mark.timeout(300)
@pytest.mark.parametrize("by", ["evalsha", "fcall"])  # the two ways the scripts are called
def test_protocol_matches_model(sync_redis: redis.Redis, by: str) -> None:
    run_state_machine_as_test(
        lambda: ProtocolMachine(sync_redis, functions=by == "fcall"),
        settings=settings(
            max_examples=max(1, EXAMPLES // 2),
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
