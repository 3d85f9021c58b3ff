"""peerbench's ``benchjob.trio_job`` plus the worker's CPU clock: for ``interleave_worker.sh``.

Each job appends ``t0 start end cpu`` (cpu: the worker process' ``time.process_time()`` at the
job's end) with one ``O_APPEND`` write, so the worker's CPU per job over the steady part of a
burst (5 %..95 % of the jobs) comes from the worker itself, start-up and shutdown left out.
"""

from __future__ import annotations

import os
import time

_FD: int | None = None


def _fd() -> int:
    global _FD
    if _FD is None:
        _FD = os.open(os.environ["BENCH_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return _FD


async def trio_job(t0: float, sleep_s: float = 0.0) -> int:
    import trio

    start = time.time()
    if sleep_s:
        await trio.sleep(sleep_s)
    os.write(_fd(), b"%.6f %.6f %.6f %.6f\n" % (t0, start, time.time(), time.process_time()))
    return 1
