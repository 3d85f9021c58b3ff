"""SyncClient (redis-py) and Client (coredis, under trio) against the real redis-server.

Jobs are moved through their life by hand with the protocol scripts (no worker), so each test
states exactly what happened to the job it waits on.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import coredis.exceptions
import pytest
import redis
import trio
from hypothesis import given
from hypothesis import strategies as st
from redis.backoff import NoBackoff
from redis.retry import Retry

from rrq_flow.client._core import JobSpec
from rrq_flow.client.async_client import Client
from rrq_flow.client.held_connection import HeldConnection
from rrq_flow.client.jobinfo import JobInfo
from rrq_flow.client.lean_connection import LEAN_CONNECTIONS, lean_connections_for
from rrq_flow.client.sync_client import SyncClient
from rrq_flow.config.model import PipelineConfig
from rrq_flow.connection_errors import explain
from rrq_flow.errors import (
    InvalidJobId,
    JobFailed,
    JobNotFound,
    PayloadError,
    UnknownQueueError,
)
from rrq_flow.protocol.ops import Completion, Failure, decode_json, encode_json
from rrq_flow.protocol.scripts import (
    SCRIPT_NAMES,
    all_scripts,
    function_refusal,
    library,
    preload_sync,
)
from tests.conftest import make_pipeline, make_queue
from tests.functions_support import calls, libraries, users_without_functions
from tests.test_protocol_scripts import Proto


@pytest.fixture
def cfg(redis_url: str) -> PipelineConfig:
    return make_pipeline(
        redis_url,
        make_queue("q", retry={"max_attempts": 4}),
        make_queue("small", max_payload_bytes=64),
    )


@pytest.fixture
def p(sync_redis: redis.Redis) -> Proto:
    return Proto(sync_redis, "t")


def _script_calls(r: redis.Redis) -> tuple[int, int]:
    stats = r.info("commandstats")
    return (
        stats.get("cmdstat_evalsha", {}).get("calls", 0),
        stats.get("cmdstat_eval", {}).get("calls", 0),
    )


def _generation(p: Proto) -> str:
    return p.r.hget(p.layout.meta, "generation") or ""


def _finish_by_hand(p: Proto, job_id: str, how: str, queue: str = "q") -> None:
    """Claim the job as worker 'w' and settle it: done (result {"ok": id}) or dead."""
    reply = p.claim("w", 1, queue=queue, gen=_generation(p))
    assert [j.id for j in reply.jobs] == [job_id]
    epoch = reply.jobs[0].epoch
    if how == "done":
        done = [Completion(job_id, epoch, f'{{"ok":"{job_id}"}}')]
        assert p.complete("w", done, queue=queue) == ["OK"]
    else:
        err = '{"type":"Boom","message":"no"}'
        assert p.fail("w", [Failure(job_id, epoch, err, "dead")], queue=queue) == ["DEAD"]


_CYCLE: list[Any] = []
_CYCLE.append(_CYCLE)  # a list that contains itself

BAD_PAYLOADS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    (({1, 2},), {}),
    ((_CYCLE,), {}),
    ((float("nan"),), {}),
    ((), {"when": dt.datetime(2024, 1, 1)}),
    ((object(),), {}),
]


# --- SyncClient ---------------------------------------------------------------------------------


def test_sync_enqueue_returns_id_and_job_reads_typed_record(cfg: PipelineConfig, p: Proto) -> None:
    before = time.time()
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q", 1, "two", x={"y": [3]})
        info = client.job(job_id)
    assert isinstance(job_id, str) and len(job_id) == 32
    assert isinstance(info, JobInfo)
    assert info.id == job_id and info.queue == "q" and info.status == "queued"
    assert info.args == [1, "two"] and info.kwargs == {"x": {"y": [3]}}
    assert (info.attempts, info.max_attempts, info.epoch) == (0, 4, 0)
    assert info.enqueued_at is not None and before - 1 <= info.enqueued_at <= time.time() + 1
    assert info.ready_at == info.enqueued_at
    assert info.started_at is None and info.finished_at is None and info.owner is None
    assert info.result is None and info.error is None and info.errors == []
    assert not info.finished and not info.cancel_requested
    assert _generation(p)  # written at first use
    assert p.r.zscore(p.q().ready, job_id) is not None


def test_sync_job_info_follows_the_job(cfg: PipelineConfig, p: Proto) -> None:
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q", 1)
        reply = p.claim("w", 1, gen=_generation(p), lease_ms=30_000)
        active = client.job(job_id)
        assert active.status == "active" and active.owner == "w"
        assert active.attempts == 1 and active.epoch == 1
        assert active.started_at is not None and active.lease_until is not None
        assert active.lease_until == pytest.approx(active.started_at + 30, abs=0.01)
        epoch = reply.jobs[0].epoch
        p.fail("w", [Failure(job_id, epoch, '{"type":"E","attempt":1}', "retry", 0)])
        retrying = client.job(job_id)
        assert retrying.status == "retrying" and retrying.owner is None
        assert retrying.error == {"type": "E", "attempt": 1}
        assert retrying.errors == [{"type": "E", "attempt": 1}]
        _finish_by_hand(p, job_id, "done")
        done = client.job(job_id)
    assert done.status == "done" and done.finished and done.result == {"ok": job_id}
    assert done.finished_at is not None and done.attempts == 2 and done.children == 0


def test_sync_same_job_id_and_unique_key(cfg: PipelineConfig, p: Proto) -> None:
    with SyncClient(cfg) as client:
        assert client.enqueue("q", 1, job_id="fixed") == "fixed"
        assert client.enqueue("q", 2, job_id="fixed") == "fixed"
        first = client.enqueue("q", unique_key="u")
        assert client.enqueue("q", unique_key="u") == first
        assert client.job("fixed").args == [1]
        assert client.job(first).unique_key == "u"
    assert p.r.zcard(p.q().ready) == 2
    with pytest.raises(ValueError), SyncClient(cfg) as client:
        client.enqueue("q", job_id="")


def test_sync_defer_and_at(cfg: PipelineConfig, p: Proto) -> None:
    with SyncClient(cfg) as client:
        a = client.enqueue("q", defer=60)
        b = client.enqueue("q", defer="90s")
        c = client.enqueue("q", defer=dt.timedelta(minutes=2))
        d = client.enqueue("q", at=time.time() + 300)
        e = client.enqueue("q", at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        infos = {k: client.job(v) for k, v in dict(a=a, b=b, c=c, d=d, e=e).items()}
        with pytest.raises(ValueError):
            client.enqueue("q", defer=1, at=time.time())
    for key, seconds in (("a", 60), ("b", 90), ("c", 120)):
        info = infos[key]
        assert info.status == "scheduled"
        assert info.ready_at == pytest.approx(info.enqueued_at + seconds, abs=0.01)
    assert infos["d"].status == "scheduled"
    assert infos["e"].status == "queued" and infos["e"].ready_at == 946684800.0
    assert p.r.zscore(p.q().ready, e) == 946684800000


def test_sync_enqueue_calls_a_function_and_loads_the_library(cfg: PipelineConfig, p: Proto) -> None:
    p.r.function_flush()  # as on a new server
    with SyncClient(cfg) as client:
        evalsha, fcall = calls(p.r, "evalsha"), calls(p.r, "fcall")
        first = client.enqueue("q", 1)
        assert libraries(p.r) == [library().name]
        second = client.enqueue("q", 2, k="v")
        assert calls(p.r, "evalsha") == evalsha and calls(p.r, "fcall") >= fcall + 2
        assert client.job(first).args == [1] and client.job(second).kwargs == {"k": "v"}
        p.r.function_flush()  # e.g. a restart without persistence: loaded again
        third = client.enqueue("q", 3)
    assert libraries(p.r) == [library().name]
    assert set(p.r.zrange(p.q().ready, 0, -1)) == {first, second, third}


def test_sync_enqueue_reconnects_and_reports_script_errors(cfg: PipelineConfig, p: Proto) -> None:
    """One enqueue goes around redis-py's per-command bookkeeping (scripts.lean_command) but
    keeps its connection handling: a connection killed between two calls is made again (the
    pool checks it on checkout); and an error reply of the script reaches the caller as
    redis-py raises it, with nothing written."""
    with SyncClient(cfg) as client:
        first = client.enqueue("q", 1)
        assert p.r.client_kill_filter(_type="normal", skipme=True) >= 1  # the producer's
        second = client.enqueue("q", 2)
        p.r.set(p.q().wake, "not a list")
        with pytest.raises(redis.exceptions.ResponseError, match="nothing was written"):
            client.enqueue("q", 3)
    assert set(p.r.zrange(p.q().ready, 0, -1)) == {first, second}
    assert p.r.get(p.q().wake) == "not a list"


def test_single_enqueues_keep_one_connection_and_threads_get_their_own_replies(
    cfg: PipelineConfig, p: Proto
) -> None:
    """One-at-a-time calls go over one connection kept out of the pool (HeldConnection); a
    thread that finds it busy goes through the pool, and every call gets its own reply."""
    with SyncClient(cfg) as client:
        sequential = [client.enqueue("q", i) for i in range(20)]
        producers = [c for c in p.r.client_list() if c["cmd"] == "fcall"]
        assert len(producers) == 1, producers
        errors: list[BaseException] = []

        def produce(t: int) -> None:
            try:
                for i in range(25):
                    job_id = client.enqueue("q", t, i)
                    assert client.job(job_id).args == [t, i]
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=produce, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
    assert p.r.zcard(p.q().ready) == 20 + 8 * 25
    assert client.job(sequential[-1]).args == [19]


def test_a_call_that_timed_out_is_never_answered_by_its_late_reply(redis_url: str) -> None:
    """A SET held up by CLIENT PAUSE times out; its reply would arrive after the pause. The
    held connection is dropped on such an error (redis-py drops it on a read error, and
    HeldConnection on any error but an error reply), so the next call reads its own reply."""
    admin = redis.Redis.from_url(redis_url)
    slow = redis.Redis.from_url(redis_url, socket_timeout=0.2, retry=Retry(NoBackoff(), 0))
    held = HeldConnection(slow)
    assert held.call("PING") in (True, b"PONG")
    admin.execute_command("CLIENT", "PAUSE", 500, "WRITE")
    with pytest.raises(redis.exceptions.TimeoutError):
        held.call("SET", "late", "1")
    time.sleep(0.6)  # the pause is over: the SET, if it ran, has answered by now
    assert held.call("ECHO", "mine") == b"mine"
    held.close()
    slow.close()
    admin.close()


def test_commands_sent_back_to_back_read_every_reply_before_an_error(redis_url: str) -> None:
    """call_many sends a batch without a pipeline object and reads all its replies: an error
    reply in the middle is raised after the rest were read (and ran), so the next call on the
    held connection gets its own reply; a thread that finds it busy is served by the pool."""
    r = redis.Redis.from_url(redis_url)
    held = HeldConnection(r)
    assert held.call_many([["SET", "a", "1"], ["INCR", "a"], ["ECHO", "x"]]) == [b"OK", 2, b"x"]
    with pytest.raises(redis.exceptions.ResponseError, match="not an integer"):
        held.call_many([["SET", "s", "text"], ["INCR", "s"], ["SET", "after", "ran"]])
    assert r.get("after") == b"ran"
    assert held.call("ECHO", "mine") == b"mine"
    with held._lock:  # another thread's call holds the connection
        assert held.call_many([["ECHO", "pooled"]]) == [b"pooled"]
    held.close()
    r.close()
    cluster_like = HeldConnection(object())  # no plain pool: the caller uses a pipeline
    assert cluster_like.call_many([["PING"]]) is None


def test_enqueue_many_holds_off_the_garbage_collector_only_while_it_encodes(
    cfg: PipelineConfig, p: Proto
) -> None:
    """The collector is off while the jobs are encoded, and on again after, whether the batch
    went in or was refused; a caller that turned it off keeps it off."""
    seen: list[bool] = []

    def specs() -> Iterator[list[int]]:  # read while the jobs are encoded
        for i in range(3):
            seen.append(gc.isenabled())
            yield [i]

    with SyncClient(cfg) as client:
        assert len(client.enqueue_many("q", specs())) == 3
        assert seen == [False, False, False] and gc.isenabled()
        with pytest.raises(PayloadError):
            client.enqueue_many("q", [[1], [object()]])
        assert gc.isenabled()
        gc.disable()
        try:
            client.enqueue_many("q", [[4]])
            assert not gc.isenabled()
        finally:
            gc.enable()
    assert p.r.zcard(p.q().ready) == 4


def test_a_forked_child_never_uses_its_parents_held_connection(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    held = HeldConnection(r)
    assert held.call("ECHO", "before") == b"before"
    pid = os.fork()
    if pid == 0:  # the child: its own connection, or its replies would mix with the parent's
        ok = all(held.call("ECHO", f"child {i}") == f"child {i}".encode() for i in range(50))
        os._exit(0 if ok else 1)
    for i in range(50):
        assert held.call("ECHO", f"parent {i}") == f"parent {i}".encode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    held.close()
    r.close()


def test_sync_client_without_fcall_or_function_load_calls_by_evalsha(tmp_path: Path) -> None:
    for admin, user, url in users_without_functions(tmp_path):
        with SyncClient(make_pipeline(url, make_queue("q"))) as client:
            evalsha = calls(admin, "evalsha") + calls(admin, "eval")
            job = client.enqueue("q", user)
            assert not client._functions, user
            assert client.job(job).args == [user]
            assert calls(admin, "evalsha") + calls(admin, "eval") > evalsha
        assert admin.function_list() == [], user


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("ERR Function not found", "missing"),  # hiredis (the worker's connection)
        ("Function not found", "missing"),  # redis-py drops the code
        (
            "ERR unknown command 'FCALL', with args beginning with: 'rrq_x_claim' '6' ",
            "unavailable",
        ),
        ("unknown command `FCALL`, with args beginning with: `rrq_x_claim`, `6`, ", "unavailable"),
        ("NOPERM this user has no permissions to run the 'fcall' command", "unavailable"),
        ("this user has no permissions to run the 'function|load' command", "unavailable"),
        # Errors of the script itself, inside a function: not about functions.
        (
            "ERR The user executing the script can't run this command or subcommand script: "
            "rrq_x_claim, on @user_function:12.",
            None,
        ),
        ("rrq-flow: nothing was written script: rrq_x_enqueue, on @user_function:3.", None),
        ("OOM command not allowed when used memory > 'maxmemory'.", None),
    ],
)
def test_function_refusals_are_told_from_script_errors(text: str, kind: str | None) -> None:
    assert function_refusal(text) == kind


def test_sync_enqueue_many_one_script_call_per_batch(cfg: PipelineConfig, p: Proto) -> None:
    preload_sync(p.r)  # so that no NOSCRIPT fallback counts as an extra call
    specs = [[i] for i in range(2500)]
    with SyncClient(cfg) as client:
        before = _script_calls(p.r)
        ids = client.enqueue_many("q", specs, batch_size=1000)
        after = _script_calls(p.r)
        assert client.job(ids[1234]).args == [1234]
    assert (after[0] - before[0], after[1] - before[1]) == (3, 0)
    assert len(ids) == len(set(ids)) == 2500
    assert p.r.zcard(p.q().ready) == 2500
    assert p.r.hget(p.q().stats, "enqueued") == "2500"


def test_sync_enqueue_many_with_specs_and_repeat(cfg: PipelineConfig, p: Proto) -> None:
    specs = [
        JobSpec(args=(1,), job_id="a"),
        JobSpec(kwargs={"k": 1}, job_id="b", defer=60),
        JobSpec(args=(2,), unique_key="u"),
        JobSpec(args=(3,), unique_key="u"),
    ]
    with SyncClient(cfg) as client:
        ids = client.enqueue_many("q", specs, batch_size=2)
        assert ids[:2] == ["a", "b"] and ids[3] == ids[2]
        assert client.job("b").status == "scheduled" and client.job("b").kwargs == {"k": 1}
        assert client.enqueue_many("q", specs[:2]) == ["a", "b"]  # same ids: no new jobs
        assert client.enqueue_many("q", []) == []
    assert p.r.zcard(p.q().ready) == 3


def test_sync_enqueue_many_reloads_scripts_after_script_flush(
    cfg: PipelineConfig, p: Proto
) -> None:
    with SyncClient(cfg) as client:
        client.enqueue_many("q", [[1]])
        p.r.script_flush()
        ids = client.enqueue_many("q", [[2], [3]], batch_size=1)
    assert len(ids) == 2 and p.r.zcard(p.q().ready) == 3


def test_a_producer_loads_only_the_enqueue_script(cfg: PipelineConfig, p: Proto) -> None:
    """A producer's first pipelined enqueue loads what it calls by SHA, not every script (the
    others are ~300 KB of Lua); its other calls fall back to EVAL on their own."""
    p.r.script_flush()
    with SyncClient(cfg) as client:
        job_id = client.enqueue_many("q", [[1]])[0]
        loaded = p.r.script_exists(*(s.sha for s in all_scripts()))
        assert dict(zip(SCRIPT_NAMES, loaded, strict=True)) == {
            name: name == "enqueue" for name in SCRIPT_NAMES
        }
    assert p.claim_one(job_id, gen=_generation(p)).epoch == 1  # claim.lua: NOSCRIPT, then EVAL


def test_sync_wait_returns_result_of_completion(cfg: PipelineConfig, p: Proto) -> None:
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q", 1)
        finisher = threading.Timer(0.1, _finish_by_hand, (p, job_id, "done"))
        finisher.start()
        try:
            assert client.wait(job_id, timeout=5) == {"ok": job_id}
        finally:
            finisher.join()
        assert client.wait(job_id, timeout=0) == {"ok": job_id}  # already done


def test_sync_wait_raises_job_failed_for_dead(cfg: PipelineConfig, p: Proto) -> None:
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q", 1)
        _finish_by_hand(p, job_id, "dead")
        with pytest.raises(JobFailed) as exc:
            client.wait(job_id, timeout=5)
    assert exc.value.job_id == job_id and exc.value.status == "dead"
    assert exc.value.error == {"type": "Boom", "message": "no"}


def test_sync_wait_raises_job_failed_for_cancelled(cfg: PipelineConfig, p: Proto) -> None:
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q", 1)
        assert p.cancel(job_id)[0] == "CANCELLED"
        with pytest.raises(JobFailed) as exc:
            client.wait(job_id, timeout=5)
    assert exc.value.status == "cancelled"


def test_sync_wait_times_out(cfg: PipelineConfig) -> None:
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q", 1)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            client.wait(job_id, timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 2


def test_sync_missing_job_raises_job_not_found(cfg: PipelineConfig) -> None:
    with SyncClient(cfg) as client:
        with pytest.raises(JobNotFound):
            client.job("nope")
        with pytest.raises(JobNotFound):
            client.wait("nope", timeout=1)


def test_sync_unknown_queue_writes_nothing(cfg: PipelineConfig, p: Proto) -> None:
    with SyncClient(cfg) as client:
        with pytest.raises(UnknownQueueError) as exc:
            client.enqueue("nope", 1)
        assert "nope" in str(exc.value) and "q" in str(exc.value)
        with pytest.raises(UnknownQueueError):
            client.enqueue_many("nope", [[1]])
    assert p.r.dbsize() == 0


@pytest.mark.parametrize(("args", "kwargs"), BAD_PAYLOADS)
def test_sync_non_json_payload_writes_nothing(
    cfg: PipelineConfig, p: Proto, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    with SyncClient(cfg) as client, pytest.raises(PayloadError) as exc:
        client.enqueue("q", *args, **kwargs)
    assert "not JSON" in str(exc.value) and "'q'" in str(exc.value)
    assert p.r.dbsize() == 0


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(_JSON_VALUES)
def test_encode_json_writes_what_json_dumps_writes(value: Any) -> None:
    """encode_json reuses one C encoder; its text is json.dumps' with the same options."""
    expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    assert encode_json(value) == expected
    assert encode_json((value,)) == f"[{expected}]"


_ANY_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(_ANY_JSON_VALUES, st.booleans())
def test_decode_json_reads_what_json_loads_reads(value: Any, ascii_only: bool) -> None:
    """decode_json (orjson, json.loads for what orjson refuses) gives json.loads' value: the
    same types too (compared through repr: NaN is not equal to itself), for integers past 64
    bits, NaN and Infinity, lone surrogates, escaped or not."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert repr(decode_json(text)) == repr(json.loads(text))


@pytest.mark.parametrize(
    "text",
    [
        '"\\ud800"',
        "1e400",
        "-0",
        "1.0",
        '{"a":1,"a":2}',
        " [1] ",
        "NaN",
        "[-Infinity]",
        str(2**64),
        str(-(2**63) - 1),
    ],
)
def test_decode_json_agrees_with_json_loads_at_the_edges(text: str) -> None:
    assert repr(decode_json(text)) == repr(json.loads(text))


@pytest.mark.parametrize("text", ["", "[1,]", "[1] x", "{'a': 1}", "[" * 5000])
def test_decode_json_raises_what_json_loads_raises(text: str) -> None:
    """A text that is no JSON fails as json.loads fails (a handler's outcome records it)."""
    with pytest.raises(Exception) as ours:
        decode_json(text)
    with pytest.raises(Exception) as theirs:
        json.loads(text)
    assert type(ours.value) is type(theirs.value) and str(ours.value) == str(theirs.value)


def test_encode_json_tells_a_cycle_from_a_deep_value() -> None:
    with pytest.raises(ValueError, match="Circular reference"):
        encode_json([1, _CYCLE])
    deep: list[Any] = []
    inner = deep
    for _ in range(100_000):
        inner.append([])
        inner = inner[0]
    with pytest.raises(RecursionError):
        encode_json(deep)
    assert encode_json([1, "é", {"k": None}]) == '[1,"é",{"k":null}]'  # usable afterwards


def test_sync_oversized_payload_writes_nothing(cfg: PipelineConfig, p: Proto) -> None:
    with SyncClient(cfg) as client:
        with pytest.raises(PayloadError) as exc:
            client.enqueue("small", "x" * 100)
        assert "max_payload_bytes" in str(exc.value)
        with pytest.raises(PayloadError):
            client.enqueue("small", "x" * 59)  # '["x…"]' 63 bytes + '{}' 2 = 65 > 64
        assert p.r.dbsize() == 0
        client.enqueue("small", "x" * 58)  # exactly 64 bytes: allowed


def test_sync_enqueue_many_with_one_bad_item_writes_nothing(cfg: PipelineConfig, p: Proto) -> None:
    good = [[i] for i in range(10)]
    with SyncClient(cfg) as client:
        with pytest.raises(PayloadError):
            client.enqueue_many("q", [*good, [{1}], *good], batch_size=3)
        with pytest.raises(PayloadError):
            client.enqueue_many("small", [*good, ["x" * 100]], batch_size=1)
        with pytest.raises(PayloadError):
            client.enqueue_many("q", [JobSpec(args=(1,)), JobSpec(kwargs={"k": float("inf")})])
    assert p.r.dbsize() == 0


def test_both_clients_refuse_invalid_job_ids_before_writing(cfg: PipelineConfig, p: Proto) -> None:
    with SyncClient(cfg) as client:
        for bad in ("", "a b", "x" * 257, "nl\n"):
            with pytest.raises(InvalidJobId):
                client.enqueue("q", job_id=bad)
            with pytest.raises(InvalidJobId):
                client.enqueue_many("q", [JobSpec(job_id="fine"), JobSpec(job_id=bad)])

    async def run_async() -> None:
        async with Client(cfg) as client:
            with pytest.raises(InvalidJobId):
                await client.enqueue("q", job_id="a\tb")

    trio.run(run_async)
    assert p.r.dbsize() == 0


# --- async Client (coredis, trio) ---------------------------------------------------------------


async def test_async_enqueue_and_job(cfg: PipelineConfig, p: Proto) -> None:
    async with Client(cfg) as client:
        job_id = await client.enqueue("q", 1, k="v")
        info = await client.job(job_id)
        assert await client.enqueue("q", 2, job_id=job_id) == job_id
        first = await client.enqueue("q", unique_key="u")
        assert await client.enqueue("q", unique_key="u") == first
        deferred = await client.job(await client.enqueue("q", defer="30s"))
    assert info.id == job_id and info.status == "queued" and info.queue == "q"
    assert info.args == [1] and info.kwargs == {"k": "v"} and info.max_attempts == 4
    assert deferred.status == "scheduled"
    assert p.r.zcard(p.q().ready) == 3
    assert _generation(p)


async def test_async_enqueue_many_one_script_call_per_batch(cfg: PipelineConfig, p: Proto) -> None:
    async with Client(cfg) as client:
        await client.enqueue("q", "load the library")
        before = _script_calls(p.r), calls(p.r, "fcall")
        ids = await client.enqueue_many("q", [[i] for i in range(1200)], batch_size=500)
        after = _script_calls(p.r), calls(p.r, "fcall")
    assert after[0] == before[0] and after[1] - before[1] == 3  # by FCALL, one per batch
    assert len(set(ids)) == 1200 and p.r.zcard(p.q().ready) == 1201


async def test_async_enqueue_calls_a_function_and_loads_the_library(
    cfg: PipelineConfig, p: Proto
) -> None:
    p.r.function_flush()  # as on a new server
    async with Client(cfg) as client:
        evalsha, fcall = _script_calls(p.r), calls(p.r, "fcall")
        first = await client.enqueue("q", 1)
        assert libraries(p.r) == [library().name]
        second = await client.enqueue("q", 2, k="v")
        assert _script_calls(p.r) == evalsha and calls(p.r, "fcall") >= fcall + 2
        assert (await client.job(first)).args == [1]
        assert (await client.job(second)).kwargs == {"k": "v"}
        p.r.function_flush()  # e.g. a restart without persistence: loaded again
        third = await client.enqueue("q", 3)
    assert libraries(p.r) == [library().name]
    assert set(p.r.zrange(p.q().ready, 0, -1)) == {first, second, third}


async def test_async_client_without_functions_calls_by_evalsha_or_eval(tmp_path: Path) -> None:
    """A user who may not run FCALL or FUNCTION LOAD: the async client calls by EVALSHA from
    then on, and by EVAL when the server's script cache is empty."""
    for admin, user, url in users_without_functions(tmp_path):
        admin.script_flush()
        async with Client(make_pipeline(url, make_queue("q"))) as client:
            before = calls(admin, "evalsha") + calls(admin, "eval")
            job = await client.enqueue("q", user)
            assert not client._functions, user
            assert (await client.job(job)).args == [user]
            assert calls(admin, "evalsha") + calls(admin, "eval") > before
        assert admin.function_list() == [], user
        # A wrong password: refused at AUTH, said as for any client, without the password.
        bad = url.replace(":pw@", ":not-the-pw@")
        pool = lean_connections_for(bad, make_pipeline(bad).redis)
        lean = pool and pool.free()
        assert lean is not None
        with pytest.raises(coredis.exceptions.AuthenticationFailureError) as refused:
            await lean.call("PING")
        text = explain(refused.value, bad)
        assert text.startswith(f"authentication failed for user '{user}'"), text
        assert "not-the-pw" not in text and lean._stream is None


async def test_async_wait_returns_result_of_completion(cfg: PipelineConfig, p: Proto) -> None:
    async with Client(cfg) as client:
        job_id = await client.enqueue("q", 1)
        result: list[Any] = []

        async def waiter() -> None:
            result.append(await client.wait(job_id, timeout=5))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.sleep(0.1)
            assert not result
            _finish_by_hand(p, job_id, "done")
    assert result == [{"ok": job_id}]


async def test_async_wait_raises_job_failed_for_dead(cfg: PipelineConfig, p: Proto) -> None:
    async with Client(cfg) as client:
        job_id = await client.enqueue("q", 1)
        _finish_by_hand(p, job_id, "dead")
        with pytest.raises(JobFailed) as exc:
            await client.wait(job_id, timeout=5)
    assert exc.value.status == "dead" and exc.value.error == {"type": "Boom", "message": "no"}


async def test_async_wait_times_out(cfg: PipelineConfig) -> None:
    async with Client(cfg) as client:
        job_id = await client.enqueue("q", 1)
        started = trio.current_time()
        with pytest.raises(TimeoutError):
            await client.wait(job_id, timeout=0.2)
    assert 0.2 <= trio.current_time() - started < 2


async def test_async_missing_job_raises_job_not_found(cfg: PipelineConfig) -> None:
    async with Client(cfg) as client:
        with pytest.raises(JobNotFound):
            await client.job("nope")
        with pytest.raises(JobNotFound):
            await client.wait("nope", timeout=1)


async def test_async_bad_input_writes_nothing(cfg: PipelineConfig, p: Proto) -> None:
    async with Client(cfg) as client:
        with pytest.raises(UnknownQueueError):
            await client.enqueue("nope", 1)
        with pytest.raises(UnknownQueueError):
            await client.enqueue_many("nope", [[1]])
        for args, kwargs in BAD_PAYLOADS:
            with pytest.raises(PayloadError):
                await client.enqueue("q", *args, **kwargs)
        with pytest.raises(PayloadError):
            await client.enqueue("small", "x" * 100)
        with pytest.raises(PayloadError):
            await client.enqueue_many("q", [[1], [2], [float("nan")]], batch_size=1)
    assert p.r.dbsize() == 0


async def test_async_enqueues_go_on_the_lean_connection_and_survive_a_kill(
    cfg: PipelineConfig, p: Proto
) -> None:
    """One connection of the client's own carries its script calls; one the server closed
    while idle is made again, and the call made once more (enqueue is safe to repeat)."""
    async with Client(cfg) as client:
        first = await client.enqueue("q", 1)
        assert client._lean is not None
        (lean,) = client._lean.connections
        stream = lean._stream
        assert stream is not None
        fcalls = calls(p.r, "fcall")
        second = await client.enqueue("q", 2)
        assert lean._stream is stream and calls(p.r, "fcall") == fcalls + 1
        p.r.client_kill_filter(_type="normal", skipme=True)  # every other client's connection
        third = await client.enqueue("q", 3)
        assert lean._stream is not None and lean._stream is not stream
        assert [(await client.job(j)).args for j in (first, second, third)] == [[1], [2], [3]]
    assert p.r.zcard(p.q().ready) == 3


async def test_async_enqueue_error_reply_is_coredis_kind_and_leaves_connection_clean(
    cfg: PipelineConfig, p: Proto
) -> None:
    async with Client(cfg) as client:
        await client.enqueue("q", "connect")
        assert client._lean is not None
        (lean,) = client._lean.connections
        stream = lean._stream
        p.r.delete(p.q().ready)
        p.r.set(p.q().ready, "not a zset")  # the script refuses before its first write
        with pytest.raises(coredis.exceptions.ResponseError, match="expected a zset"):
            await client.enqueue("q", 2)
        p.r.delete(p.q().ready)
        job = await client.enqueue("q", 3)
        assert lean._stream is stream  # the error reply was read whole: same connection
    assert p.r.zrange(p.q().ready, 0, -1) == [job]


async def test_async_enqueue_cut_off_by_timeout_or_cancel_never_reads_a_late_reply(
    redis_url: str, p: Proto
) -> None:
    """While Redis holds writes back (CLIENT PAUSE): a call that times out raises TimeoutError,
    one that is cancelled is cancelled; both close the connection, so the late replies can
    never answer the calls after them."""
    cfg = make_pipeline(redis_url, make_queue("q"))
    cfg = dataclasses.replace(cfg, redis=dataclasses.replace(cfg.redis, command_timeout=0.3))
    async with Client(cfg) as client:
        await client.enqueue("q", "connect")
        assert client._lean is not None
        (lean,) = client._lean.connections
        p.r.execute_command("CLIENT", "PAUSE", "800", "WRITE")
        with pytest.raises(TimeoutError):
            await client.enqueue("q", "timed out", job_id="late-1")
        assert lean._stream is None and not lean.busy
        with trio.move_on_after(0.2) as cancelled:
            await client.enqueue("q", "cancelled", job_id="late-2")
        assert cancelled.cancelled_caught and lean._stream is None and not lean.busy
        await trio.sleep(0.8)  # the pause is over
        job = await client.enqueue("q", "after", job_id="after")
        assert job == "after" and (await client.job(job)).args == ["after"]


async def test_async_concurrent_enqueues_share_the_lean_connections_and_coredis(
    cfg: PipelineConfig, p: Proto
) -> None:
    async with Client(cfg) as client:
        ids: list[str] = []

        async def producer(k: int) -> None:
            for i in range(20):
                ids.append(await client.enqueue("q", k, i))

        async with trio.open_nursery() as nursery:
            for k in range(25):
                nursery.start_soon(producer, k)
        assert client._lean is not None
        made = len(client._lean.connections)
    assert 1 < made <= LEAN_CONNECTIONS  # made as concurrent calls needed them, no more
    assert len(set(ids)) == 500 and p.r.zcard(p.q().ready) == 500


async def test_a_closed_lean_connection_never_connects_again(redis_url: str) -> None:
    """A task still calling after its Client closed fails; it opens no connection."""
    pool = lean_connections_for(redis_url, make_pipeline(redis_url).redis)
    conn = pool and pool.free()
    assert pool is not None and conn is not None
    assert await conn.call("PING") == "PONG"
    await pool.aclose()
    with pytest.raises(coredis.exceptions.ConnectionError, match="closed"):
        await conn.call("PING")
    assert conn._stream is None and not conn.busy


def test_async_client_lean_connection_under_asyncio(redis_url: str, p: Proto) -> None:
    """The same client under asyncio (anyio): single and concurrent enqueues, a database
    number (SELECT), a connection the server closed."""
    import asyncio

    url = f"{redis_url}?db=3"
    db3 = redis.Redis(unix_socket_path=redis_url.removeprefix("unix://"), db=3)

    async def main() -> list[str]:
        async with Client(make_pipeline(url, make_queue("q"))) as client:
            first = await client.enqueue("q", 1)
            db3.client_kill_filter(_type="normal", skipme=True)
            rest = await asyncio.gather(*(client.enqueue("q", i) for i in range(50)))
            assert (await client.job(first)).args == [1]
            return [first, *rest]

    ids = asyncio.run(main())
    assert len(set(ids)) == 51 and db3.zcard(p.q().ready) == 51
    assert p.r.dbsize() == 0  # database 0 untouched
    db3.flushdb()
    db3.close()


def test_client_requires_context(cfg: PipelineConfig) -> None:
    with pytest.raises(RuntimeError):
        _ = Client(cfg).redis


def test_jobinfo_scheduled_past_due_reads_as_queued() -> None:
    record = {"id": "a", "queue": "q", "status": "scheduled", "ready_at": "1000"}
    assert JobInfo.from_record(record, now=0.5).status == "scheduled"
    assert JobInfo.from_record(record, now=1.0).status == "queued"
    info = JobInfo.from_record(record, now=2.0)
    assert info.as_dict()["status"] == "queued" and info.attempts == 0 and info.errors == []
