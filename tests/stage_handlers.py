"""Handlers for the multi-stage tests."""

from __future__ import annotations

from typing import Any

from rrq_flow import current_job


async def numbers(n: int) -> list[int]:
    return list(range(n))


async def double(x: int) -> int:
    return x * 2


async def plus_one(x: int) -> int:
    return x + 1


async def ends_branch(x: Any) -> None:
    return None


async def empty_fan_out(x: Any) -> list[Any]:
    return []


async def route_with_outbox(x: int) -> str:
    """Enqueues one job to 'side' through the outbox, then fails on the first attempt."""
    ctx = current_job()
    ctx.enqueue("side", x, attempt=ctx.attempt)
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails after buffering an outbox job")
    return "routed"


async def sink(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}
