"""Recognising a master that is no master any more, and sending a client back to Sentinel.

A Sentinel failover does not stop the old master at once: a planned ``SENTINEL FAILOVER``
leaves it accepting writes for about ten seconds, until the sentinels turn it into a replica
(which then drops whatever it accepted). With ``min-replicas-to-write 1`` on the servers (see
docs/scaling.md) it refuses writes with ``NOREPLICAS`` as soon as its replica leaves it, and once
demoted it answers ``READONLY``. Either reply means: this connection points at the wrong node.
The clients then drop their connections, so the next one asks the sentinels where the master
is now, and the call is retried like any other transient error (every script is safe to
repeat).
"""

from __future__ import annotations

from typing import Any

STALE_MASTER_PREFIXES = ("READONLY", "NOREPLICAS")


def is_stale_master(exc: BaseException) -> bool:
    """True for an error reply saying the node we write to is not (or no longer) a master."""
    return str(exc).startswith(STALE_MASTER_PREFIXES)


def reconnect(client: Any) -> None:
    """Drop every pooled connection of a coredis or redis-py client (the next one re-resolves)."""
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        pool.disconnect()
