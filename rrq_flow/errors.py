"""Exceptions rrq-flow raises, and the two that handlers raise to steer retries.

Every error a user can cause carries what they need to fix it: which file, queue or job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rrq_flow.config.model import DurabilitySettings


class RRQFlowError(Exception):
    """Base of every error rrq-flow raises on purpose."""


# --- raised by handlers ---------------------------------------------------------------------


class Retry(Exception):
    """Raise from a handler to retry this job after ``delay`` (seconds or a duration string).

    The attempt still counts; when no attempts are left the job is dead-lettered.
    """

    def __init__(self, reason: str = "retry requested", *, delay: float | str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class Fatal(Exception):
    """Raise from a handler to dead-letter the job at once, skipping any attempts left."""


# --- configuration --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a pipeline file, located at a YAML node."""

    file: str
    line: int  # 1-based
    col: int  # 1-based
    path: str  # dotted path of the offending node, e.g. "queues.fetch.timeout"; "(root)"
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.path or '(root)'}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "path": self.path,
            "message": self.message,
        }


class ConfigError(RRQFlowError):
    """A pipeline file is invalid; ``problems`` lists everything wrong, in file order."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ConfigUsageError(RRQFlowError):
    """The pipeline file cannot be read at all (missing, unreadable, not YAML)."""


class UnknownQueueError(RRQFlowError, KeyError):
    def __init__(self, name: str, known: Sequence[str]):
        self.name = name
        self.known = tuple(known)
        super().__init__(name)

    def __str__(self) -> str:
        return f"unknown queue {self.name!r}; the pipeline has: {', '.join(self.known)}"


# --- jobs and Redis -------------------------------------------------------------------------


class PayloadError(RRQFlowError, ValueError):
    """A job's arguments are not JSON, or are larger than the queue's ``max_payload_bytes``."""


class InvalidJobId(RRQFlowError, ValueError):
    """A job id is empty, longer than 256 characters, or holds whitespace or control characters."""


class JobNotFound(RRQFlowError, LookupError):
    def __init__(self, job_id: str):
        self.job_id = job_id
        super().__init__(f"no job {job_id!r} (never enqueued, or its record expired)")


class RunNotFound(RRQFlowError, LookupError):
    def __init__(self, run_id: str):
        self.run_id = run_id
        super().__init__(
            f"no run {run_id!r} (never enqueued, or it ended longer than result_ttl ago)"
        )


class JobFailed(RRQFlowError):
    """``wait()`` on a job that ended dead-lettered, failed or cancelled."""

    def __init__(self, job_id: str, status: str, error: object):
        self.job_id = job_id
        self.status = status
        self.error = error
        super().__init__(f"job {job_id} ended {status}: {error}")


class RedisSettingsError(RRQFlowError, ValueError):
    """``redis:`` settings that cannot be used: a URL with a bad scheme, port or db, a TLS file
    that does not load. Exit code 2; the message never shows the URL's password."""


class RedisUnavailable(RRQFlowError):
    """Redis could not be reached (at start, or for longer than the caller tolerates)."""


class DurabilityError(RRQFlowError):
    """An enqueue reached fewer replicas than ``redis.durability.replicas`` in time."""

    def __init__(self, job_ids: Sequence[str], acked: int, settings: DurabilitySettings):
        self.job_ids = tuple(job_ids)
        self.acked = acked
        self.replicas = settings.replicas
        shown = ", ".join(self.job_ids[:10]) + (" ..." if len(self.job_ids) > 10 else "")
        super().__init__(
            f"enqueue of {len(self.job_ids)} job(s) reached {acked} of {settings.replicas} "
            f"replica(s) within {settings.timeout:g}s (redis.durability): a failover may lose "
            f"them; enqueue them again with the same ids (safe, never twice): {shown}"
        )


class DataLossDetected(RRQFlowError):
    """Redis no longer holds this pipeline's data (flushed, or restarted without persistence)."""


class EmbeddedRedisError(RRQFlowError):
    """The embedded redis-server could not be found or started."""
