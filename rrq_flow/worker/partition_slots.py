"""One queue's ``concurrency`` in a worker process, shared by its partitions' runners.

With ``partitions: N`` a worker runs one QueueRunner per (queue, partition): each claims from,
blocks on (its own idle-wait connection, so work in any partition wakes it) and acknowledges to
its own partition. They share this: the count of jobs claimed and not finished, which sizes every
claim (so together they never claim more than ``concurrency`` + prefetch, except that an idle
wait sent earlier may claim on top, see below), the event a freed slot sets (every waiting
partition wakes and the first to run takes the slot: trio runs ready tasks in random order, so
no partition starves), and a limiter of ``concurrency`` tokens that a job holds while it runs,
which is the hard cap. A job claimed beyond it (two partitions' idle waits answered at once)
waits prefetched, leased, and is given back after ``lock_extension / 2`` like any prefetched job.
With one partition there is no limiter: nothing changes on that path.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractAsyncContextManager
from typing import Any

import trio


class SharedSlots:
    def __init__(self, concurrency: int, partitions: int):
        self.claimed = 0  # claimed by any of the queue's runners and not yet finished
        self.freed = trio.Event()
        self._limiter = trio.CapacityLimiter(concurrency) if partitions > 1 else None

    def running(self) -> AbstractAsyncContextManager[Any]:
        """Held while a job runs: the cap across partitions (nothing with one partition)."""
        if self._limiter is None:
            return contextlib.nullcontext()
        return self._limiter

    def taken(self) -> None:
        self.claimed += 1

    def done(self) -> None:
        """A slot freed: wake every claim loop waiting for one (of any partition)."""
        self.claimed -= 1
        self.freed.set()
        self.freed = trio.Event()  # for the next waits; the woken ones hold the set one
