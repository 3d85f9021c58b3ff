"""Is this Redis fit to hold jobs? Checked by ``rrq-flow run`` before any worker starts.

Two server settings decide whether acknowledged jobs can vanish without a word:

* **Persistence.** Without AOF (``appendonly no``: no persistence, or RDB snapshots only) a
  crash or restart rolls Redis back to its last snapshot. The generation id (docs/guarantees.md
  §7) is in that snapshot, so nothing can tell that the jobs written after it ever existed.
  ``run`` therefore refuses such a Redis unless the pipeline says ``redis.persistence: none``.
* **Eviction.** With a ``maxmemory-policy`` other than ``noeviction``, Redis deletes keys —
  job records, queue entries — when memory runs short. ``run`` warns once.

Both are read with ``INFO`` (allowed on managed Redis services where ``CONFIG`` is not). Where
``INFO`` is not permitted either, ``run`` says it cannot check and goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rrq_flow.redact import redact_url

if TYPE_CHECKING:
    import redis

    from rrq_flow.config.model import PipelineConfig


@dataclass(frozen=True, slots=True)
class ServerVerdict:
    """``refusal``: why workers must not start (exit 2); ``warnings``: to log once each."""

    refusal: str | None = None
    warnings: list[str] = field(default_factory=list)


def judge(config: PipelineConfig, url: str, info: dict[str, object] | None) -> ServerVerdict:
    """The verdict for a server whose ``INFO persistence`` + ``INFO memory`` is ``info``
    (None: INFO was not permitted)."""
    where = redact_url(url)
    if info is None:
        return ServerVerdict(
            warnings=[
                f"cannot check Redis at {where} (INFO is not permitted for this user): make sure "
                "it persists with AOF (appendonly yes) and has maxmemory-policy noeviction, or "
                "acknowledged jobs can be lost without notice"
            ]
        )
    warnings = []
    policy = str(info.get("maxmemory_policy", "noeviction"))
    if policy != "noeviction":
        limit = info.get("maxmemory_human") or info.get("maxmemory") or "?"
        warnings.append(
            f"Redis at {where} has maxmemory-policy {policy} (maxmemory {limit}): when memory "
            "runs short it deletes keys, and with them jobs, without notice; set "
            "maxmemory-policy noeviction (Redis then refuses writes instead, and rrq-flow "
            "retries them)"
        )
    refusal = None
    if str(info.get("aof_enabled", "1")) != "1" and config.redis.persistence != "none":
        refusal = (
            f"Redis at {where} does not persist with AOF (appendonly no): a crash or restart "
            "would roll it back to its last snapshot and silently lose the jobs acknowledged "
            "since. Turn AOF on (appendonly yes), or accept the risk with "
            "'redis: {persistence: none}' in the pipeline file"
        )
    return ServerVerdict(refusal, warnings)


def read_info(client: redis.Redis) -> dict[str, object] | None:
    """``INFO persistence`` and ``INFO memory`` merged; None when the user may not run INFO.

    Connection and authentication errors propagate: they are the caller's to report.
    """
    import redis as redis_py

    try:
        info: dict[str, object] = dict(client.info("persistence"))
        info.update(client.info("memory"))
    except redis_py.exceptions.NoPermissionError:
        return None
    except redis_py.exceptions.ResponseError as exc:
        if "unknown command" in str(exc).lower():  # renamed or disabled on a managed service
            return None
        raise
    return info
