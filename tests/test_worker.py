"""The trio worker, in-process, against the real test Redis: each test arranges real queue state,
runs a real Worker, and checks what Redis and the handlers observed."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import trio

from rrq_flow.client.sync_client import SyncClient
from rrq_flow.config.model import PipelineConfig
from rrq_flow.protocol.keys import KeyLayout
from rrq_flow.protocol.ops import Completion, Protocol, parse_claim
from rrq_flow.protocol.scripts import call_sync
from rrq_flow.worker.queue_runner import QueueRunner
from rrq_flow.worker.worker import EXIT_FAILED, EXIT_OK, EXIT_REDIS, Worker
from tests.conftest import make_pipeline, make_queue, run_burst

FAST_RETRY = {"max_attempts": 3, "delay": 0.01, "jitter": False}


def read_lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


async def test_success_stores_result(redis_url: str) -> None:
    cfg = make_pipeline(redis_url, make_queue("q", "tests.handlers:echo"))
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q", 1, "a", x=2)
        worker, code = await run_burst(cfg)
        info = client.job(job_id)
    assert code == EXIT_OK
    assert info.status == "done"
    assert info.result == {"args": [1, "a"], "kwargs": {"x": 2}}
    assert info.attempts == 1
    assert worker.stats.queues["q"].done == 1


async def test_sync_handler_runs_in_a_thread(redis_url: str) -> None:
    cfg = make_pipeline(redis_url, make_queue("q", "tests.handlers:sync_echo"))
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q", 5)
        _, code = await run_burst(cfg)
        assert client.job(job_id).result == {"args": [5], "kwargs": {}, "thread": True}
    assert code == EXIT_OK


async def test_retries_with_backoff_then_success(redis_url: str) -> None:
    cfg = make_pipeline(redis_url, make_queue("q", "tests.handlers:fail_until", retry=FAST_RETRY))
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q", 3)
        worker, code = await run_burst(cfg)
        info = client.job(job_id)
    assert code == EXIT_OK
    assert info.status == "done" and info.result == "ok on attempt 3"
    assert info.attempts == 3
    assert [e["attempt"] for e in info.errors] == [2, 1]  # newest first
    assert worker.stats.queues["q"].retried == 2


async def test_exponential_backoff_spaces_the_retries(redis_url: str) -> None:
    policy = {"max_attempts": 3, "delay": 0.2, "jitter": False, "backoff": "exponential"}
    cfg = make_pipeline(redis_url, make_queue("q", "tests.handlers:fail_until", retry=policy))
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q", 3)
        started = time.monotonic()
        await run_burst(cfg)
        elapsed = time.monotonic() - started
        assert client.job(job_id).status == "done"
    assert elapsed >= 0.2 + 0.4  # first retry after 0.2 s, second after 0.4 s


async def test_retries_exhausted_go_to_the_dead_letter_set_with_the_error(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    cfg = make_pipeline(redis_url, make_queue("q", "tests.handlers:always_fail", retry=FAST_RETRY))
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q")
        worker, code = await run_burst(cfg)
        info = client.job(job_id)
    assert code == EXIT_FAILED
    assert info.status == "dead" and info.attempts == 3
    assert info.error is not None
    assert info.error["type"] == "ValueError" and info.error["message"] == "bad input"
    assert "Traceback" in info.error["traceback"]
    assert sync_redis.zscore(KeyLayout("t").queue("q").dead, job_id) is not None
    assert worker.stats.queues["q"].dead == 1


async def test_dead_letter_off_records_failed_outside_the_dlq(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    q = make_queue("q", "tests.handlers:always_fail", retry=FAST_RETRY, dead_letter=False)
    cfg = make_pipeline(redis_url, q)
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q")
        _, code = await run_burst(cfg)
        assert client.job(job_id).status == "failed"
    assert code == EXIT_FAILED
    assert sync_redis.zcard(KeyLayout("t").queue("q").dead) == 0


async def test_explicit_retry_delay_is_honoured(redis_url: str) -> None:
    cfg = make_pipeline(redis_url, make_queue("q", "tests.handlers:retry_later", retry=FAST_RETRY))
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q", "400ms")
        started = time.monotonic()
        await run_burst(cfg)
        elapsed = time.monotonic() - started
        info = client.job(job_id)
    assert info.status == "done" and info.result == "second time"
    assert elapsed >= 0.4  # the policy's 10 ms backoff did not apply


async def test_fatal_skips_retries(redis_url: str) -> None:
    cfg = make_pipeline(redis_url, make_queue("q", "tests.handlers:fatal", retry=FAST_RETRY))
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q")
        _, code = await run_burst(cfg)
        info = client.job(job_id)
    assert code == EXIT_FAILED
    assert info.status == "dead" and info.attempts == 1
    assert info.dead_reason == "fatal"


async def test_fatal_errors_setting_skips_retries(redis_url: str) -> None:
    retry = {**FAST_RETRY, "fatal_errors": ("builtins.ValueError",)}
    cfg = make_pipeline(redis_url, make_queue("q", "tests.handlers:always_fail", retry=retry))
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q")
        await run_burst(cfg)
        info = client.job(job_id)
    assert info.status == "dead" and info.attempts == 1


async def test_timeout_cancels_the_handler_and_follows_the_retry_policy(redis_url: str) -> None:
    q = make_queue(
        "q", "tests.handlers:sleep_for", timeout=0.2, retry={**FAST_RETRY, "max_attempts": 2}
    )
    cfg = make_pipeline(redis_url, q)
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q", 30)
        started = time.monotonic()
        await run_burst(cfg)
        elapsed = time.monotonic() - started
        info = client.job(job_id)
    assert info.status == "dead" and info.attempts == 2
    assert info.error is not None and info.error["message"] == "timed out after 0.2s"
    assert elapsed < 5  # cancelled, not slept for 30 s


async def test_thread_handler_past_its_timeout_is_abandoned(redis_url: str) -> None:
    q = make_queue("q", "tests.handlers:sync_sleep", timeout=0.2, retry={"max_attempts": 1})
    cfg = make_pipeline(redis_url, q)
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q", 1.5)
        started = time.monotonic()
        await run_burst(cfg)
        assert time.monotonic() - started < 1.4
        info = client.job(job_id)
    assert info.status == "dead"
    assert info.error is not None and info.error["message"] == "timed out after 0.2s"


async def test_handlers_own_timeout_error_is_an_ordinary_error(redis_url: str) -> None:
    q = make_queue("q", "tests.handlers:own_timeout", retry={"max_attempts": 1})
    cfg = make_pipeline(redis_url, q)
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q")
        await run_burst(cfg)
        info = client.job(job_id)
    assert info.error is not None
    assert info.error["type"] == "TimeoutError"
    assert info.error["message"] == "the handler's own timeout"


async def test_current_job_gives_the_running_jobs_context(redis_url: str) -> None:
    cfg = make_pipeline(redis_url, make_queue("q", "tests.handlers:context_info"))
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q")
        worker, _ = await run_burst(cfg)
        result = client.job(job_id).result
    assert result == {
        "id": job_id,
        "queue": "q",
        "attempt": 1,
        "max_attempts": 3,
        "epoch": 1,
        "worker_id": worker.worker_id,
        "deadline_in_future": True,
    }


async def test_log_records_carry_worker_queue_and_job(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from rrq_flow.logs import ContextFilter

    caplog.handler.addFilter(ContextFilter())
    caplog.set_level(logging.INFO)
    cfg = make_pipeline(redis_url, make_queue("q", "tests.handlers:context_info"))
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q")
        worker, _ = await run_burst(cfg)
    inside = [r for r in caplog.records if r.getMessage() == "inside the job"]
    assert len(inside) == 1
    assert inside[0].worker_id == worker.worker_id  # type: ignore[attr-defined]
    assert inside[0].queue == "q"  # type: ignore[attr-defined]
    assert inside[0].job_id == job_id  # type: ignore[attr-defined]


async def test_job_running_five_lock_extensions_keeps_its_lease_and_runs_once(
    redis_url: str, tmp_path: Path
) -> None:
    q = make_queue("q", "tests.handlers:record", lock_extension=0.3, timeout=10)
    cfg = make_pipeline(redis_url, q)
    history = tmp_path / "h.txt"
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q", str(history), 1.5)
        worker, code = await run_burst(cfg)
        info = client.job(job_id)
    assert code == EXIT_OK
    assert [line[0] for line in read_lines(history)] == ["start", "end"]
    assert info.status == "done" and info.attempts == 1 and info.epoch == 1 and info.stalls == 0
    assert worker.stats.queues["q"].lost == 0


async def test_stale_worker_completion_is_rejected_and_the_new_owners_result_stands(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    """A worker paused past its lease (simulated: it claimed, then went silent) comes back and
    tries to complete: fenced. The worker that took the job over keeps its result."""
    cfg = make_pipeline(redis_url, make_queue("q", "tests.handlers:echo", lock_extension=0.3))
    protocol = Protocol(KeyLayout("t"))
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q", "real")
        gen = sync_redis.hget(KeyLayout("t").meta, "generation")
        call = protocol.claim("q", str(gen), "paused-worker", 1, 300, 10_000)
        stale = parse_claim(call_sync(sync_redis, call.script, call.keys, call.args)).jobs[0]
        await trio.sleep(0.35)  # the paused worker's lease runs out
        await run_burst(cfg)
        assert client.job(job_id).result == {"args": ["real"], "kwargs": {}}
        late = protocol.complete(
            "q", "paused-worker", 60_000, [Completion(job_id, stale.epoch, '"stale"')]
        )
        assert call_sync(sync_redis, late.script, late.keys, late.args) == ["STALE"]
        info = client.job(job_id)
    assert info.result == {"args": ["real"], "kwargs": {}}
    assert info.epoch == stale.epoch + 2  # bumped by the reap, then by the new claim


async def test_job_of_a_vanished_worker_is_recovered_within_about_lock_extension(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    ext = 0.5
    cfg = make_pipeline(redis_url, make_queue("q", "tests.handlers:echo", lock_extension=ext))
    protocol = Protocol(KeyLayout("t"))
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q", 1)
        gen = sync_redis.hget(KeyLayout("t").meta, "generation")
        call = protocol.claim("q", str(gen), "vanished", 1, int(ext * 1000), 60_000)
        call_sync(sync_redis, call.script, call.keys, call.args)
        claimed_at = time.time()
        await run_burst(cfg)
        info = client.job(job_id)
    assert info.status == "done"
    assert info.finished_at is not None
    # lease (0.5 s) + reap interval (0.125 s) + scheduling; generous bound against a noisy box
    assert info.finished_at - claimed_at < ext + 1.0
    assert info.stalls == 1 and info.attempts == 1  # the stall did not use an attempt


async def test_idle_worker_picks_up_a_new_job_within_milliseconds(
    redis_url: str, tmp_path: Path
) -> None:
    cfg = make_pipeline(redis_url, make_queue("q", "tests.handlers:record"))
    history = tmp_path / "h.txt"
    worker = Worker(cfg, url=redis_url, handle_signals=False)
    latencies = []
    with SyncClient(cfg) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            await trio.sleep(0.3)  # the worker is idle, blocked on its wake-up list
            for _ in range(5):
                sent = time.time()
                job_id = client.enqueue("q", str(history))
                with trio.fail_after(5):
                    while client.job(job_id).status != "done":
                        await trio.sleep(0.005)
                started = float(read_lines(history)[-2][4])
                latencies.append(started - sent)
                await trio.sleep(0.2)
            worker.request_stop("test over")
    assert max(latencies) < 0.25, latencies  # typically ~1 ms; see bench/ for the real figure


async def test_deferred_job_starts_when_due_not_before(redis_url: str) -> None:
    cfg = make_pipeline(redis_url, make_queue("q", "tests.handlers:echo"))
    worker = Worker(cfg, url=redis_url, handle_signals=False)
    with SyncClient(cfg) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            await trio.sleep(0.1)
            job_id = client.enqueue("q", defer=0.5)
            sent = time.time()
            with trio.fail_after(5):
                while client.job(job_id).status != "done":
                    await trio.sleep(0.01)
            info = client.job(job_id)
            worker.request_stop("test over")
    assert info.started_at is not None
    assert 0.45 <= info.started_at - sent < 0.8


async def test_burst_ignores_jobs_deferred_into_the_future(redis_url: str) -> None:
    cfg = make_pipeline(redis_url, make_queue("q", "tests.handlers:echo"))
    with SyncClient(cfg) as client:
        now_id = client.enqueue("q", 1)
        later_id = client.enqueue("q", 2, defer=3600)
        _, code = await run_burst(cfg)
        assert client.job(now_id).status == "done"
        assert client.job(later_id).status == "scheduled"
    assert code == EXIT_OK


async def test_busy_queue_does_not_starve_another(redis_url: str, tmp_path: Path) -> None:
    busy = make_queue("busy", "tests.handlers:sleep_for", concurrency=2)
    other = make_queue("other", "tests.handlers:echo", concurrency=1)
    cfg = make_pipeline(redis_url, busy, other)
    with SyncClient(cfg) as client:
        client.enqueue_many("busy", [[0.2] for _ in range(20)])
        other_id = client.enqueue("other", 1)
        started = time.time()
        worker = Worker(cfg, url=redis_url, handle_signals=False, burst=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            with trio.fail_after(5):
                while client.job(other_id).status != "done":
                    await trio.sleep(0.01)
            done_other = time.time()
            worker.request_stop("test over")
    assert done_other - started < 1.0  # not after the 2 s the busy queue needs


async def test_unreachable_redis_at_start_exits_3(tmp_path: Path) -> None:
    cfg = make_pipeline(f"unix://{tmp_path}/nothing.sock", make_queue("q"))
    worker = Worker(cfg, url=str(cfg.redis.url), handle_signals=False, burst=True)
    assert await worker.run() == EXIT_REDIS


async def test_redis_losing_the_data_stops_the_worker_with_exit_3(
    redis_url: str, sync_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_pipeline(redis_url, make_queue("q"))
    worker = Worker(cfg, url=redis_url, handle_signals=False)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def flush_soon() -> None:
                await trio.sleep(0.3)
                sync_redis.flushall()

            nursery.start_soon(flush_soon)
            code = await worker.run()
    assert code == EXIT_REDIS
    assert "Redis lost the data of pipeline 't'" in caplog.text


async def test_heartbeat_record_is_listed_while_running_and_removed_on_exit(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    cfg = make_pipeline(redis_url, make_queue("q"))
    worker = Worker(cfg, url=redis_url, handle_signals=False)
    layout = KeyLayout("t")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await trio.sleep(0.3)
        assert sync_redis.zscore(layout.workers, worker.worker_id) is not None
        record = sync_redis.hgetall(layout.worker(worker.worker_id))
        assert record["queues"] == "q" and record["pid"].isdigit()
        assert 0 < sync_redis.pttl(layout.worker(worker.worker_id)) <= 1500
        worker.request_stop("test over")
    assert sync_redis.zscore(layout.workers, worker.worker_id) is None
    assert not sync_redis.exists(layout.worker(worker.worker_id))


async def test_graceful_stop_releases_unfinished_jobs_without_using_an_attempt(
    redis_url: str,
) -> None:
    q = make_queue("q", "tests.handlers:sleep_for", concurrency=3)
    cfg = make_pipeline(redis_url, q)
    cfg = PipelineConfig(
        pipeline=cfg.pipeline,
        queues=cfg.queues,
        redis=cfg.redis,
        workers=type(cfg.workers)(heartbeat_interval=0.5, shutdown_grace_period=0.3),
    )
    worker = Worker(cfg, url=redis_url, handle_signals=False)
    with SyncClient(cfg) as client:
        ids = client.enqueue_many("q", [[30] for _ in range(3)])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            await trio.sleep(0.3)
            stop_at = time.monotonic()
            worker.request_stop("test over")
        took = time.monotonic() - stop_at
        infos = [client.job(i) for i in ids]
    assert took < 0.3 + 1.0
    assert [i.status for i in infos] == ["queued"] * 3
    assert [i.attempts for i in infos] == [0, 0, 0]
    assert worker.stats.queues["q"].released == 3


# --- prefetch (claim-ahead) -------------------------------------------------------------------


async def test_prefetched_job_stuck_behind_a_long_one_is_given_back_to_an_idle_worker(
    redis_url: str, tmp_path: Path
) -> None:
    """One slot and one job claimed ahead, behind a job running 2.5x lock_extension. After
    lock_extension / 2 the waiting job goes back unstarted (no attempt used) and a second
    worker runs it while the first is still busy."""
    q = make_queue("q", "tests.handlers:record", concurrency=1, prefetch=1, lock_extension=0.4)
    cfg = make_pipeline(redis_url, q)
    history = tmp_path / "h.txt"
    with SyncClient(cfg) as client:
        first = client.enqueue("q", str(history), 1.0)
        time.sleep(0.005)  # a later ready time (ms): claimed after the first
        second = client.enqueue("q", str(history), 0.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_burst, cfg)
            with trio.fail_after(5):
                while client.job(second).status != "active":  # claimed ahead, not started
                    await trio.sleep(0.01)
            nursery.start_soon(run_burst, cfg)
        infos = [client.job(first), client.job(second)]
    events = {(kind, job): float(at) for kind, job, _, _, at in read_lines(history)}
    assert len(events) == 4  # each job started and ended once
    assert events[("start", second)] < events[("end", first)]  # run by the idle worker
    for info in infos:
        assert info.status == "done" and info.attempts == 1 and info.stalls == 0


async def test_cancel_reaches_a_prefetched_job_before_it_starts(
    redis_url: str, tmp_path: Path
) -> None:
    from rrq_flow.client.admin import Admin

    q = make_queue("q", "tests.handlers:record", concurrency=1, prefetch=1, lock_extension=0.9)
    cfg = make_pipeline(redis_url, q)
    history = tmp_path / "h.txt"
    with SyncClient(cfg) as client:
        first = client.enqueue("q", str(history), 1.5)
        time.sleep(0.005)
        second = client.enqueue("q", str(history), 0.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_burst, cfg)
            with trio.fail_after(5):
                while client.job(second).status != "active":
                    await trio.sleep(0.01)
            assert Admin(client).cancel(second).verdict == "cancelling"
            with trio.fail_after(5):  # recorded at its next renewal, not when a slot frees
                while client.job(second).status != "cancelled":
                    await trio.sleep(0.01)
            assert client.job(first).status == "active"
        assert client.job(second).status == "cancelled"
    assert [job for _, job, *_ in read_lines(history)] == [first, first]  # never ran


async def test_prefetch_zero_claims_only_for_free_slots(redis_url: str, tmp_path: Path) -> None:
    q = make_queue("q", "tests.handlers:record", concurrency=1, prefetch=0)
    cfg = make_pipeline(redis_url, q)
    history = tmp_path / "h.txt"
    with SyncClient(cfg) as client:
        client.enqueue("q", str(history), 0.5)
        time.sleep(0.005)  # a later ready time (ms): claimed after the first
        second = client.enqueue("q", str(history), 0.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_burst, cfg)
            with trio.fail_after(5):
                while not read_lines(history):
                    await trio.sleep(0.01)
            await trio.sleep(0.1)
            assert client.job(second).status == "queued"  # left for another worker
        assert client.job(second).status == "done"


def test_default_prefetch_is_a_tenth_of_concurrency() -> None:
    assert make_queue("q", concurrency=1).claim_ahead == 0
    assert make_queue("q", concurrency=9).claim_ahead == 0
    assert make_queue("q", concurrency=10).claim_ahead == 1
    assert make_queue("q", concurrency=55).claim_ahead == 5
    assert make_queue("q", concurrency=50, prefetch=0).claim_ahead == 0
    assert make_queue("q", concurrency=1, prefetch=3).claim_ahead == 3
    # While the jobs are short: eight per slot, unless the file sets it or flow control is on.
    assert make_queue("q", concurrency=1).claim_ahead_short == 8
    assert make_queue("q", concurrency=10).claim_ahead_short == 80
    assert make_queue("q", concurrency=10, prefetch=0).claim_ahead_short == 0
    assert make_queue("q", concurrency=10, prefetch=3).claim_ahead_short == 3
    assert make_queue("q", concurrency=10, max_running=4).claim_ahead_short == 0
    assert make_queue("q", concurrency=10).claim_ahead_medium == 10
    assert make_queue("q", concurrency=10, prefetch=3).claim_ahead_medium == 3


def _claim_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of jobs each claim call of this test's workers asks for."""
    sizes: list[int] = []
    real = Protocol.claim

    def claim(self: Protocol, queue: str, generation: str, worker: str, n: int, *a: Any) -> Any:
        sizes.append(n)
        return real(self, queue, generation, worker, n, *a)

    monkeypatch.setattr(Protocol, "claim", claim)
    return sizes


@pytest.mark.parametrize(
    ("handler", "args", "n", "sizes_between"),
    [
        ("tests.handlers:echo", [], 300, (21, 36)),  # short jobs: 4 slots + up to 32 ahead
        ("tests.handlers:sleep_for", [0.03], 16, (5, 8)),  # 30 ms jobs: up to 4 ahead
        ("tests.handlers:sleep_for", [0.15], 8, (1, 4)),  # 150 ms jobs: free slots only
    ],
)
async def test_default_prefetch_claims_ahead_per_slot_only_while_jobs_are_short(
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    handler: str,
    args: list[Any],
    n: int,
    sizes_between: tuple[int, int],
) -> None:
    """Claiming ahead pays while a job costs about as much as a claim round trip (eight per
    slot) or while jobs are short enough that one claimed ahead waits little (one per slot,
    under 100 ms); behind longer jobs it would wait while another worker could run it."""
    sizes = _claim_sizes(monkeypatch)
    cfg = make_pipeline(redis_url, make_queue("q", handler, concurrency=4))
    with SyncClient(cfg) as client:
        client.enqueue_many("q", [args] * n)
    worker, code = await run_burst(cfg)
    assert code == EXIT_OK and worker.stats.tally("q").done == n
    low, high = sizes_between
    assert low <= max(sizes) <= high, sizes


async def test_the_next_claim_goes_out_while_half_the_jobs_claimed_ahead_still_wait(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With slots free, a claim waits until the runners have taken the jobs claimed ahead down
    to half of prefetch, and goes out before they run out: its round trip overlaps the jobs
    still waiting. (A runner takes a waiting job without a checkpoint; before the refill, the
    claim loop ran only once the runners had emptied the buffer, and every claim found it
    empty.) Short jobs at concurrency 4: 32 ahead, the next claim at 16 or fewer waiting."""
    waiting: list[int] = []
    real = QueueRunner._claim_directly

    async def claim_directly(self: QueueRunner, call: Any) -> Any:
        waiting.append(len(self.buffered))
        return await real(self, call)

    monkeypatch.setattr(QueueRunner, "_claim_directly", claim_directly)
    cfg = make_pipeline(redis_url, make_queue("q", "tests.handlers:echo", concurrency=4))
    with SyncClient(cfg) as client:
        client.enqueue_many("q", [[]] * 1000)
    worker, code = await run_burst(cfg)
    assert code == EXIT_OK and worker.stats.tally("q").done == 1000
    assert max(waiting) <= 16, waiting  # never before half of them were taken
    # A runner that takes the buffer to half yields until the claim is sent; the other three
    # may start a job each meanwhile, so a claim finds 13 to 16 waiting. Allowed for: the first
    # claims (jobs not yet known to be short), and a stall of the machine that makes the jobs
    # look longer for a while (fewer claimed ahead).
    assert sum(1 for n in waiting if n > 0) >= len(waiting) * 3 // 4, waiting


async def test_stopping_an_idle_worker_ends_its_blocking_wait_at_once(
    redis_url: str, sync_redis: redis.Redis
) -> None:
    """The idle wait (BLPOP + claim in one pipeline) is never cancelled mid-call; a stop ends
    it by pushing a token to the worker's own wake list, which expires if nobody takes it."""
    cfg = make_pipeline(redis_url, make_queue("q"))
    worker = Worker(cfg, url=redis_url, handle_signals=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await trio.sleep(0.3)  # idle, blocked on its wake-up list (1 s at a time)
        assert worker.runners[0].idle
        stopped_at = trio.current_time()
        worker.request_stop("test over")
    took = trio.current_time() - stopped_at
    assert took < 0.5, took  # not the rest of a 1 s block; typically a few ms
    stop_key = KeyLayout("t").worker_wake(worker.worker_id, "q")
    assert sync_redis.llen(stop_key) <= 1
    assert sync_redis.pttl(stop_key) in (-2, *range(1, 10_001))  # gone, or expiring


async def test_same_worker_reclaiming_a_job_whose_old_attempt_still_runs(
    redis_url: str, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    """The lease of a running job runs out (simulated), this worker's reaper requeues it and
    this same worker claims it again while the old attempt is still running: both attempts are
    tracked apart (by id and epoch), the old one is fenced, the new one's result stands."""
    q = make_queue("q", "tests.handlers:record", concurrency=2, lock_extension=3, timeout=30)
    cfg = make_pipeline(redis_url, q)
    history = tmp_path / "h.txt"
    active = KeyLayout("t").queue("q").active
    with SyncClient(cfg) as client:
        job_id = client.enqueue("q", str(history), 1.5)
        worker = Worker(cfg, url=redis_url, burst=True, handle_signals=False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            with trio.fail_after(5):
                while not read_lines(history):
                    await trio.sleep(0.01)
            # Its lease "ran out" just now (not long ago: a lease that ended before the reaper
            # last saw Redis serving would look like one lost to a Redis pause).
            sec, usec = sync_redis.time()
            sync_redis.zadd(active, {job_id: sec * 1000 + usec // 1000 - 1}, xx=True)
        info = client.job(job_id)
    starts = [(int(epoch), job) for kind, job, epoch, *_ in read_lines(history) if kind == "start"]
    assert starts == [(1, job_id), (3, job_id)]  # reaped (epoch 2), claimed again (epoch 3)
    assert info.status == "done" and info.epoch == 3 and info.stalls == 1
    # The old attempt's outcome is dropped exactly once: as "lost" when its refresher sees the
    # lease gone first, as "stale" when its acknowledgement reaches the fence first (a race).
    stats = worker.stats.queues["q"]
    assert stats.done == 1 and stats.lost + stats.stale == 1, stats
