"""Handlers used by the worker tests (imported by path like a user's handlers)."""

from __future__ import annotations

import os
import time
from typing import Any

import trio

from rrq_flow import Fatal, Retry, current_job

CALLS: dict[str, int] = {}


async def echo(*args: Any, **kwargs: Any) -> Any:
    return {"args": list(args), "kwargs": kwargs}


def sync_echo(*args: Any, **kwargs: Any) -> Any:
    return {"args": list(args), "kwargs": kwargs, "thread": True}


async def fail_until(attempt_ok: int, key: str = "") -> str:
    """Fails until the job's attempt number reaches ``attempt_ok``."""
    ctx = current_job()
    if ctx.attempt < attempt_ok:
        raise RuntimeError(f"attempt {ctx.attempt} fails on purpose")
    return f"ok on attempt {ctx.attempt}"


async def always_fail() -> None:
    raise ValueError("bad input")


async def fatal() -> None:
    raise Fatal("cannot ever work")


async def retry_later(delay: str) -> str:
    if current_job().attempt == 1:
        raise Retry(delay=delay)
    return "second time"


async def sleep_for(seconds: float) -> float:
    await trio.sleep(seconds)
    return seconds


def sync_sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


async def own_timeout() -> None:
    raise TimeoutError("the handler's own timeout")


async def context_info() -> dict[str, Any]:
    ctx = current_job()
    ctx.logger.info("inside the job")
    return {
        "id": ctx.id,
        "queue": ctx.queue,
        "attempt": ctx.attempt,
        "max_attempts": ctx.max_attempts,
        "epoch": ctx.epoch,
        "worker_id": ctx.worker_id,
        "deadline_in_future": ctx.deadline > time.time(),
    }


async def record(path: str, seconds: float = 0.0) -> int:
    """Append 'start <id> <epoch> <pid>' and 'end ...' lines to ``path``."""
    ctx = current_job()
    line = f"{ctx.id} {ctx.epoch} {os.getpid()}"
    with open(path, "a") as f:
        f.write(f"start {line} {time.time():.6f}\n")
    await trio.sleep(seconds)
    with open(path, "a") as f:
        f.write(f"end {line} {time.time():.6f}\n")
    return 1


async def fail_unless_exists(path: str, message: str = "not there yet") -> str:
    """Fails (ValueError: ``message``) until ``path`` exists: a job an operator fixes the cause
    of, then requeues."""
    if not os.path.exists(path):
        raise ValueError(message)
    return "ran"


async def worker_runtime() -> dict[str, Any]:
    """How the process running this job runs its loop (rrq_flow.worker.runtime)."""
    import gc

    return {
        "clock": type(trio.lowlevel.current_clock()).__name__,
        "frozen": gc.get_freeze_count(),
    }
