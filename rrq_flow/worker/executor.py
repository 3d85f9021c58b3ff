"""Running a handler: in the worker's trio loop, in a thread, or in a separate process."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from rrq_flow.config.imports import is_async_callable
from rrq_flow.config.model import ExecutorKind, QueueConfig

Runner = Callable[[list[Any], dict[str, Any]], Awaitable[Any]]


def resolve_executor(cfg: QueueConfig, handler: Callable[..., Any]) -> ExecutorKind:
    if cfg.executor is not None:
        return cfg.executor
    return "async" if is_async_callable(handler) else "thread"


def make_runner(cfg: QueueConfig, handler: Callable[..., Any]) -> tuple[ExecutorKind, Runner]:
    """A coroutine function ``run(args, kwargs)`` that executes the handler once.

    Cancellation: ``async`` handlers are cancelled at their next checkpoint; a ``thread`` handler
    cannot be stopped — the call returns at once, the thread runs on and its outcome is discarded
    (the fence keeps any write it makes to Redis through rrq-flow out); a ``process`` handler's
    process is killed.
    """
    kind = resolve_executor(cfg, handler)
    if kind == "async":

        async def run_async(args: list[Any], kwargs: dict[str, Any]) -> Any:
            return await handler(*args, **kwargs)

        return kind, run_async
    limiter = trio.CapacityLimiter(cfg.concurrency)
    if kind == "thread":

        async def run_thread(args: list[Any], kwargs: dict[str, Any]) -> Any:
            return await trio.to_thread.run_sync(
                functools.partial(handler, *args, **kwargs),
                abandon_on_cancel=True,
                limiter=limiter,
            )

        return kind, run_thread

    import trio_parallel

    async def run_process(args: list[Any], kwargs: dict[str, Any]) -> Any:
        return await trio_parallel.run_sync(
            functools.partial(handler, *args, **kwargs), kill_on_cancel=True, limiter=limiter
        )

    return kind, run_process
