"""Progress of a run: a live display in a terminal, a periodic log line otherwise.

Counts come from the worker's own tallies (done, retried, dead) and, for "of total" and the ETA,
from one cheap Redis snapshot of what is left (the burst drain check), taken twice a second.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any

import trio

from rrq_flow.worker.observer import WorkerObserver
from rrq_flow.worker.redis_calls import TRANSIENT

if TYPE_CHECKING:
    from rrq_flow.worker.worker import Worker

log = logging.getLogger("rrq_flow.progress")

LOG_EVERY = 5.0  # seconds between progress lines without a terminal


class Progress(WorkerObserver):
    def __init__(self, queues: list[str], live: bool):
        self.queues = queues
        self.live = live
        self.left: dict[str, int] = {q: 0 for q in queues}
        self._lines_drawn = 0
        self._started = time.monotonic()

    async def run(self, worker: Worker) -> None:
        last_log = time.monotonic()
        while True:
            await trio.sleep(0.5 if self.live else 1.0)
            try:
                counts = await worker.caller.once(worker.protocol.drained(self.queues))
            except TRANSIENT:
                continue
            for i, q in enumerate(self.queues):
                self.left[q] = sum(int(c) for c in counts[i * 3 : i * 3 + 3])
            if self.live:
                self._draw(worker)
            elif time.monotonic() - last_log >= LOG_EVERY:
                last_log = time.monotonic()
                log.info("progress: %s", " | ".join(self._rows(worker)))

    def _rows(self, worker: Worker) -> list[str]:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rows = []
        for q in self.queues:
            t = worker.stats.tally(q)
            finished = t.done + t.dead + t.cancelled
            total = finished + self.left[q]
            rate = finished / elapsed
            eta = f"{self.left[q] / rate:,.0f}s" if rate > 0 and self.left[q] else "-"
            rows.append(
                f"{q}: {finished}/{total} done, {rate:,.0f}/s, eta {eta}, "
                f"{t.retried} retried, {t.dead} dead"
            )
        return rows

    def _draw(self, worker: Worker) -> None:
        out = sys.stderr
        if self._lines_drawn:
            out.write(f"\x1b[{self._lines_drawn}F")  # back to the first line drawn
        rows = self._rows(worker)
        for row in rows:
            out.write("\x1b[2K" + row + "\n")
        self._lines_drawn = len(rows)
        out.flush()

    def close(self) -> None:
        """Leave the last display on screen (the summary follows it)."""


def progress_for(
    mode: str, config: Any, url: str, queues: list[str], *, burst: bool
) -> Progress | None:
    """The progress reporter for ``--progress MODE`` (auto: live on a terminal, burst only)."""
    if mode == "off" or (mode == "auto" and not burst):
        return None
    live = sys.stderr.isatty() if mode == "auto" else mode == "on"
    return Progress(queues, live=live)
