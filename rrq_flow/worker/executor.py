"""Running a handler: in the worker's trio loop, in a thread, or in a separate process."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from rrq_flow.config.imports import is_async_callable
from rrq_flow.config.model import ExecutorKind, QueueConfig
from rrq_flow.worker.context import JobContext
from rrq_flow.worker.outcome import Unstorable, UnstorableResult
from rrq_flow.worker.process_job import JobInfo, ProcessChannel, outbox_of, run_in_process

# run(args, kwargs, ctx, started): ``started()`` is called when the handler itself starts (the
# job's timeout counts from there).
Runner = Callable[[list[Any], dict[str, Any], JobContext, Callable[[], None]], Awaitable[Any]]


def resolve_executor(cfg: QueueConfig, handler: Callable[..., Any]) -> ExecutorKind:
    if cfg.executor is not None:
        return cfg.executor
    return "async" if is_async_callable(handler) else "thread"


def make_runner(
    cfg: QueueConfig,
    handler: Callable[..., Any],
    channel: ProcessChannel | None = None,
    server_offset: Callable[[], float] = lambda: 0.0,
) -> tuple[ExecutorKind, Runner]:
    """A coroutine function ``run(args, kwargs, ctx, started)`` that executes the handler once.

    Cancellation: ``async`` handlers are cancelled at their next checkpoint; a ``thread`` handler
    cannot be stopped — the call returns at once, the thread runs on and its outcome is discarded
    (the fence keeps any write it makes to Redis through rrq-flow out); a ``process`` handler's
    process is killed. A ``process`` runner needs ``channel`` (see rrq_flow.worker.process_job).
    """
    kind = resolve_executor(cfg, handler)
    if kind == "async":

        async def run_async(
            args: list[Any], kwargs: dict[str, Any], ctx: JobContext, started: Callable[[], None]
        ) -> Any:
            started()
            return await handler(*args, **kwargs)

        return kind, run_async
    limiter = trio.CapacityLimiter(cfg.concurrency)
    if kind == "thread":

        async def run_thread(
            args: list[Any], kwargs: dict[str, Any], ctx: JobContext, started: Callable[[], None]
        ) -> Any:
            started()
            return await trio.to_thread.run_sync(
                functools.partial(handler, *args, **kwargs),
                abandon_on_cancel=True,
                limiter=limiter,
            )

        return kind, run_thread

    import trio_parallel

    assert channel is not None, "a process runner needs a ProcessChannel"

    async def run_process(
        args: list[Any], kwargs: dict[str, Any], ctx: JobContext, started: Callable[[], None]
    ) -> Any:
        info = JobInfo(
            id=ctx.id,
            queue=ctx.queue,
            attempt=ctx.attempt,
            max_attempts=ctx.max_attempts,
            epoch=ctx.epoch,
            enqueued_at=ctx.enqueued_at,
            timeout=cfg.timeout,
            worker_id=ctx.worker_id,
            parent=ctx.parent,
            server_offset=server_offset(),
            channel=channel.path,
            max_result_bytes=cfg.max_result_bytes,
            group=ctx.group,
        )
        key = (ctx.id, ctx.epoch)
        channel.on_start(key, started)
        try:
            encoded, outbox = await trio_parallel.run_sync(
                run_in_process, handler, args, kwargs, info, kill_on_cancel=True, limiter=limiter
            )
        finally:
            channel.forget(key)
        ctx.outbox.extend(outbox_of(outbox))
        if isinstance(encoded, UnstorableResult):
            return Unstorable(str(encoded))
        return json.loads(encoded)

    return kind, run_process


async def start_process_pool(size: int) -> None:
    """Start ``size`` handler processes now, so no job's timeout pays for their start-up."""
    import trio_parallel

    limiter = trio.CapacityLimiter(size)
    async with trio.open_nursery() as nursery:
        for _ in range(size):
            nursery.start_soon(
                functools.partial(trio_parallel.run_sync, os.getpid, limiter=limiter)
            )
