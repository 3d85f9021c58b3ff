"""A queue runner's per-job script calls (claim, complete, fail, release) on a minimal RESP
connection, with coredis as the fallback.

These calls are the worker's Redis traffic per job. On coredis each costs a few hundred µs of
the worker's CPU (request objects, a writer and a reader task, pool checkout, anyio timeouts);
on :class:`~rrq_flow.worker.wake_connection.WakeConnection` (one socket, one write, hiredis'
reader) a fraction of that (bench/results/perf-2026-11-30.md). There the scripts are called as
functions of rrq-flow's library (FCALL: no helpers built per call), which the connection loads
when the server lacks it; the coredis fallback calls them by EVALSHA.

The fast path is only an optimisation: whenever it fails for any reason (connection lost,
timeout, NOSCRIPT after a Redis restart, ASK during a slot migration, an error reply), the same
call is made once more through :class:`~rrq_flow.worker.redis_calls.RedisCaller`, which reloads
scripts, follows failovers and logs outages as before. Every script is safe to repeat, and a
claim whose fast attempt failed is reported through ``on_unknown`` (it may have claimed jobs all
the same). Calls after which ``redis.durability`` waits for replicas always go through coredis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from rrq_flow.protocol.ops import Call
from rrq_flow.worker.redis_calls import (
    DURABLE_SCRIPTS,
    TRANSIENT,
    RedisCaller,
    retry_until_done,
)
from rrq_flow.worker.wake_connection import WakeConnection


class FastCalls:
    """Sequential script calls on one dedicated connection (one task of a runner owns it)."""

    def __init__(self, caller: RedisCaller, connection: WakeConnection):
        self.caller = caller
        self.connection = connection

    async def once(self, call: Call, on_unknown: Callable[[], None] | None = None) -> Any:
        """One call, shielded and bounded like ``RedisCaller.once``; raises any Redis failure
        (after the coredis attempt)."""
        caller = self.caller
        done = False
        if caller.durability is not None and call.script.name in DURABLE_SCRIPTS:
            return await caller.once(call)
        try:
            # Shielded from outside, bounded by its own deadline: one scope, not two.
            with trio.CancelScope(shield=True, deadline=trio.current_time() + caller.timeout):
                reply = await self.connection.call(call.script, call.keys, call.args)
                done = True
            if not done:  # the deadline cancelled it (the connection is closed and reopened)
                raise trio.TooSlowError
        except (*TRANSIENT, trio.TooSlowError):  # type: ignore[misc]
            if on_unknown is not None:
                on_unknown()
            return await caller.once(call)
        caller.outage.ok()
        return reply

    async def until_done(self, call: Call) -> Any:
        """Retry ``call`` through outages and refusals until it succeeds (backoff 50 ms .. 2 s).

        Cancellable between attempts, never during one.
        """
        return await retry_until_done(self.once, call)

    async def aclose(self) -> None:
        await self.connection.aclose()


__all__ = ["FastCalls"]
