"""Partitions: one pipeline spread over N hash tags (``partitions: N``).

With ``partitions: 1`` (the default) a pipeline has one layout, ``rrq:{<pipeline>}:``, exactly
as before. With N > 1 its jobs live under ``rrq:{<pipeline>.<k>}:`` for k in 0..N-1 (a suffix
``.<j>`` added where needed to spread the slots, see partition_suffix), so that on a Redis
Cluster one pipeline uses N slots, on different masters. Each partition is a
complete key layout: a job, its children (the hand-off stays one script), the groups a fan-out
opens and the run counts of the jobs it holds all stay in the partition of the job that writes
them. Readers aggregate across partitions (``rrq_flow.client.partitioned``). The pipeline-wide
records (workers' heartbeats, cron schedules, the partition count) stay under the pipeline's own
tag ``rrq:{<pipeline>}:`` (the *home* layout).

A producer's job goes to the partition of a stable hash (CRC-32) of its unique key, when it has
one (so that uniqueness holds across the pipeline), else of its id.
"""

from __future__ import annotations

import binascii
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from rrq_flow.errors import RedisSettingsError
from rrq_flow.protocol.keys import KeyLayout
from rrq_flow.protocol.ops import Protocol

COUNT_FIELD = "partitions"  # in the home layout's meta hash: the partition count in use


class PartitionsChanged(RedisSettingsError):
    """``partitions`` differs from the count the pipeline's jobs were written with. Exit 2."""


def partition_index(routing_key: str, count: int) -> int:
    """The partition (0..count-1) of a job whose unique key, or else id, is ``routing_key``."""
    if count <= 1:
        return 0
    return zlib.crc32(routing_key.encode("utf-8", "surrogatepass")) % count


CLUSTER_SLOTS = 16384


def key_slot(tag: str) -> int:
    """The Redis Cluster slot of a hash tag (CRC-16/XMODEM mod 16384, as Redis computes it)."""
    return binascii.crc_hqx(tag.encode("utf-8"), 0) % CLUSTER_SLOTS


def partition_suffix(pipeline: str, k: int, count: int) -> str:
    """Partition k's tag suffix: ``<k>``, or ``<k>.<j>`` with the smallest j that puts the tag's
    slot in the k-th of ``count`` equal ranges of the slot space. A cluster that splits its
    slots into equal ranges (``redis-cli --cluster create``) so gives each of ``count`` masters
    one partition; plain ``<pipeline>.<k>`` tags could all land on one master."""
    lo, hi = k * CLUSTER_SLOTS // count, (k + 1) * CLUSTER_SLOTS // count
    candidate, j = str(k), 0
    while not lo <= key_slot(f"{pipeline}.{candidate}") < hi:
        candidate, j = f"{k}.{j}", j + 1
    return candidate


def layouts_for(pipeline: str, count: int) -> tuple[KeyLayout, ...]:
    """The key layouts of a pipeline's partitions: the unpartitioned one when ``count`` is 1."""
    if count <= 1:
        return (KeyLayout(pipeline),)
    return tuple(KeyLayout(pipeline, partition_suffix(pipeline, k, count)) for k in range(count))


@dataclass(frozen=True)
class Partitions:
    """A pipeline's partitions: their layouts and script builders, and routing by job."""

    pipeline: str
    count: int = 1
    keep_args: frozenset[str] = frozenset()  # as Protocol's: queues whose done jobs keep args
    layouts: tuple[KeyLayout, ...] = field(init=False)
    protocols: tuple[Protocol, ...] = field(init=False)

    def __post_init__(self) -> None:
        layouts = layouts_for(self.pipeline, self.count)
        object.__setattr__(self, "layouts", layouts)
        object.__setattr__(
            self, "protocols", tuple(Protocol(lay, self.keep_args) for lay in layouts)
        )

    @property
    def home(self) -> KeyLayout:
        """Where the pipeline-wide records live (workers, schedules, the partition count)."""
        return KeyLayout(self.pipeline)

    def index(self, job_id: str, unique_key: str = "") -> int:
        return partition_index(unique_key or job_id, self.count)

    def layout(self, job_id: str, unique_key: str = "") -> KeyLayout:
        return self.layouts[self.index(job_id, unique_key)]

    def protocol(self, job_id: str, unique_key: str = "") -> Protocol:
        return self.protocols[self.index(job_id, unique_key)]

    def lookup_order(self, job_id: str) -> list[KeyLayout]:
        """Where a job may be, most likely first: the partition of its id, then the others (a
        child lives in its parent's partition, a job with a unique key in that key's)."""
        first = self.index(job_id)
        return [self.layouts[first], *(lay for k, lay in enumerate(self.layouts) if k != first)]


def changed_message(pipeline: str, recorded: int, configured: int, held: int) -> str:
    """The one line that refuses a change of ``partitions`` while jobs are held."""
    return (
        f"pipeline {pipeline!r} holds {held} job(s) written with partitions: {recorded}, but the "
        f"file says partitions: {configured}; drain it first with the old setting "
        f"(partitions: {recorded}; `rrq-flow run PIPELINE --burst`, then `rrq-flow dlq PIPELINE "
        "purge` or requeue the dead letters), then change partitions"
    )


def recorded_count(value: object) -> int:
    """The partition count recorded in the meta hash (absent: 1, the layout before partitions)."""
    if value is None:
        return 1
    try:
        return max(1, int(str(value)))
    except ValueError:
        return 1


def held_total(counts: Sequence[object]) -> int:
    """Sum of the job counts read by ``holding_calls``."""
    return sum(int(str(c)) for c in counts)
