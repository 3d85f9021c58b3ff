"""JobInfo: a typed, read-only view of one job record."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from rrq_flow.protocol.ops import split_args

TERMINAL_STATES = frozenset({"done", "dead", "failed", "cancelled"})


def _ms_to_s(value: str | None) -> float | None:
    return int(value) / 1000 if value else None


def _json(value: str | None) -> Any:
    return json.loads(value) if value else None


def _children_count(value: str | None) -> int:
    """The record's child count (records of an older layout kept a JSON list of the ids)."""
    if not value:
        return 0
    if value.startswith("["):
        return len(json.loads(value))
    return int(value)


@dataclass(frozen=True, slots=True)
class JobInfo:
    """Everything Redis knows about a job. Times are Unix seconds (float), from the server clock.

    ``status`` is one of queued, scheduled, active, retrying, done, dead, failed, cancelled.
    """

    id: str
    queue: str
    status: str
    attempts: int
    max_attempts: int
    epoch: int
    args: list[Any]
    kwargs: dict[str, Any]
    enqueued_at: float | None
    ready_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    lease_until: float | None = None
    owner: str | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    dead_reason: str | None = None
    stalls: int = 0
    claims: int = 0
    unique_key: str | None = None
    parent: str | None = None
    children: int = 0  # how many children it created; list them with ``children()``
    cancel_requested: bool = False
    priority: int = 0  # higher is claimed first
    run: str | None = None  # the batch run it belongs to (inherited from its ancestors)
    # A join job: the group it closes, {"id", "size", "arrived", "failed", "failed_count"}.
    group: dict[str, Any] | None = None
    # A branch job: the groups it is in, [[group id, branch index], ...], innermost last.
    groups: list[list[Any]] = field(default_factory=list)
    group_join: str | None = None  # a fan-out that opened a group: the id of its join job

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATES

    @classmethod
    def from_record(
        cls,
        record: dict[str, str],
        errors: list[str] | None = None,
        now: float | None = None,
        *,
        job_id: str = "",
        args_blob: str | None = None,
        long_result: str | None = None,
    ) -> JobInfo:
        """The job from its record, its error list, ``args_blob`` (the value of its
        ``args:<id>`` key, where arguments longer than 64 bytes are kept; None when they are in
        the record, or gone: a done job of a queue without ``keep_args``) and
        ``long_result`` (its ``result:<id>``, where a result over 64 bytes is kept)."""
        status = record.get("status", "")
        if "packed_args" in record:  # short arguments live in the record
            args_json, kwargs_json = split_args(record["packed_args"])
        elif "args" in record:  # a record written by an older rrq-flow kept them inline
            args_json, kwargs_json = record["args"], record.get("kwargs", "{}")
        else:
            args_json, kwargs_json = split_args(args_blob)
        ready_at = _ms_to_s(record.get("ready_at"))
        if status == "scheduled" and ready_at is not None and ready_at <= (now or time.time()):
            status = "queued"
        active = status == "active"
        return cls(
            id=job_id or record.get("id", ""),
            queue=record.get("queue", ""),
            status=status,
            attempts=int(record.get("attempts", 0)),
            max_attempts=int(record.get("max_attempts", 0)),
            epoch=int(record.get("epoch", 0)),
            args=_json(args_json) or [],
            kwargs=_json(kwargs_json) or {},
            enqueued_at=_ms_to_s(record.get("enqueued_at")),
            ready_at=ready_at,
            started_at=_ms_to_s(record.get("started_at")),
            finished_at=_ms_to_s(record.get("finished_at")),
            lease_until=_ms_to_s(record.get("lease")) if active else None,
            owner=(record.get("owner") or None) if active else None,
            result=_json(record.get("result") or long_result),
            error=_json(record.get("error")),
            errors=[json.loads(e) for e in errors or ()],
            dead_reason=record.get("dead_reason") or None,
            stalls=int(record.get("stalls", 0)),
            claims=int(record.get("claims", 0)),
            unique_key=record.get("unique_key") or None,
            parent=record.get("parent") or None,
            children=_children_count(record.get("children")),
            cancel_requested=record.get("cancel_requested") == "1",
            priority=int(record.get("priority") or 0),
            run=record.get("run") or None,
            group=_json(record.get("group")),
            groups=_json(record.get("grp")) or [],
            group_join=record.get("group_join") or None,
        )

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}
