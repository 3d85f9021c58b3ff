"""A worker process's loop: timers armed on a timerfd (precise_clock), start-up heap frozen."""

from __future__ import annotations

import logging
import os
import select
import time
from pathlib import Path

import pytest
import trio

from rrq_flow.client.sync_client import SyncClient
from rrq_flow.config import load
from rrq_flow.worker import precise_clock
from rrq_flow.worker.precise_clock import Timerfd, TimerfdClock, make_clock
from tests.test_cli_run import cli, write_pipeline


def test_run_gives_the_loop_a_timerfd_clock_whose_timers_all_work() -> None:
    """sleep, move_on_after and fail_after end as they do on trio's clock; the timerfd is
    closed when the run ends."""
    fds: list[int] = []

    async def main() -> str:
        clock = trio.lowlevel.current_clock()
        assert isinstance(clock, TimerfdClock)
        fds.append(clock.timer.fd)
        start = trio.current_time()
        await trio.sleep(0.02)
        assert trio.current_time() >= start + 0.02
        with trio.move_on_after(0.02) as scope:
            await trio.sleep_forever()
        assert scope.cancelled_caught
        with pytest.raises(trio.TooSlowError):
            with trio.fail_after(0.01):
                await trio.sleep_forever()
        return "done"

    assert precise_clock.run(main) == "done"
    with pytest.raises(OSError):
        os.fstat(fds[0])


def test_the_timer_fires_at_the_deadline_never_before() -> None:
    clock = make_clock()
    assert clock is not None
    try:
        deadline = clock.current_time() + 0.3
        assert clock.deadline_to_sleep_time(deadline) > 0
        poller = select.poll()
        poller.register(clock.timer.fd, select.POLLIN)
        assert poller.poll(0) == []  # armed, not fired
        assert poller.poll(10_000)  # fires (the bound is generous: any busy machine)
        assert clock.current_time() >= deadline
        clock.timer.consume()
        assert poller.poll(0) == []  # read: no longer ready
    finally:
        clock.timer.close()


def test_a_deadline_that_goes_away_early_leaves_no_busy_loop() -> None:
    """The timer stays armed at a deadline whose scope ended by other means (here a thread's
    result): it fires for nothing while the loop waits with no deadline, is read, and the loop
    sleeps on. Left unread, the timer's fd kept the loop spinning: ~0.3 s of CPU here."""

    async def main() -> float:
        cpu = time.process_time()
        for _ in range(5):
            with trio.move_on_after(0.05):  # armed ...
                await trio.to_thread.run_sync(time.sleep, 0.01)  # ... and left early
            await trio.to_thread.run_sync(time.sleep, 0.1)  # no deadline: the timer fires
        return time.process_time() - cpu

    assert precise_clock.run(main) < 0.15  # ~0.015 s


def test_without_a_timerfd_the_loop_keeps_trios_own_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(self: Timerfd) -> None:
        raise OSError("no timerfd here")

    monkeypatch.setattr(Timerfd, "__init__", refuse)

    async def main() -> str:
        await trio.sleep(0.01)
        return type(trio.lowlevel.current_clock()).__name__

    assert precise_clock.run(main) == "SystemClock"


def test_a_timer_that_cannot_be_armed_leaves_trios_timing_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Raised inside trio's run loop, the error would crash the loop: never let it out."""

    def broken(self: Timerfd, at_ns: int) -> None:
        raise OSError("timerfd_settime refused")

    monkeypatch.setattr(Timerfd, "arm", broken)

    async def main() -> int:
        for _ in range(3):
            await trio.sleep(0.01)
        with trio.move_on_after(0.01):
            await trio.sleep_forever()
        return 3

    with caplog.at_level(logging.WARNING, logger="rrq_flow.worker"):
        assert precise_clock.run(main) == 3
    assert [r.message for r in caplog.records].count(
        "timers at trio's resolution from now on: timerfd_settime refused"
    ) == 1


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_worker_process_runs_on_the_timerfd_clock_with_its_start_up_heap_frozen(
    tmp_path: Path, redis_url: str, processes: str
) -> None:
    """`rrq-flow run` (in this process, or in the processes the supervisor starts)."""
    p = write_pipeline(tmp_path, redis_url, "  q: {handler: 'tests.handlers:worker_runtime'}")
    with SyncClient(load(p), url=redis_url) as client:
        ids = [client.enqueue("q") for _ in range(4)]
        out = cli("run", str(p), "--burst", "--processes", processes)
        assert out.returncode == 0, out.stderr
        for job_id in ids:
            result = client.job(job_id).result
            assert result["clock"] == "TimerfdClock", result
            assert result["frozen"] > 10_000, result  # trio, coredis, the handlers' modules
