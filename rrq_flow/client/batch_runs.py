"""Reading batch runs back: a run's counts, the list of recent runs, a run's results page by page,
and the descendants of one job. Pure functions of Redis replies plus small sync readers; the
async client reuses the parsers.

A run is indexed by the scripts themselves (fragments/runs.lua): ``run:<id>`` counts its jobs by
queue and state, ``run:<id>:jobs:<queue>`` lists its job ids in creation order and ``runs`` lists
recent runs. Everything here reads those indexes, never SCAN, and ``iter_results`` holds one page
of ids at a time, so its memory does not depend on the size of the run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rrq_flow.client.jobinfo import TERMINAL_STATES
from rrq_flow.protocol.keys import KeyLayout

RESULTS_PAGE = 500  # job ids read per LRANGE while streaming results
COUNTED_STATES = ("done", "dead", "failed", "cancelled")


def _ms(value: Any) -> float | None:
    try:
        return int(value) / 1000
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A batch run's counts. ``queues`` maps each stage the run reached to
    ``{enqueued, done, dead, failed, cancelled, pending}`` (pending: not yet terminal)."""

    id: str
    started_at: float | None
    updated_at: float | None
    finished_at: float | None  # set while every job of the run is terminal
    total: int
    finished: int
    queues: dict[str, dict[str, int]]

    @property
    def complete(self) -> bool:
        return self.total > 0 and self.finished >= self.total

    @property
    def pending(self) -> int:
        return self.total - self.finished

    def counts(self) -> dict[str, int]:
        """Jobs by state over every queue: done, dead, failed, cancelled, pending."""
        out = {s: 0 for s in (*COUNTED_STATES, "pending")}
        for per in self.queues.values():
            for state in out:
                out[state] += per.get(state, 0)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
            "total": self.total,
            "finished": self.finished,
            "counts": self.counts(),
            "queues": self.queues,
        }


def parse_run(run_id: str, record: dict[str, str]) -> RunInfo | None:
    """RunInfo from the ``run:<id>`` hash (None when it does not exist)."""
    if not record:
        return None
    queues: dict[str, dict[str, int]] = {}
    for key, value in record.items():
        state, sep, queue = key.partition(":")
        if sep and (state == "enqueued" or state in COUNTED_STATES):
            queues.setdefault(queue, {s: 0 for s in ("enqueued", *COUNTED_STATES)})[state] = int(
                value
            )
    for per in queues.values():
        per["pending"] = per["enqueued"] - sum(per[s] for s in COUNTED_STATES)
    return RunInfo(
        id=run_id,
        started_at=_ms(record.get("started_at")),
        updated_at=_ms(record.get("updated_at")),
        finished_at=_ms(record.get("finished_at")),
        total=int(record.get("total", 0)),
        finished=int(record.get("finished", 0)),
        queues=dict(sorted(queues.items())),
    )


def merge_run_records(records: Sequence[dict[str, str]]) -> dict[str, str]:
    """One run's ``run:<id>`` hashes from several partitions as one: counts add up, the run
    started with its first partition and finished with its last (``finished_at`` only while
    every job in every partition is terminal). A partition the run never reached has none."""
    present = [r for r in records if r]
    if len(present) <= 1:
        return present[0] if present else {}
    merged: dict[str, int] = {}
    for record in present:
        for key, value in record.items():
            n = int(value)
            if key == "started_at":
                merged[key] = min(merged.get(key, n), n)
            elif key in ("updated_at", "finished_at"):
                merged[key] = max(merged.get(key, n), n)
            else:
                merged[key] = merged.get(key, 0) + n
    if any("finished_at" not in r for r in present) or merged.get("finished", 0) < merged.get(
        "total", 0
    ):
        merged.pop("finished_at", None)
    return {k: str(v) for k, v in merged.items()}


def result_line(job_id: str, queue: str, fields: Sequence[str | None]) -> dict[str, Any]:
    """One job of a run as ``results`` prints it, from HMGET status, result, error (the result
    from ``result:<id>`` when it is longer than 64 bytes)."""
    status, result, error = fields
    out: dict[str, Any] = {"id": job_id, "queue": queue, "status": status or "expired"}
    if status == "done":
        out["result"] = json.loads(result) if result else None
    elif status in TERMINAL_STATES and error:
        out["error"] = json.loads(error)
    return out


class RunReader:
    """Sync reads of batch runs through a redis-py client, across the pipeline's partitions
    (each keeps the counts and job lists of the run's jobs it holds; see merge_run_records)."""

    def __init__(self, redis: Any, layouts: KeyLayout | Sequence[KeyLayout]):
        self.redis = redis
        self.layouts = (layouts,) if isinstance(layouts, KeyLayout) else tuple(layouts)

    def _record(self, run_id: str) -> dict[str, str]:
        return merge_run_records([self.redis.hgetall(lay.run(run_id)) for lay in self.layouts])

    def run(self, run_id: str) -> RunInfo | None:
        return parse_run(run_id, self._record(run_id))

    def recent(self, limit: int = 20) -> list[RunInfo]:
        """The newest ``limit`` runs whose records still exist, newest first."""
        started: dict[str, float] = {}
        for lay in self.layouts:
            for run_id, score in self.redis.zrevrange(
                lay.runs, 0, max(0, limit - 1), withscores=True
            ):
                started[run_id] = min(started.get(run_id, score), score)
        ids = sorted(started, key=lambda r: started[r], reverse=True)[:limit]
        pipe = self.redis.pipeline(transaction=False)
        for run_id in ids:
            for lay in self.layouts:
                pipe.hgetall(lay.run(run_id))
        records = pipe.execute()
        n = len(self.layouts)
        out = []
        for i, run_id in enumerate(ids):
            info = parse_run(run_id, merge_run_records(records[i * n : (i + 1) * n]))
            if info is not None:
                out.append(info)
        return out

    def results(
        self, run_id: str, queues: Sequence[str], page: int = RESULTS_PAGE
    ) -> Iterator[dict[str, Any]]:
        """Every job of the run in ``queues`` (creation order), one page of ids in memory."""
        for queue in queues:
            for lay in self.layouts:  # partitioned: one partition after the other
                yield from self._page_through(lay, run_id, queue, page)

    def _page_through(
        self, lay: KeyLayout, run_id: str, queue: str, page: int
    ) -> Iterator[dict[str, Any]]:
        key = lay.run_jobs(run_id, queue)
        start = 0
        while True:
            ids = self.redis.lrange(key, start, start + page - 1)
            if not ids:
                break
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(lay.job(job_id), "status", "result", "error")
                pipe.get(lay.job_result(job_id))
            replies = pipe.execute()
            for n, job_id in enumerate(ids):
                status, result, error = replies[2 * n]
                yield result_line(job_id, queue, (status, result or replies[2 * n + 1], error))
            start += len(ids)
            if len(ids) < page:
                break


def final_stages(next_of: dict[str, Sequence[str]]) -> list[str]:
    """The queues with no ``next``: where a pipeline's results end up."""
    return [name for name, nxt in next_of.items() if not nxt]


WALK_FIELDS = ("status", "group_join")
WALK_BATCH = 500


class DescendantWalk:
    """``wait(job_id, descendants=True)`` without I/O: the ids still to watch and the counts of
    those that ended. A done job adds its children (and the join job of the group it opened);
    a record that expired counts as ``expired``, except a join job whose group is still open
    (``open_joins``: it does not exist yet)."""

    def __init__(self, root: str):
        self.root = root
        self.frontier: list[str] = [root]
        self.counts: dict[str, int] = {}
        self.root_status: str | None = None
        self.joins: dict[str, str] = {}  # join job id -> its group id (the fan-out job's id)

    @property
    def finished(self) -> bool:
        return not self.frontier

    def batch(self) -> list[str]:
        return self.frontier[:WALK_BATCH]

    def missing_joins(
        self, ids: Sequence[str], replies: Sequence[Sequence[str | None]]
    ) -> list[tuple[str, str]]:
        """(join id, group id) of join jobs without a record yet: the caller checks whether the
        group is still open or the join appeared meanwhile (EXISTS of either key)."""
        return [
            (i, self.joins[i])
            for i, r in zip(ids, replies, strict=True)
            if r[0] is None and i in self.joins
        ]

    def feed(
        self,
        ids: Sequence[str],
        replies: Sequence[Sequence[str | None]],
        children_of: Sequence[Sequence[str]],
        open_groups: Sequence[str] = (),
    ) -> bool:
        """Take HMGET ``WALK_FIELDS`` replies and the child index (``children:<id>``) of each of
        ``ids``, and which of ``missing_joins`` are still open groups; True when anything
        ended."""
        ended: set[str] = set()
        grown: list[str] = []
        rows = zip(ids, replies, children_of, strict=True)
        for job_id, (status, join), children in rows:
            if job_id == self.root and status is None:
                from rrq_flow.errors import JobNotFound

                raise JobNotFound(job_id)
            if status is not None and status not in TERMINAL_STATES:
                continue
            if status is None and self.joins.get(job_id) in open_groups:
                continue  # its group has not closed yet: the join job will exist
            ended.add(job_id)
            state = status or "expired"
            self.counts[state] = self.counts.get(state, 0) + 1
            if job_id == self.root:
                self.root_status = state
            if status == "done":
                grown += children
                if join:
                    grown.append(join)
                    self.joins[join] = job_id
        if ended:
            self.frontier = [i for i in self.frontier if i not in ended] + grown
        return bool(ended)
