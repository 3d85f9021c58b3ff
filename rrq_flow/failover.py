"""Recognising a master that is no master any more, and sending a client back to Sentinel.

A Sentinel failover does not stop the old master at once: a planned ``SENTINEL FAILOVER``
leaves it accepting writes for about ten seconds, until the sentinels turn it into a replica
(which then drops whatever it accepted). With ``min-replicas-to-write 1`` on the servers (see
docs/scaling.md) it refuses writes with ``NOREPLICAS`` as soon as its replica leaves it, and once
demoted it answers ``READONLY``. Either reply means: this connection points at the wrong node.
The clients then drop their connections, so the next one asks the sentinels where the master
is now, and the call is retried like any other transient error (every script is safe to
repeat).

Without ``min-replicas-to-write`` nothing tells a client, so under Sentinel every client also
asks the sentinels where the master is at most every :data:`MASTER_CHECK_INTERVAL` seconds
(:class:`MasterWatch`) and moves when the answer changed: what it wrote to the old master in
that second can still be lost (docs/scaling.md), with ``redis.durability`` nothing acknowledged.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from rrq_flow.redis_errors import is_stale_master

__all__ = ["MASTER_CHECK_INTERVAL", "MasterWatch", "is_stale_master", "reconnect"]

MASTER_CHECK_INTERVAL = 1.0


def reconnect(client: Any) -> None:
    """Drop every pooled connection of a coredis or redis-py client (the next one re-resolves)."""
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        pool.disconnect()


class MasterWatch:
    """Rate-limited "is the master still where my connections point?" for a Sentinel client
    (coredis' and redis-py's Sentinel pools drop their connections when the answer changed);
    a no-op for any other client."""

    def __init__(self, interval: float = MASTER_CHECK_INTERVAL):
        self.interval = interval
        self._last = time.monotonic()

    def _due(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.interval:
            return False
        self._last = now
        return True

    def check_sync(self, client: Any) -> None:
        """redis-py: ask the sentinels if due (errors are left to the call that follows)."""
        pool = getattr(client, "connection_pool", None)
        if hasattr(pool, "get_master_address") and self._due():
            import redis.exceptions

            with contextlib.suppress(redis.exceptions.RedisError, OSError):
                pool.get_master_address()  # type: ignore[union-attr]

    async def check_async(self, client: Any) -> None:
        """coredis: ask the sentinels if due (errors are left to the call that follows)."""
        pool = getattr(client, "connection_pool", None)
        if hasattr(pool, "get_primary_location") and self._due():
            import coredis.exceptions

            with contextlib.suppress(coredis.exceptions.RedisError, OSError, TimeoutError):
                await pool.get_primary_location()  # type: ignore[union-attr]
