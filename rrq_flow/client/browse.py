"""Browse a pipeline a page at a time, for the dashboard: the jobs of one queue in one state, the
throughput ring, and purging chosen dead jobs.

Like :mod:`rrq_flow.client.admin` (which this builds on), everything is read from the indexes the
protocol keeps — the queue's ready, retry, active and dead ZSETs — never with SCAN: a page costs
one ZRANGE and one HMGET per job on it, whatever the number of jobs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import redis

from rrq_flow.client.admin import Admin, _error_dict, _int, _server_ms, ring_buckets
from rrq_flow.protocol.keys import KeyLayout
from rrq_flow.protocol.scripts import pipe_time

# The states a queue page lists, each with the index that holds it. ``done``, ``failed`` and
# ``cancelled`` jobs are in no index (their records only wait to expire), so they are not listed.
STATES = ("ready", "scheduled", "retrying", "active", "dead")


@dataclass(frozen=True, slots=True)
class JobRow:
    """One job of a queue page. ``at``: its score in the index, as server seconds — ready or
    scheduled time, retry due time, lease deadline, or time of death."""

    id: str
    status: str | None  # None: the record expired (a stray index entry)
    at: float
    attempts: int | None
    max_attempts: int | None
    enqueued_at: float | None
    error_type: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class JobPage:
    queue: str
    state: str
    total: int
    offset: int
    limit: int
    jobs: list[JobRow]

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "state": self.state,
            "total": self.total,
            "offset": self.offset,
            "limit": self.limit,
            "jobs": [j.as_dict() for j in self.jobs],
        }


def queue_jobs(admin: Admin, queue: str, state: str, offset: int = 0, limit: int = 50) -> JobPage:
    """The jobs of ``queue`` in ``state``, newest first (highest score first)."""
    if state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}")
    admin._queues([queue])  # UnknownQueueError for a bad name
    offset, limit = max(offset, 0), max(min(limit, 500), 1)
    now = _server_ms(admin.redis.time())
    levels: list[str] = []
    layout_of: dict[str, KeyLayout] = {}  # each ZSET's partition (docs/scaling.md §5a)
    for view in admin._views():
        keys = view.layout.queue(queue)
        # ready and scheduled share one ZSET scored by the time a job may run.
        index = {
            "ready": keys.ready,
            "scheduled": keys.ready,
            "retrying": keys.retry,
            "active": keys.active,
            "dead": keys.dead,
        }[state]
        mine = [index]
        if state in ("ready", "scheduled"):
            # Jobs with a priority other than 0 wait in one ZSET per level (rrq_flow.flow).
            priorities = admin.redis.zrange(keys.ready + ":prio", 0, -1)
            mine += [keys.ready + ":p:" + str(p) for p in priorities]
        levels += mine
        layout_of.update(dict.fromkeys(mine, view.layout))
    low, high = {"ready": ("-inf", str(now)), "scheduled": (f"({now}", "+inf")}.get(
        state, ("-inf", "+inf")
    )
    total, found, where = _page(admin, levels, low, high, offset, limit)
    pipe = admin.redis.pipeline(transaction=False)
    for (job_id, _), level in zip(found, where, strict=True):
        layout = layout_of[level]
        pipe.hmget(layout.job(job_id), ["status", "attempts", "max_attempts", "enqueued_at"])
        pipe.hget(layout.job(job_id), "error")
    replies = pipe.execute() if found else []
    rows = []
    for i, (job_id, score) in enumerate(found):
        (status, attempts, max_attempts, enqueued), error = replies[2 * i], replies[2 * i + 1]
        err = _error_dict(error)
        rows.append(
            JobRow(
                id=job_id,
                status=status,
                at=float(score) / 1000,
                attempts=_int(attempts) if attempts is not None else None,
                max_attempts=_int(max_attempts) if max_attempts is not None else None,
                enqueued_at=_int(enqueued) / 1000 if enqueued else None,
                error_type=err.get("type") if err else None,
            )
        )
    return JobPage(queue, state, int(total), offset, limit, rows)


def _page(
    admin: Admin, levels: list[str], low: str, high: str, offset: int, limit: int
) -> tuple[int, list[tuple[str, float]], list[str]]:
    """How many entries the ZSETs ``levels`` hold between ``low`` and ``high``, the page
    ``offset``..``offset + limit`` of them, highest score first, and the ZSET each came from.
    One ZSET is paged in Redis; several are merged from the first ``offset + limit`` of each."""
    pipe = admin.redis.pipeline(transaction=False)
    for key in levels:
        pipe.zcount(key, low, high)
        if len(levels) == 1:
            pipe.zrevrangebyscore(key, high, low, start=offset, num=limit, withscores=True)
        else:
            pipe.zrevrangebyscore(key, high, low, start=0, num=offset + limit, withscores=True)
    replies = pipe.execute()
    total = sum(int(n) for n in replies[0::2])
    found = [
        (str(i), float(score), key)
        for key, got in zip(levels, replies[1::2], strict=True)
        for i, score in got
    ]
    if len(levels) > 1:
        found.sort(key=lambda entry: (-entry[1], entry[0]))
        found = found[offset : offset + limit]
    return total, [(i, score) for i, score, _ in found], [key for _, _, key in found]


def throughput(admin: Admin) -> tuple[float, dict[str, dict[int, int]]]:
    """Server time (s) and every queue's finished-jobs ring: {queue: {bucket: count}} (the ring
    covers the last 80 s; the dashboard keeps what it has seen for an hour)."""
    names = list(admin.config.queues)
    pipe = admin.redis.pipeline(transaction=False)
    pipe_time(pipe, admin.home.meta)
    for view in admin._views():  # partitions add up, bucket by bucket
        for name in names:
            pipe.hgetall(view.layout.queue(name).tput)
    now, *rings = pipe.execute()
    out: dict[str, dict[int, int]] = {name: {} for name in names}
    for i, ring in enumerate(rings):
        per = out[names[i % len(names)]]
        for bucket, count in ring_buckets(ring).items():
            per[bucket] = per.get(bucket, 0) + count
    return _server_ms(now) / 1000, out


def dead_counts(admin: Admin, ids: list[str]) -> dict[str, int]:
    """How many of ``ids`` are dead now, per queue (what :func:`purge_dead` would delete)."""
    pipe = admin.redis.pipeline(transaction=False)
    for job_id in ids:
        layout = admin.client._locate(job_id) or admin.layout
        pipe.hmget(layout.job(job_id), ["queue", "status"])
    counts: dict[str, int] = {}
    for queue, status in pipe.execute() if ids else []:
        if status == "dead" and queue:
            counts[queue] = counts.get(queue, 0) + 1
    return counts


def purge_dead(admin: Admin, ids: list[str]) -> dict[str, int]:
    """Delete the given dead jobs for good (record, error and child lists, DLQ entry: the keys
    purge.lua deletes for a whole queue); returns how many were deleted per queue. A job that is
    no longer dead (requeued meanwhile) is left alone: each one is checked and deleted in one
    WATCHed transaction, retried if its record changed."""
    purged: dict[str, int] = {}
    for job_id in dict.fromkeys(ids):
        layout = admin.client._locate(job_id)
        if layout is None:
            continue
        key = layout.job(job_id)
        with admin.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    found, status = pipe.hmget(key, ["queue", "status"])
                    if status != "dead" or not found:
                        pipe.unwatch()
                        break
                    queue = str(found)
                    keys = layout.queue(queue)
                    pipe.multi()
                    pipe.zrem(keys.dead, job_id)
                    pipe.delete(key, layout.job_errors(job_id), layout.job_children(job_id))
                    pipe.hincrby(keys.stats, "purged", 1)
                    pipe.execute()
                    purged[queue] = purged.get(queue, 0) + 1
                    break
                except redis.exceptions.WatchError:
                    continue
    return purged
