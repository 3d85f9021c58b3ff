"""The compact job record and ``keep_args`` (issue 16: Redis memory per finished job).

A job's arguments live in the record's ``packed_args`` field when they fit a listpack value (64
bytes), else in ``args:<id>`` beside the record, so the record holds only short values and stays in
Redis' compact listpack encoding; a success drops the arguments unless the queue has
``keep_args: true``; dead, failed and cancelled jobs keep theirs (``dlq requeue`` runs them again).
"""

from __future__ import annotations

import json

import pytest
import redis
import trio

from rrq_flow import Fatal
from rrq_flow.client.admin import Admin
from rrq_flow.client.jobinfo import JobInfo
from rrq_flow.protocol.keys import KeyLayout
from rrq_flow.protocol.ops import Completion, Failure, NewJob, Protocol
from tests.conftest import make_pipeline, make_queue, run_burst
from tests.test_protocol_scripts import Proto

ARGS = json.dumps(["x" * 96])  # a 100-byte payload: over Redis' 64-byte listpack value limit
KWARGS = '{"k":"v"}'
SHORT = '["x"]'  # "5:" + args + kwargs: 16 bytes, kept in the record


def args_place(p: Proto, job_id: str) -> str | None:
    """Where the job's arguments are: 'record' (packed_args), 'key' (args:<id>) or None."""
    in_record = p.r.hexists(p.layout.job(job_id), "packed_args")
    in_key = p.r.exists(p.layout.job_args(job_id)) == 1
    assert not (in_record and in_key)
    return "record" if in_record else "key" if in_key else None


async def refuse(*args: object, **kwargs: object) -> None:
    """A handler that dead-letters every job at once."""
    raise Fatal("refused")


async def size(*args: str, **kwargs: int) -> int:
    """A handler with a short result (a long one is a long value in the record too)."""
    return len(args[0]) + sum(kwargs.values())


def _done(p: Proto, job_id: str) -> None:
    p.enqueue(NewJob(job_id, ARGS, KWARGS))
    c = p.claim_one(job_id)
    assert (c.args_json, c.kwargs_json) == (ARGS, KWARGS)
    assert p.complete("w1", [Completion(job_id, c.epoch, '{"ok":true}')]) == ["OK"]


def test_a_done_job_drops_its_args_and_its_record_stays_listpack(sync_redis: redis.Redis) -> None:
    p = Proto(sync_redis)
    p.enqueue(NewJob("a", ARGS, KWARGS), queue="other")
    assert sync_redis.get(p.layout.job_args("a")) == f"{len(ARGS)}:{ARGS}{KWARGS}"
    assert args_place(p, "a") == "key"
    assert sync_redis.object("encoding", p.layout.job("a")) == "listpack"
    _done(p, "b")
    assert sync_redis.exists(p.layout.job_args("b")) == 0
    assert sync_redis.object("encoding", p.layout.job("b")) == "listpack"
    record = p.job("b")
    assert record["status"] == "done" and "args" not in record
    info = JobInfo.from_record(record, job_id="b", args_blob=None)
    assert (info.id, info.args, info.kwargs, info.result) == ("b", [], {}, {"ok": True})


@pytest.mark.parametrize(
    ("args", "kwargs", "place"),
    [
        (SHORT, KWARGS, "record"),
        (SHORT, "{}", "record"),
        (
            '["' + "x" * 55 + '"]',
            "{}",
            "record",
        ),  # "59:" + 59 + 2 = 64 bytes: still a listpack value
        ('["' + "x" * 56 + '"]', "{}", "key"),  # 65 bytes
        (ARGS, "{}", "key"),
    ],
)
def test_short_args_live_in_the_record_long_ones_beside_it(
    sync_redis: redis.Redis, args: str, kwargs: str, place: str
) -> None:
    p = Proto(sync_redis)
    p.enqueue(NewJob("a", args, kwargs))
    assert args_place(p, "a") == place
    assert sync_redis.object("encoding", p.layout.job("a")) == "listpack"
    info = JobInfo.from_record(
        sync_redis.hgetall(p.layout.job("a")),
        job_id="a",
        args_blob=sync_redis.get(p.layout.job_args("a")),
    )
    assert (info.args, info.kwargs) == (json.loads(args), json.loads(kwargs))
    c = p.claim_one("a")
    assert (c.args_json, c.kwargs_json) == (args, kwargs)
    assert p.complete("w1", [Completion("a", c.epoch, "1")]) == ["OK"]
    assert args_place(p, "a") is None
    assert sync_redis.object("encoding", p.layout.job("a")) == "listpack"
    # A repeated completion (a lost reply) changes nothing.
    assert p.complete("w1", [Completion("a", c.epoch, "1")]) == ["ALREADY_DONE"]


def test_short_args_kept_dead_or_requeued_stay_in_the_record(sync_redis: redis.Redis) -> None:
    p = Proto(sync_redis)
    p.p = Protocol(p.layout, frozenset({"q"}))  # keep_args
    p.enqueue(NewJob("kept", SHORT, KWARGS))
    c = p.claim_one("kept")
    assert p.complete("w1", [Completion("kept", c.epoch, "1")]) == ["OK"]
    assert args_place(p, "kept") == "record" and sync_redis.pttl(p.layout.job("kept")) > 0
    assert (p.job("kept")["args"], p.job("kept")["kwargs"]) == (SHORT, KWARGS)
    p.enqueue(NewJob("dead", SHORT, KWARGS))
    c = p.claim_one("dead")
    assert p.fail("w1", [Failure("dead", c.epoch, "{}", "dead")]) == ["DEAD"]
    assert args_place(p, "dead") == "record"
    assert p.requeue(["dead"]) == ["dead"]
    again = p.claim_one("dead")
    assert (again.args_json, again.kwargs_json) == (SHORT, KWARGS)


def test_a_malformed_packed_args_field_is_refused_before_any_write(
    sync_redis: redis.Redis,
) -> None:
    p = Proto(sync_redis)
    p.enqueue(NewJob("a", SHORT))
    sync_redis.hset(p.layout.job("a"), "packed_args", "not packed")
    before = {k: sync_redis.dump(k) for k in sync_redis.keys("*")}
    with pytest.raises(redis.ResponseError, match="does not hold job arguments"):
        p.claim("w1", 1)
    assert {k: sync_redis.dump(k) for k in sync_redis.keys("*")} == before


def test_keep_args_keeps_them_for_the_result_ttl(sync_redis: redis.Redis) -> None:
    p = Proto(sync_redis)
    p.p = Protocol(p.layout, frozenset({"q"}))
    _done(p, "a")
    key = p.layout.job_args("a")
    assert p.job("a")["args"] == ARGS and p.job("a")["kwargs"] == KWARGS
    assert 0 < sync_redis.pttl(key) <= sync_redis.pttl(p.layout.job("a")) + 50
    assert sync_redis.object("encoding", p.layout.job("a")) == "listpack"
    # The queue setting can be overridden per call (keep_args=False drops them).
    p.enqueue(NewJob("b", ARGS))
    c = p.claim_one("b")
    call = p.p.complete("q", "w1", 60_000, [Completion("b", c.epoch, "1")], keep_args=False)
    assert p.run(call) == ["OK"]
    assert sync_redis.exists(p.layout.job_args("b")) == 0


def test_dead_failed_and_cancelled_jobs_keep_their_args(sync_redis: redis.Redis) -> None:
    p = Proto(sync_redis)
    for job_id in ("dead", "failed", "cancelled"):
        p.enqueue(NewJob(job_id, ARGS, KWARGS))
    e = {j.id: j.epoch for j in p.claim("w1", 3).jobs}
    assert p.fail("w1", [Failure("dead", e["dead"], "{}", "dead")]) == ["DEAD"]
    assert p.fail("w1", [Failure("failed", e["failed"], "{}", "dead")], dead_letter=False) == [
        "FAILED"
    ]
    assert p.fail("w1", [Failure("cancelled", e["cancelled"], "{}", "cancel")]) == ["CANCELLED"]
    for job_id in ("dead", "failed", "cancelled"):
        assert p.job(job_id)["args"] == ARGS and p.job(job_id)["kwargs"] == KWARGS
    assert sync_redis.pttl(p.layout.job_args("dead")) == -1  # kept until requeued or purged
    assert sync_redis.pttl(p.layout.job_args("failed")) > 0  # expires with the record
    assert sync_redis.pttl(p.layout.job_args("cancelled")) > 0
    # Requeued, it runs again with the same arguments; purged, they are gone with the record.
    assert p.requeue(["dead"]) == ["dead"]
    again = p.claim_one("dead")
    assert (again.args_json, again.kwargs_json) == (ARGS, KWARGS)
    assert p.fail("w1", [Failure("dead", again.epoch, "{}", "dead")]) == ["DEAD"]
    assert p.run(p.p.purge("q")) == [1, 0]
    assert sync_redis.exists(p.layout.job("dead"), p.layout.job_args("dead")) == 0


def test_a_record_of_an_older_layout_still_runs_with_its_inline_args(
    sync_redis: redis.Redis,
) -> None:
    p = Proto(sync_redis)
    p.enqueue(NewJob("a"))
    sync_redis.delete(p.layout.job_args("a"))
    sync_redis.hdel(p.layout.job("a"), "packed_args")
    sync_redis.hset(p.layout.job("a"), mapping={"id": "a", "args": "[1]", "kwargs": '{"n":2}'})
    job = p.claim_one("a")
    assert (job.args_json, job.kwargs_json) == ("[1]", '{"n":2}')
    info = JobInfo.from_record(p.r.hgetall(p.layout.job("a")), job_id="a")
    assert (info.args, info.kwargs) == ([1], {"n": 2})


def test_worker_and_client_end_to_end_with_and_without_keep_args(redis_url: str) -> None:
    """Through a real worker: the default queue drops a done job's args, a ``keep_args`` queue
    keeps them, a dead job keeps them and ``dlq requeue`` runs it again with them."""
    cfg = make_pipeline(
        redis_url,
        make_queue("plain", handler="tests.test_job_record:size"),
        make_queue("kept", handler="tests.test_job_record:size", keep_args=True),
        make_queue("dlq", handler="tests.test_job_record:refuse"),
    )
    with cfg.sync_client() as client:
        plain = client.enqueue("plain", "x" * 96, n=1)
        kept = client.enqueue("kept", "x" * 96, n=1)
        dead = client.enqueue("dlq", "x" * 96, n=1)
    trio.run(run_burst, cfg)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    layout = KeyLayout(cfg.pipeline)
    with cfg.sync_client() as client:
        done = client.job(plain)
        assert (done.status, done.args, done.kwargs) == ("done", [], {})
        assert done.result == 97
        assert r.object("encoding", layout.job(plain)) == "listpack"
        assert client.job(kept).result == 97
        assert r.exists(layout.job_args(plain)) == 0
        assert client.job(kept).args == ["x" * 96] and client.job(kept).kwargs == {"n": 1}
        died = client.job(dead)
        assert (died.status, died.args, died.kwargs) == ("dead", ["x" * 96], {"n": 1})
        admin = Admin(client)
        assert admin.dlq_requeue([dead]).moved == {"dlq": [dead]}
        assert admin.job(dead).info.args == ["x" * 96]
    trio.run(run_burst, cfg)  # it runs again, with its arguments, and is dead-lettered again
    with cfg.sync_client() as client:
        assert client.job(dead).status == "dead" and client.job(dead).args == ["x" * 96]
        assert client.job(dead).attempts == 1
    r.close()


def test_a_long_result_is_kept_beside_the_record(sync_redis: redis.Redis) -> None:
    """A result over 64 bytes goes to ``result:<id>`` with the record's TTL; the record stays
    listpack, and every reader (JobInfo, the Proto view) still finds it."""
    p = Proto(sync_redis)
    long_result = json.dumps({"text": "y" * 200})
    p.enqueue(NewJob("a", ARGS))
    c = p.claim_one("a")
    assert p.complete("w1", [Completion("a", c.epoch, long_result)]) == ["OK"]
    raw = sync_redis.hgetall(p.layout.job("a"))
    assert "result" not in raw and raw["status"] == "done"
    assert sync_redis.object("encoding", p.layout.job("a")) == "listpack"
    assert sync_redis.get(p.layout.job_result("a")) == long_result
    assert 0 < sync_redis.pttl(p.layout.job_result("a")) <= sync_redis.pttl(p.layout.job("a")) + 50
    info = JobInfo.from_record(
        raw, job_id="a", long_result=sync_redis.get(p.layout.job_result("a"))
    )
    assert info.result == {"text": "y" * 200}
    # A short one stays in the record.
    p.enqueue(NewJob("b", ARGS))
    c = p.claim_one("b")
    assert p.complete("w1", [Completion("b", c.epoch, '"short"')]) == ["OK"]
    assert sync_redis.hget(p.layout.job("b"), "result") == '"short"'
    assert sync_redis.exists(p.layout.job_result("b")) == 0
