"""Hooks through which progress displays and metrics watch a worker, without the worker knowing
them. Implementations subclass WorkerObserver and override what they need; calls happen on the
worker's trio thread and must not block."""

from __future__ import annotations


class WorkerObserver:
    def job_finished(self, queue: str, verdict: str, duration: float) -> None:
        """An attempt was settled: verdict OK | RETRY | DEAD | FAILED | CANCELLED."""

    def lease_lost(self, queue: str) -> None:
        """A running job's lease renewal failed (STALE/DEADLINE, or none for a whole lease)."""

    def jobs_recovered(self, queue: str, count: int) -> None:
        """The reaper brought back ``count`` jobs whose lease had expired."""

    def redis_error(self) -> None:
        """A Redis call failed (connection, timeout); the worker retries it."""
