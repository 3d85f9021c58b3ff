"""The running job's context, reachable from inside a handler via ``current_job()``."""

from __future__ import annotations

import contextvars
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from rrq_flow.errors import RRQFlowError

_current: contextvars.ContextVar[JobContext] = contextvars.ContextVar("rrq_current_job")


@dataclass(frozen=True, slots=True)
class OutboxJob:
    queue: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    job_id: str | None = None


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """What a join job knows about the group it closes (``current_job().group``).

    ``size``: items the fan-out returned; ``arrived``: values that reached the join (the
    handler's argument); ``failed``: the branch jobs that ended dead, failed or cancelled, as
    ``{"id", "state", "error"}`` (the first 1000; ``failed_count`` counts them all). A value that
    reached a join outside any group is a group of one (size 1, arrived 1).
    """

    id: str
    size: int
    arrived: int
    failed: list[dict[str, Any]]
    failed_count: int

    @classmethod
    def from_json(cls, text: str) -> GroupInfo:
        data = json.loads(text)
        return cls(
            id=str(data["id"]),
            size=int(data["size"]),
            arrived=int(data["arrived"]),
            failed=list(data["failed"]),
            failed_count=int(data["failed_count"]),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "size": self.size,
            "arrived": self.arrived,
            "failed": self.failed,
            "failed_count": self.failed_count,
        }


@dataclass(slots=True)
class JobContext:
    """What a handler may know about the attempt it runs.

    ``epoch`` is the fence token: it grows every time the job changes hands, so a handler that
    writes to an external system can reject writes carrying an older epoch. ``deadline`` is the
    Unix time (server clock) at which the attempt's timeout fires.
    """

    id: str
    queue: str
    attempt: int
    max_attempts: int
    epoch: int
    enqueued_at: float
    deadline: float
    worker_id: str
    parent: str | None
    logger: logging.Logger
    # Set for a job of a `join: true` queue: the group it closes.
    group: GroupInfo | None = None
    _outbox: list[OutboxJob] = field(default_factory=list)
    pause_requests: list[float] = field(default_factory=list)

    def enqueue(self, queue: str, *args: Any, job_id: str | None = None, **kwargs: Any) -> None:
        """Buffer a job that is committed atomically with this job's successful completion and
        dropped if this attempt fails or loses its lease (a transactional outbox)."""
        self._outbox.append(OutboxJob(queue, args, kwargs, job_id))

    def pause_queue(self, delay: float) -> None:
        """Pause this job's queue for ``delay`` seconds across all workers (say, after a 429
        with Retry-After). Running jobs finish; nothing new starts until the pause ends. It
        takes effect when this handler returns or raises, before its slot is given back; a
        longer pause already in place is kept."""
        if not delay >= 0:
            raise ValueError(f"pause_queue needs a delay >= 0 seconds, got {delay!r}")
        self.pause_requests.append(float(delay))

    @property
    def outbox(self) -> list[OutboxJob]:
        return self._outbox


def current_job() -> JobContext:
    """The context of the job running in this task or handler thread.

    Not available in ``executor: process`` handlers (they run in another process).
    """
    try:
        return _current.get()
    except LookupError:
        raise RRQFlowError("current_job() called outside a running rrq-flow job") from None


def set_current(ctx: JobContext) -> contextvars.Token[JobContext]:
    return _current.set(ctx)


def reset_current(token: contextvars.Token[JobContext]) -> None:
    _current.reset(token)
