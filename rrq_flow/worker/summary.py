"""Counting what a run did, per queue, and the end-of-run summary."""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field
from typing import Any


@dataclass
class QueueTally:
    done: int = 0
    retried: int = 0
    dead: int = 0  # dead-lettered or failed (dead_letter: false)
    cancelled: int = 0
    released: int = 0  # interrupted by shutdown, given back without using an attempt
    lost: int = 0  # lease lost mid-run: outcome dropped, the job ran (or runs) elsewhere
    stale: int = 0  # acknowledgements the fence rejected
    # Seconds, of settled attempts: all of them up to DURATIONS_KEPT, then a uniform sample of
    # that many (reservoir sampling), so a worker's memory does not grow with the jobs it ran.
    durations: list[float] = field(default_factory=list)
    timed: int = 0  # settled attempts offered to ``durations``

    def add_duration(self, seconds: float) -> None:
        self.timed += 1
        if len(self.durations) < DURATIONS_KEPT:
            self.durations.append(seconds)
            return
        i = random.randrange(self.timed)
        if i < DURATIONS_KEPT:
            self.durations[i] = seconds

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("durations", "timed")}
        d["p50_ms"] = percentile_ms(self.durations, 50)
        d["p95_ms"] = percentile_ms(self.durations, 95)
        return d


DURATIONS_KEPT = 10_000  # durations kept per queue for the summary's p50 / p95


def percentile_ms(values: list[float], pct: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0] * 1000, 2)
    return round(statistics.quantiles(values, n=100, method="inclusive")[pct - 1] * 1000, 2)


@dataclass
class RunStats:
    queues: dict[str, QueueTally] = field(default_factory=dict)

    def tally(self, queue: str) -> QueueTally:
        t = self.queues.get(queue)
        if t is None:
            t = self.queues[queue] = QueueTally()
        return t

    @property
    def finished(self) -> int:
        return sum(t.done + t.dead + t.cancelled for t in self.queues.values())

    @property
    def any_dead(self) -> bool:
        return any(t.dead for t in self.queues.values())

    def merge(self, other: RunStats) -> None:
        for name, t in other.queues.items():
            mine = self.tally(name)
            for k, v in t.__dict__.items():
                if k == "durations":
                    mine.durations.extend(v)
                    if len(mine.durations) > DURATIONS_KEPT:  # a sample (workers weigh alike)
                        mine.durations = random.sample(mine.durations, DURATIONS_KEPT)
                else:
                    setattr(mine, k, getattr(mine, k) + v)

    def to_json(self) -> dict[str, Any]:
        """Lossless form (durations included) that a supervisor merges across workers."""
        return {name: dict(t.__dict__) for name, t in self.queues.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunStats:
        stats = cls()
        for name, fields in data.items():
            stats.queues[name] = QueueTally(**fields)
        return stats


def render_summary(stats: RunStats, wall: float, reason: str) -> str:
    """The table printed at the end of a run."""
    header = f"{'queue':<20} {'done':>8} {'retried':>8} {'dead':>6} {'p50 ms':>9} {'p95 ms':>9}"
    lines = [f"rrq-flow run finished ({reason})", header, "-" * len(header)]
    for name, t in stats.queues.items():
        p50, p95 = percentile_ms(t.durations, 50), percentile_ms(t.durations, 95)
        extra = []
        if t.cancelled:
            extra.append(f"{t.cancelled} cancelled")
        if t.released:
            extra.append(f"{t.released} released")
        if t.lost:
            extra.append(f"{t.lost} lease lost")
        lines.append(
            f"{name:<20} {t.done:>8} {t.retried:>8} {t.dead:>6} "
            f"{_fmt(p50):>9} {_fmt(p95):>9}" + (f"  ({', '.join(extra)})" if extra else "")
        )
    rate = stats.finished / wall if wall > 0 else 0.0
    lines.append(f"{stats.finished} jobs finished in {wall:.2f}s ({rate:,.0f} jobs/s)")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
