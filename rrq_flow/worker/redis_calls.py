"""Calling Redis from the worker's loops: retry through outages, log once per outage.

A worker never crashes on a Redis error: connection refused, timeouts and restarts are waited
out with capped backoff. Every script is safe to repeat, so retrying after an unknown outcome is
harmless; calls are shielded from cancellation so that a shutdown never abandons a call whose
effect is unknown in the middle of its reply.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import coredis
import coredis.exceptions
import trio

from rrq_flow.protocol.ops import Call
from rrq_flow.protocol.scripts import call_async

log = logging.getLogger("rrq_flow.worker")

TRANSIENT: tuple[type[BaseException], ...] = (
    coredis.exceptions.ConnectionError,
    coredis.exceptions.BusyLoadingError,
    coredis.exceptions.ReadOnlyError,
    coredis.exceptions.TryAgainError,
    TimeoutError,
    OSError,
    trio.TooSlowError,
)


class Outage:
    """Tracks whether Redis is reachable, so an outage is logged once, not per call."""

    def __init__(self, on_error: Callable[[], None] | None = None) -> None:
        self.since: float | None = None
        self.errors = 0  # total failed calls
        self._on_error = on_error

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self._on_error is not None:
            self._on_error()
        if self.since is None:
            self.since = trio.current_time()
            log.warning("Redis unreachable (%s: %s); retrying", type(exc).__name__, exc)

    def ok(self) -> None:
        if self.since is not None:
            log.warning("Redis reachable again after %.1fs", trio.current_time() - self.since)
            self.since = None


class RedisCaller:
    def __init__(
        self,
        redis: coredis.Redis[str],
        timeout: float,
        on_error: Callable[[], None] | None = None,
    ):
        self.redis = redis
        self.timeout = timeout
        self.outage = Outage(on_error)

    async def once(self, call: Call) -> Any:
        """One attempt, shielded, bounded by the command timeout; raises TRANSIENT errors."""
        try:
            with trio.CancelScope(shield=True), trio.fail_after(self.timeout):
                result = await call_async(self.redis, call.script, call.keys, call.args)
        except TRANSIENT as exc:
            self.outage.failed(exc)
            raise
        self.outage.ok()
        return result

    async def until_done(self, call: Call) -> Any:
        """Retry ``call`` through outages until it succeeds (backoff 50 ms .. 2 s).

        Cancellable between attempts, never during one.
        """
        delay = 0.05
        while True:
            try:
                return await self.once(call)
            except TRANSIENT:
                await trio.sleep(delay)
                delay = min(delay * 2, 2.0)
