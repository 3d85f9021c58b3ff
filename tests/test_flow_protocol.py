"""Flow control and priorities in the scripts themselves, one call at a time (real Redis)."""

from __future__ import annotations

import itertools

import redis

from rrq_flow.protocol.ops import ChildJob, Completion, Failure, FlowLimits, NewJob, parse_claim
from tests.test_protocol_scripts import GEN, HARD, LEASE, Proto, p

__all__ = ["p"]


def claim_flow(p: Proto, n: int, flow: FlowLimits, worker: str = "w1"):
    return parse_claim(p.run(p.p.claim("q", GEN, worker, n, LEASE, HARD, flow)))


def test_highest_priority_first_fifo_within_a_priority(p: Proto) -> None:
    p.enqueue(
        NewJob("a"), NewJob("b"), NewJob("c", priority=10), NewJob("d", priority=5),
        NewJob("e", priority=-3), NewJob("f", priority=10),
    )  # fmt: skip
    reply = p.claim("w1", 6)
    assert [j.id for j in reply.jobs] == ["c", "f", "d", "a", "b", "e"]
    # Emptied levels leave the list of levels.
    assert p.r.zcard(p.q().ready + ":prio") == 0


def test_a_deferred_high_priority_job_waits_for_its_time(p: Proto) -> None:
    p.enqueue(NewJob("later", when="+60000", priority=100), NewJob("now"))
    reply = p.claim("w1", 2)
    assert [j.id for j in reply.jobs] == ["now"]
    assert reply.next_due is not None and reply.next_due > reply.now


def test_retries_keep_their_priority(p: Proto) -> None:
    p.enqueue(NewJob("x", priority=7))
    job = p.claim_one("x")
    assert p.fail("w1", [Failure("x", job.epoch, "{}", "retry", 0)]) == ["RETRY"]
    p.enqueue("y", "z")
    assert [j.id for j in p.claim("w1", 1).jobs] == ["x"]


def test_children_inherit_the_parent_priority_unless_the_queue_sets_one(p: Proto) -> None:
    p.enqueue(NewJob("parent", priority=4))
    job = p.claim_one("parent")
    children = [
        ChildJob("q", "inherits", "[]", "{}", 3),
        ChildJob("q", "own", "[]", "{}", 3, priority=-1),
    ]
    assert p.complete("w1", [Completion("parent", job.epoch, "1", children)]) == ["OK"]
    assert p.job("inherits")["priority"] == "4"
    assert p.job("own")["priority"] == "-1"
    assert [j.id for j in p.claim("w1", 2).jobs] == ["inherits", "own"]


def test_release_reap_and_cancel_use_the_job_priority_level(p: Proto) -> None:
    p.enqueue(NewJob("r", priority=2), NewJob("s", priority=2), NewJob("c", priority=2))
    jobs = p.claim("w1", 2).jobs
    assert p.release("w1", [(jobs[0].id, jobs[0].epoch)]) == ["OK"]
    p.expire_lease(jobs[1].id)
    assert p.reap().requeued == 1
    level = p.q().ready + ":p:2"
    assert set(p.r.zrange(level, 0, -1)) == {"r", "s", "c"}
    assert p.cancel("c")[0] == "CANCELLED"
    assert set(p.r.zrange(level, 0, -1)) == {"r", "s"}


def test_rate_limit_grants_starts_at_their_time(p: Proto) -> None:
    p.enqueue(*[f"j{i}" for i in range(10)])
    first = claim_flow(p, 10, FlowLimits(interval_ms=100.0, burst=1, lookahead_ms=0))
    assert len(first.jobs) == 1 and first.held == "rate"
    assert first.jobs[0].start_at == first.now
    assert first.next_due is not None and first.next_due - first.now in range(95, 101)
    # A lookahead grants the starts due soon, each with its exact time, and no more.
    ahead = claim_flow(p, 10, FlowLimits(interval_ms=100.0, burst=1, lookahead_ms=250))
    starts = [j.start_at for j in ahead.jobs]
    assert len(starts) in (2, 3)
    assert all(b - a in (100, 101) for a, b in itertools.pairwise(starts))
    assert all(s <= ahead.now + 250 for s in starts)


def test_rate_burst_lets_that_many_start_at_once(p: Proto) -> None:
    p.enqueue(*[f"j{i}" for i in range(10)])
    reply = claim_flow(p, 10, FlowLimits(interval_ms=60_000.0, burst=3, lookahead_ms=0))
    assert len(reply.jobs) == 3 and reply.held == "rate"
    assert {j.start_at for j in reply.jobs} == {reply.now}


def test_max_running_counts_the_active_index_and_a_freed_slot_wakes_a_waiter(
    p: Proto, sync_redis: redis.Redis
) -> None:
    p.enqueue(*[f"j{i}" for i in range(5)])
    flow = FlowLimits(max_running=2)
    first = claim_flow(p, 5, flow)
    assert len(first.jobs) == 2 and first.held == "cap"
    assert claim_flow(p, 5, flow, "w2").jobs == []
    sync_redis.delete(p.q().wake)
    done = first.jobs[0]
    assert p.complete("w1", [Completion(done.id, done.epoch, "1")]) == ["OK"]
    assert sync_redis.llen(p.q().wake) == 1  # the waiter is woken
    assert len(claim_flow(p, 5, flow, "w2").jobs) == 1
    # A dead worker's slot comes back when its lease is reaped.
    p.expire_lease(first.jobs[1].id)
    assert p.reap().requeued == 1
    assert len(claim_flow(p, 5, flow, "w3").jobs) == 1


def test_pause_stops_claims_until_it_ends_or_is_resumed(p: Proto, sync_redis: redis.Redis) -> None:
    p.enqueue("a", "b")
    now, until = p.run(p.p.pause("q", "pause", 60_000))
    assert until - now == 60_000
    reply = claim_flow(p, 2, FlowLimits())
    assert reply.jobs == [] and reply.held == "paused" and reply.next_due == until
    # A handler's pause never shortens a longer one.
    assert p.run(p.p.pause("q", "extend", 1_000))[1] == until
    sync_redis.delete(p.q().wake)
    p.run(p.p.pause("q", "resume"))
    assert sync_redis.llen(p.q().wake) == 1
    assert len(claim_flow(p, 2, FlowLimits()).jobs) == 2
    _, forever = p.run(p.p.pause("q", "pause", -1))
    assert forever == -1 and claim_flow(p, 2, FlowLimits()).held == "paused"
