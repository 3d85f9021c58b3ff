"""Client: the async producer and admin API on coredis (works under trio and asyncio)."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

import anyio
import coredis

from rrq_flow.client._core import DEFAULT_BATCH, ClientCore, JobSpec, RoutedCall, in_order
from rrq_flow.client.batch_runs import (
    WALK_FIELDS,
    DescendantWalk,
    RunInfo,
    merge_run_records,
    parse_run,
)
from rrq_flow.client.jobinfo import JobInfo
from rrq_flow.client.lean_connection import LeanConnections, lean_connections_for
from rrq_flow.client.partition_check import check_partitions_async
from rrq_flow.config.model import PipelineConfig
from rrq_flow.connection import open_async_redis
from rrq_flow.durability import check_enqueue, wait_args
from rrq_flow.errors import JobFailed, JobNotFound, RunNotFound
from rrq_flow.failover import MasterWatch
from rrq_flow.protocol.keys import KeyLayout
from rrq_flow.protocol.ops import Call, parse_enqueue
from rrq_flow.protocol.scripts import (
    ENQUEUE_SCRIPTS,
    FunctionsUnavailable,
    call_async,
    fcall_async,
    preload_async,
)


class Client:
    """Enqueue jobs and read them back, from async code. Use as ``async with``.

    With no ``redis.url`` in the pipeline, entering it starts (or reuses) the embedded Redis.
    """

    def __init__(self, config: PipelineConfig, *, url: str | None = None):
        self._core = ClientCore(config)
        self.config = config
        self._url = url
        self._stack = contextlib.AsyncExitStack()
        self._redis: coredis.Redis[str] | None = None
        self._scripts_loaded = False
        self._partitions_checked = False
        self._master_watch = MasterWatch()
        self._functions = False
        self._lean: LeanConnections | None = None

    @property
    def redis(self) -> coredis.Redis[str]:
        if self._redis is None:
            raise RuntimeError("use the client as `async with client:` first")
        return self._redis

    async def __aenter__(self) -> Client:
        url = self._url
        if url is None:
            from rrq_flow.embedded import redis_url_for

            url = self._stack.enter_context(redis_url_for(self.config))
        self._redis = open_async_redis(url, self.config.redis)
        # Script calls go by FCALL until the server or the user turns functions down; a Cluster
        # client calls by EVALSHA (as SyncClient does: the library would be loaded per master).
        self._functions = not isinstance(self._redis, coredis.RedisCluster)
        await self._stack.enter_async_context(self._redis)
        self._master_watch = MasterWatch()
        # Script calls go on lean connections of the client's own where the URL names one
        # server (a few at most); through coredis otherwise (client/lean_connection.py).
        self._lean = lean_connections_for(url, self.config.redis)
        if self._lean is not None:
            self._stack.push_async_callback(self._lean.aclose)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
        self._redis = self._lean = None

    async def _run(self, call: Call) -> Any:
        await self._master_watch.check_async(self.redis)
        if self._functions:
            lean = self._lean.free() if self._lean is not None else None
            send = lean.call if lean is not None else None
            try:
                return await fcall_async(self.redis, call.script, call.keys, call.args, send)
            except FunctionsUnavailable:
                self._functions = False
        return await call_async(self.redis, call.script, call.keys, call.args)

    async def enqueue(
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
        """Enqueue one job and return its id (see SyncClient.enqueue for the rules)."""
        job = self._core.build_job(
            queue, JobSpec(args, kwargs, job_id, unique_key, defer, at, priority, run)
        )
        call = self._core.enqueue_call(queue, job)
        await self._check_partitions()
        if self.config.redis.durability is not None:
            return parse_enqueue((await self._durable([call]))[0], call)[0][0]
        return parse_enqueue(await self._run(call), call)[0][0]

    async def enqueue_many(
        self,
        queue: str,
        jobs: Iterable[JobSpec | Sequence[Any]],
        *,
        batch_size: int = DEFAULT_BATCH,
        run: str | None = None,
    ) -> list[str]:
        """Enqueue many jobs, one script call per batch; all validated before any is sent."""
        routed: list[RoutedCall] = self._core.prepare(queue, jobs, batch_size, run)
        if routed:
            await self._check_partitions()
        replies = []
        for r in routed:
            if self.config.redis.durability is not None:
                replies.append((await self._durable([r.call]))[0])
            else:
                replies.append(await self._run(r.call))
        return in_order(routed, replies)

    async def _check_partitions(self) -> None:
        """Once per client: refuse a changed ``partitions`` while the pipeline holds jobs."""
        if not self._partitions_checked:
            await self._master_watch.check_async(self.redis)
            await check_partitions_async(self.redis, self.config)
            self._partitions_checked = True

    async def _locate(self, job_id: str) -> KeyLayout | None:
        """The layout (partition) holding the job's record; None when there is none."""
        order = self._core.parts.lookup_order(job_id)
        if len(order) == 1:
            return order[0]
        for layout in order:
            if await self.redis.exists([layout.job(job_id)]):
                return layout
        return None

    async def _durable(self, calls: Sequence[Call]) -> list[Any]:
        """Enqueue calls then WAIT, in one pipeline (one connection, as WAIT needs); raises
        DurabilityError when fewer replicas than ``redis.durability`` acknowledged in time."""
        durability = self.config.redis.durability
        assert durability is not None
        if not self._scripts_loaded:
            await preload_async(self.redis, ENQUEUE_SCRIPTS)
            self._scripts_loaded = True
        await self._master_watch.check_async(self.redis)
        async with self.redis.pipeline(transaction=False) as pipe:
            pending = [pipe.evalsha(c.script.sha, keys=c.keys, args=c.args) for c in calls]
            waited = pipe.wait(*wait_args(durability))
        replies: list[Any] = [await p for p in pending]
        ids = [
            job_id
            for call, reply in zip(calls, replies, strict=True)
            for job_id, _ in parse_enqueue(reply, call)
        ]
        check_enqueue(await waited, durability, ids)
        return replies

    async def job(self, job_id: str) -> JobInfo:
        layout = await self._locate(job_id)
        if layout is None:
            raise JobNotFound(job_id)
        record = await self.redis.hgetall(layout.job(job_id))
        if not record:
            raise JobNotFound(job_id)
        errors = await self.redis.lrange(layout.job_errors(job_id), 0, -1)
        args_blob = (  # short arguments are in the record: no round trip for args:<id>
            None if "packed_args" in record else await self.redis.get(layout.job_args(job_id))
        )
        long_result = await self.redis.get(layout.job_result(job_id))
        return JobInfo.from_record(
            dict(record),
            list(errors),
            job_id=job_id,
            args_blob=args_blob and str(args_blob),
            long_result=long_result and str(long_result),
        )

    async def children(self, job_id: str, start: int = 0, stop: int = -1) -> list[str]:
        """Ids of the children the job created (see SyncClient.children)."""
        layout = await self._locate(job_id)
        if layout is None:
            return []
        return list(await self.redis.lrange(layout.job_children(job_id), start, stop))

    async def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        *,
        poll: float = 0.05,
        descendants: bool = False,
    ) -> Any:
        """Wait until the job finishes and return its result (raises like SyncClient.wait);
        ``descendants=True`` waits for everything descending from it too and returns the counts
        by terminal state."""
        if descendants:
            return await self._wait_descendants(job_id, timeout, poll)
        with anyio.fail_after(timeout) if timeout is not None else contextlib.nullcontext():
            delay = 0.005
            while True:
                info = await self.job(job_id)
                if info.status == "done":
                    return info.result
                if info.finished:
                    raise JobFailed(job_id, info.status, info.error)
                await anyio.sleep(delay)
                delay = min(delay * 2, poll)
        raise AssertionError("unreachable")

    async def _wait_descendants(
        self, job_id: str, timeout: float | None, poll: float
    ) -> dict[str, int]:
        walk = DescendantWalk(job_id)
        # A job's descendants (children, groups, joins) live in its partition.
        layout = await self._locate(job_id)
        if layout is None:
            raise JobNotFound(job_id)
        with anyio.fail_after(timeout) if timeout is not None else contextlib.nullcontext():
            delay = 0.005
            while not walk.finished:
                ids = walk.batch()
                async with self.redis.pipeline(transaction=False) as pipe:
                    pending = [pipe.hmget(layout.job(i), WALK_FIELDS) for i in ids]
                    lists = [pipe.lrange(layout.job_children(i), 0, -1) for i in ids]
                replies = [list(await r) for r in pending]
                children = [list(await c) for c in lists]
                open_groups = [
                    g
                    for j, g in walk.missing_joins(ids, replies)
                    if await self.redis.exists([layout.group(g), layout.job(j)])
                ]
                if walk.feed(ids, replies, children, open_groups):
                    delay = 0.005
                    continue
                await anyio.sleep(delay)
                delay = min(delay * 2, poll)
        return walk.counts

    async def run(self, run_id: str) -> RunInfo:
        """A batch run's counts by queue and state; raises RunNotFound."""
        records = [
            dict(await self.redis.hgetall(lay.run(run_id))) for lay in self._core.parts.layouts
        ]
        info = parse_run(run_id, merge_run_records(records))
        if info is None:
            raise RunNotFound(run_id)
        return info

    async def wait_run(
        self, run_id: str, timeout: float | None = None, *, poll: float = 0.2
    ) -> RunInfo:
        """Wait until every job of the run is terminal and return its counts (raises like
        SyncClient.wait_run; the timeout raises TimeoutError)."""
        with anyio.fail_after(timeout) if timeout is not None else contextlib.nullcontext():
            delay = 0.01
            while True:
                info = await self.run(run_id)
                if info.complete:
                    return info
                await anyio.sleep(delay)
                delay = min(delay * 2, poll)
