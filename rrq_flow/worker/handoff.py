"""Hand-off between stages: the child jobs a successful attempt creates, committed atomically
with its completion (by complete.lua). Child ids derive from the parent id and position, so a
repeated completion can never create a child twice."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rrq_flow.client._core import encode_payload
from rrq_flow.config.model import PipelineConfig, QueueConfig
from rrq_flow.protocol.ids import child_id, outbox_id, validate_job_id
from rrq_flow.protocol.ops import ChildJob
from rrq_flow.worker.context import OutboxJob


class Handoff:
    def __init__(self, config: PipelineConfig):
        self.config = config

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
                )
            )
        return out


def _fan_out_items(cfg: QueueConfig, result: Any) -> Iterable[Any]:
    if isinstance(result, str | bytes | dict) or not hasattr(result, "__iter__"):
        raise TypeError(
            f"queue {cfg.name!r} has fan_out: its handler must return a list (or other "
            f"iterable) of items, got {type(result).__name__}"
        )
    return result  # type: ignore[no-any-return]
