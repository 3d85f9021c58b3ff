"""The Redis key layout of a pipeline.

Every key starts with ``rrq:{<pipeline>}:``; the braces are a Redis Cluster hash tag, so all keys
of one pipeline share a slot and every script may touch any of them. A pipeline with
``partitions: N`` (N > 1) keeps its jobs under N hash tags ``rrq:{<pipeline>.<k>}:`` instead
(``KeyLayout(pipeline, "<k>")``, sometimes ``"<k>.<j>"``: rrq_flow/protocol/partitions.py),
each a complete layout of its own; its pipeline-wide records (workers, schedules, the
partition count) stay under ``rrq:{<pipeline>}:``. Per-job keys are
``<type>:<id>`` (``job:``, ``args:``, ``errors:``, ``children:``), so ids never collide with each
other's keys.
The Lua side builds the same names in ``lua/fragments/common.lua``. See docs/protocol.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """The keys of one queue (stage)."""

    ready: str  # ZSET job id -> ready time ms (queued and producer-scheduled jobs)
    retry: str  # ZSET job id -> retry due time ms (jobs in backoff)
    active: str  # ZSET job id -> lease deadline ms (claimed jobs)
    dead: str  # ZSET job id -> time dead-lettered ms
    expanding: str  # ZSET parent id -> time of its expansion's last progress ms (fan-out)
    wake: str  # LIST of wake-up tokens an idle worker blocks on
    stats: str  # HASH of counters: enqueued done dead failed retried released reaped ...
    tput: str  # HASH ring of finished-job counts per 10 s bucket
    reaper: str  # STRING guard: at most one reap per interval across workers
    flow: str  # HASH flow control state: paused_until, tat (rate limit), cap_wait


@dataclass(frozen=True, slots=True)
class KeyLayout:
    pipeline: str
    # None: the pipeline's own hash tag (every key when ``partitions`` is 1); else a
    # partition's tag suffix, ``<k>`` or ``<k>.<j>`` (rrq_flow.protocol.partitions).
    part: str | None = None

    @property
    def tag(self) -> str:
        """The hash tag: ``<pipeline>`` or ``<pipeline>.<part>`` (pipeline names hold no dot)."""
        return self.pipeline if self.part is None else f"{self.pipeline}.{self.part}"

    @property
    def prefix(self) -> str:
        return f"rrq:{{{self.tag}}}:"

    @property
    def meta(self) -> str:
        """HASH: generation (random id written at first use), created_at."""
        return self.prefix + "meta"

    @property
    def schedules(self) -> str:
        """HASH per cron schedule: <name>:cursor (server ms handled up to), <name>:last (tick)."""
        return self.prefix + "schedules"

    @property
    def workers(self) -> str:
        """ZSET worker id -> last heartbeat ms: lists live workers without SCAN."""
        return self.prefix + "workers"

    def worker(self, worker_id: str) -> str:
        """HASH of one worker's heartbeat record (expires after a few missed beats)."""
        return f"{self.prefix}worker:{worker_id}"

    def worker_wake(self, worker_id: str, queue: str) -> str:
        """LIST a worker pushes to itself to end its own blocking wait on ``queue`` (stop)."""
        return f"{self.prefix}worker:{worker_id}:wake:{queue}"

    # Per-job keys: the type comes before the id, so no job id can name another job's key.

    def job(self, job_id: str) -> str:
        """HASH: the job record."""
        return f"{self.prefix}job:{job_id}"

    def job_errors(self, job_id: str) -> str:
        """LIST of the job's attempt errors, newest first, bounded."""
        return f"{self.prefix}errors:{job_id}"

    def job_args(self, job_id: str) -> str:
        """STRING: the job's arguments, ``<bytes of args>:<args JSON><kwargs JSON>`` (see
        :func:`rrq_flow.protocol.ops.split_args`), when longer than 64 bytes: kept beside the
        record so that the record stays in Redis' compact listpack encoding (shorter ones are
        in the record's ``packed_args`` field), and deleted when the job is done (unless the
        queue has ``keep_args``)."""
        return f"{self.prefix}args:{job_id}"

    def job_result(self, job_id: str) -> str:
        """STRING: a done job's result when it is longer than 64 bytes (the record's ``result``
        field is then absent), so that the record stays in the compact listpack encoding."""
        return f"{self.prefix}result:{job_id}"

    def job_children(self, job_id: str) -> str:
        """LIST of the ids of the children a job created, in creation order (the child index)."""
        return f"{self.prefix}children:{job_id}"

    @property
    def runs(self) -> str:
        """ZSET run id -> started ms (the newest 1000 runs): lists runs without SCAN."""
        return self.prefix + "runs"

    def run(self, run_id: str) -> str:
        """HASH of one batch run's counts (fragments/runs.lua); expires after the run ends."""
        return f"{self.prefix}run:{run_id}"

    def run_jobs(self, run_id: str, queue: str) -> str:
        """LIST of the run's job ids in ``queue``, in creation order (paged by ``results``)."""
        return f"{self.prefix}run:{run_id}:jobs:{queue}"

    def group(self, group_id: str) -> str:
        """HASH of an open fan-in group (fragments/groups.lua); gone once its join exists."""
        return f"{self.prefix}group:{group_id}"

    def fanout(self, job_id: str, epoch: int) -> str:
        """LIST of a big fan-out's staged children (attempt ``epoch``), consumed by expand.lua."""
        return f"{self.prefix}fanout:{epoch}:{job_id}"

    def unique(self, key: str) -> str:
        return f"{self.prefix}unique:{key}"

    def queue(self, name: str) -> QueueKeys:
        return _queue_keys(self.prefix, name)


# Every claim, acknowledgement and enqueue asks for its queue's keys: made once per queue (ten
# strings and their record took ~5 µs a call, 0.8 µs from the cache). Bounded, so that the
# names a long-lived admin process is asked about cannot grow it for ever.
@lru_cache(maxsize=1024)
def _queue_keys(prefix: str, name: str) -> QueueKeys:
    base = f"{prefix}q:{name}"
    return QueueKeys(
        ready=base,
        retry=base + ":retry",
        active=base + ":active",
        dead=base + ":dead",
        expanding=base + ":expanding",
        wake=base + ":wake",
        stats=base + ":stats",
        tput=base + ":tput",
        reaper=base + ":reaper",
        flow=base + ":flow",
    )
