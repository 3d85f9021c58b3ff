"""Hand-off between stages: the child jobs a successful attempt creates, committed atomically
with its completion (by complete.lua). Child ids derive from the parent id and position, so a
repeated completion can never create a child twice."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rrq_flow.client._core import encode_payload
from rrq_flow.config.model import PipelineConfig, QueueConfig
from rrq_flow.errors import PayloadError
from rrq_flow.protocol.ids import child_id, outbox_id, validate_job_id
from rrq_flow.protocol.ops import ChildJob, Completion, GroupSpec, encode_json
from rrq_flow.worker.context import OutboxJob


def join_id(group_id: str, queue: str) -> str:
    """The id of the join job a group makes (the group id is its fan-out job's id)."""
    return child_id(group_id, queue, 0)[: -len(":0")] + ":join"


class Handoff:
    def __init__(self, config: PipelineConfig):
        self.config = config
        self._joins: dict[str, str | None] = {}

    def downstream_join(self, name: str) -> str | None:
        """The join queue that closes the group a fan-out of ``name`` would open: the first join
        reached through ``next`` with every fan-out (that opens a group) on the way closed by a
        join of its own before it (nested groups). None: no group is opened."""
        if name not in self._joins:
            self._joins[name] = None  # the next graph has no cycles; this guards anyway
            seen: set[tuple[str, int]] = set()
            pending = [(q, 0) for q in self.config.queue(name).next]
            found = None
            while pending and found is None:
                queue, depth = pending.pop(0)
                if (queue, depth) in seen:
                    continue
                seen.add((queue, depth))
                target = self.config.queue(queue)
                if target.join:
                    if depth == 0:
                        found = queue
                        break
                    depth -= 1
                if target.fan_out and self.downstream_join(queue) is not None:
                    depth += 1
                pending += [(q, depth) for q in target.next]
            self._joins[name] = found
        return self._joins[name]

    def completion(
        self,
        cfg: QueueConfig,
        job_id: str,
        epoch: int,
        result: Any,
        result_json: str,
        outbox: Sequence[OutboxJob],
    ) -> Completion:
        """The completion to send: result, children, and the group a fan-out opens when its
        items lead to a join. Raises TypeError / ValueError when the result cannot be handed
        off."""
        children = self.children(cfg, job_id, result, outbox)
        group = None
        join = self.downstream_join(cfg.name) if cfg.fan_out and result is not None else None
        if join is not None:
            target = self.config.queue(join)
            size = len({c.branch for c in children if c.kind != "out"})
            group = GroupSpec(
                size,
                join,
                join_id(job_id, join),
                target.retry.max_attempts,
                target.max_payload_bytes,
                target.join_on_failure,
            )
        return Completion(job_id, epoch, result_json, children, group)

    def children(
        self, cfg: QueueConfig, parent_id: str, result: Any, outbox: Sequence[OutboxJob]
    ) -> list[ChildJob]:
        """Jobs for the next stage(s) plus the attempt's outbox.

        A ``None`` result ends the branch (no child); with ``fan_out`` each item of the returned
        iterable becomes one child per next queue (an empty list ends it too). Raises TypeError,
        PayloadError or InvalidJobId (ValueErrors) when the result cannot be handed off.
        """
        if not outbox and (not cfg.next or result is None):
            return []
        out: list[ChildJob] = []
        if cfg.next and result is not None:
            items = list(_fan_out_items(cfg, result)) if cfg.fan_out else [result]
            for queue in cfg.next:
                target = self.config.queue(queue)
                for i, item in enumerate(items):
                    if target.join:
                        out.append(self._join_value(cfg, target, parent_id, i, item))
                        continue
                    args_json, kwargs_json = encode_payload(
                        queue, [item], None, target.max_payload_bytes
                    )
                    out.append(
                        ChildJob(
                            queue,
                            child_id(parent_id, queue, i),
                            args_json,
                            kwargs_json,
                            target.retry.max_attempts,
                            priority=target.priority,
                            branch=i,
                        )
                    )
        for i, job in enumerate(outbox):
            target = self.config.queue(job.queue)
            args_json, kwargs_json = encode_payload(
                job.queue, job.args, job.kwargs, target.max_payload_bytes
            )
            out.append(
                ChildJob(
                    job.queue,
                    validate_job_id(job.job_id)
                    if job.job_id is not None
                    else outbox_id(parent_id, job.queue, i),
                    args_json,
                    kwargs_json,
                    target.retry.max_attempts,
                    priority=target.priority,
                    kind="out",
                )
            )
        return out

    def _join_value(
        self, cfg: QueueConfig, target: QueueConfig, parent_id: str, index: int, item: Any
    ) -> ChildJob:
        """A value for a join queue: kept in its group by complete.lua (args_json = the value)."""
        value = encode_json(item)
        size = len(value.encode()) + 6
        if size > target.max_payload_bytes:
            raise PayloadError(
                f"value for join queue {target.name!r} is {size} bytes, over its "
                f"max_payload_bytes ({target.max_payload_bytes})"
            )
        queue = target.name
        return ChildJob(
            queue,
            child_id(parent_id, queue, index),
            value,
            "{}",
            target.retry.max_attempts,
            kind="join",
            branch=index,
        )


def _fan_out_items(cfg: QueueConfig, result: Any) -> Iterable[Any]:
    if isinstance(result, str | bytes | dict) or not hasattr(result, "__iter__"):
        raise TypeError(
            f"queue {cfg.name!r} has fan_out: its handler must return a list (or other "
            f"iterable) of items, got {type(result).__name__}"
        )
    return result  # type: ignore[no-any-return]
