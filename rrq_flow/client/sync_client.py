"""SyncClient: the producer and admin API for synchronous code (web apps, scripts), on redis-py."""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from rrq_flow.client._core import DEFAULT_BATCH, ClientCore, JobSpec, in_order
from rrq_flow.client.batch_runs import (
    WALK_FIELDS,
    DescendantWalk,
    RunInfo,
    RunReader,
    final_stages,
)
from rrq_flow.client.held_connection import HeldConnection
from rrq_flow.client.jobinfo import JobInfo
from rrq_flow.client.partition_check import check_partitions_sync
from rrq_flow.config.model import PipelineConfig
from rrq_flow.connection import open_sync_redis
from rrq_flow.durability import check_enqueue, wait_args
from rrq_flow.errors import JobFailed, JobNotFound, RunNotFound
from rrq_flow.failover import MasterWatch
from rrq_flow.protocol.keys import KeyLayout
from rrq_flow.protocol.ops import Call, parse_enqueue
from rrq_flow.protocol.scripts import (
    ENQUEUE_SCRIPTS,
    FunctionsUnavailable,
    call_sync,
    evalsha_command,
    fcall_sync,
    preload_sync,
)


class SyncClient:
    """Enqueue jobs and read them back. Thread-safe (redis-py pools its connections).

    Use as a context manager, or call :meth:`close`. With no ``redis.url`` in the pipeline it
    starts (or reuses) the embedded Redis for as long as the client is open.
    """

    def __init__(self, config: PipelineConfig, *, url: str | None = None, fail_fast: bool = False):
        self._core = ClientCore(config)
        self.config = config
        self._stack = contextlib.ExitStack()
        if url is None:
            from rrq_flow.embedded import redis_url_for

            url = self._stack.enter_context(redis_url_for(config))
        self.url = url
        # redis-py retries a refused connection three times with backoff by default, which a
        # producer in a web app wants and a command-line tool does not (4 s to say "down").
        extra = {"retry": Retry(NoBackoff(), 0)} if fail_fast else {}
        self.redis: redis.Redis = open_sync_redis(url, config.redis, **extra)
        self._scripts_loaded = False
        # One script call goes by FCALL (docs/protocol.md, "Functions") until the server or the
        # user turns functions down; a Cluster client calls by EVALSHA (it would have to load
        # the library on each master).
        self._functions = not isinstance(self.redis, redis.RedisCluster)
        self._partitions_checked = False
        self._master_watch = MasterWatch()
        # One-at-a-time script calls skip the pool's checkout (client/held_connection.py).
        self._held = HeldConnection(self.redis)

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._held.close()
        self.redis.close()
        self._stack.close()

    def _run(self, call: Call) -> Any:
        self._master_watch.check_sync(self.redis)
        if self._functions:
            try:
                return fcall_sync(self.redis, call.script, call.keys, call.args, self._held.call)
            except FunctionsUnavailable:
                self._functions = False
        return call_sync(self.redis, call.script, call.keys, call.args)

    # --- producing ---------------------------------------------------------------------------

    def enqueue(
        self,
        queue: str,
        *args: Any,
        job_id: str | None = None,
        unique_key: str | None = None,
        defer: float | str | dt.timedelta | None = None,
        at: float | dt.datetime | None = None,
        priority: int = 0,
        run: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Enqueue one job and return its id.

        With ``job_id`` the same id twice never creates a second job; with ``unique_key`` an
        unfinished job holding that key is returned instead of a new one; ``run`` puts it and every
        job descending from it into that batch run (see :meth:`wait_run`). Raises
        UnknownQueueError, PayloadError (non-JSON, too large) or InvalidJobId (empty, over 256
        characters, whitespace or control characters) before writing anything.
        Among a queue's ready jobs the highest ``priority`` is claimed first, FIFO within one.
        """
        spec = JobSpec(args, kwargs, job_id, unique_key, defer, at, priority, run)
        job = self._core.build_job(queue, spec)
        call = self._core.enqueue_call(queue, job)
        self._check_partitions()
        if self.config.redis.durability is not None:
            return parse_enqueue(self._send_enqueues([call])[0], call)[0][0]
        return parse_enqueue(self._run(call), call)[0][0]

    def enqueue_many(
        self,
        queue: str,
        jobs: Iterable[JobSpec | Sequence[Any]],
        *,
        batch_size: int = DEFAULT_BATCH,
        run: str | None = None,
    ) -> list[str]:
        """Enqueue many jobs (each a JobSpec or a sequence of positional args), pipelined in
        batches of ``batch_size`` per script call. Every job is validated before any is sent.
        ``run``: the batch-run id of every job whose JobSpec names none."""
        routed = self._core.prepare(queue, jobs, batch_size, run)
        if not routed:
            return []
        self._check_partitions()
        return in_order(routed, self._send_enqueues([r.call for r in routed]))

    def _check_partitions(self) -> None:
        """Once per client: refuse a changed ``partitions`` while the pipeline holds jobs."""
        if not self._partitions_checked:
            self._master_watch.check_sync(self.redis)
            check_partitions_sync(self.redis, self.config)
            self._partitions_checked = True

    def _locate(self, job_id: str) -> KeyLayout | None:
        """The layout (partition) holding the job's record; None when there is none."""
        order = self._core.parts.lookup_order(job_id)
        if len(order) == 1:
            return order[0]
        for layout in order:
            if self.redis.exists(layout.job(job_id)):
                return layout
        return None

    def _send_enqueues(self, calls: Sequence[Call]) -> list[Any]:
        """Enqueue calls in one pipeline (scripts loaded first); with ``redis.durability``
        followed by WAIT on the same connection (raises DurabilityError when short)."""
        if not self._scripts_loaded:
            preload_sync(self.redis, ENQUEUE_SCRIPTS)
            self._scripts_loaded = True
        self._master_watch.check_sync(self.redis)
        try:
            return self._pipeline(calls)
        except redis.exceptions.NoScriptError:
            # The server lost its script cache; enqueue is idempotent.
            preload_sync(self.redis, ENQUEUE_SCRIPTS)
            return self._pipeline(calls)

    def _pipeline(self, calls: Sequence[Call]) -> list[Any]:
        durability = self.config.redis.durability
        commands = [evalsha_command(c.script, c.keys, c.args) for c in calls]
        if durability is not None:
            commands.append(["WAIT", *wait_args(durability)])
        # Back to back on the held connection; a Cluster or Sentinel client by its pipeline.
        replies = self._held.call_many(commands)
        if replies is None:
            pipe = self.redis.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)  # type: ignore[no-untyped-call]
            replies = list(pipe.execute())
        if durability is not None:
            acked = replies.pop()
            ids = [
                job_id
                for call, reply in zip(calls, replies, strict=True)
                for job_id, _ in parse_enqueue(reply, call)
            ]
            check_enqueue(acked, durability, ids)
        return replies

    # --- reading -----------------------------------------------------------------------------

    def job(self, job_id: str) -> JobInfo:
        """The job's current record; raises JobNotFound."""
        layout = self._locate(job_id)
        if layout is None:
            raise JobNotFound(job_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(layout.job(job_id))
        pipe.lrange(layout.job_errors(job_id), 0, -1)
        pipe.get(layout.job_args(job_id))
        pipe.get(layout.job_result(job_id))
        record, errors, args_blob, long_result = pipe.execute()
        if not record:
            raise JobNotFound(job_id)
        return JobInfo.from_record(
            record, errors, job_id=job_id, args_blob=args_blob, long_result=long_result
        )

    def children(self, job_id: str, start: int = 0, stop: int = -1) -> list[str]:
        """Ids of the children the job created, in order (``start``/``stop`` as in LRANGE), read
        from its child index; empty once the parent's record expired."""
        layout = self._locate(job_id)
        if layout is None:
            return []
        key = layout.job_children(job_id)
        return [str(i) for i in self.redis.lrange(key, start, stop)]

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        *,
        poll: float = 0.05,
        descendants: bool = False,
    ) -> Any:
        """Block until the job finishes; return its result.

        Raises JobFailed when it ends dead, failed or cancelled, TimeoutError after ``timeout``
        seconds, JobNotFound if there is no such job. With ``descendants=True`` it waits for the
        job and every job descending from it (children, fan-out items, the joins of the groups
        they open) and returns their counts by terminal state, e.g. ``{"done": 12, "dead": 1}``.
        """
        if descendants:
            return self._wait_descendants(job_id, timeout, poll)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        while True:
            info = self.job(job_id)
            if info.status == "done":
                return info.result
            if info.finished:
                raise JobFailed(job_id, info.status, info.error)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {info.status} after {timeout}s")
            time.sleep(delay)
            delay = min(delay * 2, poll)

    def _wait_descendants(self, job_id: str, timeout: float | None, poll: float) -> dict[str, int]:
        walk = DescendantWalk(job_id)
        # A job's descendants (children, groups, joins) live in its partition.
        layout = self._locate(job_id)
        if layout is None:
            raise JobNotFound(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        while not walk.finished:
            ids = walk.batch()
            pipe = self.redis.pipeline(transaction=False)
            for i in ids:
                pipe.hmget(layout.job(i), *WALK_FIELDS)
                pipe.lrange(layout.job_children(i), 0, -1)
            answers = pipe.execute()
            replies, children = answers[0::2], answers[1::2]
            open_groups = [
                g
                for j, g in walk.missing_joins(ids, replies)
                if self.redis.exists(layout.group(g), layout.job(j))
            ]
            if walk.feed(ids, replies, children, open_groups):
                delay = 0.005
                continue
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"job {job_id}: {len(walk.frontier)} job(s) still unfinished after {timeout}s"
                )
            time.sleep(delay)
            delay = min(delay * 2, poll)
        return walk.counts

    # --- batch runs --------------------------------------------------------------------------

    def run(self, run_id: str) -> RunInfo:
        """A batch run's counts by queue and state; raises RunNotFound."""
        info = RunReader(self.redis, self._core.parts.layouts).run(run_id)
        if info is None:
            raise RunNotFound(run_id)
        return info

    def runs(self, limit: int = 20) -> list[RunInfo]:
        """The most recent runs (newest first) whose records have not expired."""
        return RunReader(self.redis, self._core.parts.layouts).recent(limit)

    def results(self, run_id: str, queue: str | None = None) -> Iterator[dict[str, Any]]:
        """Stream the run's jobs in ``queue`` (default: every final stage, a queue without
        ``next``) as ``{"id", "queue", "status", "result" | "error"}``, in creation order,
        holding one page of ids at a time. Raises RunNotFound, UnknownQueueError."""
        self.run(run_id)
        if queue is not None:
            self.config.queue(queue)
            queues = [queue]
        else:
            queues = final_stages({n: q.next for n, q in self.config.queues.items()})
        return RunReader(self.redis, self._core.parts.layouts).results(run_id, queues)

    def wait_run(self, run_id: str, timeout: float | None = None, *, poll: float = 0.2) -> RunInfo:
        """Block until every job of the run (descendants included) is terminal; return its
        counts. Raises RunNotFound, TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.01
        while True:
            info = self.run(run_id)
            if info.complete:
                return info
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"run {run_id}: {info.pending} job(s) unfinished after {timeout}s"
                )
            time.sleep(delay)
            delay = min(delay * 2, poll)
