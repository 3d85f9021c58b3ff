"""The fault suite's handler: does what its payload says and leaves a history behind.

Every execution appends JSON lines to a per-process history file in ``$RRQ_FAULT_HISTORY``
(one ``O_APPEND`` write per line, so a line is whole even if the process dies right after):
``start`` when the handler begins, then one of ``end`` (returned), ``fail`` (raised on purpose),
``cancel`` (trio cancelled it: timeout, lease lost, shutdown) or ``crash`` (about to kill its own
process). Each line carries the job id, epoch, attempt, pid and ``time.time()``.

Behaviour, chosen by keyword arguments:

- ``duration``: seconds to sleep before succeeding;
- ``fail_until``: raise while the attempt number is below it;
- ``hang_until``: sleep far past the queue's timeout while the attempt number is below it;
- ``crash``: ``"exit"`` (``os._exit``) or ``"kill"`` (SIGKILL itself), every time it runs;
- ``swallow_cancel``: catch ``trio.Cancelled`` and keep going (a badly written handler).

The result names who produced it (epoch and pid), so the stored result shows which owner won.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import trio

from rrq_flow import current_job

HISTORY_ENV = "RRQ_FAULT_HISTORY"
_fd: tuple[int, int] | None = None  # (pid, fd): reopened after a fork


def _history_fd() -> int | None:
    global _fd
    directory = os.environ.get(HISTORY_ENV)
    if not directory:
        return None
    pid = os.getpid()
    if _fd is None or _fd[0] != pid:
        path = os.path.join(directory, f"history-{pid}.jsonl")
        _fd = (pid, os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    return _fd[1]


def record(event: str, **extra: Any) -> None:
    fd = _history_fd()
    if fd is None:
        return
    ctx = current_job()
    line = {
        "ev": event,
        "id": ctx.id,
        "epoch": ctx.epoch,
        "attempt": ctx.attempt,
        "pid": os.getpid(),
        "t": time.time(),
        **extra,
    }
    os.write(fd, (json.dumps(line, separators=(",", ":")) + "\n").encode())


async def probe(
    duration: float = 0.0,
    fail_until: int = 0,
    hang_until: int = 0,
    crash: str | None = None,
    swallow_cancel: bool = False,
) -> dict[str, Any]:
    ctx = current_job()
    record("start")
    if crash is not None:
        record("crash", how=crash)
        if crash == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(70)
    try:
        if swallow_cancel:
            await _ignore_cancellation(duration)
        elif ctx.attempt < hang_until:
            await trio.sleep(3600)
        else:
            await trio.sleep(duration)
    except trio.Cancelled:
        record("cancel")
        raise
    if ctx.attempt < fail_until:
        record("fail")
        raise RuntimeError(f"attempt {ctx.attempt} fails on purpose")
    record("end")
    return {"epoch": ctx.epoch, "pid": os.getpid(), "attempt": ctx.attempt}


async def _ignore_cancellation(duration: float) -> None:
    """Keep running for ``duration`` whatever happens: every cancellation is swallowed."""
    end = time.monotonic() + duration
    noted = False
    while time.monotonic() < end:
        try:
            await trio.sleep(0.05)
        except trio.Cancelled:
            if not noted:
                record("cancel_ignored")
                noted = True
            with trio.CancelScope(shield=True):
                await trio.sleep(0.05)
