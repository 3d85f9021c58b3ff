"""Admin: read and operate a pipeline from synchronous code (the CLI's status, workers, job, dlq,
cancel and health commands are thin layers over this).

Everything is read from the indexes the protocol keeps anyway — the queue ZSETs, the stats HASH,
the finished-jobs ring and the workers index — never with SCAN, so every call costs a handful of
commands whatever the number of jobs. Times are server seconds (Redis ``TIME``), like JobInfo's.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from rrq_flow.client.jobinfo import JobInfo
from rrq_flow.client.sync_client import SyncClient
from rrq_flow.config.model import DEFAULT_RESULT_TTL
from rrq_flow.errors import JobNotFound
from rrq_flow.flow import FOREVER, FlowState, flow_state
from rrq_flow.protocol.ops import Call, ms
from rrq_flow.protocol.scripts import call_sync, pipe_evalsha, pipe_time, preload_sync
from rrq_flow.schedules import ScheduleState
from rrq_flow.schedules import states as schedule_states

TPUT_BUCKET_MS = 10_000  # the finished-jobs ring: 8 buckets of 10 s (fragments/common.lua)
TPUT_SLOTS = 8
TPUT_WINDOW = 6  # buckets summed for "per minute": the current one and the 5 before it
ALIVE_FACTOR = 2.5  # a worker is alive if its last beat is at most this many intervals old
BATCH = 1000  # jobs per requeue / purge call
CHILDREN_SHOWN = 20  # children job() lists (a fan-out may have millions; the record counts them)

STATS_FIELDS = ("enqueued", "done", "dead", "failed", "cancelled", "retried", "requeued")


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _server_ms(reply: Sequence[Any]) -> int:
    """Redis ``TIME`` reply (seconds, microseconds) as ms."""
    return int(reply[0]) * 1000 + int(reply[1]) // 1000


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """One queue at one moment. ``done``/``failed``/``cancelled`` are cumulative counters;
    ``dead`` is what the dead-letter queue holds now."""

    queue: str
    ready: int
    scheduled: int
    retrying: int
    active: int
    done: int
    dead: int
    failed: int
    cancelled: int
    enqueued: int
    oldest_ready_age: float | None  # seconds the oldest ready job has waited; None if none
    throughput_per_min: int  # jobs finished in the last minute (10 s resolution)
    flow: FlowState | None = None  # rate limit, running cap, pause (rrq_flow.flow)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker from the heartbeat index. ``alive``: its last beat is at most 2.5 heartbeat
    intervals old (one late beat does not make it flap)."""

    id: str
    host: str | None
    pid: int | None
    queues: list[str]
    in_flight: int
    started_at: float | None
    uptime: float | None  # seconds
    last_beat: float
    last_beat_age: float  # seconds
    interval: float | None  # heartbeat interval, seconds
    version: str | None
    burst: bool
    stopping: bool
    alive: bool
    # Jobs it holds a lease on, and how long (seconds, now) its claim or acknowledgement loop
    # has made no progress. ``stuck``: holding work, no progress for longer than its queues'
    # smallest lock_extension (e.g. Redis refuses its writes: OOM, MISCONF, NOPERM).
    holds: int = 0
    stuck_for: float = 0.0
    stuck: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class JobRef:
    """A related job (parent or child): ``status`` None when its record expired."""

    id: str
    queue: str | None
    status: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class JobDetail:
    info: JobInfo
    parent: JobRef | None
    children: list[JobRef]
    owner: WorkerInfo | None  # the worker holding an active job, if its record is still there

    @property
    def last_error(self) -> dict[str, Any] | None:
        return self.info.error

    @property
    def earlier_errors(self) -> list[dict[str, Any]]:
        """Errors of attempts before the last one (newest first, bounded)."""
        errors = self.info.errors
        if errors and self.info.error is not None and errors[0] == self.info.error:
            return errors[1:]
        return errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.info.as_dict(),
            "parent": self.parent.as_dict() if self.parent else None,
            "children": [c.as_dict() for c in self.children],
            "owner": self.owner.as_dict() if self.owner else None,
        }


@dataclass(frozen=True, slots=True)
class DeadEntry:
    id: str
    queue: str
    died_at: float
    attempts: int | None
    max_attempts: int | None
    dead_reason: str | None
    error_type: str | None
    error_message: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class DeadLetters:
    """A page of the dead-letter queue (newest first) and how many each queue holds."""

    entries: list[DeadEntry]
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True, slots=True)
class RequeueResult:
    dry_run: bool
    moved: dict[str, list[str]]  # queue -> ids moved (or that would move)
    not_found: list[str] = field(default_factory=list)  # no such job
    not_in_dlq: list[str] = field(default_factory=list)  # exists, but not in the DLQ

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.moved.values())


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    """``verdict``: cancelled (done now) | cancelling (active: its worker stops it at its next
    lease renewal) | finished (already terminal: nothing changed) | missing."""

    id: str
    verdict: str
    status_before: str | None
    queue: str | None


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    reasons: list[str]
    live_workers: dict[str, int]  # queue -> alive, non-stopping workers serving it


# --- the API --------------------------------------------------------------------------------


class Admin:
    """Inspect and operate one pipeline through an open SyncClient."""

    def __init__(self, client: SyncClient):
        self.client = client
        self.redis: redis.Redis = client.redis
        self.config = client.config
        self.layout = client._core.layout
        self.protocol = client._core.protocol
        # The pipeline-wide records (workers, schedules); the jobs' keys are in ``layout`` (a
        # partition's, in the per-partition views below) -- the same with one partition.
        self.home = client._core.layout
        self._scripts_loaded = False

    # --- partitions (docs/scaling.md): each a complete layout; reads add them up -------------

    @property
    def _partitioned(self) -> bool:
        return len(self.client._core.parts.layouts) > 1

    def _views(self) -> list[Admin]:
        """One view of this Admin per partition (its ``layout`` and ``protocol`` that one's)."""
        parts = self.client._core.parts
        views = []
        for layout, protocol in zip(parts.layouts, parts.protocols, strict=True):
            view = copy.copy(self)
            view.layout, view.protocol = layout, protocol
            views.append(view)
        return views

    def _view_of(self, job_id: str) -> Admin | None:
        """The view of the partition holding the job's record (None: no such record)."""
        layout = self.client._locate(job_id)
        if layout is None:
            return None
        return self._views()[self.client._core.parts.layouts.index(layout)]

    def _queues(self, queues: Iterable[str] | None) -> list[str]:
        """The selected queues in config order; raises UnknownQueueError for a bad name."""
        if not queues:
            return list(self.config.queues)
        names = list(dict.fromkeys(queues))
        for name in names:
            self.config.queue(name)
        return names

    def _run(self, call: Call) -> Any:
        return call_sync(self.redis, call.script, call.keys, call.args)

    def _ensure_scripts(self) -> None:
        if not self._scripts_loaded:
            preload_sync(self.redis)
            self._scripts_loaded = True

    def server_time(self) -> float:
        return _server_ms(self.redis.time()) / 1000

    # --- status ------------------------------------------------------------------------------

    def queue_status(self, queues: Iterable[str] | None = None) -> list[QueueStatus]:
        """Counts per queue, from one MULTI/EXEC round trip (a consistent snapshot; with
        partitions, one per partition, added up)."""
        if self._partitioned:
            per = [view._queue_status(queues) for view in self._views()]
            return [merge_status(list(same)) for same in zip(*per, strict=True)]
        return self._queue_status(queues)

    def _queue_status(self, queues: Iterable[str] | None = None) -> list[QueueStatus]:
        names = self._queues(queues)
        self._ensure_scripts()
        try:
            replies = self._status_snapshot(names)
        except redis.exceptions.NoScriptError:
            self._scripts_loaded = False  # the server lost its script cache
            self._ensure_scripts()
            replies = self._status_snapshot(names)
        now = _server_ms(replies[0])
        drained = replies[1]
        per = replies[2:]
        out = []
        now_bucket = now // TPUT_BUCKET_MS
        for i, name in enumerate(names):
            oldest, dead, stats, tput, flow = per[i * 5 : i * 5 + 5]
            ready, retrying, active, card = (int(x) for x in drained[i * 4 : i * 4 + 4])
            counters = dict(zip(STATS_FIELDS, stats, strict=True))
            age = None
            if oldest and float(oldest[0][1]) <= now:
                age = max(0.0, (now - float(oldest[0][1])) / 1000)
            tput_sum = sum(
                count
                for bucket, count in ring_buckets(tput).items()
                if now_bucket - TPUT_WINDOW < bucket <= now_bucket
            )
            out.append(
                QueueStatus(
                    queue=name,
                    ready=ready,
                    scheduled=max(0, int(card) - ready),
                    retrying=retrying,
                    active=active,
                    done=_int(counters["done"]),
                    dead=int(dead),
                    failed=_int(counters["failed"]),
                    cancelled=_int(counters["cancelled"]),
                    enqueued=_int(counters["enqueued"]),
                    oldest_ready_age=age,
                    throughput_per_min=tput_sum,
                    flow=flow_state(self.config.queue(name), flow, active, now),
                )
            )
        return out

    def _status_snapshot(self, names: list[str]) -> list[Any]:
        """The status reads in one MULTI/EXEC. At maxmemory Redis refuses every command queued
        in a transaction, reads included: then the same reads go as a plain pipeline (counts
        that may be a few jobs apart), so that `status` still answers while Redis is full."""
        try:
            return self._status_pipeline(names, transaction=True)
        except redis.exceptions.ResponseError as exc:
            from rrq_flow.redis_errors import error_code  # only now: it imports coredis

            if error_code(exc) != "OOM":
                raise
            return self._status_pipeline(names, transaction=False)

    def _status_pipeline(self, names: list[str], *, transaction: bool) -> list[Any]:
        drained = self.protocol.drained(names, with_total=True)
        pipe = self.redis.pipeline(transaction=transaction)
        pipe_time(pipe, self.layout.meta)
        pipe_evalsha(pipe, drained.script, drained.keys, drained.args)
        for name in names:
            q = self.layout.queue(name)
            pipe.zrange(q.ready, 0, 0, withscores=True)  # lowest score: the oldest ready job
            pipe.zcard(q.dead)
            pipe.hmget(q.stats, list(STATS_FIELDS))
            pipe.hgetall(q.tput)
            pipe.hgetall(q.flow)
        return list(pipe.execute())

    def schedules(self) -> list[ScheduleState]:
        """Every cron schedule with its next tick and the last tick enqueued (server clock)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe_time(pipe, self.home.schedules)
        pipe.hgetall(self.home.schedules)
        now_reply, stored = pipe.execute()
        return schedule_states(self.config, stored, _server_ms(now_reply))

    # --- flow control ------------------------------------------------------------------------

    def pause(self, queue: str, duration: float | None = None) -> float | None:
        """Pause ``queue`` for ``duration`` seconds (None: until resumed). Running jobs finish;
        nothing new starts. Returns when the pause ends (server Unix seconds; None: no end)."""
        self.config.queue(queue)
        until = FOREVER
        for view in self._views():  # every partition of the queue
            call = view.protocol.pause(
                queue, "pause", FOREVER if duration is None else ms(duration)
            )
            _, until = self._run(call)
        return None if int(until) == FOREVER else int(until) / 1000

    def resume(self, queue: str) -> bool:
        """End a pause of ``queue`` now; False if it was not paused."""
        self.config.queue(queue)
        was_paused = False
        for view in self._views():  # every partition of the queue
            before = self.redis.hget(view.layout.queue(queue).flow, "paused_until")
            now, _ = self._run(view.protocol.pause(queue, "resume"))
            paused = before is not None and (int(before) == FOREVER or int(before) > int(now))
            was_paused = was_paused or paused
        return was_paused

    # --- workers -----------------------------------------------------------------------------

    def workers(self) -> list[WorkerInfo]:
        """Every worker in the heartbeat index (alive or stale), oldest first."""
        pipe = self.redis.pipeline(transaction=False)
        pipe_time(pipe, self.home.meta)
        pipe.zrange(self.home.workers, 0, -1, withscores=True)
        now_reply, index = pipe.execute()
        if not index:
            return []
        now = _server_ms(now_reply)
        pipe = self.redis.pipeline(transaction=False)
        for worker_id, _ in index:
            pipe.hgetall(self.home.worker(worker_id))
        records = pipe.execute()
        found = [
            _worker_info(worker_id, int(score), record, now)
            for (worker_id, score), record in zip(index, records, strict=True)
        ]
        found.sort(key=lambda w: (w.started_at or w.last_beat, w.id))
        return found

    # --- jobs --------------------------------------------------------------------------------

    def job(self, job_id: str, children: int = CHILDREN_SHOWN) -> JobDetail:
        """Everything about one job, with its parent, its first ``children`` children (from the
        child index; ``info.children`` is the count) and owning worker; raises JobNotFound."""
        if self._partitioned:
            view = self._view_of(job_id)
            if view is None:
                raise JobNotFound(job_id)
            return view._job(job_id, children)
        return self._job(job_id, children)

    def _job(self, job_id: str, children: int) -> JobDetail:
        layout = self.layout
        pipe = self.redis.pipeline(transaction=False)
        pipe_time(pipe, self.layout.meta)
        pipe.hgetall(layout.job(job_id))
        pipe.lrange(layout.job_errors(job_id), 0, -1)
        pipe.lrange(layout.job_children(job_id), 0, max(children, 1) - 1)
        pipe.get(layout.job_args(job_id))
        pipe.get(layout.job_result(job_id))
        now_reply, record, errors, child_ids, args_blob, long_result = pipe.execute()
        if not record:
            raise JobNotFound(job_id)
        now = _server_ms(now_reply)
        info = JobInfo.from_record(
            record,
            errors,
            now=now / 1000,
            job_id=job_id,
            args_blob=args_blob,
            long_result=long_result,
        )
        related = ([info.parent] if info.parent else []) + list(child_ids)[: max(children, 0)]
        owner_id = record.get("owner") if record.get("status") == "active" else None
        if not related and not owner_id:
            return JobDetail(info, None, [], None)
        pipe = self.redis.pipeline(transaction=False)
        for rid in related:
            pipe.hmget(layout.job(rid), ["queue", "status"])
        if owner_id:
            pipe.hgetall(self.home.worker(owner_id))
            pipe.zscore(self.home.workers, owner_id)
        replies = pipe.execute()
        refs = [
            JobRef(rid, r[0], r[1]) for rid, r in zip(related, replies[: len(related)], strict=True)
        ]
        parent = refs.pop(0) if info.parent else None
        owner = None
        if owner_id:
            owner_record, score = replies[len(related) :]
            if owner_record or score is not None:
                beat = int(score) if score is not None else _int(owner_record.get("last_beat"))
                owner = _worker_info(owner_id, beat, owner_record, now)
        return JobDetail(info, parent, refs, owner)

    # --- dead letters ------------------------------------------------------------------------

    def dlq_list(self, queue: str | None = None, limit: int = 50) -> DeadLetters:
        """The newest ``limit`` dead-lettered jobs (of one queue or all) and the counts."""
        if self._partitioned:
            per = [view._dlq_list(queue, limit) for view in self._views()]
            counts = {n: sum(p.counts[n] for p in per) for n in per[0].counts}
            entries = sorted((e for p in per for e in p.entries), key=lambda e: (-e.died_at, e.id))
            return DeadLetters(entries[: max(limit, 0)], counts)
        return self._dlq_list(queue, limit)

    def _dlq_list(self, queue: str | None, limit: int) -> DeadLetters:
        names = self._queues([queue] if queue else None)
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            dead = self.layout.queue(name).dead
            pipe.zcard(dead)
            pipe.zrevrange(dead, 0, max(limit, 0) - 1, withscores=True)
        replies = pipe.execute()
        counts: dict[str, int] = {}
        candidates: list[tuple[str, str, float]] = []
        for i, name in enumerate(names):
            counts[name] = int(replies[i * 2])
            if limit > 0:
                candidates += [(name, jid, score) for jid, score in replies[i * 2 + 1]]
        candidates.sort(key=lambda c: (-c[2], c[1]))
        candidates = candidates[: max(limit, 0)]
        if not candidates:
            return DeadLetters([], counts)
        pipe = self.redis.pipeline(transaction=False)
        for _, jid, _ in candidates:
            pipe.hmget(self.layout.job(jid), ["attempts", "max_attempts", "dead_reason", "error"])
        entries = []
        for (name, jid, score), f in zip(candidates, pipe.execute(), strict=True):
            err = _error_dict(f[3])
            entries.append(
                DeadEntry(
                    id=jid,
                    queue=name,
                    died_at=score / 1000,
                    attempts=_int(f[0]) if f[0] is not None else None,
                    max_attempts=_int(f[1]) if f[1] is not None else None,
                    dead_reason=f[2] or None,
                    error_type=err.get("type") if err else None,
                    error_message=err.get("message") if err else None,
                )
            )
        return DeadLetters(entries, counts)

    def dlq_counts(self, queue: str | None = None) -> dict[str, int]:
        names = self._queues([queue] if queue else None)
        pipe = self.redis.pipeline(transaction=False)
        for view in self._views():
            for name in names:
                pipe.zcard(view.layout.queue(name).dead)
        counts = dict.fromkeys(names, 0)
        for i, n in enumerate(pipe.execute()):
            counts[names[i % len(names)]] += int(n)
        return counts

    def dlq_show(self, job_id: str) -> JobDetail:
        """Same as :meth:`job` (the caller checks ``info.status == 'dead'``)."""
        return self.job(job_id)

    def dlq_requeue(
        self,
        ids: Sequence[str] | None = None,
        *,
        queue: str | None = None,
        dry_run: bool = False,
    ) -> RequeueResult:
        """Move dead jobs back to their queue (attempts reset, payload kept), atomically per
        batch in Redis. ``ids=None`` means every dead job (of ``queue``, or of all queues);
        given ids without ``queue`` are looked up in their records."""
        if ids is None:
            names = self._queues([queue] if queue else None)
            moved = {
                name: [j for view in self._views() for j in view._requeue_all(name, dry_run)]
                for name in names
            }
            return RequeueResult(dry_run, {k: v for k, v in moved.items() if v})
        ids = list(dict.fromkeys(ids))
        if queue is not None:
            self._queues([queue])
        if self._partitioned:
            return self._requeue_in_partitions(ids, queue, dry_run)
        return self._requeue_ids(ids, queue, dry_run)

    def _requeue_in_partitions(
        self, ids: list[str], queue: str | None, dry_run: bool
    ) -> RequeueResult:
        """Given ids, each requeued in the partition holding it; the results put together."""
        layouts = self.client._core.parts.layouts
        views = self._views()
        by_view: dict[int, list[str]] = {}
        not_found = []
        for jid in ids:
            layout = self.client._locate(jid)
            if layout is None:
                not_found.append(jid)
            else:
                by_view.setdefault(layouts.index(layout), []).append(jid)
        out = RequeueResult(dry_run, {}, not_found, [])
        for k, mine in sorted(by_view.items()):
            got = views[k]._requeue_ids(mine, queue, dry_run)
            for name, moved in got.moved.items():
                out.moved.setdefault(name, []).extend(moved)
            out.not_found.extend(got.not_found)
            out.not_in_dlq.extend(got.not_in_dlq)
        return out

    def _requeue_ids(self, ids: list[str], queue: str | None, dry_run: bool) -> RequeueResult:
        pipe = self.redis.pipeline(transaction=False)
        for jid in ids:
            pipe.hmget(self.layout.job(jid), ["queue", "status"])
        by_queue: dict[str, list[str]] = {}
        not_found, not_in_dlq = [], []
        for jid, (q, status) in zip(ids, pipe.execute(), strict=True):
            if status is None:
                not_found.append(jid)
            elif status != "dead":
                not_in_dlq.append(jid)
            else:
                by_queue.setdefault(queue or q, []).append(jid)
        result: dict[str, list[str]] = {}
        for name, batch_ids in by_queue.items():
            for i in range(0, len(batch_ids), BATCH):
                chunk = batch_ids[i : i + BATCH]
                got = self._run(self.protocol.requeue(name, chunk, dry_run=dry_run))
                result.setdefault(name, []).extend(str(x) for x in got)
            moved_set = set(result.get(name, ()))
            # Dead, but not in this queue's dead set (a --queue that is not the job's own).
            not_in_dlq += [j for j in batch_ids if j not in moved_set]
        return RequeueResult(dry_run, {k: v for k, v in result.items() if v}, not_found, not_in_dlq)

    def _requeue_all(self, name: str, dry_run: bool) -> list[str]:
        dead_key = self.layout.queue(name).dead
        moved: list[str] = []
        if dry_run:
            # The script's 'all' always reads from the start; page through the set ourselves.
            total = int(self.redis.zcard(dead_key))
            for start in range(0, total, BATCH):
                chunk = [str(x) for x in self.redis.zrange(dead_key, start, start + BATCH - 1)]
                if not chunk:
                    break
                got = self._run(self.protocol.requeue(name, chunk, dry_run=True))
                moved += [str(x) for x in got]
            return moved
        initial = int(self.redis.zcard(dead_key))
        left = initial
        # Bounded by the size at the start: jobs that die again meanwhile (a worker failing
        # them at once) are not requeued in a loop.
        while left > 0 and len(moved) < initial:
            call = self.protocol.requeue(name, None, limit=BATCH)
            pipe = self.redis.pipeline(transaction=False)
            pipe_evalsha(pipe, call.script, call.keys, call.args)
            pipe.zcard(dead_key)
            try:
                got, now_left = pipe.execute()
            except redis.exceptions.NoScriptError:
                preload_sync(self.redis)
                continue
            moved += [str(x) for x in got]
            if not got and int(now_left) >= left:
                break  # nothing moved and nothing dropped: no progress possible
            left = int(now_left)
        return moved

    def dlq_purge(self, queue: str | None = None) -> dict[str, int]:
        """Delete every dead job (record, error list, DLQ entry) of ``queue`` or of all queues,
        in atomic batches; returns how many were deleted per queue."""
        names = self._queues([queue] if queue else None)
        self._ensure_scripts()
        purged: dict[str, int] = {}
        for name in names:
            purged[name] = sum(view._purge(name) for view in self._views())
        return purged

    def _purge(self, name: str) -> int:
        total = 0
        initial = int(self.redis.zcard(self.layout.queue(name).dead))
        rounds = initial // BATCH + 2
        while rounds > 0:
            rounds -= 1
            n, left = self._run(self.protocol.purge(name, limit=BATCH))
            total += int(n)
            if int(left) == 0:
                break
        return total

    # --- cancel ------------------------------------------------------------------------------

    def cancel(self, job_id: str) -> CancelOutcome:
        """Cancel a job: waiting ones at once, an active one at its next lease renewal."""
        if self._partitioned:
            view = self._view_of(job_id)
            if view is None:
                return CancelOutcome(job_id, "missing", None, None)
            return view._cancel(job_id)
        return self._cancel(job_id)

    def _cancel(self, job_id: str) -> CancelOutcome:
        found = self.redis.hget(self.layout.job(job_id), "queue")
        if found is None:
            return CancelOutcome(job_id, "missing", None, None)
        queue = str(found)
        if not queue:
            return CancelOutcome(job_id, "missing", None, None)
        cfg = self.config.queues.get(queue)
        ttl = cfg.result_ttl if cfg is not None else DEFAULT_RESULT_TTL
        verdict, before = self._run(self.protocol.cancel(queue, job_id, ms(ttl)))
        return CancelOutcome(job_id, str(verdict).lower(), str(before) or None, queue)

    # --- health ------------------------------------------------------------------------------

    def health(self, queues: Iterable[str] | None = None) -> Health:
        """Healthy when every selected queue has at least one alive, non-stopping worker."""
        names = self._queues(queues)
        workers = self.workers()
        live = {name: 0 for name in names}
        reasons = []
        for w in workers:
            if w.alive and w.stuck:
                reasons.append(
                    f"worker {w.id} holds {w.holds} job(s) and has made no progress claiming "
                    f"or acknowledging for {w.stuck_for:.0f}s (see its log: Redis refusing?)"
                )
            if w.alive and not w.stopping and not w.stuck:
                for name in w.queues:
                    if name in live:
                        live[name] += 1
        for name, n in live.items():
            if n == 0:
                stale = [
                    w for w in workers if name in w.queues and not (w.alive and not w.stopping)
                ]
                extra = ""
                if stale:
                    newest = min(stale, key=lambda w: w.last_beat_age)
                    what = "stopping" if newest.alive else "stale"
                    extra = (
                        f" ({len(stale)} stale or stopping; newest {what}, last heartbeat "
                        f"{newest.last_beat_age:.0f}s ago)"
                    )
                reasons.append(f"no live worker serves queue {name!r}{extra}")
        return Health(not reasons, reasons, live)


def merge_status(same: list[QueueStatus]) -> QueueStatus:
    """One queue's status in every partition as one: counts add up, the oldest ready job is
    the oldest of any partition; the flow state (pause, limits) is the first partition's."""
    first = same[0]
    ages = [s.oldest_ready_age for s in same if s.oldest_ready_age is not None]
    return QueueStatus(
        queue=first.queue,
        ready=sum(s.ready for s in same),
        scheduled=sum(s.scheduled for s in same),
        retrying=sum(s.retrying for s in same),
        active=sum(s.active for s in same),
        done=sum(s.done for s in same),
        dead=sum(s.dead for s in same),
        failed=sum(s.failed for s in same),
        cancelled=sum(s.cancelled for s in same),
        enqueued=sum(s.enqueued for s in same),
        oldest_ready_age=max(ages) if ages else None,
        throughput_per_min=sum(s.throughput_per_min for s in same),
        flow=first.flow,
    )


def ring_buckets(tput: dict[str, str]) -> dict[int, int]:
    """A queue's finished-jobs ring (its ``tput`` HASH) as {bucket number: jobs finished}; a
    bucket number times TPUT_BUCKET_MS is the bucket's start in server ms."""
    out: dict[int, int] = {}
    for slot in range(TPUT_SLOTS):
        bucket = _int(tput.get(f"b{slot}"), -1)
        if bucket >= 0:
            out[bucket] = _int(tput.get(f"c{slot}"))
    return out


def _worker_info(worker_id: str, beat_ms: int, record: dict[str, str], now_ms: int) -> WorkerInfo:
    interval_ms = _int(record.get("interval_ms"), 0) or None
    age_ms = max(0, now_ms - beat_ms)
    started = _int(record.get("started_at"), 0) or None
    pid = _int(record.get("pid"), 0) or None
    queues = [q for q in record.get("queues", "").split(",") if q]
    holds = _int(record.get("holds"))
    # The loops' stuck times are as of the last beat; the time since counts too.
    stuck_ms = max(_int(record.get("claim_stuck_ms")), _int(record.get("ack_stuck_ms")))
    if stuck_ms:
        stuck_ms += age_ms
    limit_ms = _int(record.get("stuck_limit_ms"))
    return WorkerInfo(
        id=worker_id,
        host=record.get("host") or None,
        pid=pid,
        queues=queues,
        in_flight=_int(record.get("in_flight")),
        started_at=started / 1000 if started else None,
        uptime=max(0, now_ms - started) / 1000 if started else None,
        last_beat=beat_ms / 1000,
        last_beat_age=age_ms / 1000,
        interval=interval_ms / 1000 if interval_ms else None,
        version=record.get("version") or None,
        burst=record.get("burst") == "1",
        stopping=record.get("stopping") == "1",
        # No record (it expired after 3 intervals) means no interval to judge by: stale.
        alive=interval_ms is not None and age_ms <= ALIVE_FACTOR * interval_ms,
        holds=holds,
        stuck_for=stuck_ms / 1000,
        stuck=holds > 0 and limit_ms > 0 and stuck_ms > limit_ms,
    )


def _error_dict(raw: str | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return {"type": None, "message": raw}
    return value if isinstance(value, dict) else {"type": None, "message": str(value)}
