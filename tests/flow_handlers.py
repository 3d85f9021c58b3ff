"""Handlers of the flow-control tests (rate limits, caps, pauses, priorities, schedules)."""

from __future__ import annotations

from typing import Any

from rrq_flow import current_job


async def pause_once(seconds: float) -> str:
    """The first job pauses its own queue (a 429 with Retry-After), the others just run."""
    ctx = current_job()
    if ctx.id == "first":
        ctx.pause_queue(seconds)
    return ctx.id


async def noop(*args: Any, **kwargs: Any) -> None:
    return None
