"""An hour of throughput per queue, built from the finished-jobs ring Redis keeps.

The ring (``q:<queue>:tput``) holds only the last 80 s, in 10 s buckets. The dashboard reads it
every few seconds and keeps every bucket it has seen for an hour, so its chart covers the hour
before now — or the time since the dashboard started, if that is shorter (what finished before
that, Redis no longer knows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rrq_flow.client.admin import TPUT_BUCKET_MS

HOUR = 3600.0
MINUTE_BUCKETS = 60_000 // TPUT_BUCKET_MS  # ring buckets per chart bar


@dataclass
class ThroughputHistory:
    """Ring buckets seen, per queue: {queue: {bucket number: jobs finished}}."""

    buckets: dict[str, dict[int, int]] = field(default_factory=dict)
    since: float | None = None  # server time of the first reading
    now: float = 0.0

    def add(self, now: float, rings: dict[str, dict[int, int]]) -> None:
        """Merge one reading of every queue's ring (a bucket's count only grows while it is
        current, so the largest value seen is the right one)."""
        self.now = now
        if self.since is None:
            self.since = now - 80.0  # the ring already covers the 80 s before the first read
        oldest = int((now - HOUR) * 1000) // TPUT_BUCKET_MS
        for queue, ring in rings.items():
            seen = self.buckets.setdefault(queue, {})
            for bucket, count in ring.items():
                if bucket >= oldest and count >= seen.get(bucket, 0):
                    seen[bucket] = count
            for bucket in [b for b in seen if b < oldest]:
                del seen[bucket]

    def per_minute(self, queue: str | None = None) -> list[int]:
        """60 counts, one per minute, oldest first, ending with the current minute; of one
        queue, or of all queues added up."""
        end = int(self.now * 1000) // TPUT_BUCKET_MS
        out = [0] * 60
        queues = [queue] if queue is not None else list(self.buckets)
        for name in queues:
            for bucket, count in self.buckets.get(name, {}).items():
                minute = 59 - (end - bucket) // MINUTE_BUCKETS
                if 0 <= minute < 60:
                    out[minute] += count
        return out

    @property
    def covered(self) -> float:
        """Seconds of the last hour the chart really covers."""
        if self.since is None:
            return 0.0
        return min(HOUR, max(0.0, self.now - self.since))
