"""The check that ``partitions`` still matches the layout a pipeline's jobs were written with.

The count in use is recorded in the home meta hash (``rrq:{<pipeline>}:meta``, field
``partitions``; absent means 1, the layout from before partitions existed). A different count is
accepted, and recorded, only while the old layout holds no job at all (queued, scheduled,
retrying, active, expanding or dead in any queue of the file); otherwise PartitionsChanged, one
line saying how to drain first. Workers check at start, producers before their first enqueue.
"""

from __future__ import annotations

from typing import Any

from rrq_flow.config.model import PipelineConfig
from rrq_flow.protocol.keys import KeyLayout
from rrq_flow.protocol.partitions import (
    COUNT_FIELD,
    Partitions,
    PartitionsChanged,
    changed_message,
    held_total,
    recorded_count,
)
from rrq_flow.protocol.scripts import call_async, call_sync


def _unchanged(config: PipelineConfig, value: object) -> bool:
    """Nothing to check or write: the count recorded (or implied by its absence) is the file's."""
    return recorded_count(value) == config.partitions and (
        value is not None or config.partitions == 1
    )


def check_partitions_sync(redis: Any, config: PipelineConfig) -> None:
    """Refuse (PartitionsChanged) a changed ``partitions`` while jobs are held; record it."""
    home = KeyLayout(config.pipeline)
    value = redis.hget(home.meta, COUNT_FIELD)
    if _unchanged(config, value):
        return
    recorded = recorded_count(value)
    if recorded != config.partitions:
        held = 0
        for proto, layout in _old(config, recorded):
            call = proto.drained(list(config.queues), with_total=True)
            held += _held(call_sync(redis, call.script, call.keys, call.args))
            held += sum(int(redis.zcard(layout.queue(q).dead)) for q in config.queues)
        _refuse_if_held(config, recorded, held)
    redis.hset(home.meta, COUNT_FIELD, str(config.partitions))


async def check_partitions_async(redis: Any, config: PipelineConfig) -> None:
    """The same as check_partitions_sync, on a coredis client."""
    home = KeyLayout(config.pipeline)
    value = await redis.hget(home.meta, COUNT_FIELD)
    if _unchanged(config, value):
        return
    recorded = recorded_count(value)
    if recorded != config.partitions:
        held = 0
        for proto, layout in _old(config, recorded):
            call = proto.drained(list(config.queues), with_total=True)
            held += _held(await call_async(redis, call.script, call.keys, call.args))
            for q in config.queues:
                held += int(await redis.zcard(layout.queue(q).dead))
        _refuse_if_held(config, recorded, held)
    await redis.hset(home.meta, {COUNT_FIELD: str(config.partitions)})


def _held(reply: Any) -> int:
    """Jobs in drained.lua's reply (with totals): queued or scheduled, retrying, active."""
    counts = list(reply)
    return held_total(counts[1::4]) + held_total(counts[2::4]) + held_total(counts[3::4])


def _refuse_if_held(config: PipelineConfig, recorded: int, held: int) -> None:
    if held:
        raise PartitionsChanged(changed_message(config.pipeline, recorded, config.partitions, held))


def _old(config: PipelineConfig, recorded: int) -> list[tuple[Any, KeyLayout]]:
    parts = Partitions(config.pipeline, recorded)
    return list(zip(parts.protocols, parts.layouts, strict=True))
