"""One queue's ``concurrency`` in a worker process, shared by its partitions' runners.

With ``partitions: N`` a worker runs one QueueRunner per (queue, partition): each claims from,
blocks on (its own idle-wait connection, so work in any partition wakes it) and acknowledges to
its own partition. They share this: the count of jobs claimed and not finished, which sizes every
claim (so together they never claim more than ``concurrency`` + prefetch, except that an idle
wait sent earlier may claim on top, see below); the turns: a runner that finds no free slot
waits in line, a freed slot wakes the first in line, and a runner whose claim left slots over
(its partition had fewer ready jobs) passes them to the next, so partitions take free slots in
rotation and none starves; and a limiter of ``concurrency`` tokens that a job holds while it
runs, the hard cap. A job claimed beyond it (two partitions' idle waits answered at once) waits
prefetched, leased, and is given back after ``lock_extension / 2`` like any prefetched job.
With one partition there is no limiter, and the line is that one runner.
"""

from __future__ import annotations

from collections import deque

import trio


class SharedSlots:
    def __init__(self, concurrency: int, partitions: int):
        self.claimed = 0  # claimed by any of the queue's runners and not yet finished
        self._line: deque[trio.Event] = deque()  # runners waiting for a free slot, in order
        self._limiter = trio.CapacityLimiter(concurrency) if partitions > 1 else None

    @property
    def limiter(self) -> trio.CapacityLimiter | None:
        """Held while a job runs: the cap across partitions (None with one partition)."""
        return self._limiter

    def line_up(self) -> trio.Event:
        """Join the line; the event is set when a slot frees up (or a runner before passes on
        what it left). Called with no checkpoint since the check of free slots."""
        event = trio.Event()
        self._line.append(event)
        return event

    def wake_all(self) -> None:
        """Wake every runner in line (the worker stops: none may wait for a slot to free)."""
        while self._line:
            self._line.popleft().set()

    def taken(self) -> None:
        self.claimed += 1

    def done(self) -> None:
        """A slot freed: the first runner in line gets it."""
        self.claimed -= 1
        self.pass_on()

    def pass_on(self) -> None:
        """Wake the first runner in line (a stopped runner's leftover turn is harmless)."""
        if self._line:
            self._line.popleft().set()
