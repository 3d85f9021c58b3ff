"""Each Lua script, one transition at a time, against the real redis-server (redis-py).

Scripts take their time from the server (TIME), so expected scores are computed from the ``now``
a claim reply reports, or checked against the server clock with a margin.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from rrq_flow.protocol.keys import KeyLayout
from rrq_flow.protocol.ops import (
    ERRORS_KEPT,
    Call,
    ChildJob,
    ClaimReply,
    Completion,
    Failure,
    NewJob,
    Protocol,
    ReapReply,
    parse_claim,
    parse_enqueue,
    parse_reap,
    split_args,
)
from rrq_flow.protocol.scripts import call_sync, library, preload_sync

GEN = "gen-1"
TTL = 60_000
LEASE = 30_000
HARD = 60_000


class Proto:
    """The Protocol call builders bound to one redis-py connection, with parsed replies."""

    def __init__(self, r: redis.Redis, pipeline: str = "t", *, functions: bool = False):
        """``functions``: call the scripts as functions of the library (FCALL, as the worker's
        own connection does), not by EVALSHA."""
        self.r = r
        self.layout = KeyLayout(pipeline)
        self.p = Protocol(self.layout)
        self.functions = functions
        if functions and not r.function_list(library().name):
            r.function_load(library().source)

    def run(self, call: Call) -> Any:
        if self.functions:
            return self.r.fcall(call.script.function, len(call.keys), *call.keys, *call.args)
        return call_sync(self.r, call.script, call.keys, call.args)

    def server_ms(self) -> int:
        sec, usec = self.r.time()
        return int(sec) * 1000 + int(usec) // 1000

    # --- script calls ------------------------------------------------------------------------

    def enqueue(
        self, *jobs: NewJob | str, queue: str = "q", max_attempts: int = 3, gen: str = GEN
    ) -> list[tuple[str, str]]:
        js = [NewJob(j) if isinstance(j, str) else j for j in jobs]
        call = self.p.enqueue(queue, max_attempts, gen, js)
        return parse_enqueue(self.run(call), call)

    def claim(
        self,
        worker: str = "w1",
        n: int = 1,
        *,
        queue: str = "q",
        lease_ms: int = LEASE,
        hard_ms: int = HARD,
        gen: str = GEN,
    ) -> ClaimReply:
        return parse_claim(self.run(self.p.claim(queue, gen, worker, n, lease_ms, hard_ms)))

    def refresh(
        self, worker: str, items: Sequence[tuple[str, int]], *, queue: str = "q", lease_ms=LEASE
    ) -> list[str]:
        return list(self.run(self.p.refresh(queue, worker, lease_ms, items)))

    def complete(
        self, worker: str, done: Sequence[Completion], *, queue: str = "q", ttl: int = TTL
    ) -> list[str]:
        return list(self.run(self.p.complete(queue, worker, ttl, done)))

    def fail(
        self,
        worker: str,
        failures: Sequence[Failure],
        *,
        queue: str = "q",
        ttl: int = TTL,
        dead_letter: bool = True,
    ) -> list[str]:
        return list(self.run(self.p.fail(queue, worker, ttl, dead_letter, failures)))

    def release(self, worker: str, items: Sequence[tuple[str, int]], *, queue="q") -> list[str]:
        return list(self.run(self.p.release(queue, worker, TTL, items)))

    def reap(
        self,
        *,
        queue: str = "q",
        guard_ms: int = 0,
        max_stalls: int = 3,
        dead_letter: bool = True,
        ttl: int = TTL,
    ) -> ReapReply:
        call = self.p.reap(
            queue,
            guard_ms=guard_ms,
            max_stalls=max_stalls,
            dead_letter=dead_letter,
            result_ttl_ms=ttl,
        )
        return parse_reap(self.run(call))

    def requeue(
        self, ids: Sequence[str] | None = None, *, queue: str = "q", dry_run: bool = False
    ) -> list[str]:
        return list(self.run(self.p.requeue(queue, ids, dry_run=dry_run)))

    def cancel(self, job_id: str, *, queue: str = "q", ttl: int = TTL) -> list[str]:
        return list(self.run(self.p.cancel(queue, job_id, ttl)))

    # --- reading -----------------------------------------------------------------------------

    def job(self, job_id: str) -> dict[str, str]:
        """The record, with ``args``/``kwargs`` from its ``packed_args`` field or ``args:<id>``
        while they are kept."""
        record = self.r.hgetall(self.layout.job(job_id))
        blob = record.pop("packed_args", None) or self.r.get(self.layout.job_args(job_id))
        if record and blob is not None:
            record["args"], record["kwargs"] = split_args(blob)
        long_result = self.r.get(self.layout.job_result(job_id))
        if record and long_result is not None:
            record["result"] = long_result
        return record

    def q(self, queue: str = "q"):
        return self.layout.queue(queue)

    def expire_lease(self, job_id: str, queue: str = "q") -> None:
        """Make a claimed job's lease run out now (rewrite its active score into the past)."""
        assert self.r.zscore(self.q(queue).active, job_id) is not None
        self.r.zadd(self.q(queue).active, {job_id: 0}, xx=True)

    def snapshot(self) -> dict[str, tuple[str, Any, bool]]:
        """Every key: (type, value, has a TTL). TTLs tick down, so only their presence counts."""
        out: dict[str, tuple[str, Any, bool]] = {}
        for key in sorted(self.r.keys("*")):
            kind = self.r.type(key)
            value: Any
            if kind == "hash":
                value = self.r.hgetall(key)
            elif kind == "zset":
                value = self.r.zrange(key, 0, -1, withscores=True)
            elif kind == "list":
                value = self.r.lrange(key, 0, -1)
            elif kind == "string":
                value = self.r.get(key)
            else:
                value = kind
            out[key] = (kind, value, self.r.pttl(key) > 0)
        return out

    # --- composite steps ---------------------------------------------------------------------

    def claim_one(self, job_id: str, worker: str = "w1", **kw: Any):
        reply = self.claim(worker, 1, **kw)
        assert not reply.lost
        assert [j.id for j in reply.jobs] == [job_id]
        return reply.jobs[0]


@pytest.fixture
def p(sync_redis: redis.Redis) -> Proto:
    return Proto(sync_redis)


# --- enqueue ------------------------------------------------------------------------------------


def test_enqueue_creates_record_and_queue_entry(p: Proto) -> None:
    before = p.server_ms()
    assert p.enqueue(NewJob("a", "[1,2]", '{"k":"v"}')) == [("a", "new")]
    rec = p.job("a")
    assert rec["status"] == "queued"
    assert rec["queue"] == "q"
    assert rec["args"] == "[1,2]" and rec["kwargs"] == '{"k":"v"}'
    assert rec["attempts"] == "0" and rec["epoch"] == "0" and rec["max_attempts"] == "3"
    assert int(rec["enqueued_at"]) >= before
    assert p.r.zscore(p.q().ready, "a") == int(rec["ready_at"])
    assert p.r.hget(p.q().stats, "enqueued") == "1"
    assert p.r.llen(p.q().wake) == 1
    assert p.r.pttl(p.layout.job("a")) == -1  # an unfinished job never expires


def test_same_job_id_twice_makes_one_job(p: Proto) -> None:
    """Retry-safe: the client picks ids before sending, so a repeat answers 'exists'."""
    assert p.enqueue(NewJob("a", "[1]")) == [("a", "new")]
    snap = p.snapshot()
    assert p.enqueue(NewJob("a", "[2]")) == [("a", "exists")]
    assert p.snapshot() == snap
    assert p.job("a")["args"] == "[1]"
    # Twice in one batch: still one job.
    assert p.enqueue("b", "b") == [("b", "new"), ("b", "exists")]
    assert p.r.zcard(p.q().ready) == 2
    assert p.r.hget(p.q().stats, "enqueued") == "2"


def test_unique_key_held_by_unfinished_job_returns_holder(p: Proto) -> None:
    assert p.enqueue(NewJob("a", unique_key="u")) == [("a", "new")]
    assert p.r.get(p.layout.unique("u")) == "a"
    snap = p.snapshot()
    assert p.enqueue(NewJob("b", unique_key="u")) == [("a", "unique")]
    assert p.snapshot() == snap
    assert not p.r.exists(p.layout.job("b"))
    # Still held while the holder runs.
    c = p.claim_one("a")
    assert p.enqueue(NewJob("b", unique_key="u")) == [("a", "unique")]
    assert c.epoch == 1


def _finish(p: Proto, job_id: str, how: str) -> None:
    if how == "cancelled":
        assert p.cancel(job_id)[0] == "CANCELLED"
        return
    c = p.claim_one(job_id)
    if how == "done":
        assert p.complete("w1", [Completion(job_id, c.epoch, "1")]) == ["OK"]
    elif how == "dead":
        assert p.fail("w1", [Failure(job_id, c.epoch, "{}", "dead")]) == ["DEAD"]
    elif how == "failed":
        verdict = p.fail("w1", [Failure(job_id, c.epoch, "{}", "dead")], dead_letter=False)
        assert verdict == ["FAILED"]
    assert p.job(job_id)["status"] == how


@pytest.mark.parametrize("how", ["done", "dead", "failed", "cancelled"])
def test_unique_key_released_when_job_finishes_then_reusable(p: Proto, how: str) -> None:
    p.enqueue(NewJob("a", unique_key="u"))
    _finish(p, "a", how)
    assert not p.r.exists(p.layout.unique("u"))
    assert p.enqueue(NewJob("b", unique_key="u")) == [("b", "new")]
    assert p.r.get(p.layout.unique("u")) == "b"


def test_finishing_job_does_not_release_unique_key_held_by_another(p: Proto) -> None:
    """Only the owner releases a unique key: a requeued dead job that finishes must not free
    the key a newer job now holds."""
    p.enqueue(NewJob("a", unique_key="u"))
    _finish(p, "a", "dead")
    assert p.enqueue(NewJob("b", unique_key="u")) == [("b", "new")]
    assert p.requeue(["a"]) == ["a"]
    c = {j.id: j for j in p.claim("w1", 5).jobs}["a"]
    assert p.complete("w1", [Completion("a", c.epoch, "1")]) == ["OK"]
    assert p.r.get(p.layout.unique("u")) == "b"
    assert p.enqueue(NewJob("c", unique_key="u")) == [("b", "unique")]


def test_unique_key_of_expired_holder_is_taken_over(p: Proto) -> None:
    p.enqueue(NewJob("a", unique_key="u"))
    p.r.delete(p.layout.job("a"))  # its record expired or was purged
    assert p.enqueue(NewJob("b", unique_key="u")) == [("b", "new")]
    assert p.r.get(p.layout.unique("u")) == "b"


def test_deferred_job_is_scheduled_and_not_claimable_until_due(p: Proto) -> None:
    before = p.server_ms()
    assert p.enqueue(NewJob("d", when="+60000")) == [("d", "new")]
    rec = p.job("d")
    assert rec["status"] == "scheduled"
    score = p.r.zscore(p.q().ready, "d")
    assert before + 60_000 <= score <= p.server_ms() + 60_000
    reply = p.claim()
    assert reply.jobs == [] and reply.next_due == score
    assert p.job("d")["status"] == "scheduled"
    # Due (score rewritten into the past): claimable, a 'scheduled' status notwithstanding.
    p.r.zadd(p.q().ready, {"d": 0})
    assert p.claim_one("d").attempt == 1


def test_absolute_time_in_the_past_is_queued_at_once(p: Proto) -> None:
    assert p.enqueue(NewJob("x", when="=1000")) == [("x", "new")]
    assert p.job("x")["status"] == "queued"
    assert p.r.zscore(p.q().ready, "x") == 1000
    assert p.claim_one("x").epoch == 1


def test_batch_enqueue_many_in_one_call(p: Proto) -> None:
    jobs = [NewJob(f"j{i}", f"[{i}]") for i in range(500)]
    preload_sync(p.r)  # run alone, the first call's NOSCRIPT fallback would count as a second
    calls_before = _evalsha_calls(p.r)
    reply = p.enqueue(*jobs)
    assert _evalsha_calls(p.r) - calls_before == 1
    assert reply == [(f"j{i}", "new") for i in range(500)]
    assert p.r.zcard(p.q().ready) == 500
    assert p.r.hget(p.q().stats, "enqueued") == "500"
    assert p.r.llen(p.q().wake) == 1  # one wake token is enough


def test_numbers_written_per_job_keep_their_exact_digits(p: Proto) -> None:
    """The scripts write per-job numbers as strings they format themselves (num_str, common.lua):
    digits, whole numbers below 1e14, and anything else left to Redis; every one must read back
    exactly as Redis' own formatting did (an int the Python side parses)."""
    far = 10**15 + 7  # beyond num_str's whole-number range: Redis formats it
    assert p.enqueue(NewJob("now"), NewJob("far", when=f"={far}")) == [
        ("now", "new"),
        ("far", "new"),
    ]
    assert p.job("far")["ready_at"] == str(far) and p.r.zscore(p.q().ready, "far") == far
    rec = p.job("now")
    assert (rec["attempts"], rec["epoch"]) == ("0", "0")
    assert rec["enqueued_at"] == rec["ready_at"] and int(rec["enqueued_at"]) > 10**12
    job = p.claim_one("now")
    rec = p.job("now")
    assert (rec["epoch"], rec["attempts"], rec["claims"]) == ("1", "1", "1")
    started = int(rec["started_at"])
    assert int(rec["lease"]) == started + LEASE and int(rec["hard_deadline"]) == started + HARD
    assert p.r.zscore(p.q().active, "now") == started + LEASE
    assert p.complete("w1", [Completion("now", job.epoch, "1")]) == ["OK"]
    rec = p.job("now")
    assert int(rec["finished_at"]) >= started and 0 < p.r.pttl(p.layout.job("now")) <= TTL
    # Ten and more claims (each stalled and reaped): past the one-digit shortcut.
    p.r.zadd(p.q().ready, {"far": 0}, xx=True)
    for _ in range(11):
        claimed = p.claim_one("far")
        p.expire_lease("far")
        p.reap(max_stalls=99)
        p.r.zadd(p.q().ready, {"far": 0}, xx=True)
    assert p.job("far")["claims"] == "11" and claimed.epoch > 10
    assert p.claim_one("far").epoch == int(p.job("far")["epoch"])


def test_batch_enqueue_with_a_known_id_checks_each_record(p: Proto) -> None:
    """A batch whose ids are all new skips the per-record type checks (one EXISTS); one known
    id among them brings the checks back: it answers 'exists', a record of another type is
    refused, and nothing is written."""
    p.enqueue("old")
    reply = p.enqueue(*[NewJob(f"n{i}") for i in range(5)], NewJob("old"))
    assert reply[-1] == ("old", "exists") and len(reply) == 6
    p.r.set(p.layout.job("bad"), "x")
    with pytest.raises(redis.ResponseError, match="nothing was written"):
        p.enqueue(NewJob("m1"), NewJob("bad"))
    assert not p.r.exists(p.layout.job("m1"))


def test_batch_enqueue_of_new_ids_still_refuses_an_empty_one(p: Proto) -> None:
    """In a batch of new ids only the first job without options goes through every check (the
    others share its queue, level and max attempts), but each id is still checked."""
    with pytest.raises(redis.ResponseError, match="empty job id; nothing was written"):
        p.enqueue(NewJob("a"), NewJob("b"), NewJob(""))
    assert not p.r.exists(p.layout.job("a")) and not p.r.exists(p.q().ready)


def test_batch_enqueue_writes_each_kind_of_record_in_full(p: Proto) -> None:
    """One batch mixing plain jobs, long arguments and every optional field: each record
    holds exactly its fields (add_job builds the optional ones in a table it reuses, so no
    job may carry another's)."""
    long_args = "[" + ",".join(["1"] * 40) + "]"
    p.enqueue(
        NewJob("plain", "[1]"),
        NewJob("opts", "[2]", unique_key="u", parent="par", priority=3, run="r1"),
        NewJob("long", long_args),
        NewJob("plain2", "[4]"),
        NewJob("run2", "[5]", run="r1"),
    )
    base = {"queue", "status", "attempts", "max_attempts", "epoch", "enqueued_at", "ready_at"}
    assert set(p.r.hgetall(p.layout.job("plain"))) == base | {"packed_args"}
    assert set(p.r.hgetall(p.layout.job("plain2"))) == base | {"packed_args"}
    opts = p.r.hgetall(p.layout.job("opts"))
    assert set(opts) == base | {"packed_args", "unique_key", "parent", "priority", "run"}
    assert (opts["unique_key"], opts["parent"], opts["priority"], opts["run"]) == (
        "u",
        "par",
        "3",
        "r1",
    )
    assert set(p.r.hgetall(p.layout.job("long"))) == base
    assert p.r.get(p.layout.job_args("long")) == f"{len(long_args)}:{long_args}{{}}"
    assert set(p.r.hgetall(p.layout.job("run2"))) == base | {"packed_args", "run"}
    assert p.r.hget(p.layout.job("plain2"), "packed_args") == "3:[4]{}"


def _evalsha_calls(r: redis.Redis) -> int:
    stats = r.info("commandstats")
    return sum(stats.get(k, {}).get("calls", 0) for k in ("cmdstat_evalsha", "cmdstat_eval"))


def test_meta_generation_written_at_first_use_only(p: Proto) -> None:
    assert not p.r.exists(p.layout.meta)
    p.enqueue("a", gen="first")
    assert p.r.hget(p.layout.meta, "generation") == "first"
    p.enqueue("b", gen="second")
    assert p.r.hget(p.layout.meta, "generation") == "first"


# --- claim --------------------------------------------------------------------------------------


def test_claim_takes_up_to_n_ready_jobs(p: Proto) -> None:
    p.enqueue("a", "b", "c")
    reply = p.claim("w1", 2, lease_ms=5000, hard_ms=9000)
    assert not reply.lost
    assert [j.id for j in reply.jobs] == ["a", "b"]
    assert reply.next_due is not None and reply.next_due <= reply.now  # c is still ready
    for j in reply.jobs:
        assert (j.epoch, j.attempt, j.max_attempts) == (1, 1, 3)
        assert j.args_json == "[]" and j.kwargs_json == "{}" and j.parent == ""
        rec = p.job(j.id)
        assert rec["status"] == "active" and rec["owner"] == "w1"
        assert rec["epoch"] == "1" and rec["attempts"] == "1" and rec["claims"] == "1"
        assert int(rec["lease"]) == reply.now + 5000
        assert int(rec["hard_deadline"]) == reply.now + 9000
        assert p.r.zscore(p.q().active, j.id) == reply.now + 5000
    assert p.r.zrange(p.q().ready, 0, -1) == ["c"]
    # The rest of the queue is still there; a second claim takes it.
    assert [j.id for j in p.claim("w2", 5).jobs] == ["c"]
    assert p.claim("w2", 5).jobs == []


def test_claim_reports_nothing_waiting(p: Proto) -> None:
    p.enqueue("a")  # writes meta
    p.claim_one("a")
    reply = p.claim()
    assert reply.jobs == [] and reply.next_due is None


def test_five_concurrent_claimers_one_winner(p: Proto, redis_url: str) -> None:
    p.enqueue("only")
    path = redis_url.removeprefix("unix://")
    barrier = threading.Barrier(5)
    results: dict[str, list[str]] = {}

    def claimer(name: str) -> None:
        r = redis.Redis(unix_socket_path=path, decode_responses=True)
        try:
            mine = Proto(r)
            mine.r.ping()
            barrier.wait()
            results[name] = [j.id for j in mine.claim(name, 1).jobs]
        finally:
            r.close()

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 5
    winners = [w for w, ids in results.items() if ids]
    assert len(winners) == 1 and results[winners[0]] == ["only"]
    rec = p.job("only")
    assert rec["owner"] == winners[0] and rec["epoch"] == "1" and rec["attempts"] == "1"


def test_missing_record_entry_is_dropped_and_does_not_block(p: Proto) -> None:
    p.enqueue("real")
    p.r.zadd(p.q().ready, {"ghost": 0})  # before "real" in the queue; its record is gone
    assert p.claim_one("real").epoch == 1
    assert p.r.zcard(p.q().ready) == 0
    assert not p.r.exists(p.layout.job("ghost"))


def test_finished_job_left_in_queue_is_dropped(p: Proto) -> None:
    p.enqueue("a", "b")
    _finish(p, "a", "done")
    p.r.zadd(p.q().ready, {"a": 0})  # a stray entry of a finished job
    assert p.claim_one("b").epoch == 1
    assert p.job("a")["status"] == "done"


def test_claim_with_wrong_generation_is_lost(p: Proto) -> None:
    p.enqueue("a")
    snap = p.snapshot()
    reply = p.claim(gen="other")
    assert reply.lost and reply.generation == GEN
    assert p.snapshot() == snap


def test_claim_with_missing_meta_is_lost(p: Proto) -> None:
    p.enqueue("a")
    p.r.delete(p.layout.meta)  # e.g. a flushed / restarted-empty Redis
    reply = p.claim()
    assert reply.lost and reply.generation == ""
    assert p.r.zcard(p.q().ready) == 1


def test_due_retries_are_promoted_and_claimable(p: Proto) -> None:
    p.enqueue("a")
    c = p.claim_one("a")
    assert p.fail("w1", [Failure("a", c.epoch, '{"m":1}', "retry", 0)]) == ["RETRY"]
    assert p.r.zscore(p.q().retry, "a") is not None
    c2 = p.claim_one("a", "w2")
    assert (c2.epoch, c2.attempt) == (2, 2)
    assert p.r.zcard(p.q().retry) == 0


def test_future_retry_not_claimable_and_reported_as_next_due(p: Proto) -> None:
    p.enqueue("a")
    c = p.claim_one("a")
    p.fail("w1", [Failure("a", c.epoch, "{}", "retry", 60_000)])
    due = p.r.zscore(p.q().retry, "a")
    reply = p.claim()
    assert reply.jobs == [] and reply.next_due == due
    assert p.job("a")["status"] == "retrying"


def test_retry_entry_without_record_is_not_resurrected(p: Proto) -> None:
    """A retry entry whose record is gone must be dropped, not turned into a phantom job."""
    p.enqueue("a")
    p.claim_one("a")
    p.r.zadd(p.q().retry, {"ghost": 0})
    reply = p.claim("w2", 5)
    assert reply.jobs == []
    assert not p.r.exists(p.layout.job("ghost"))
    assert p.r.zcard(p.q().retry) == 0 and p.r.zcard(p.q().ready) == 0


def test_claim_repeat_after_lost_reply_claims_other_jobs(p: Proto) -> None:
    """Retry-safe: the jobs of a lost claim reply stay in `active` (the reaper brings them back);
    a repeat takes only what is still ready and leaves those untouched."""
    p.enqueue("a", "b")
    first = p.claim("w1", 1)
    rec_a = p.job("a")
    second = p.claim("w1", 1)
    assert [j.id for j in first.jobs] == ["a"] and [j.id for j in second.jobs] == ["b"]
    assert p.job("a") == rec_a
    snap = p.snapshot()
    assert p.claim("w1", 1).jobs == []
    assert p.snapshot() == snap


# --- refresh ------------------------------------------------------------------------------------


def test_refresh_extends_lease(p: Proto) -> None:
    p.enqueue("a")
    c = p.claim_one("a", lease_ms=1000, hard_ms=HARD)
    before = p.r.zscore(p.q().active, "a")
    assert p.refresh("w1", [("a", c.epoch)], lease_ms=20_000) == ["OK"]
    after = p.r.zscore(p.q().active, "a")
    assert after >= before + 19_000
    assert int(p.job("a")["lease"]) == after


def test_refresh_capped_at_hard_deadline_then_deadline(p: Proto) -> None:
    p.enqueue("a")
    c = p.claim_one("a", lease_ms=10, hard_ms=80)
    hard = int(p.job("a")["hard_deadline"])
    assert p.refresh("w1", [("a", c.epoch)], lease_ms=60_000) == ["OK"]
    assert p.r.zscore(p.q().active, "a") == hard
    while p.server_ms() < hard:
        time.sleep(0.01)
    snap = p.snapshot()
    assert p.refresh("w1", [("a", c.epoch)], lease_ms=60_000) == ["DEADLINE"]
    assert p.snapshot() == snap


def test_refresh_with_wrong_epoch_or_owner_is_stale(p: Proto) -> None:
    p.enqueue("a")
    c = p.claim_one("a")
    snap = p.snapshot()
    assert p.refresh("w1", [("a", c.epoch + 1)]) == ["STALE"]
    assert p.refresh("w1", [("a", c.epoch - 1)]) == ["STALE"]
    assert p.refresh("w2", [("a", c.epoch)]) == ["STALE"]
    assert p.refresh("w1", [("nope", 1)]) == ["STALE"]
    assert p.snapshot() == snap


def test_refresh_says_cancel_when_cancel_requested(p: Proto) -> None:
    p.enqueue("a", "b")
    c = p.claim("w1", 2)
    assert p.cancel("a") == ["CANCELLING", "active"]
    items = [(j.id, j.epoch) for j in c.jobs]
    assert p.refresh("w1", items) == ["CANCEL", "OK"]


def test_refresh_repeat_is_harmless(p: Proto) -> None:
    """Retry-safe: a repeated renewal only moves the same lease again (never past the hard
    deadline); status, epoch and owner stay as they were."""
    p.enqueue("a")
    c = p.claim_one("a")
    p.refresh("w1", [("a", c.epoch)])
    rec = p.job("a")
    assert p.refresh("w1", [("a", c.epoch)]) == ["OK"]
    rec2 = p.job("a")
    rec.pop("lease"), rec2.pop("lease")
    assert rec == rec2
    assert p.r.zrange(p.q().active, 0, -1) == ["a"]


# --- complete -----------------------------------------------------------------------------------


def test_complete_stores_result_with_ttl(p: Proto) -> None:
    p.enqueue("a")
    c = p.claim_one("a")
    assert p.complete("w1", [Completion("a", c.epoch, '{"r":1}')], ttl=5000) == ["OK"]
    rec = p.job("a")
    assert rec["status"] == "done" and rec["result"] == '{"r":1}'
    assert "children" not in rec  # none: no count stored (read as 0)
    assert 0 < p.r.pttl(p.layout.job("a")) <= 5000
    assert p.r.zcard(p.q().active) == 0
    assert p.r.hget(p.q().stats, "done") == "1"
    assert sum(int(v) for k, v in p.r.hgetall(p.q().tput).items() if k.startswith("c")) == 1


def test_complete_repeat_by_same_owner_is_already_done(p: Proto) -> None:
    """Retry-safe: 'settled' records which operation finished this epoch, so a repeat after a
    lost reply answers ALREADY_DONE and changes nothing (no second 'done' count)."""
    p.enqueue("a")
    c = p.claim_one("a")
    p.complete("w1", [Completion("a", c.epoch, "1")])
    snap = p.snapshot()
    assert p.complete("w1", [Completion("a", c.epoch, "2")]) == ["ALREADY_DONE"]
    assert p.snapshot() == snap
    assert p.job("a")["result"] == "1"


def test_complete_by_other_owner_or_epoch_is_stale(p: Proto) -> None:
    p.enqueue("a")
    c = p.claim_one("a")
    snap = p.snapshot()
    assert p.complete("w2", [Completion("a", c.epoch, "1")]) == ["STALE"]
    assert p.complete("w1", [Completion("a", c.epoch + 1, "1")]) == ["STALE"]
    assert p.complete("w1", [Completion("missing", 1, "1")]) == ["STALE"]
    assert p.snapshot() == snap
    # After completion, another owner still cannot touch it.
    p.complete("w1", [Completion("a", c.epoch, "1")])
    assert p.complete("w2", [Completion("a", c.epoch, "1")]) == ["STALE"]


def test_complete_batch_mixes_verdicts(p: Proto) -> None:
    p.enqueue("a", "b")
    cs = {j.id: j for j in p.claim("w1", 2).jobs}
    verdicts = p.complete(
        "w1",
        [Completion("a", cs["a"].epoch, "1"), Completion("b", cs["b"].epoch + 5, "1")],
    )
    assert verdicts == ["OK", "STALE"]
    assert p.job("b")["status"] == "active"


def _children(parent: str) -> list[ChildJob]:
    return [ChildJob("next", f"{parent}.{i}", f"[{i}]", "{}", 4) for i in range(3)]


def test_children_created_with_parent_completion_and_not_duplicated(p: Proto) -> None:
    p.enqueue("a")
    c = p.claim_one("a")
    nq = p.q("next")
    assert p.complete("w1", [Completion("a", c.epoch, "1", _children("a"))]) == ["OK"]
    assert p.job("a")["children"] == "3"
    assert p.r.lrange(p.layout.job_children("a"), 0, -1) == ["a.0", "a.1", "a.2"]
    assert 0 < p.r.pttl(p.layout.job_children("a")) <= TTL
    assert p.r.zrange(nq.ready, 0, -1) == ["a.0", "a.1", "a.2"]
    for i in range(3):
        rec = p.job(f"a.{i}")
        assert rec["parent"] == "a" and rec["queue"] == "next" and rec["status"] == "queued"
        assert rec["args"] == f"[{i}]" and rec["max_attempts"] == "4"
    assert p.r.llen(nq.wake) == 1
    assert p.r.hget(nq.stats, "enqueued") == "3"
    snap = p.snapshot()
    assert p.complete("w1", [Completion("a", c.epoch, "1", _children("a"))]) == ["ALREADY_DONE"]
    assert p.snapshot() == snap
    # A child is claimable from its own queue with its parent recorded.
    child = p.claim("w2", 1, queue="next").jobs[0]
    assert (child.id, child.parent, child.max_attempts) == ("a.0", "a", 4)


def test_stale_completion_creates_no_children(p: Proto) -> None:
    p.enqueue("a")
    c = p.claim_one("a")
    assert p.complete("w2", [Completion("a", c.epoch, "1", _children("a"))]) == ["STALE"]
    assert not p.r.exists(p.layout.job("a.0"), p.q("next").ready)


def test_rerun_after_requeue_does_not_duplicate_children(p: Proto) -> None:
    p.enqueue("a")
    c = p.claim_one("a")
    p.complete("w1", [Completion("a", c.epoch, "1", _children("a"))])
    p.r.persist(p.layout.job("a"))
    # Simulate the parent having to run again (e.g. a later requeue of the same id).
    p.r.hset(p.layout.job("a"), mapping={"status": "queued"})
    p.r.zadd(p.q().ready, {"a": 0})
    c2 = p.claim_one("a")
    assert p.complete("w1", [Completion("a", c2.epoch, "1", _children("a"))]) == ["OK"]
    assert p.r.zcard(p.q("next").ready) == 3
    assert p.r.hget(p.q("next").stats, "enqueued") == "3"


# --- fail ---------------------------------------------------------------------------------------


def test_fail_schedules_retry_with_delay(p: Proto) -> None:
    p.enqueue("a")
    c = p.claim_one("a")
    before = p.server_ms()
    assert p.fail("w1", [Failure("a", c.epoch, '{"type":"E"}', "retry", 5000)]) == ["RETRY"]
    due = p.r.zscore(p.q().retry, "a")
    assert before + 5000 <= due <= p.server_ms() + 5000
    rec = p.job("a")
    assert rec["status"] == "retrying" and int(rec["retry_at"]) == due
    assert rec["attempts"] == "1"  # the attempt is consumed
    assert rec["error"] == '{"type":"E"}'
    assert p.r.lrange(p.layout.job_errors("a"), 0, -1) == ['{"type":"E"}']
    assert p.r.zcard(p.q().active) == 0 and p.r.zcard(p.q().ready) == 0
    assert p.r.hget(p.q().stats, "retried") == "1"


def test_fail_out_of_attempts_goes_dead_with_error_kept(p: Proto) -> None:
    p.enqueue("a", max_attempts=2)
    for attempt in (1, 2):
        c = p.claim_one("a")
        assert c.attempt == attempt
        expected = "RETRY" if attempt == 1 else "DEAD"
        assert p.fail("w1", [Failure("a", c.epoch, f'{{"n":{attempt}}}', "retry", 0)]) == [expected]
    rec = p.job("a")
    assert rec["status"] == "dead" and rec["dead_reason"] == "out of attempts"
    assert rec["error"] == '{"n":2}' and rec["attempts"] == "2"
    assert p.r.zrange(p.q().dead, 0, -1) == ["a"]
    assert p.r.lrange(p.layout.job_errors("a"), 0, -1) == ['{"n":2}', '{"n":1}']
    assert p.r.pttl(p.layout.job("a")) == -1  # kept until requeued or purged
    assert p.r.hget(p.q().stats, "dead") == "1"


def test_error_history_is_bounded(p: Proto) -> None:
    p.enqueue("a", max_attempts=ERRORS_KEPT + 5)
    for n in range(ERRORS_KEPT + 3):
        c = p.claim_one("a")
        assert p.fail("w1", [Failure("a", c.epoch, f"[{n}]", "retry", 0)]) == ["RETRY"]
    errors = p.r.lrange(p.layout.job_errors("a"), 0, -1)
    assert len(errors) == ERRORS_KEPT
    assert errors[0] == f"[{ERRORS_KEPT + 2}]"


def test_fail_action_dead_skips_retries(p: Proto) -> None:
    p.enqueue("a", max_attempts=5)
    c = p.claim_one("a")
    assert p.fail("w1", [Failure("a", c.epoch, "{}", "dead")]) == ["DEAD"]
    rec = p.job("a")
    assert rec["status"] == "dead" and rec["dead_reason"] == "fatal" and rec["attempts"] == "1"
    assert p.r.zcard(p.q().retry) == 0


def test_fail_without_dead_letter_is_failed_with_ttl(p: Proto) -> None:
    p.enqueue("a", max_attempts=1)
    c = p.claim_one("a")
    assert p.fail("w1", [Failure("a", c.epoch, "{}", "retry")], dead_letter=False, ttl=5000) == [
        "FAILED"
    ]
    assert p.job("a")["status"] == "failed"
    assert 0 < p.r.pttl(p.layout.job("a")) <= 5000
    assert 0 < p.r.pttl(p.layout.job_errors("a")) <= 5000
    assert p.r.zcard(p.q().dead) == 0
    assert p.r.hget(p.q().stats, "failed") == "1"


def test_fail_action_cancel_records_cancelled(p: Proto) -> None:
    p.enqueue(NewJob("a", unique_key="u"))
    c = p.claim_one("a")
    assert p.fail("w1", [Failure("a", c.epoch, "{}", "cancel")]) == ["CANCELLED"]
    assert p.job("a")["status"] == "cancelled"
    assert p.r.pttl(p.layout.job("a")) > 0
    assert not p.r.exists(p.layout.unique("u"))


@pytest.mark.parametrize("action", ["retry", "dead", "cancel"])
def test_fail_repeat_is_already_done(p: Proto, action: str) -> None:
    """Retry-safe: settled='fail' at this owner+epoch makes a repeat ALREADY_DONE, so the
    attempt is not consumed twice nor the error recorded twice."""
    p.enqueue("a")
    c = p.claim_one("a")
    f = Failure("a", c.epoch, "{}", action, 60_000)
    p.fail("w1", [f])
    snap = p.snapshot()
    assert p.fail("w1", [f]) == ["ALREADY_DONE"]
    assert p.snapshot() == snap


def test_fail_by_stale_owner_changes_nothing(p: Proto) -> None:
    p.enqueue("a")
    c = p.claim_one("a")
    snap = p.snapshot()
    assert p.fail("w2", [Failure("a", c.epoch, "{}", "dead")]) == ["STALE"]
    assert p.fail("w1", [Failure("a", c.epoch - 1, "{}", "dead")]) == ["STALE"]
    assert p.snapshot() == snap
    # A completed job cannot be failed by its own owner either (a different operation).
    p.complete("w1", [Completion("a", c.epoch, "1")])
    assert p.fail("w1", [Failure("a", c.epoch, "{}", "dead")]) == ["STALE"]
    assert p.job("a")["status"] == "done"


# --- release ------------------------------------------------------------------------------------


def test_release_returns_job_without_consuming_attempt(p: Proto) -> None:
    p.enqueue("a")
    ready_at = p.r.zscore(p.q().ready, "a")
    c = p.claim_one("a")
    p.r.delete(p.q().wake)
    assert p.release("w1", [("a", c.epoch)]) == ["OK"]
    rec = p.job("a")
    assert rec["status"] == "queued" and rec["attempts"] == "0"
    assert p.r.zscore(p.q().ready, "a") == ready_at  # back at its original place
    assert p.r.zcard(p.q().active) == 0
    assert p.r.lrange(p.q().wake, 0, -1) == ["1"]
    assert p.r.hget(p.q().stats, "released") == "1"
    c2 = p.claim_one("a", "w2")
    assert (c2.epoch, c2.attempt) == (2, 1)


def test_release_repeat_is_already_done_and_stale_is_rejected(p: Proto) -> None:
    """Retry-safe: a repeated release finds settled='release' at the same epoch."""
    p.enqueue("a")
    c = p.claim_one("a")
    assert p.release("w2", [("a", c.epoch)]) == ["STALE"]
    p.release("w1", [("a", c.epoch)])
    snap = p.snapshot()
    assert p.release("w1", [("a", c.epoch)]) == ["ALREADY_DONE"]
    assert p.snapshot() == snap
    p.claim_one("a", "w2")
    assert p.release("w1", [("a", c.epoch)]) == ["STALE"]


# --- reap ---------------------------------------------------------------------------------------


def test_reap_requeues_expired_lease_and_fences_stale_owner(p: Proto) -> None:
    p.enqueue("a", "b")
    ca = p.claim_one("a", lease_ms=1)
    p.claim_one("b")  # a live lease: untouched
    time.sleep(0.005)
    reply = p.reap(max_stalls=3)
    assert not reply.guarded and reply.requeued == 1 and reply.dead == []
    rec = p.job("a")
    assert rec["status"] == "queued" and rec["epoch"] == str(ca.epoch + 1)
    assert rec["attempts"] == "0" and rec["stalls"] == "1" and rec["owner"] == ""
    assert p.r.zrange(p.q().ready, 0, -1) == ["a"]
    assert p.r.zrange(p.q().active, 0, -1) == ["b"]
    assert '"Stalled"' in p.r.lindex(p.layout.job_errors("a"), 0)
    assert p.r.hget(p.q().stats, "reaped") == "1"
    snap = p.snapshot()
    # The stale owner is fenced by the new epoch, before anyone claims the job again...
    assert p.refresh("w1", [("a", ca.epoch)]) == ["STALE"]
    assert p.complete("w1", [Completion("a", ca.epoch, "1")]) == ["STALE"]
    assert p.fail("w1", [Failure("a", ca.epoch, "{}", "retry")]) == ["STALE"]
    assert p.release("w1", [("a", ca.epoch)]) == ["STALE"]
    assert p.snapshot() == snap
    # ... and after.
    p.claim_one("a", "w2")
    assert p.complete("w1", [Completion("a", ca.epoch, "1")]) == ["STALE"]
    assert p.job("a")["owner"] == "w2"


def test_stale_owner_cannot_complete_after_reap_even_if_reclaimed_by_itself(p: Proto) -> None:
    p.enqueue("a")
    c1 = p.claim_one("a")
    p.expire_lease("a")
    p.reap()
    c2 = p.claim_one("a")  # same worker id, new epoch
    assert c2.epoch == c1.epoch + 2  # one bump by the reaper, one by the claim
    assert p.complete("w1", [Completion("a", c1.epoch, "old")]) == ["STALE"]
    assert p.complete("w1", [Completion("a", c2.epoch, "new")]) == ["OK"]
    assert p.job("a")["result"] == "new"


def test_job_stalling_more_than_max_stalls_is_dead_lettered(p: Proto) -> None:
    p.enqueue(NewJob("a", unique_key="u"))
    for stall in (1, 2):
        p.claim_one("a")
        p.expire_lease("a")
        reply = p.reap(max_stalls=2)
        assert (reply.requeued, reply.dead) == (1, [])
        assert p.job("a")["stalls"] == str(stall)
    p.claim_one("a")
    p.expire_lease("a")
    reply = p.reap(max_stalls=2)
    assert (reply.requeued, reply.dead) == (0, ["a"])
    rec = p.job("a")
    assert rec["status"] == "dead" and rec["dead_reason"] == "stalled" and rec["stalls"] == "3"
    assert p.r.zrange(p.q().dead, 0, -1) == ["a"]
    assert not p.r.exists(p.layout.unique("u"))
    assert len(p.r.lrange(p.layout.job_errors("a"), 0, -1)) == 3
    # It finished (dead): the throughput ring that `status` reads counts it, once.
    ring = p.r.hgetall(p.q().tput)
    assert sum(int(v) for k, v in ring.items() if k.startswith("c")) == 1


def test_stalled_without_dead_letter_is_failed(p: Proto) -> None:
    p.enqueue("a")
    p.claim_one("a")
    p.expire_lease("a")
    reply = p.reap(max_stalls=0, dead_letter=False)
    assert reply.dead == ["a"]
    assert p.job("a")["status"] == "failed"
    assert p.r.pttl(p.layout.job("a")) > 0 and p.r.pttl(p.layout.job_errors("a")) > 0
    assert p.r.zcard(p.q().dead) == 0


def test_reap_of_cancel_requested_job_cancels_it_and_expires_its_errors(p: Proto) -> None:
    p.enqueue(NewJob("a", unique_key="u"))
    p.claim_one("a")
    assert p.cancel("a")[0] == "CANCELLING"
    p.expire_lease("a")
    reply = p.reap()
    assert (reply.requeued, reply.dead) == (0, [])
    assert p.job("a")["status"] == "cancelled"
    assert p.r.zcard(p.q().ready) == 0 and p.r.zcard(p.q().active) == 0
    assert not p.r.exists(p.layout.unique("u"))
    assert p.r.pttl(p.layout.job("a")) > 0
    assert p.r.pttl(p.layout.job_errors("a")) > 0  # nothing of a finished job lives forever


def test_reap_guard_answers_guarded_within_interval(p: Proto) -> None:
    p.enqueue("a")
    p.claim_one("a")
    p.expire_lease("a")
    assert p.reap(guard_ms=10_000).requeued == 1
    p.claim_one("a")
    p.expire_lease("a")
    snap = p.snapshot()
    assert p.reap(guard_ms=10_000).guarded
    assert p.snapshot() == snap
    p.r.delete(p.q().reaper)  # the interval is over
    assert p.reap(guard_ms=10_000).requeued == 1


def test_reap_repeat_is_harmless(p: Proto) -> None:
    """Retry-safe: a reaped job is no longer in `active` with an expired lease, so a repeat
    finds nothing to do."""
    p.enqueue("a")
    p.claim_one("a")
    p.expire_lease("a")
    p.reap()
    snap = p.snapshot()
    assert p.reap() == ReapReply(False, 0, [])
    assert p.snapshot() == snap


def test_reap_drops_active_entry_of_finished_job(p: Proto) -> None:
    p.enqueue("a")
    _finish(p, "a", "done")
    p.r.zadd(p.q().active, {"a": 0, "ghost": 0})
    reply = p.reap()
    assert reply.requeued == 0
    assert p.r.zcard(p.q().active) == 0
    assert p.job("a")["status"] == "done" and not p.r.exists(p.layout.job("ghost"))


# --- requeue (DLQ) ------------------------------------------------------------------------------


def _dead(p: Proto, *ids: str) -> None:
    for i in ids:
        p.enqueue(NewJob(i, f'["{i}"]'))
        c = p.claim_one(i)
        p.fail("w1", [Failure(i, c.epoch, '{"e":1}', "dead")])


def test_requeue_moves_dead_jobs_back_with_attempts_reset(p: Proto) -> None:
    _dead(p, "a", "b")
    p.r.delete(p.q().wake)
    assert sorted(p.requeue()) == ["a", "b"]
    for i in ("a", "b"):
        rec = p.job(i)
        assert rec["status"] == "queued" and rec["attempts"] == "0" and rec["stalls"] == "0"
        assert rec["args"] == f'["{i}"]'
        assert "dead_reason" not in rec and "finished_at" not in rec
        assert rec["error"] == '{"e":1}'  # the last error is kept for the record
    assert p.r.zcard(p.q().dead) == 0
    assert sorted(p.r.zrange(p.q().ready, 0, -1)) == ["a", "b"]
    assert p.r.llen(p.q().wake) == 1
    assert p.r.hget(p.q().stats, "requeued") == "2"


def test_requeue_by_ids_moves_only_those_dead_in_this_queue(p: Proto) -> None:
    _dead(p, "a", "b")
    p.enqueue("live")
    assert p.requeue(["a", "live", "nope"]) == ["a"]
    assert p.r.zrange(p.q().dead, 0, -1) == ["b"]
    assert p.job("live")["status"] == "queued"


def test_requeue_dry_run_moves_nothing(p: Proto) -> None:
    _dead(p, "a")
    snap = p.snapshot()
    assert p.requeue(dry_run=True) == ["a"]
    assert p.snapshot() == snap


def test_requeued_job_runs(p: Proto) -> None:
    _dead(p, "a")
    p.requeue(["a"])
    c = p.claim_one("a")
    assert (c.attempt, c.epoch, c.args_json) == (1, 2, '["a"]')
    assert p.complete("w1", [Completion("a", c.epoch, '"ok"')]) == ["OK"]
    assert p.job("a")["status"] == "done"


def test_requeue_repeat_moves_nothing_twice(p: Proto) -> None:
    """Retry-safe: a moved job is no longer in the dead set."""
    _dead(p, "a")
    p.requeue(["a"])
    snap = p.snapshot()
    assert p.requeue(["a"]) == []
    assert p.requeue() == []
    assert p.snapshot() == snap


def test_requeue_drops_dead_entry_without_record(p: Proto) -> None:
    p.enqueue("x")  # meta
    p.r.zadd(p.q().dead, {"ghost": 1})
    assert p.requeue(dry_run=True) == []
    assert p.r.zcard(p.q().dead) == 1
    assert p.requeue() == []
    assert p.r.zcard(p.q().dead) == 0 and not p.r.exists(p.layout.job("ghost"))


# --- purge --------------------------------------------------------------------------------------


def test_purge_deletes_dead_records_in_batches(p: Proto) -> None:
    _dead(p, "a", "b", "c")
    assert p.run(p.p.purge("q", limit=2)) == [2, 1]
    assert p.run(p.p.purge("q", limit=2)) == [1, 0]
    for i in ("a", "b", "c"):
        assert not p.r.exists(p.layout.job(i), p.layout.job_errors(i))
    assert p.r.hget(p.q().stats, "purged") == "3"


def test_purge_repeat_deletes_nothing_twice(p: Proto) -> None:
    """Retry-safe: a late or repeated purge finds the dead set already empty."""
    _dead(p, "a")
    p.run(p.p.purge("q"))
    snap = p.snapshot()
    assert p.run(p.p.purge("q")) == [0, 0]
    assert p.snapshot() == snap


def test_purge_never_deletes_a_job_that_is_no_longer_dead(p: Proto) -> None:
    """A stray dead entry of a job requeued and running again only leaves the set."""
    _dead(p, "a")
    p.requeue(["a"])
    p.r.zadd(p.q().dead, {"a": 1})  # a stale entry, as if left behind
    assert p.run(p.p.purge("q")) == [0, 0]
    assert p.job("a")["status"] == "queued"
    assert p.r.zrange(p.q().ready, 0, -1) == ["a"]


# --- cancel -------------------------------------------------------------------------------------


def test_cancel_queued_scheduled_and_retrying_at_once(p: Proto) -> None:
    p.enqueue(NewJob("queued", unique_key="u"), NewJob("sched", when="+60000"), "retry")
    c = p.claim("w1", 5).jobs
    assert [j.id for j in c] == ["queued", "retry"]
    p.release("w1", [("queued", c[0].epoch)])
    p.fail("w1", [Failure("retry", c[1].epoch, "{}", "retry", 60_000)])
    for job_id, before in (("queued", "queued"), ("sched", "scheduled"), ("retry", "retrying")):
        assert p.cancel(job_id, ttl=5000) == ["CANCELLED", before]
        rec = p.job(job_id)
        assert rec["status"] == "cancelled" and "finished_at" in rec
        assert 0 < p.r.pttl(p.layout.job(job_id)) <= 5000
    assert p.r.zcard(p.q().ready) == 0 and p.r.zcard(p.q().retry) == 0
    assert not p.r.exists(p.layout.unique("u"))
    assert p.r.hget(p.q().stats, "cancelled") == "3"
    assert p.claim("w1", 5).jobs == []


def test_cancel_active_asks_the_worker(p: Proto) -> None:
    p.enqueue("a")
    c = p.claim_one("a")
    assert p.cancel("a") == ["CANCELLING", "active"]
    assert p.job("a")["status"] == "active" and p.job("a")["cancel_requested"] == "1"
    assert p.refresh("w1", [("a", c.epoch)]) == ["CANCEL"]
    assert p.fail("w1", [Failure("a", c.epoch, "{}", "cancel")]) == ["CANCELLED"]
    assert p.cancel("a") == ["FINISHED", "cancelled"]


def test_cancel_terminal_or_missing_changes_nothing(p: Proto) -> None:
    p.enqueue("a")
    _finish(p, "a", "done")
    _dead(p, "d")
    snap = p.snapshot()
    assert p.cancel("a") == ["FINISHED", "done"]
    assert p.cancel("d") == ["FINISHED", "dead"]
    assert p.cancel("nope") == ["MISSING", ""]
    assert p.snapshot() == snap


def test_cancel_repeat_is_harmless(p: Proto) -> None:
    """Retry-safe: a repeat finds the job cancelled (FINISHED) or still CANCELLING."""
    p.enqueue("a", "b")
    p.claim_one("a")
    assert p.cancel("a")[0] == "CANCELLING"
    assert p.cancel("b")[0] == "CANCELLED"
    snap = p.snapshot()
    assert p.cancel("a")[0] == "CANCELLING"
    assert p.cancel("b") == ["FINISHED", "cancelled"]
    assert p.snapshot() == snap


def test_enqueue_repeat_changes_nothing(p: Proto) -> None:
    """Retry-safe: the repeat of a whole batch answers 'exists' (or the same 'unique' holder)
    for every job and writes nothing, not even a wake token or a stats count."""
    jobs = [NewJob("a"), NewJob("b", when="+60000"), NewJob("c", unique_key="u")]
    first = p.enqueue(*jobs)
    snap = p.snapshot()
    assert p.enqueue(*jobs) == [(i, "exists") for i, _ in first]
    assert p.snapshot() == snap


def test_wake_token_is_single(p: Proto) -> None:
    p.enqueue("a")
    p.enqueue("b")
    assert p.r.llen(p.q().wake) == 1


def test_tput_ring_counts_finished_jobs(p: Proto) -> None:
    p.enqueue("a", "b", "c", max_attempts=1)
    cs = {j.id: j for j in p.claim("w1", 3).jobs}
    p.complete("w1", [Completion("a", cs["a"].epoch, "1")])
    p.fail(
        "w1",
        [Failure("b", cs["b"].epoch, "{}", "retry"), Failure("c", cs["c"].epoch, "{}", "dead")],
    )
    ring = p.r.hgetall(p.q().tput)
    assert sum(int(v) for k, v in ring.items() if k.startswith("c")) == 3


def test_keys_are_derived_from_the_hash_tagged_prefix(p: Proto) -> None:
    """Every key a script writes starts with the pipeline prefix (one cluster slot)."""
    p.enqueue(NewJob("a", unique_key="u"))
    c = p.claim_one("a")
    p.complete("w1", [Completion("a", c.epoch, "1", _children("a"))])
    _dead(p, "d")
    keys = p.r.keys("*")
    assert keys and all(k.startswith("rrq:{t}:") for k in keys)
    assert len({key_slot(k.encode()) for k in keys}) == 1


def test_retry_of_cancel_requested_job_ends_it_cancelled(p: Proto) -> None:
    """The handler failed before its worker saw the cancel: the job must not run again."""
    p.enqueue(NewJob("a", unique_key="u"))
    c = p.claim_one("a")
    p.cancel("a")
    assert p.fail("w1", [Failure("a", c.epoch, "{}", "retry", 0)]) == ["CANCELLED"]
    assert p.job("a")["status"] == "cancelled"
    assert p.r.zcard(p.q().retry) == 0 and not p.r.exists(p.layout.unique("u"))
    assert p.claim().jobs == []


def test_requeue_clears_an_old_cancel_request(p: Proto) -> None:
    """A requeue is a fresh run: a cancel asked during the dead attempt does not carry over."""
    p.enqueue("a")
    c = p.claim_one("a")
    p.cancel("a")
    p.fail("w1", [Failure("a", c.epoch, "{}", "dead")])
    p.requeue(["a"])
    c2 = p.claim_one("a")
    assert p.refresh("w1", [("a", c2.epoch)]) == ["OK"]


def test_release_of_cancel_requested_job_ends_it_cancelled(p: Proto) -> None:
    """A worker stopping while an operator's cancel is pending does not put the job back to run
    again: it is cancelled, terminal, once (a repeat answers ALREADY_DONE)."""
    p.enqueue(NewJob("a", unique_key="u"))
    c = p.claim_one("a")
    p.cancel("a")
    assert p.release("w1", [("a", c.epoch)]) == ["CANCELLED"]
    rec = p.job("a")
    assert rec["status"] == "cancelled" and "finished_at" in rec
    assert 0 < p.r.pttl(p.layout.job("a")) <= TTL
    assert p.r.zcard(p.q().active) == 0 and p.r.zcard(p.q().ready) == 0
    assert not p.r.exists(p.layout.unique("u"))
    assert p.r.hget(p.q().stats, "cancelled") == "1" and p.r.hget(p.q().stats, "released") is None
    snap = p.snapshot()
    assert p.release("w1", [("a", c.epoch)]) == ["ALREADY_DONE"]
    assert p.snapshot() == snap


async def test_server_clock_keeps_the_sub_second_part(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    """The async clock used by cron schedules, progress and the worker's clock offset is the
    server's to the millisecond. coredis' ``time()`` drops the sub-second part; reading it put
    cron ticks up to a second early (a ``catch_up: latest`` pass then enqueued two missed ticks).
    """
    from rrq_flow.config.model import RedisSettings
    from rrq_flow.connection import open_async_redis
    from rrq_flow.protocol.scripts import pipe_server_ms, server_seconds

    def server_ms() -> float:
        sec, usec = sync_redis.time()
        return int(sec) * 1000 + int(usec) / 1000

    key = KeyLayout("clock").meta
    async with open_async_redis(redis_url, RedisSettings()) as client:
        for _ in range(5):  # at least one reading lands far from a whole second
            before = server_ms()
            seconds = await server_seconds(client, key)
            async with client.pipeline(transaction=False) as pipe:
                clock = pipe_server_ms(pipe, key)
            in_ms = await clock()
            after = server_ms()
            assert before - 1 <= seconds * 1000 <= in_ms + 1 <= after + 2
            time.sleep(0.137)


def test_fragments_hold_only_definitions_at_top_level() -> None:
    """Includes are expanded to the definitions a script uses: that is sound only while every
    top-level line of a fragment belongs to a definition (no statement with an effect)."""
    import re

    from rrq_flow.protocol.scripts import _DEFINITION, _definitions, _read

    for name in ("common", "runs", "add_job", "groups"):
        text = _read(f"fragments/{name}.lua")
        head, defs = _definitions(text)
        assert head + "".join(d.text for d in defs) == text  # nothing lost, nothing moved
        for line in text.splitlines():
            if line and not line[0].isspace() and not _DEFINITION.match(line):
                assert re.fullmatch(r"--.*|end|}|\]\]|\)", line), (name, line)


def test_every_helper_a_script_uses_is_defined_in_it() -> None:
    """No used helper is left out of an expanded script (Redis would then read it as a global
    and fail at run time); and the shortest script drops most of the shared helpers."""
    import re

    from rrq_flow.protocol.scripts import SCRIPT_NAMES, _definitions, _read, script

    helpers = set()
    for name in ("common", "runs", "add_job", "groups"):
        for d in _definitions(_read(f"fragments/{name}.lua"))[1]:
            helpers |= d.names
    for name in SCRIPT_NAMES:
        source = re.sub(r"--\[\[.*?\]\]", "", script(name).source, flags=re.DOTALL)
        source = re.sub(r"--[^\n]*", "", source)  # comments name helpers too
        defined = set()
        for line in source.splitlines():
            m = re.match(r"(?:local function (\w+)|local (\w+(?:, *\w+)*)|(\w+) = function)", line)
            if m:
                defined |= {n.strip() for n in (m[1] or m[2] or m[3]).split(",")}
        used = {h for h in helpers if re.search(rf"\b{h}\b", source)}
        assert used <= defined, (name, sorted(used - defined))
    assert len(script("heartbeat").source) < len(_read("fragments/common.lua"))


def test_the_function_library_holds_every_script_and_starts_each_call_afresh(
    sync_redis: redis.Redis,
) -> None:
    """The library's helpers outlive a call; the state a script keeps while it runs (the key
    prefix, the key types it has checked) must not: each function starts as its EVAL would."""
    from rrq_flow.protocol.scripts import SCRIPT_NAMES, script

    a, b = Proto(sync_redis, "a", functions=True), Proto(sync_redis, "b", functions=True)
    (entry,) = sync_redis.function_list(library().name)
    functions = entry[entry.index("functions") + 1]
    assert {f[f.index("name") + 1] for f in functions} == {script(n).function for n in SCRIPT_NAMES}
    assert a.enqueue("x") == [("x", "new")] and b.enqueue("y") == [("y", "new")]
    assert a.enqueue("z") == [("z", "new")]
    assert set(sync_redis.keys("rrq:{b}:job:*")) == {b.layout.job("y")}
    assert set(sync_redis.keys("rrq:{a}:job:*")) == {a.layout.job("x"), a.layout.job("z")}
    # The ready set checked as a ZSET by those calls is now a string: the next call checks it
    # again and refuses before its first write.
    sync_redis.delete(a.q().ready)
    sync_redis.set(a.q().ready, "x")
    before = a.snapshot()
    with pytest.raises(redis.ResponseError, match="nothing was written"):
        a.enqueue("w")
    assert a.snapshot() == before
    sync_redis.delete(a.q().ready)
    assert a.enqueue("w") == [("w", "new")]
    assert a.claim(n=2).jobs[0].id == "w"
