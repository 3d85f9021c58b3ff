"""``redis.durability``: batches that wait (``WAIT``) until N replicas have them.

Redis replicates asynchronously: a master that acknowledged a write and died before sending it
on loses it in the failover. With ``durability: {replicas: N, timeout: D}`` every enqueue batch
and every completion batch is followed, on the same connection, by ``WAIT N D``. An enqueue that
does not reach N replicas in time raises :class:`DurabilityError` with the job ids: the jobs may
or may not survive a failover, and enqueuing them again with the same ids is safe (an existing
id is never enqueued twice). A completion batch that falls short is logged; its jobs are done on
the master and, if a failover loses that, they run again (never lost).
"""

from __future__ import annotations

from collections.abc import Sequence

from rrq_flow.config.model import DurabilitySettings
from rrq_flow.errors import DurabilityError

__all__ = ["DurabilityError", "check_enqueue", "wait_args"]


def wait_args(settings: DurabilitySettings) -> tuple[int, int]:
    """``WAIT``'s arguments: replicas and the timeout in ms (at least 1: 0 would block)."""
    return settings.replicas, max(1, round(settings.timeout * 1000))


def check_enqueue(acked: int, settings: DurabilitySettings, job_ids: Sequence[str]) -> None:
    """Raise DurabilityError when ``acked`` (WAIT's reply) is short of the replicas asked."""
    if int(acked) < settings.replicas:
        raise DurabilityError(job_ids, int(acked), settings)
