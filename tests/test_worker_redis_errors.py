"""Redis error replies never kill a worker, and a worker whose task dies gives its jobs back
(issue 10, reproduction 4)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import trio

from rrq_flow.client.admin import Admin
from rrq_flow.client.sync_client import SyncClient
from rrq_flow.config.model import PipelineConfig
from rrq_flow.protocol.ops import Call, Protocol
from rrq_flow.redis_errors import classify, error_code, is_error_reply
from rrq_flow.redis_server import RedisServerProcess
from rrq_flow.worker.queue_runner import QueueRunner
from rrq_flow.worker.wake_connection import ReplyError
from rrq_flow.worker.worker import EXIT_INTERNAL, EXIT_OK, Worker
from tests.conftest import make_pipeline, make_queue, run_burst

SPIN = "while true do end"  # a read-only script: SCRIPT KILL can end it


@pytest.fixture
def admin(redis_server: RedisServerProcess, redis_url: str) -> Iterator[redis.Redis]:
    """A second connection to the test Redis; restores the settings a test changes."""
    r = redis.Redis(unix_socket_path=str(redis_server.unix_socket), decode_responses=True)
    threshold = r.config_get("lua-time-limit")["lua-time-limit"]
    yield r
    r.config_set("maxmemory", 0)
    r.config_set("lua-time-limit", threshold)
    r.close()


def busy_for(server: RedisServerProcess, seconds: float) -> threading.Thread:
    """Another client runs a script that spins, then it is killed after ``seconds``."""

    def spin() -> None:
        r = redis.Redis(unix_socket_path=str(server.unix_socket))
        try:
            r.eval(SPIN, 0)
        except redis.ResponseError:
            pass  # killed
        finally:
            r.close()

    def kill() -> None:
        time.sleep(seconds)
        r = redis.Redis(unix_socket_path=str(server.unix_socket))
        try:
            while True:
                try:
                    r.script_kill()
                    return
                except redis.ResponseError:  # NOTBUSY: it has not started yet
                    time.sleep(0.05)
        finally:
            r.close()

    threading.Thread(target=spin, daemon=True).start()
    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    return killer


async def not_busy(r: redis.Redis) -> None:
    """Wait until a killed script has really stopped (SCRIPT KILL answers before that)."""
    with trio.fail_after(10):
        while True:
            try:
                r.ping()
                return
            except redis.ResponseError:
                await trio.sleep(0.05)


def test_error_replies_are_classified() -> None:
    def reply(text: str) -> ReplyError:
        return ReplyError(text)

    for transient in ("BUSY Redis is busy", "LOADING x", "TRYAGAIN", "MASTERDOWN x", "MOVED 1 h:1"):
        assert classify(reply(transient)) == "transient", transient
    for refusal in ("OOM command not allowed", "MISCONF x", "NOPERM x", "NOREPLICAS x", "ERR x"):
        assert classify(reply(refusal)) == "operator", refusal
    assert error_code(reply("OOM command not allowed")) == "OOM"
    redis6 = "Error running script (call to f_49): @user_script:160: -OOM command not allowed"
    assert error_code(reply(redis6)) == "OOM"
    assert classify(TimeoutError()) == "transient"
    # Inside a pipeline: coredis keeps the code after its prefix, redis-py maps it to a class.
    piped = "Command # 1 (BLPOP k 0.01) of pipeline caused error: OOM command not allowed"
    assert error_code(reply(piped)) == "OOM"
    refused = redis.exceptions.OutOfMemoryError("Command # 1 (EXISTS k) of pipeline caused error")
    assert error_code(refused) == "OOM" and classify(refused) == "operator"
    assert is_error_reply(refused) and is_error_reply(reply("MISCONF x"))
    assert not is_error_reply(redis.exceptions.ConnectionError("x")) and not is_error_reply(
        OSError()
    )


async def handler(seconds: float) -> str:
    await trio.sleep(seconds)
    return "ok"


class Burst:
    """An in-process burst worker run in the background: ``done`` is set when it exits, with
    its exit code in ``code``."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self.done = trio.Event()
        self.code: int | None = None

    async def run(self) -> None:
        _, self.code = await run_burst(self.cfg, handlers={"q": handler})
        self.done.set()


async def test_busy_and_oom_replies_are_waited_out(
    redis_url: str,
    redis_server: RedisServerProcess,
    admin: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Reproduction 4: BUSY from another client's long script, then OOM, while jobs run."""
    caplog.set_level(logging.WARNING)
    cfg = make_pipeline(redis_url, make_queue("q", concurrency=4, lock_extension=5))
    admin.config_set("lua-time-limit", 50)
    with SyncClient(cfg) as client:
        ids = [client.enqueue("q", 0.1) for _ in range(30)]
        burst = Burst(cfg)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(burst.run)
            await trio.sleep(0.3)
            killer = busy_for(redis_server, 1.5)
            await trio.to_thread.run_sync(killer.join)
            await not_busy(admin)
            admin.config_set("maxmemory", 1)  # every write refused with OOM
            await trio.sleep(1.5)
            admin.config_set("maxmemory", 0)
            with trio.fail_after(60):
                await burst.done.wait()
        statuses = [client.job(i).status for i in ids]
    assert burst.code == EXIT_OK
    assert statuses == ["done"] * len(ids)
    text = caplog.text
    assert "BUSY" in text and "Redis unreachable or busy" in text
    assert "Redis refused a call" in text and "OOM" in text and "out of memory" in text
    assert text.count("Redis refused a call") <= 4  # once per kind and outage, not per call


async def test_script_flush_while_jobs_run_loses_and_repeats_nothing(
    redis_url: str, admin: redis.Redis
) -> None:
    """SCRIPT FLUSH (docs/operations.md says it is harmless) while a worker claims and
    acknowledges: every call that meets NOSCRIPT loads the script again; no job is lost,
    retried or run twice."""
    cfg = make_pipeline(redis_url, make_queue("q", concurrency=4))
    with SyncClient(cfg) as client:
        ids = client.enqueue_many("q", [[0.01] for _ in range(300)])
        burst = Burst(cfg)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(burst.run)
            flushes = 0
            while not burst.done.is_set() and flushes < 20:
                await trio.sleep(0.05)
                admin.script_flush()
                flushes += 1
            with trio.fail_after(60):
                await burst.done.wait()
        infos = [client.job(i) for i in ids]
    assert flushes >= 3  # the flushes landed while jobs ran
    assert burst.code == EXIT_OK
    assert [i.status for i in infos] == ["done"] * len(ids)
    assert {i.attempts for i in infos} == {1}


async def test_a_dead_internal_task_gives_back_its_jobs_and_exits_non_zero(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, sync_redis: redis.Redis
) -> None:
    """A bug kills the acknowledgement path: the worker must not live on without it."""

    def broken(self: QueueRunner, *args: Any) -> None:
        raise RuntimeError("a bug in the acknowledgement path")

    monkeypatch.setattr(QueueRunner, "_count", broken)
    cfg = make_pipeline(redis_url, make_queue("q", concurrency=3))
    with SyncClient(cfg) as client:
        ids = [client.enqueue("q", 0.05 * i) for i in range(6)]
        worker, code = await run_burst(cfg, handlers={"q": handler})
        infos = [client.job(i) for i in ids]
    assert code == EXIT_INTERNAL
    assert worker.stop_reason == "internal error"
    # One completion was recorded before the bug struck; every other job is back in its queue
    # with no attempt used, none left active.
    assert all(i.status in ("done", "queued") for i in infos), [i.status for i in infos]
    assert sum(i.status == "queued" for i in infos) >= 3
    assert not sync_redis.keys("*:worker:*")  # it left: no heartbeat record lives on


async def test_health_reports_a_worker_whose_acknowledgements_make_no_progress(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis refuses every completion (a script error here) while heartbeats go through: the
    worker lives on, retrying, and `health` says it is stuck instead of calling it healthy."""
    real = Protocol.complete

    def refused(self: Protocol, *args: Any) -> Call:
        call = real(self, *args)
        return Call(call.script, call.keys, ["not", "a", "valid", "call"])

    monkeypatch.setattr(Protocol, "complete", refused)
    cfg = make_pipeline(redis_url, make_queue("q", lock_extension=1))
    with SyncClient(cfg) as client:
        admin = Admin(client)
        client.enqueue("q", 0.01)
        worker = Worker(cfg, url=redis_url, handle_signals=False, handlers={"q": handler})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            with trio.fail_after(30):
                while not any("no progress" in r for r in admin.health().reasons):
                    await trio.sleep(0.1)
            health = admin.health()
            (info,) = admin.workers()
            nursery.cancel_scope.cancel()
    assert info.stuck and info.holds >= 1 and info.stuck_for > 1
    assert any("has made no progress" in r for r in health.reasons)
    assert "Redis refused a call" in caplog.text
