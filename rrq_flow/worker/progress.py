"""Progress of a run: a live display in a terminal, a periodic log line otherwise.

The figures come from Redis, not from one process's tallies, so they are right however many
worker processes (on however many hosts) share the run: per queue, the change since the run
began in the queue's shared counters (done, dead or failed, cancelled, retried), and what is
left (ready + in backoff + active) from the same atomic snapshot the burst drain check uses.
One pipelined round trip per tick, twice a second at most. In a terminal the figures are a
block at the bottom drawn by rich's Live display (rrq_flow.worker.live_display), under the log
lines, never over them.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import coredis
import trio

from rrq_flow.config.model import PipelineConfig
from rrq_flow.connection import open_async_redis
from rrq_flow.flow import FOREVER
from rrq_flow.protocol.keys import KeyLayout
from rrq_flow.protocol.ops import Protocol
from rrq_flow.protocol.partitions import Partitions
from rrq_flow.protocol.scripts import call_async, pipe_server_ms
from rrq_flow.worker.live_display import LiveBlock
from rrq_flow.worker.redis_calls import TRANSIENT

log = logging.getLogger("rrq_flow.progress")

LOG_EVERY = 5.0  # seconds between progress lines without a terminal
COUNTERS = ("done", "dead", "failed", "cancelled", "retried")


@dataclass
class QueueProgress:
    done: int = 0
    dead: int = 0  # dead-lettered or failed
    cancelled: int = 0
    retried: int = 0
    left: int = 0
    paused: str = ""  # '' | 'until resumed' | 'until HH:MM:SS' (a paused queue is not drained)

    @property
    def finished(self) -> int:
        return self.done + self.dead + self.cancelled


class Progress:
    """Polls the pipeline's counters and shows them; ``run`` until :meth:`finish`, which makes
    it refresh once more, so the display left above the summary shows the final figures."""

    def __init__(
        self,
        config: PipelineConfig,
        url: str,
        queues: Sequence[str],
        *,
        live: bool,
        log_every: float = LOG_EVERY,
        out: TextIO | None = None,
    ):
        self.config = config
        self.url = url
        self.queues = list(queues)
        self.live = live
        self.log_every = log_every
        self.out = out or sys.stderr
        self.parts = Partitions(config.pipeline, config.partitions)
        self.now: dict[str, QueueProgress] = {q: QueueProgress() for q in self.queues}
        self._baseline: dict[str, list[int]] | None = None
        self._block: LiveBlock | None = None
        self._started = time.monotonic()
        self._finished = trio.Event()

    def finish(self) -> None:
        """End :meth:`run` after one last refresh (not a cancel: the client's own background
        tasks live in run's scope, and a cancelled connection could not read the last figures)."""
        self._finished.set()

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Take the baseline, report ``started``, then refresh until :meth:`finish`.

        Start it with ``nursery.start`` before the workers, so that the baseline is read before
        any job of this run finishes (if Redis is away then, the first later read is used).
        """
        redis = open_async_redis(self.url, self.config.redis)
        async with redis:
            await self._refresh(redis)
            self._started = time.monotonic()
            if self.live:
                self._block = LiveBlock(self.out)
                self._block.start(self.rows())
            try:
                task_status.started()
                await self._loop(redis)
            finally:
                if self._block is not None:
                    self._block.stop(self.rows())  # the final figures, left on screen
                    self._block = None

    async def _loop(self, redis: coredis.Redis[str]) -> None:
        last_log = time.monotonic()
        interval = 0.5 if self.live else min(1.0, self.log_every)
        while not self._finished.is_set():
            with trio.move_on_after(interval):
                await self._finished.wait()
            if not await self._refresh(redis):
                continue
            if self._block is not None:
                self._block.update(self.rows())
            elif time.monotonic() - last_log >= self.log_every:
                last_log = time.monotonic()
                log.info("progress: %s", " | ".join(self.rows()))

    async def _read(
        self, redis: coredis.Redis[str], layout: KeyLayout, protocol: Protocol
    ) -> tuple[list[list[int]], list[int], list[int], int]:
        """One partition's counters, pause ends, jobs left (ready, retry, active) and clock."""
        drained = protocol.drained(self.queues)
        async with redis.pipeline(transaction=False) as pipe:
            stats = [pipe.hmget(layout.queue(q).stats, list(COUNTERS)) for q in self.queues]
            pauses = [pipe.hget(layout.queue(q).flow, "paused_until") for q in self.queues]
            clock = pipe_server_ms(pipe, layout.meta)
        left = await call_async(redis, drained.script, drained.keys, drained.args)
        counters = [[int(v or 0) for v in await s] for s in stats]
        until = [int(await u or 0) for u in pauses]
        return counters, until, [int(c) for c in left], await clock()

    async def _refresh(self, redis: coredis.Redis[str]) -> bool:
        try:
            with trio.fail_after(self.config.redis.command_timeout):
                reads = [
                    await self._read(redis, layout, protocol)
                    for layout, protocol in zip(
                        self.parts.layouts, self.parts.protocols, strict=True
                    )
                ]
        except TRANSIENT:
            return False
        # Partitions add up; a pause covers every partition, so the first one's tells.
        counters = [
            [sum(col) for col in zip(*per, strict=True)]
            for per in zip(*(r[0] for r in reads), strict=True)
        ]
        left = [sum(col) for col in zip(*(r[2] for r in reads), strict=True)]
        until, now_ms = reads[0][1], reads[0][3]
        if self._baseline is None:
            self._baseline = dict(zip(self.queues, counters, strict=True))
        for i, q in enumerate(self.queues):
            base = self._baseline[q]
            done, dead, failed, cancelled, retried = (
                c - b for c, b in zip(counters[i], base, strict=True)
            )
            self.now[q] = QueueProgress(
                done=done,
                dead=dead + failed,
                cancelled=cancelled,
                retried=retried,
                left=sum(int(c) for c in left[i * 3 : i * 3 + 3]),
                paused=_paused(until[i], now_ms),
            )
        return True

    def rows(self) -> list[str]:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rows = []
        for q in self.queues:
            p = self.now[q]
            rate = p.finished / elapsed
            eta = f"{p.left / rate:,.0f}s" if rate > 0 and p.left else "-"
            rows.append(
                f"{q}: {p.finished}/{p.finished + p.left} done, {rate:,.0f}/s, eta {eta}, "
                f"{p.retried} retried, {p.dead} dead" + (f", PAUSED {p.paused}" if p.paused else "")
            )
        return rows


def _paused(until_ms: int, now_ms: int) -> str:
    if until_ms == FOREVER:
        return "until resumed"
    if until_ms > now_ms:
        return "until " + time.strftime("%H:%M:%S", time.localtime(until_ms / 1000))
    return ""


def progress_for(
    mode: str, config: PipelineConfig, url: str, queues: Sequence[str], *, burst: bool
) -> Progress | None:
    """The progress reporter for ``--progress MODE`` (auto: live on a terminal, burst only)."""
    if mode == "off" or (mode == "auto" and not burst):
        return None
    live = sys.stderr.isatty() if mode == "auto" else mode == "on"
    return Progress(config, url, queues, live=live)
