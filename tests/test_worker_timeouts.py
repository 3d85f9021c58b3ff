"""The queue runner's timeout watcher (rrq_flow/worker/timeouts.py), on trio's virtual clock."""

from __future__ import annotations

import math

import trio
import trio.testing

from rrq_flow.worker.timeouts import COMPACT_SLACK, Deadlines


class Job:
    def __init__(self, name: str) -> None:
        self.name = name
        self.deadline = math.inf
        self.finished = False


async def test_only_jobs_still_running_at_their_deadline_expire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    expired: list[tuple[str, float]] = []
    deadlines: Deadlines[Job] = Deadlines(lambda j: expired.append((j.name, trio.current_time())))
    a, b, c = Job("a"), Job("b"), Job("c")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(deadlines.watch)
        t0 = trio.current_time()
        deadlines.start(a, t0 + 10)
        deadlines.start(b, t0 + 20)
        deadlines.start(c, t0 + 30)
        await trio.sleep(5)
        deadlines.done(a)  # finished in time
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    assert expired == [("b", t0 + 20), ("c", t0 + 30)]


async def test_an_earlier_deadline_wakes_the_watcher(
    autojump_clock: trio.testing.MockClock,
) -> None:
    expired: list[tuple[str, float]] = []
    deadlines: Deadlines[Job] = Deadlines(lambda j: expired.append((j.name, trio.current_time())))
    late, early = Job("late"), Job("early")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(deadlines.watch)
        t0 = trio.current_time()
        deadlines.start(late, t0 + 100)
        await trio.sleep(1)  # the watcher sleeps towards t0 + 100 now
        deadlines.start(early, t0 + 50)
        deadlines.move(early, t0 + 5)  # its handler started: the timeout counts from now
        deadlines.move(early, t0 + 60)  # never moved later
        await trio.sleep(200)
        nursery.cancel_scope.cancel()
    assert expired == [("early", t0 + 5), ("late", t0 + 100)]


async def test_finished_jobs_do_not_pile_up_behind_a_long_one() -> None:
    deadlines: Deadlines[Job] = Deadlines(lambda j: None)
    now = trio.current_time()
    long = Job("long")
    deadlines.start(long, now + 1000)
    for i in range(10_000):
        job = Job(str(i))
        deadlines.start(job, now + 1000 + i)
        deadlines.move(job, now + 500 + i)
        deadlines.done(job)
    assert len(deadlines) <= 2 * 1 + COMPACT_SLACK + 2
    deadlines.done(long)
    assert len(deadlines) == 0
