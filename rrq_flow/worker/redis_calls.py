"""Calling Redis from the worker's loops: retry through outages and refusals, log once.

A worker never crashes on a Redis error: connection refused, timeouts, restarts and every error
reply (BUSY, OOM, MISCONF, NOPERM...; see rrq_flow.redis_errors) are waited out with capped
backoff. Every script is safe to repeat, so retrying after an unknown outcome is harmless;
calls are shielded from cancellation so that a shutdown never abandons a call whose effect is
unknown in the middle of its reply.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import coredis
import trio

from rrq_flow.config.model import DurabilitySettings
from rrq_flow.durability import wait_args
from rrq_flow.failover import is_stale_master, reconnect
from rrq_flow.protocol.ops import Call
from rrq_flow.protocol.scripts import call_async, preload_async
from rrq_flow.redis_errors import REDIS_FAILURES, classify, error_code, explain

# Scripts after which redis.durability waits for the replicas (terminal outcomes and hand-offs).
DURABLE_SCRIPTS = ("complete", "fail")

log = logging.getLogger("rrq_flow.worker")

# Every failure a worker loop retries (the name is older than the classification).
TRANSIENT: tuple[type[BaseException], ...] = REDIS_FAILURES


REFUSAL_QUIET = 60.0  # seconds without a refusal of a kind before it is logged again


class Outage:
    """Tracks whether Redis serves, so an outage is logged once, not per call: a transient
    one as a warning (and its end), each kind of refusal (OOM, MISCONF...) as an error with
    what to do, again only after REFUSAL_QUIET seconds without one (under OOM, calls that do
    not write still succeed: an outage would flap)."""

    def __init__(self, on_error: Callable[[], None] | None = None) -> None:
        self.since: float | None = None  # start of the current transient outage
        self.errors = 0  # total failed calls
        self.refused: dict[str, float] = {}  # error code -> when last refused
        self._on_error = on_error

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self._on_error is not None:
            self._on_error()
        now = trio.current_time()
        if classify(exc) == "transient":
            if self.since is None:
                self.since = now
                log.warning("Redis unreachable or busy (%s); retrying", explain(exc))
            return
        code = error_code(exc) or type(exc).__name__
        last = self.refused.get(code)
        self.refused[code] = now
        if last is None or now - last > REFUSAL_QUIET:
            log.error("Redis refused a call: %s; retrying with backoff", explain(exc))

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
        durability: DurabilitySettings | None = None,
    ):
        self.redis = redis
        self.timeout = timeout
        self.outage = Outage(on_error)
        self.durability = durability
        self.short_waits = 0  # completion batches fewer replicas acknowledged than asked

    async def once(self, call: Call) -> Any:
        """One attempt, shielded, bounded by the command timeout; raises any Redis failure."""
        durable = self.durability is not None and call.script.name in DURABLE_SCRIPTS
        budget = self.timeout + (self.durability.timeout if self.durability else 0.0)
        try:
            with trio.CancelScope(shield=True), trio.fail_after(budget):
                if durable:
                    result = await self._then_wait(call)
                else:
                    result = await call_async(self.redis, call.script, call.keys, call.args)
        except TRANSIENT as exc:
            self.outage.failed(exc)
            if is_stale_master(exc):
                reconnect(self.redis)  # a failover: the next connection asks Sentinel again
                raise coredis.exceptions.ConnectionError(str(exc)) from exc
            raise
        self.outage.ok()
        return result

    async def _then_wait(self, call: Call) -> Any:
        """``call`` then WAIT on the same connection (redis.durability); a short count is
        logged, not raised: the outcome stands on the master, and if a failover loses it the
        job runs again (it is never lost)."""
        assert self.durability is not None
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pending = pipe.evalsha(call.script.sha, keys=call.keys, args=call.args)
                waited = pipe.wait(*wait_args(self.durability))
        except coredis.exceptions.NoScriptError:
            await preload_async(self.redis)  # Redis forgot the scripts; they are safe to repeat
            return await self._then_wait(call)
        result = await pending
        acked = await waited
        if acked < self.durability.replicas:
            self.short_waits += 1
            if self.short_waits == 1 or self.short_waits % 100 == 0:
                log.warning(
                    "%s batch reached %d of %d replica(s) within %gs (redis.durability); "
                    "%d such batch(es) so far",
                    call.script.name,
                    acked,
                    self.durability.replicas,
                    self.durability.timeout,
                    self.short_waits,
                )
        return result

    async def until_done(self, call: Call) -> Any:
        """Retry ``call`` through outages and refusals until it succeeds (backoff 50 ms .. 2 s).

        Cancellable between attempts, never during one.
        """
        return await retry_until_done(self.once, call)


async def retry_until_done(once: Callable[[Call], Awaitable[Any]], call: Call) -> Any:
    """``await once(call)`` until it does not raise a Redis failure (backoff 50 ms .. 2 s)."""
    delay = 0.05
    while True:
        try:
            return await once(call)
        except TRANSIENT:
            await trio.sleep(delay)
            delay = min(delay * 2, 2.0)
