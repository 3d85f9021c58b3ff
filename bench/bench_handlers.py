"""The bench-only handler of bench/bench.py (the same contract as peerbench's benchjob).

``job(t0, sleep_s)``: start = time.time(); trio.sleep(sleep_s) if sleep_s; end = time.time();
append ``"t0 start end\\n"`` to $BENCH_OUT with one O_APPEND write; return 1. ``t0`` is the
producer's time.time() just before it enqueued the job (same machine, same clock).
"""

from __future__ import annotations

import os
import time

import trio

_FD: int | None = None


def _fd() -> int:
    global _FD
    if _FD is None:
        _FD = os.open(os.environ["BENCH_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return _FD


async def job(t0: float, sleep_s: float = 0.0) -> int:
    start = time.time()
    if sleep_s:
        await trio.sleep(sleep_s)
    os.write(_fd(), b"%.6f %.6f %.6f\n" % (t0, start, time.time()))
    return 1


async def job_with_cpu(t0: float, sleep_s: float = 0.0) -> int:
    """:func:`job`, with the worker's CPU clock (``time.process_time()``) at the job's end as
    a fourth field, for bench/interleave_worker.sh: the worker's CPU per job over the steady
    part of a burst, start-up and shutdown left out."""
    start = time.time()
    if sleep_s:
        await trio.sleep(sleep_s)
    os.write(_fd(), b"%.6f %.6f %.6f %.6f\n" % (t0, start, time.time(), time.process_time()))
    return 1


def noop(x: int) -> int:
    """A no-op ``def`` handler (bench/process_overhead.py: ``executor: process``)."""
    return x


async def async_noop(x: int) -> int:
    """The same as a coroutine (the ``executor: async`` comparison)."""
    return x


async def stage1(i: int, pad: str) -> int:
    """bench/million.py, first stage: one byte to $BENCH_OUT; ``i`` goes on to stage2."""
    os.write(_fd(), b"1")
    return i


async def stage2(i: int) -> None:
    """bench/million.py, second stage: one byte to $BENCH_OUT."""
    os.write(_fd(), b"2")
