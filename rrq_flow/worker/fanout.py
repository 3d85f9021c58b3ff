"""Big fan-outs in bounded steps: stage the children under the lease, commit, then expand.

A completion with more children than fit one script call (``INLINE_CHILDREN``) is not created in
one complete.lua call (300,000 children took 12.9 s, Redis answered BUSY to everyone). Instead:

1. ``stage`` the children in chunks into ``fanout:<epoch>:<id>`` (fenced by owner and epoch,
   each call renews the lease);
2. ``complete`` with the staged count: the parent becomes ``expanding`` (result stored, in the
   queue's ``expanding`` index), in one step;
3. ``expand`` chunk by chunk: each call creates up to ``EXPAND_CHUNK`` children atomically with
   the parent's progress; the last one makes the parent ``done``.

Step 3 may be done by any worker: the parent's own worker right after step 2, or any worker
whose expander finds a parent that made no progress for ``lock_extension`` (its worker died).
See docs/protocol.md, "Fan-out in bounded steps".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from rrq_flow.protocol.ops import (
    EXPAND_CHUNK,
    INLINE_CHILDREN,
    STAGE_BYTES,
    STAGE_CHUNK,
    ChildJob,
    Completion,
    Protocol,
    parse_expand,
)
from rrq_flow.worker.redis_calls import TRANSIENT

if TYPE_CHECKING:
    from rrq_flow.worker.worker import Worker

log = logging.getLogger("rrq_flow.worker")


def stageable(c: Completion) -> bool:
    """Whether this completion's children go through the bounded steps: more than fit one call.
    A fan-out that opens a join group is staged too: its group opens at the commit and closes no
    earlier than the last expand chunk (docs/protocol.md, "Groups (join)")."""
    return len(c.children) > INLINE_CHILDREN


def stage_chunks(children: Sequence[ChildJob]) -> list[Sequence[ChildJob]]:
    """Split children into stage calls of at most STAGE_CHUNK entries and ~STAGE_BYTES."""
    chunks: list[Sequence[ChildJob]] = []
    start, size = 0, 0
    for i, ch in enumerate(children):
        size += len(ch.args_json) + len(ch.kwargs_json) + len(ch.id) + 32
        if i - start >= STAGE_CHUNK or (size > STAGE_BYTES and i > start):
            chunks.append(children[start:i])
            start, size = i, len(ch.args_json) + len(ch.kwargs_json) + len(ch.id) + 32
    if start < len(children):
        chunks.append(children[start:])
    return chunks


async def stage_and_commit(
    w: Worker, protocol: Protocol, queue: str, lease_ms: int, result_ttl_ms: int, c: Completion
) -> str:
    """Steps 1 and 2 for one completion; its verdict (OK, STALE, ALREADY_DONE)."""
    offset = 0
    for chunk in stage_chunks(c.children):
        call = protocol.stage(queue, w.worker_id, c.id, c.epoch, offset, lease_ms, chunk)
        verdict = str(await w.caller.until_done(call))
        if verdict == "STALE":
            return verdict
        offset += len(chunk)
    commit = Completion(c.id, c.epoch, c.result_json, (), c.group, staged=offset)
    call = protocol.complete(queue, w.worker_id, result_ttl_ms, [commit])
    (verdict,) = await w.caller.until_done(call)
    return str(verdict)


class Expander:
    """Step 3 for one queue: expands the parents this worker committed at once, and takes over
    parents whose expansion stalled (their worker died) every ``interval``."""

    def __init__(
        self,
        w: Worker,
        protocol: Protocol,
        queue: str,
        result_ttl_ms: int,
        idle_ms: int,
        interval: float,
    ):
        self.w = w
        self.protocol = protocol  # of the partition whose parents it expands
        self.queue = queue
        self.result_ttl_ms = result_ttl_ms
        self.idle_ms = idle_ms
        self.interval = interval
        self.pending: list[str] = []
        self.event = trio.Event()

    def add(self, parent_id: str) -> None:
        self.pending.append(parent_id)
        self.event.set()

    async def run(self) -> None:
        while True:
            with trio.move_on_after(self.interval):
                await self.event.wait()
            self.event = trio.Event()
            try:
                while self.pending:
                    await self.expand(self.pending[0])
                    self.pending.pop(0)
                while await self.expand(""):
                    pass
            except TRANSIENT:
                continue  # Redis is away: the next round carries on where this one stopped
            except Exception as exc:  # an error reply: nothing was written; try again later
                log.warning("fan-out expansion failed (%s: %s); retrying", type(exc).__name__, exc)

    async def expand(self, parent_id: str) -> bool:
        """Expand ``parent_id`` (or a stalled one: '') to the end; False when there was none."""
        w = self.w
        while True:
            call = self.protocol.expand(
                self.queue, parent_id, EXPAND_CHUNK, self.result_ttl_ms, self.idle_ms
            )
            reply = parse_expand(await w.caller.once(call))
            if reply.state == "NONE":
                return False
            if not parent_id:
                log.warning("continuing the fan-out of job %s (its worker stopped)", reply.parent)
                parent_id = reply.parent
            if reply.state == "DONE":
                return True
            await trio.lowlevel.checkpoint()
