"""The Admin API against the real test Redis: states built precisely with the protocol scripts
(or by a real Worker), then read and changed the way an operator does."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import trio

from rrq_flow.client import admin as admin_module
from rrq_flow.client.admin import Admin
from rrq_flow.client.sync_client import SyncClient
from rrq_flow.config.model import PipelineConfig
from rrq_flow.errors import JobNotFound, UnknownQueueError
from rrq_flow.protocol.keys import KeyLayout
from rrq_flow.protocol.ops import Call, ClaimedJob, Completion, Failure, Protocol, parse_claim
from rrq_flow.protocol.scripts import call_sync
from rrq_flow.worker.worker import Worker
from tests.conftest import make_pipeline, make_queue, run_burst

LAYOUT = KeyLayout("t")
PROTO = Protocol(LAYOUT)
HOUR_MS = 3_600_000


class Ops:
    """Drive the protocol scripts by hand, as a worker would, for exact states."""

    def __init__(self, r: redis.Redis):
        self.r = r

    def run(self, call: Call) -> Any:
        return call_sync(self.r, call.script, call.keys, call.args)

    def claim(self, queue: str, n: int, worker: str = "w1") -> list[ClaimedJob]:
        gen = str(self.r.hget(LAYOUT.meta, "generation"))
        reply = parse_claim(self.run(PROTO.claim(queue, gen, worker, n, HOUR_MS, 2 * HOUR_MS)))
        assert not reply.lost
        return reply.jobs

    def complete(self, queue: str, job: ClaimedJob, result: Any = "ok", worker: str = "w1") -> None:
        done = [Completion(job.id, job.epoch, json.dumps(result))]
        assert self.run(PROTO.complete(queue, worker, HOUR_MS, done)) == ["OK"]

    def fail(
        self, queue: str, job: ClaimedJob, action: str, delay_ms: int = 0, worker: str = "w1"
    ) -> str:
        err = {
            "type": "ValueError",
            "message": f"bad {job.attempt}",
            "attempt": job.attempt,
            "traceback": f"Traceback (most recent call last):\nValueError: bad {job.attempt}\n",
        }
        f = Failure(job.id, job.epoch, json.dumps(err), action, delay_ms)
        return str(self.run(PROTO.fail(queue, worker, HOUR_MS, True, [f]))[0])

    def beat(self, worker: str, interval_ms: int = 1000, **fields: Any) -> None:
        record: dict[str, str | int | float] = {
            "id": worker,
            "host": "h1",
            "pid": 4242,
            "queues": "q",
            "in_flight": 0,
            "started_at": 1,
            "interval_ms": interval_ms,
            "version": "test",
            "burst": 0,
            "stopping": 0,
        }
        record.update(fields)
        self.run(PROTO.heartbeat(worker, interval_ms * 3, interval_ms * 20, record))

    def server_ms(self) -> int:
        sec, usec = self.r.time()
        return int(sec) * 1000 + int(usec) // 1000


@pytest.fixture
def ops(sync_redis: redis.Redis) -> Ops:
    return Ops(sync_redis)


def two_queues(redis_url: str) -> PipelineConfig:
    return make_pipeline(
        redis_url,
        make_queue("q", "tests.handlers:echo"),
        make_queue("bad", "tests.handlers:always_fail", retry={"max_attempts": 1}),
    )


@pytest.fixture
def admin(redis_url: str) -> Iterator[Admin]:
    with SyncClient(two_queues(redis_url)) as client:
        yield Admin(client)


def status_of(admin: Admin, queue: str) -> admin_module.QueueStatus:
    return next(s for s in admin.queue_status() if s.queue == queue)


# --- status -----------------------------------------------------------------------------------


def test_queue_status_counts_every_state(admin: Admin, ops: Ops) -> None:
    ids = admin.client.enqueue_many("q", [[i] for i in range(6)])
    admin.client.enqueue("q", "later", defer=3600)
    a, b, c, d = ops.claim("q", 4)  # d stays active
    ops.complete("q", a)
    assert ops.fail("q", b, "retry", HOUR_MS) == "RETRY"
    assert ops.fail("q", c, "dead") == "DEAD"
    waiting = sorted(set(ids) - {a.id, b.id, c.id, d.id})
    assert admin.cancel(waiting[0]).verdict == "cancelled"
    s = status_of(admin, "q")
    assert (s.ready, s.scheduled, s.retrying, s.active) == (1, 1, 1, 1)
    assert (s.done, s.dead, s.cancelled, s.failed, s.enqueued) == (1, 1, 1, 0, 7)
    assert s.throughput_per_min == 2  # done + dead; a retry finishes nothing
    assert s.oldest_ready_age is not None and 0 <= s.oldest_ready_age < 10
    empty = status_of(admin, "bad")
    assert (empty.ready, empty.done, empty.dead, empty.throughput_per_min) == (0, 0, 0, 0)
    assert empty.oldest_ready_age is None


def test_queue_status_selects_queues_and_rejects_unknown_ones(admin: Admin) -> None:
    assert [s.queue for s in admin.queue_status(["bad"])] == ["bad"]
    with pytest.raises(UnknownQueueError):
        admin.queue_status(["nope"])


def test_throughput_sums_only_the_last_six_buckets(
    admin: Admin, ops: Ops, sync_redis: redis.Redis
) -> None:
    bucket = ops.server_ms() // 10_000
    ring: dict[Any, Any] = {}
    for age, count in ((0, 5), (5, 3), (6, 100), (7, 1000)):
        slot = (bucket - age) % 8
        ring[f"b{slot}"], ring[f"c{slot}"] = bucket - age, count
    sync_redis.hset(LAYOUT.queue("q").tput, mapping=ring)
    assert status_of(admin, "q").throughput_per_min == 8


def test_scheduled_job_that_became_due_counts_as_ready(admin: Admin, ops: Ops) -> None:
    admin.client.enqueue("q", 1, defer=0.05)
    assert (status_of(admin, "q").ready, status_of(admin, "q").scheduled) == (0, 1)
    time.sleep(0.1)
    s = status_of(admin, "q")
    assert (s.ready, s.scheduled) == (1, 0)


# --- workers ----------------------------------------------------------------------------------


def test_workers_are_alive_until_two_and_a_half_intervals_pass(
    admin: Admin, ops: Ops, sync_redis: redis.Redis
) -> None:
    ops.beat("fresh", 1000, in_flight=3, queues="q,bad")
    ops.beat("late", 1000)
    ops.beat("gone", 1000)
    now = ops.server_ms()
    sync_redis.zadd(LAYOUT.workers, {"late": now - 2000, "gone": now - 2600})
    sync_redis.zadd(LAYOUT.workers, {"no-record": now - 100})  # record expired or never there
    found = {w.id: w for w in admin.workers()}
    assert set(found) == {"fresh", "late", "gone", "no-record"}
    assert found["fresh"].alive and found["late"].alive  # one missed beat: still alive
    assert not found["gone"].alive and not found["no-record"].alive
    fresh = found["fresh"]
    assert (fresh.host, fresh.pid, fresh.queues, fresh.in_flight) == ("h1", 4242, ["q", "bad"], 3)
    assert fresh.interval == 1.0 and fresh.last_beat_age < 1
    assert found["gone"].last_beat_age >= 2.6


# --- one job ----------------------------------------------------------------------------------


async def test_job_detail_of_a_done_stage_with_its_child(redis_url: str) -> None:
    cfg = make_pipeline(
        redis_url, make_queue("a", "tests.handlers:echo", next=("b",)), make_queue("b")
    )
    with SyncClient(cfg) as client:
        parent_id = client.enqueue("a", 7)
        await run_burst(cfg)
        admin = Admin(client)
        parent = admin.job(parent_id)
        assert parent.info.status == "done"
        assert parent.info.result == {"args": [7], "kwargs": {}}
        assert parent.parent is None and len(parent.children) == 1
        child_ref = parent.children[0]
        assert (child_ref.queue, child_ref.status) == ("b", "done")
        child = admin.job(child_ref.id)
        assert child.parent is not None and child.parent.id == parent_id
        assert child.parent.status == "done"
        assert set(child.as_dict()) == {"job", "parent", "children", "owner"}


async def test_job_detail_of_a_dead_job_has_traceback_and_earlier_errors(redis_url: str) -> None:
    policy = {"max_attempts": 3, "delay": 0.01, "jitter": False}
    cfg = make_pipeline(redis_url, make_queue("q", "tests.handlers:always_fail", retry=policy))
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q")
        await run_burst(cfg)
        detail = Admin(client).job(job_id)
    assert detail.info.status == "dead" and detail.info.dead_reason == "out of attempts"
    assert detail.last_error is not None and detail.last_error["attempt"] == 3
    assert "Traceback" in detail.last_error["traceback"]
    assert [e["attempt"] for e in detail.earlier_errors] == [2, 1]


def test_job_detail_of_an_active_job_names_its_worker(admin: Admin, ops: Ops) -> None:
    job_id = admin.client.enqueue("q", 1)
    ops.beat("w1", 1000)
    ops.claim("q", 1, worker="w1")
    detail = admin.job(job_id)
    assert detail.info.status == "active" and detail.info.owner == "w1"
    assert detail.owner is not None and detail.owner.host == "h1" and detail.owner.alive
    assert detail.info.lease_until is not None


def test_unknown_job_raises(admin: Admin) -> None:
    with pytest.raises(JobNotFound):
        admin.job("nope")


# --- dead letters -----------------------------------------------------------------------------


def make_dead(admin: Admin, ops: Ops, queue: str, n: int) -> list[str]:
    ids = admin.client.enqueue_many(queue, [[i] for i in range(n)])
    jobs = ops.claim(queue, n)
    assert len(jobs) == n
    errs = [Failure(j.id, j.epoch, json.dumps({"type": "E", "message": "m"}), "dead") for j in jobs]
    for i in range(0, n, 500):
        ops.run(PROTO.fail(queue, "w1", HOUR_MS, True, errs[i : i + 500]))
    return ids


def test_dlq_list_is_newest_first_with_counts_and_errors(
    admin: Admin, ops: Ops, sync_redis: redis.Redis
) -> None:
    q_ids = make_dead(admin, ops, "q", 3)
    bad_ids = make_dead(admin, ops, "bad", 2)
    # Spread the death times so that the order is certain.
    for i, job_id in enumerate(q_ids + bad_ids):
        sync_redis.zadd(LAYOUT.queue("bad" if job_id in bad_ids else "q").dead, {job_id: 1000 + i})
    page = admin.dlq_list(limit=4)
    assert page.counts == {"q": 3, "bad": 2} and page.total == 5
    assert [e.id for e in page.entries] == [bad_ids[1], bad_ids[0], q_ids[2], q_ids[1]]
    entry = page.entries[0]
    assert (entry.queue, entry.attempts, entry.dead_reason) == ("bad", 1, "fatal")
    assert (entry.error_type, entry.error_message, entry.died_at) == ("E", "m", 1.004)
    only_q = admin.dlq_list("q", limit=50)
    assert only_q.counts == {"q": 3} and len(only_q.entries) == 3


def test_dlq_requeue_all_loops_in_batches_until_empty(
    admin: Admin, ops: Ops, sync_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin_module, "BATCH", 7)
    ids = make_dead(admin, ops, "q", 30)
    dry = admin.dlq_requeue(None, dry_run=True)
    assert dry.count == 30 and sync_redis.zcard(LAYOUT.queue("q").dead) == 30
    result = admin.dlq_requeue(None)
    assert sorted(result.moved["q"]) == sorted(ids) and result.count == 30
    assert sync_redis.zcard(LAYOUT.queue("q").dead) == 0
    assert sync_redis.zcard(LAYOUT.queue("q").ready) == 30
    info = admin.client.job(ids[4])
    assert (info.status, info.attempts, info.args) == ("queued", 0, [4])


def test_dlq_requeue_by_id_finds_each_jobs_queue(admin: Admin, ops: Ops) -> None:
    q_ids = make_dead(admin, ops, "q", 2)
    bad_ids = make_dead(admin, ops, "bad", 1)
    done_id = admin.client.enqueue("q", 9)
    ops.complete("q", ops.claim("q", 1)[0])
    result = admin.dlq_requeue([q_ids[0], bad_ids[0], "nope", done_id])
    assert result.moved == {"q": [q_ids[0]], "bad": [bad_ids[0]]}
    assert result.not_found == ["nope"] and result.not_in_dlq == [done_id]
    wrong_queue = admin.dlq_requeue([q_ids[1]], queue="bad")
    assert wrong_queue.count == 0 and wrong_queue.not_in_dlq == [q_ids[1]]
    assert admin.client.job(q_ids[1]).status == "dead"


def test_dlq_purge_deletes_dead_jobs_only(
    admin: Admin, ops: Ops, sync_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin_module, "BATCH", 4)
    dead = make_dead(admin, ops, "q", 10)
    other_dead = make_dead(admin, ops, "bad", 2)
    queued = admin.client.enqueue("q", "keep me")
    sync_redis.zadd(LAYOUT.queue("q").dead, {queued: 1})  # a stray entry must not cost a job
    assert admin.dlq_purge("q") == {"q": 10}
    assert sync_redis.zcard(LAYOUT.queue("q").dead) == 0
    assert not any(sync_redis.exists(LAYOUT.job(i), LAYOUT.job_errors(i)) for i in dead)
    assert admin.client.job(queued).status == "queued"
    assert sync_redis.zcard(LAYOUT.queue("bad").dead) == 2
    assert sync_redis.hget(LAYOUT.queue("q").stats, "purged") == "10"
    assert admin.dlq_purge() == {"q": 0, "bad": 2}
    assert not sync_redis.exists(LAYOUT.job(other_dead[0]))


# --- cancel -----------------------------------------------------------------------------------


def test_cancel_waiting_jobs_at_once_and_finished_ones_not_at_all(admin: Admin, ops: Ops) -> None:
    two = admin.client.enqueue_many("q", [[1], [2]])
    scheduled = admin.client.enqueue("q", 3, defer=3600)
    job = ops.claim("q", 1)[0]
    ops.fail("q", job, "retry", HOUR_MS)
    first, queued = job.id, next(i for i in two if i != job.id)
    for job_id, before in ((queued, "queued"), (scheduled, "scheduled"), (first, "retrying")):
        outcome = admin.cancel(job_id)
        assert (outcome.verdict, outcome.status_before) == ("cancelled", before)
        assert admin.client.job(job_id).status == "cancelled"
    s = status_of(admin, "q")
    assert (s.ready, s.scheduled, s.retrying, s.cancelled) == (0, 0, 0, 3)
    again = admin.cancel(queued)
    assert (again.verdict, again.status_before) == ("finished", "cancelled")
    done = admin.client.enqueue("q", 4)
    ops.complete("q", ops.claim("q", 1)[0])
    assert (admin.cancel(done).verdict, admin.cancel(done).status_before) == ("finished", "done")
    assert admin.cancel("nope").verdict == "missing"


async def test_cancel_of_a_running_job_reaches_its_worker(redis_url: str) -> None:
    q = make_queue("q", "tests.handlers:sleep_for", lock_extension=0.3)
    cfg = make_pipeline(redis_url, q)
    worker = Worker(cfg, url=redis_url, handle_signals=False)
    with SyncClient(cfg) as client:
        admin = Admin(client)
        job_id = client.enqueue("q", 30)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            with trio.fail_after(5):
                while client.job(job_id).status != "active":
                    await trio.sleep(0.01)
            outcome = admin.cancel(job_id)
            assert (outcome.verdict, outcome.status_before) == ("cancelling", "active")
            assert client.job(job_id).cancel_requested
            with trio.fail_after(3):  # the next renewal, a third of 0.3 s later
                while client.job(job_id).status != "cancelled":
                    await trio.sleep(0.01)
            worker.request_stop("test over")
        info = client.job(job_id)
    assert info.error is not None and info.error["type"] == "Cancelled"
    assert worker.stats.queues["q"].cancelled == 1
    assert status_of(admin, "q").cancelled == 1


# --- health -----------------------------------------------------------------------------------


def test_health_needs_a_live_worker_that_is_not_stopping_per_queue(
    admin: Admin, ops: Ops, sync_redis: redis.Redis
) -> None:
    h = admin.health()
    assert not h.ok and h.live_workers == {"q": 0, "bad": 0} and len(h.reasons) == 2
    ops.beat("w1", 1000, queues="q")
    h = admin.health()
    assert not h.ok and h.live_workers == {"q": 1, "bad": 0}
    assert h.reasons == ["no live worker serves queue 'bad'"]
    assert admin.health(["q"]).ok
    ops.beat("w2", 1000, queues="bad", stopping=1)
    h = admin.health(["bad"])
    assert not h.ok and "stopping" in h.reasons[0]
    ops.beat("w2", 1000, queues="bad")
    assert admin.health().ok
    sync_redis.zadd(LAYOUT.workers, {"w1": ops.server_ms() - 5000})
    h = admin.health()
    assert not h.ok and "stale" in h.reasons[0] and "'q'" in h.reasons[0]
