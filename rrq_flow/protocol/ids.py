"""Job ids: the one validator for ids users give, and the ids rrq-flow makes itself.

Every per-job key carries its type before the id (``job:<id>``, ``errors:<id>``, ...), so an id
can never name another job's key; the validator keeps ids printable and bounded. Ids rrq-flow
generates use only ``[A-Za-z0-9._:-]`` (they paste into a shell unquoted) and are deterministic,
so a repeated completion derives the same ids and never creates a child twice.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from rrq_flow.errors import InvalidJobId

MAX_JOB_ID_LENGTH = 256
GENERATED_ID = re.compile(r"[A-Za-z0-9._:-]+")


def job_id_problem(job_id: object) -> str | None:
    """Why ``job_id`` is not a valid job id, or None when it is."""
    if not isinstance(job_id, str):
        return f"job id must be a string, got {type(job_id).__name__}"
    if not job_id:
        return "job id must not be empty"
    if len(job_id) > MAX_JOB_ID_LENGTH:
        return f"job id is {len(job_id)} characters long, at most {MAX_JOB_ID_LENGTH} allowed"
    for pos, ch in enumerate(job_id, start=1):
        if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cs"):
            return f"job id must not contain whitespace or control characters ({ch!r} at {pos})"
    return None


def validate_job_id(job_id: object) -> str:
    """Return ``job_id`` if valid (1-256 characters, no whitespace or control characters),
    else raise InvalidJobId (a ValueError) saying what is wrong."""
    problem = job_id_problem(job_id)
    if problem is not None:
        raise InvalidJobId(problem)
    assert isinstance(job_id, str)
    return job_id


def _base(parent_id: str, suffix: str) -> str:
    """The parent id itself when it is safe and leaves room for ``suffix``, else a digest."""
    if GENERATED_ID.fullmatch(parent_id) and len(parent_id) + len(suffix) <= MAX_JOB_ID_LENGTH:
        return parent_id
    return "h" + hashlib.sha256(parent_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def child_id(parent_id: str, queue: str, index: int) -> str:
    """Id of the ``index``-th child a parent hands to ``queue`` (next stage, fan-out item).

    ``<parent>:<queue>:<index>``; queue names hold no ``:``, so the id splits back uniquely
    from the right. A parent id that is not ``[A-Za-z0-9._:-]`` or too long is replaced by
    ``h`` + 32 hex digits of its SHA-256 (the child's ``parent`` field keeps the real id).
    """
    suffix = f":{queue}:{index}"
    return _base(parent_id, suffix) + suffix


def outbox_id(parent_id: str, queue: str, index: int) -> str:
    """Id of the ``index``-th outbox job without its own id: ``<parent>:<queue>:o<index>``."""
    suffix = f":{queue}:o{index}"
    return _base(parent_id, suffix) + suffix
