"""Job timeouts of a queue runner: one watcher task over a heap of deadlines.

A cancel scope with a deadline per job cost about a fifth of the worker's CPU per no-op job
(entering and leaving it, and moving its deadline when the handler starts, each re-register
the deadline with trio's run loop). Here a job's deadline is one heap push, its end one flag,
and a single task sleeps until the earliest deadline and calls ``expire`` for every job still
running at its deadline — as exact as trio's own deadlines (the same clock and wake-up).

The watcher is woken early only when a deadline earlier than the one it sleeps towards is
added; with one queue's uniform timeout deadlines arrive in order, so it wakes about once per
timeout period however many jobs run.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import trio


class Timed(Protocol):
    deadline: float  # trio clock; the latest one set
    finished: bool  # its handler returned or raised: no timeout any more


T = TypeVar("T", bound=Timed)

COMPACT_SLACK = 64  # superseded entries tolerated before the heap is rebuilt


class Deadlines(Generic[T]):
    """The deadlines of the jobs running in one queue runner."""

    def __init__(self, expire: Callable[[T], None]):
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()  # ties: never compare two jobs
        self._live = 0
        self._target = math.inf  # what the watcher sleeps towards
        self._wake = trio.Event()
        self._expire = expire

    def start(self, item: T, deadline: float) -> None:
        """``item`` starts running and times out at ``deadline``."""
        self._live += 1
        item.finished = False
        self._push(item, deadline)

    def move(self, item: T, deadline: float) -> None:
        """Bring ``item``'s deadline forward (its handler started: the timeout counts now)."""
        if deadline < item.deadline and not item.finished:
            self._push(item, deadline)

    def done(self, item: T) -> None:
        """``item`` finished: it can no longer time out."""
        if item.finished:
            return
        item.finished = True
        self._live -= 1
        heap = self._heap
        while heap and _stale(heap[0]):
            heapq.heappop(heap)
        if len(heap) > 2 * self._live + COMPACT_SLACK:
            # A long job at the top keeps finished ones below it: drop them all at once.
            self._heap = [e for e in heap if not _stale(e)]
            heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._heap)

    def _push(self, item: T, deadline: float) -> None:
        item.deadline = deadline
        heapq.heappush(self._heap, (deadline, next(self._seq), item))
        if deadline < self._target:
            self._wake.set()

    async def watch(self) -> None:
        """Expire every job whose deadline passed while it was still running; runs for ever."""
        while True:
            now = trio.current_time()
            heap = self._heap
            while heap:
                entry = heap[0]
                if _stale(entry):
                    heapq.heappop(heap)
                elif entry[0] <= now:
                    heapq.heappop(heap)
                    self._expire(entry[2])
                else:
                    break
            self._target = heap[0][0] if heap else math.inf
            self._wake = trio.Event()
            with trio.move_on_at(self._target):
                await self._wake.wait()


def _stale(entry: tuple[float, int, Timed]) -> bool:
    """A finished job's entry, or one its later (earlier-deadline) entry superseded."""
    item = entry[2]
    return item.finished or entry[0] != item.deadline


__all__ = ["Deadlines", "Timed"]
