"""Scripts never stop half-way: every script checks what it needs before its first write.

Each test plants a key of the wrong type (or passes malformed arguments) where a script will
read or write, calls the script and checks that it answers an error reply that says nothing was
written, and that indeed not one key changed (a full snapshot before and after).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from rrq_flow.errors import InvalidJobId
from rrq_flow.protocol.ids import child_id, job_id_problem, outbox_id, validate_job_id
from rrq_flow.protocol.ops import ChildJob, Completion, Failure, NewJob
from tests.test_protocol_scripts import GEN, Proto


@pytest.fixture
def p(sync_redis: redis.Redis) -> Proto:
    return Proto(sync_redis)


def refused(p: Proto, call: Callable[[], Any]) -> str:
    """Run ``call``: it must fail with our error reply and change no key at all."""
    before = p.snapshot()
    with pytest.raises(redis.ResponseError) as info:
        call()
    message = str(info.value)
    assert "rrq-flow:" in message and "nothing was written" in message, message
    assert p.snapshot() == before
    return message


def plant(p: Proto, key: str, kind: str) -> None:
    """Create ``key`` with a value of type ``kind`` (overwriting whatever was there)."""
    p.r.delete(key)
    if kind == "string":
        p.r.set(key, "x")
    elif kind == "list":
        p.r.rpush(key, "x")
    elif kind == "hash":
        p.r.hset(key, "x", "1")
    elif kind == "zset":
        p.r.zadd(key, {"x": 1})
    else:
        p.r.sadd(key, "x")


def active(p: Proto, *ids: str, queue: str = "q") -> dict[str, int]:
    """Enqueue and claim ``ids``; their epochs by id."""
    p.enqueue(*ids, queue=queue)
    return {j.id: j.epoch for j in p.claim("w1", len(ids), queue=queue).jobs}


# --- the reproduction of issue 10: ids victim:errors and victim ---------------------------------


def test_ids_that_look_like_another_jobs_keys_never_touch_them(p: Proto) -> None:
    """``victim:errors`` then ``victim``: both fail to the end; the keys of one never meet the
    other's (the old layout's ``job:victim:errors`` was both a record and an error list)."""
    for id_ in ("victim:errors", "victim"):
        epoch = active(p, id_)[id_]
        assert p.fail("w1", [Failure(id_, epoch, '{"m":1}', "dead")]) == ["DEAD"]
    for id_ in ("victim:errors", "victim"):
        assert p.job(id_)["status"] == "dead"
        assert p.r.lrange(p.layout.job_errors(id_), 0, -1) == ['{"m":1}']
    assert set(p.r.zrange(p.q().dead, 0, -1)) == {"victim", "victim:errors"}


# --- wrong-typed keys: each script refuses before writing ---------------------------------------


def test_enqueue_checks_records_unique_keys_and_queue_keys(p: Proto) -> None:
    plant(p, p.layout.job("b"), "string")
    refused(p, lambda: p.enqueue("a", "b"))
    p.r.delete(p.layout.job("b"))
    plant(p, p.layout.unique("u"), "hash")
    refused(p, lambda: p.enqueue("a", NewJob("b", unique_key="u")))
    p.r.delete(p.layout.unique("u"))
    plant(p, p.q().wake, "string")
    refused(p, lambda: p.enqueue("a"))
    p.r.delete(p.q().wake)
    plant(p, p.layout.meta, "list")
    refused(p, lambda: p.enqueue("a"))


def test_enqueue_checks_arguments(p: Proto) -> None:
    refused(p, lambda: p.enqueue(NewJob("a", when="+soon")))
    call = p.p.enqueue("q", 3, GEN, [NewJob("a")])
    refused(p, lambda: p.r.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args[:-1]))
    # Each job is (id, stored arguments "<n>:<args><kwargs>", options "" or a JSON array of 5).
    for blob, opts in (("[]{}", ""), ("9:[]{}", ""), ("2:[]{}", "[1]"), ("2:[]{}", "{")):
        bad = [*call.args[:-2], blob, opts]
        refused(p, lambda bad=bad: p.r.evalsha(call.script.sha, len(call.keys), *call.keys, *bad))


def test_claim_checks_the_records_it_would_take(p: Proto) -> None:
    p.r.hset(p.layout.meta, "generation", GEN)
    p.enqueue("a", "b")
    plant(p, p.layout.job("b"), "list")
    p.r.zadd(p.q().ready, {"b": 0}, xx=True)
    refused(p, lambda: p.claim("w1", 2))
    # A due retry entry whose record is of the wrong type, too.
    p.r.delete(p.layout.job("b"))
    p.r.zrem(p.q().ready, "b")
    p.r.zadd(p.q().retry, {"c": 0})
    plant(p, p.layout.job("c"), "string")
    refused(p, lambda: p.claim("w1", 1))


def test_complete_checks_every_job_and_child_before_writing(p: Proto) -> None:
    e = active(p, "a", "b")
    done = [Completion("a", e["a"], "1"), Completion("b", e["b"], "2")]
    kids = [ChildJob("next", f"a:next:{i}", "[]", "{}", 3) for i in range(2)]
    # The child index of a job that creates children (a completion without any leaves the key
    # alone, so it needs no check).
    plant(p, p.layout.job_children("a"), "string")
    refused(p, lambda: p.complete("w1", [Completion("a", e["a"], "1", kids), done[1]]))
    p.r.delete(p.layout.job_children("a"))
    # The record itself, read with what the completion needs in one checked HMGET.
    plant(p, p.layout.job("b"), "string")
    refused(p, lambda: p.complete("w1", done))
    p.r.delete(p.layout.job("b"))
    p.enqueue("b")
    e["b"] = p.claim("w1", 1).jobs[0].epoch
    # The error list of a job with an earlier attempt: it expires with the record.
    p.fail("w1", [Failure("b", e["b"], "{}", "retry", 0)])
    e["b"] = p.claim("w1", 1).jobs[0].epoch
    plant(p, p.layout.job_errors("b"), "string")
    refused(p, lambda: p.complete("w1", [Completion("b", e["b"], "2")]))
    p.r.delete(p.layout.job_errors("b"))
    assert p.complete("w1", [Completion("b", e["b"], "2")]) == ["OK"]
    plant(p, p.layout.job("a:next:1"), "zset")
    refused(p, lambda: p.complete("w1", [Completion("a", e["a"], "1", kids)]))
    p.r.delete(p.layout.job("a:next:1"))
    plant(p, p.q("next").stats, "string")
    refused(p, lambda: p.complete("w1", [Completion("a", e["a"], "1", kids)]))
    p.r.delete(p.q("next").stats)
    assert p.complete("w1", [Completion("a", e["a"], "1", kids)]) == ["OK"]


def test_fail_checks_error_list_and_the_jobs_own_queue(p: Proto) -> None:
    e = active(p, "a", "b")
    fails = [Failure("a", e["a"], "{}", "dead"), Failure("b", e["b"], "{}", "dead")]
    plant(p, p.layout.job_errors("b"), "string")
    refused(p, lambda: p.fail("w1", fails))
    p.r.delete(p.layout.job_errors("b"))
    plant(p, p.q().dead, "hash")
    refused(p, lambda: p.fail("w1", fails))
    p.r.delete(p.q().dead)
    refused(p, lambda: p.fail("w1", [Failure("a", e["a"], "{}", "explode")]))
    assert p.fail("w1", fails) == ["DEAD", "DEAD"]


def test_release_refresh_and_cancel_check_the_record_and_unique_key(p: Proto) -> None:
    p.enqueue(NewJob("a", unique_key="u"))
    epoch = p.claim_one("a").epoch
    plant(p, p.layout.unique("u"), "list")
    refused(p, lambda: p.release("w1", [("a", epoch)]))
    refused(p, lambda: p.cancel("a"))
    p.r.delete(p.layout.unique("u"))
    plant(p, p.q().active, "string")
    refused(p, lambda: p.refresh("w1", [("a", epoch)]))


def test_reap_checks_before_taking_its_guard(p: Proto) -> None:
    epoch = active(p, "a")["a"]
    p.expire_lease("a")
    plant(p, p.layout.job_errors("a"), "hash")
    message = refused(p, lambda: p.reap(guard_ms=60_000))
    assert p.layout.job_errors("a") in message
    assert not p.r.exists(p.q().reaper)
    p.r.delete(p.layout.job_errors("a"))
    assert p.reap(guard_ms=60_000).requeued == 1
    assert p.complete("w1", [Completion("a", epoch, "1")]) == ["STALE"]


def test_requeue_and_purge_check_the_dead_records(p: Proto) -> None:
    e = active(p, "a")
    p.fail("w1", [Failure("a", e["a"], "{}", "dead")])
    plant(p, p.layout.job("a"), "set")
    refused(p, lambda: p.requeue(None))
    refused(p, lambda: p.requeue(["a"]))
    refused(p, lambda: p.run(p.p.purge("q")))


def test_heartbeat_checks_its_keys(p: Proto) -> None:
    plant(p, p.layout.workers, "hash")
    refused(p, lambda: p.run(p.p.heartbeat("w1", 1000, 5000, {"pid": 1})))


# --- job ids ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["", "a b", "tab\there", "new\nline", "nul\x00", "esc\x1b[31m", "x" * 257, "\udcff"]
)
def test_invalid_job_ids_are_refused(bad: str) -> None:
    assert job_id_problem(bad) is not None
    with pytest.raises(InvalidJobId):
        validate_job_id(bad)


@pytest.mark.parametrize("good", ["a", "victim:errors", "ümlaut/ok", "x" * 256, "a>b.0"])
def test_valid_job_ids(good: str) -> None:
    assert validate_job_id(good) == good


@pytest.mark.parametrize("parent", ["p1", "a b/ü", "x" * 256, "victim:errors"])
def test_generated_ids_are_shell_safe_bounded_and_deterministic(parent: str) -> None:
    ids = [child_id(parent, "next", 7), outbox_id(parent, "next", 7)]
    for i in ids:
        assert validate_job_id(i) == i and all(c.isalnum() or c in "._:-" for c in i)
    assert ids == [child_id(parent, "next", 7), outbox_id(parent, "next", 7)]
    assert len(set(ids)) == 2
    assert child_id(parent, "next", 7) != child_id(parent + "x", "next", 7)
