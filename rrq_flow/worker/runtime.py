"""How a worker process runs its trio loop: timers on time, start-up objects out of the GC.

Only for a process that is a worker (``rrq-flow run``, and each process the supervisor starts):
a test or an application that runs a :class:`~rrq_flow.worker.worker.Worker` in its own loop
keeps its own clock and its own collector settings.
"""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable
from typing import TypeVar

from rrq_flow.worker import precise_clock

T = TypeVar("T")


def freeze_startup_heap() -> None:
    """Collect once, then move every object alive now to the GC's permanent generation.

    A worker's start-up (trio, coredis with its type checks, the handlers' modules) leaves a few
    hundred thousand long-lived objects, and every full collection walked them all: 60-77 ms on
    the benchmark VM, during which no job of the process ran and every timer fired late. Frozen,
    they are skipped (a full collection then took ~1 ms). Reference counting still frees
    them; only a reference cycle among them that becomes garbage later is never collected,
    which is why the collection comes first (start-up's own garbage goes before the freeze).
    """
    gc.collect()
    gc.freeze()


def run_worker_loop(main: Callable[[], Awaitable[T]]) -> T:
    """``trio.run(main)`` for a worker process: the start-up heap frozen, precise timers."""
    freeze_startup_heap()
    return precise_clock.run(main)
