"""One worker process: serves the pipeline's queues until stopped, drained (burst) or broken.

Task tree (everything lives inside ``Worker.run``; nothing outlives it)::

    run
    ├── signals            first SIGTERM/SIGINT: drain; second: cancel in-flight jobs now
    ├── heartbeat          record + index entry; notices data loss when all slots are busy
    ├── burst monitor      (--burst) stops once every selected queue is drained
    ├── shutdown           grace period, then cancel and release, then a last resort
    └── queues
        └── QueueRunner.serve, one per queue (claim / run / ack / renew / reap)
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import coredis
import trio
import trio_util

from rrq_flow._version import __version__
from rrq_flow.acl import denial_message, missing_commands_async
from rrq_flow.client.partition_check import check_partitions_async
from rrq_flow.config.model import PipelineConfig
from rrq_flow.connection import open_async_redis
from rrq_flow.connection_errors import (
    RedisAccessDenied,
    stop_reason,
    unusable,
    user_of,
)
from rrq_flow.errors import (
    ConfigError,
    DataLossDetected,
    Problem,
    RedisSettingsError,
    RedisUnavailable,
)
from rrq_flow.failover import MasterWatch
from rrq_flow.logs import worker_id_var
from rrq_flow.protocol.keys import KeyLayout
from rrq_flow.protocol.ops import Protocol, ms
from rrq_flow.protocol.partitions import Partitions
from rrq_flow.protocol.scripts import preload_async, server_seconds
from rrq_flow.worker.handoff import Handoff
from rrq_flow.worker.observer import WorkerObserver
from rrq_flow.worker.partition_slots import SharedSlots
from rrq_flow.worker.queue_runner import QueueRunner
from rrq_flow.worker.redis_calls import TRANSIENT, RedisCaller
from rrq_flow.worker.scheduler import run_schedules
from rrq_flow.worker.signals import stop_signals
from rrq_flow.worker.summary import RunStats

log = logging.getLogger("rrq_flow.worker")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_REDIS = 0, 1, 2, 3
EXIT_INTERNAL = 70  # an internal task died (a bug): held jobs released, the process exits
SHUTDOWN_MARGIN = 2.0  # seconds past the grace period before the last resort


def new_worker_id() -> str:
    """host:pid:random — unique across hosts and restarts, readable in logs."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def load_handlers(
    config: PipelineConfig, queues: Iterable[str]
) -> tuple[dict[str, Callable[..., Any]], dict[str, tuple[type[BaseException], ...]]]:
    """Import every selected queue's handler and fatal error classes, or raise ConfigError."""
    from rrq_flow.config.imports import ImportProblem, import_exception_class, import_handler

    search = [config.source.parent] if config.source is not None else []
    search.append(Path.cwd())
    handlers: dict[str, Callable[..., Any]] = {}
    fatal: dict[str, tuple[type[BaseException], ...]] = {}
    problems: list[Problem] = []
    file = str(config.source or "<pipeline>")
    for name in queues:
        cfg = config.queue(name)
        try:
            handlers[name] = import_handler(cfg.handler, search_paths=search)
        except ImportProblem as exc:
            problems.append(Problem(file, 0, 0, f"queues.{name}.handler", str(exc)))
        types = []
        for spec in cfg.retry.fatal_errors:
            try:
                types.append(import_exception_class(spec, search_paths=search))
            except ImportProblem as exc:
                problems.append(Problem(file, 0, 0, f"queues.{name}.retry.fatal_errors", str(exc)))
        fatal[name] = tuple(types)
    if problems:
        raise ConfigError(problems)
    return handlers, fatal


class Worker:
    """Serves ``queues`` (default: all) of a pipeline. ``await run()`` returns the exit code."""

    def __init__(
        self,
        config: PipelineConfig,
        *,
        url: str,
        queues: Sequence[str] | None = None,
        burst: bool = False,
        max_jobs: int | None = None,
        max_duration: float | None = None,
        handle_signals: bool = True,
        handlers: dict[str, Callable[..., Any]] | None = None,
        worker_id: str | None = None,
        observers: Sequence[WorkerObserver] = (),
        serve_metrics: bool = True,
    ):
        self.config = config
        self.url = url
        self.queue_names = list(queues or config.queues)
        for name in self.queue_names:
            config.queue(name)  # raises UnknownQueueError early
        self.burst = burst
        self.max_jobs = max_jobs
        self.max_duration = max_duration
        self.handle_signals = handle_signals
        self.worker_id = worker_id or new_worker_id()
        if handlers is None:
            handlers, self.fatal_types = load_handlers(config, self.queue_names)
        else:
            self.fatal_types = {name: () for name in self.queue_names}
        self.handlers = handlers
        # The pipeline's own keys (heartbeats, schedules, meta) and, per partition, the jobs'
        # (one partition, the same layout, unless ``partitions`` > 1: protocol/partitions.py).
        self.layout = KeyLayout(config.pipeline)
        self.protocol = Protocol(self.layout, config.keep_args_queues)
        self.parts = Partitions(config.pipeline, config.partitions, config.keep_args_queues)
        self.generations: list[str] = []  # per partition: its meta's generation at start
        self.handoff = Handoff(config)
        self.stats = RunStats()
        for name in self.queue_names:
            self.stats.tally(name)
        self.job_logger = logging.getLogger("rrq_flow.job")
        self.generation = ""
        self.stopping = trio.Event()
        self.hard_stop = trio.Event()
        self.stop_reason = ""
        self.claimed_total = 0
        self.observers: list[WorkerObserver] = list(observers)
        self.serve_metrics = serve_metrics
        self.wall_time = 0.0
        self.runners: list[QueueRunner] = []
        self._redis: coredis.Redis[str] | None = None
        self._caller: RedisCaller | None = None
        self._queues_done = trio.Event()
        self._clock_offset = 0.0  # server clock minus the trio clock, seconds
        self.server_offset = 0.0  # server clock minus this host's wall clock, seconds

    # --- shared with the queue runners -------------------------------------------------------

    @property
    def redis(self) -> coredis.Redis[str]:
        assert self._redis is not None
        return self._redis

    @property
    def caller(self) -> RedisCaller:
        assert self._caller is not None
        return self._caller

    def server_time_at(self, trio_time: float) -> float:
        return trio_time + self._clock_offset

    def data_loss_message(self, found: str) -> str:
        what = f"generation {found!r}" if found else "no pipeline data at all"
        return (
            f"Redis lost the data of pipeline {self.config.pipeline!r}: this worker started with "
            f"generation {self.generation!r} but Redis now has {what} (flushed, or restarted "
            "without persistence). Queued and running jobs are gone; stopping so that this is "
            "noticed. Enable AOF persistence (appendonly yes) to survive restarts."
        )

    def request_stop(self, reason: str) -> None:
        if not self.stopping.is_set():
            self.stop_reason = reason
            log.info("stopping: %s", reason)
            self.stopping.set()

    def notify(self, event: str, *args: Any) -> None:
        """Tell every observer (progress, metrics) about ``event`` (a WorkerObserver method)."""
        for observer in self.observers:
            getattr(observer, event)(*args)

    # --- running -----------------------------------------------------------------------------

    async def run(self) -> int:
        worker_id_var.set(self.worker_id)
        started = time.monotonic()
        code = EXIT_OK
        try:
            await self._run()
        except RedisSettingsError as exc:
            log.error("%s", exc)
            self.stop_reason = "unusable redis settings"
            code = EXIT_CONFIG
        except (RedisUnavailable, DataLossDetected, BaseExceptionGroup) as exc:
            # coredis runs its pool in a task group, so our errors may arrive wrapped.
            found = _unwrap(exc, (RedisUnavailable, DataLossDetected, RedisSettingsError))
            if isinstance(found, RedisSettingsError):  # e.g. partitions changed, from _start
                log.error("%s", found)
                self.stop_reason = "unusable redis settings"
                self.wall_time = time.monotonic() - started
                return EXIT_CONFIG
            if found is None:
                code = self._internal_error(exc)
                self.wall_time = time.monotonic() - started
                return code
            log.error("%s", found)
            self.stop_reason = (
                "data loss detected" if isinstance(found, DataLossDetected) else stop_reason(found)
            )
            code = EXIT_REDIS
        except Exception as exc:
            code = self._internal_error(exc)
        self.wall_time = time.monotonic() - started
        if code == EXIT_OK and self.burst and self.stats.any_dead:
            code = EXIT_FAILED
        return code

    async def _run(self) -> None:
        # The receiver stays installed until the worker is done, cleanup included, and a
        # signal arriving as it closes is dropped (see rrq_flow.worker.signals): a second
        # SIGTERM while the worker finishes up used to kill it (exit -15).
        with self._signal_receiver() as signals:
            await self._serve(signals)

    def _signal_receiver(self) -> contextlib.AbstractContextManager[AsyncIterator[int] | None]:
        if not self.handle_signals:
            return contextlib.nullcontext(None)
        return stop_signals(lambda: self.stop_reason.endswith(" received"))

    def _internal_error(self, exc: BaseException) -> int:
        """A task of the worker died of an exception (a bug): its jobs were released on the
        way out (see _serve); say so loudly and exit non-zero, never serve on half-dead."""
        log.critical(
            "internal error, the worker stops (its jobs were given back): %s: %s",
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        self.stop_reason = "internal error"
        return EXIT_INTERNAL

    async def _release_held(self) -> None:
        """Give back every job this worker holds (no attempt used), one call per queue."""
        for runner in self.runners:
            held = list(runner.held)
            if not held:
                continue
            call = runner.protocol.release(runner.name, self.worker_id, runner.result_ttl_ms, held)
            try:
                await self.caller.once(call)
            except TRANSIENT:
                continue  # Redis is away: the leases run out and the reaper brings them back
            runner.held.clear()
            log.warning("released %d job(s) of queue %s on the way out", len(held), runner.name)

    async def _serve(self, signals: AsyncIterator[int] | None) -> None:
        self._redis = open_async_redis(self.url, self.config.redis)
        async with self._redis:
            self._caller = RedisCaller(
                self._redis,
                self.config.redis.command_timeout,
                on_error=lambda: self.notify("redis_error"),
                durability=self.config.redis.durability,
            )
            await self._start()
            self.runners = []
            for n in self.queue_names:
                cfg = self.config.queue(n)
                slots = SharedSlots(cfg.concurrency, self.parts.count)
                for part in range(len(self.parts.layouts)):
                    self.runners.append(QueueRunner(self, cfg, self.handlers[n], part, slots))
            log.info(
                "worker started: pipeline %s, queues %s%s",
                self.config.pipeline,
                ", ".join(self.queue_names),
                " (burst)" if self.burst else "",
            )
            try:
                async with trio.open_nursery() as nursery:
                    if signals is not None:
                        nursery.start_soon(self._signals, signals)
                    nursery.start_soon(self._heartbeat)
                    if self.config.redis.sentinel is not None:
                        nursery.start_soon(self._watch_master)
                    nursery.start_soon(self._shutdown)
                    if self.burst:
                        nursery.start_soon(self._burst_monitor)
                    elif self.config.schedules:
                        nursery.start_soon(run_schedules, self)
                    if self.max_duration is not None:
                        nursery.start_soon(self._duration_limit, self.max_duration)
                    if self.config.workers.metrics_port is not None:
                        self._start_metrics(nursery)
                    async with trio.open_nursery() as queues:
                        for runner in self.runners:
                            queues.start_soon(runner.serve)
                    self._queues_done.set()
                    nursery.cancel_scope.cancel()
            except BaseException:
                # A task died (Redis data lost, or a bug): every task is gone now, so nothing
                # holds a lease any longer. Give the jobs back rather than wait for the reaper.
                with trio.CancelScope(shield=True), trio.move_on_after(self.caller.timeout):
                    await self._release_held()
                raise
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await self._leave()

    async def _start(self) -> None:
        """Check Redis answers, learn (or set) the pipeline's generation, load the scripts."""
        try:
            with trio.fail_after(self.config.redis.connect_timeout + 1):
                await self.redis.ping()
                await check_partitions_async(self.redis, self.config)
                await self.redis.hsetnx(self.layout.meta, "generation", secrets.token_hex(16))
                await self.redis.hsetnx(self.layout.meta, "created_at", str(int(time.time())))
                self.generation = str(await self.redis.hget(self.layout.meta, "generation"))
                self.generations = [
                    await self._partition_generation(lay) for lay in self.parts.layouts
                ]
                await preload_async(self.redis)
                server_now = await server_seconds(self.redis, self.layout.meta)
                missing = await missing_commands_async(self.redis, self.config.pipeline)
        except (*TRANSIENT, coredis.exceptions.RedisError, ssl.SSLError) as exc:  # type: ignore[misc]
            raise unusable(exc, self.url) from None
        except BaseExceptionGroup as group:
            # coredis runs its connection pool in a task group: a refused connection or a
            # failed handshake (TLS, AUTH) arrives wrapped.
            if group.subgroup((*TRANSIENT, coredis.exceptions.RedisError, ssl.SSLError)) is None:
                raise
            raise unusable(group, self.url) from None
        if missing:
            user = user_of(self.url)
            raise RedisAccessDenied(denial_message(user, missing, self.config.pipeline))
        # Deadlines handed to handlers are on the server's clock, like every time in Redis.
        self._clock_offset = server_now - trio.current_time()
        self.server_offset = server_now - time.time()

    async def _partition_generation(self, layout: KeyLayout) -> str:
        """A partition's generation (set now if it has none); the home one for one partition."""
        if layout == self.layout:
            return self.generation
        await self.redis.hsetnx(layout.meta, "generation", secrets.token_hex(16))
        return str(await self.redis.hget(layout.meta, "generation"))

    async def drained_counts(self) -> list[int]:
        """``drained.lua``'s counts of the selected queues (ready, retry, active per queue),
        added up over the partitions; each partition's counts are one atomic snapshot."""
        total = [0] * (3 * len(self.queue_names))
        for protocol in self.parts.protocols:
            counts = await self.caller.once(protocol.drained(self.queue_names))
            total = [a + int(b) for a, b in zip(total, counts, strict=True)]
        return total

    async def _watch_master(self) -> None:
        """Under Sentinel: move this worker's connections when the sentinels name another
        master (a failover leaves the old one writable for a while; see rrq_flow.failover)."""
        watch = MasterWatch()
        while True:
            await trio.sleep(watch.interval)
            with trio.move_on_after(self.config.redis.connect_timeout * 2):
                await watch.check_async(self.redis)

    async def _signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not self.stopping.is_set():
                self.request_stop(f"{name} received")
                log.warning(
                    "%s: draining in-flight jobs for up to %gs (send it again to stop now)",
                    name,
                    self.config.workers.shutdown_grace_period,
                )
            else:
                log.warning("%s again: cancelling in-flight jobs now", name)
                self.hard_stop.set()

    async def _shutdown(self) -> None:
        """After a stop request: let jobs finish within the grace period, then cancel them (they
        are released, attempts not used); if something still holds on, the last resort."""
        await self.stopping.wait()
        grace = self.config.workers.shutdown_grace_period
        with trio.move_on_after(grace):
            async with trio_util.move_on_when(self.hard_stop.wait):
                await self._queues_done.wait()
        if self._queues_done.is_set():
            return
        running = sum(len(r.running) for r in self.runners)
        if running:
            log.warning("cancelling %d job(s) still running; they go back to their queue", running)
        for runner in self.runners:
            runner.cancel_all("shutdown")
        with trio.move_on_after(SHUTDOWN_MARGIN):
            await self._queues_done.wait()
        if not self._queues_done.is_set():
            await self._last_resort()

    async def _last_resort(self) -> None:
        """A handler ignored cancellation: release what is still held and exit the process."""
        stuck = [(r, rj) for r in self.runners for rj in r.running.values()]
        log.error(
            "%d handler(s) ignored cancellation; releasing their jobs and exiting", len(stuck)
        )
        for runner, rj in stuck:
            rj.settled = True
            call = runner.protocol.release(
                runner.name, self.worker_id, runner.result_ttl_ms, [(rj.job.id, rj.job.epoch)]
            )
            # If Redis does not answer, the lease runs out and the reaper brings the job back.
            with contextlib.suppress(*TRANSIENT):
                await self.caller.once(call)
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            for runner in self.runners:
                await runner.drain_acks()
            await self._leave()
        logging.shutdown()
        sys.stdout.flush()
        os._exit(EXIT_FAILED if self.burst and self.stats.any_dead else EXIT_OK)

    def _start_metrics(self, nursery: trio.Nursery) -> None:
        try:
            from rrq_flow.metrics import WorkerMetrics
        except ImportError as exc:
            log.warning(
                "workers.metrics_port is set but metrics are unavailable (%s): "
                "pip install 'rrq-flow[metrics]'",
                exc,
            )
            return
        metrics = WorkerMetrics(self)
        self.observers.append(metrics)
        nursery.start_soon(metrics.run)

    async def _duration_limit(self, seconds: float) -> None:
        await trio.sleep(seconds)
        self.request_stop(f"max duration {seconds:g}s reached")

    async def _burst_monitor(self) -> None:
        """Stop once every selected queue has nothing ready, active or waiting to retry —
        checked in one atomic snapshot so a hand-off between stages is never missed."""
        delay = 0.01
        while True:
            await trio.sleep(delay)
            if not all(r.locally_idle() for r in self.runners):
                delay = 0.01
                continue
            try:
                # Partition by partition: a job's children stay in its partition, so a
                # partition once drained stays drained (producers aside), and each snapshot
                # sees every hand-off inside its partition.
                counts = await self.drained_counts()
            except TRANSIENT:
                continue
            if not any(counts):
                self.request_stop("drained")
                return
            delay = min(delay * 2, 0.25)

    async def _heartbeat(self) -> None:
        interval = self.config.workers.heartbeat_interval
        started = int(time.time() * 1000)
        host = socket.gethostname()
        while True:
            fields: dict[str, str | int | float] = {
                "id": self.worker_id,
                "host": host,
                "pid": os.getpid(),
                "queues": ",".join(self.queue_names),
                "in_flight": sum(len(r.running) for r in self.runners),
                "started_at": started,
                "interval_ms": ms(interval),
                "version": __version__,
                "burst": int(self.burst),
                "stopping": int(self.stopping.is_set()),
                **self._progress_fields(),
            }
            call = self.protocol.heartbeat(
                self.worker_id, ms(interval * 3), ms(interval * 20), fields
            )
            try:
                _, generation = await self.caller.once(call)
            except TRANSIENT:
                pass
            else:
                if generation != self.generation:
                    raise DataLossDetected(self.data_loss_message(str(generation)))
            await trio.sleep(interval)

    def _progress_fields(self) -> dict[str, int]:
        """For `health`: how long (ms, as of this beat) the claim and acknowledgement loops have
        been stuck in one call, how many jobs this worker holds, and the limit to judge by."""
        now = trio.current_time()
        claim = ack = 0.0
        for runner in self.runners:
            c, a = runner.stuck_for(now)
            claim, ack = max(claim, c), max(ack, a)
        return {
            "claim_stuck_ms": ms(claim),
            "ack_stuck_ms": ms(ack),
            "holds": sum(len(r.held) for r in self.runners),
            "stuck_limit_ms": ms(min((r.cfg.lock_extension for r in self.runners), default=0)),
        }

    async def _leave(self) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete([self.layout.worker(self.worker_id)])
                pipe.zrem(self.layout.workers, [self.worker_id])
        except TRANSIENT:
            pass


def _unwrap(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of one of ``kinds`` in ``exc`` or, recursively, in its group."""
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _unwrap(inner, kinds)
            if found is not None:
                return found
    return None
