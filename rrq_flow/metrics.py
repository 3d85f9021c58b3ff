"""Prometheus metrics of a worker (``workers.metrics_port``), with prometheus-client.

prometheus-client is an optional extra (``pip install 'rrq-flow[metrics]'``); the worker imports
this module only when a metrics port is set, and reports an ImportError as a warning.

One process (``workers.processes: 1``): the worker serves ``/metrics`` itself. Several processes:
the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` for its workers, which then only write their
values there (``--no-metrics-server``), and serves one endpoint that adds them up
(:func:`serve_multiprocess`). prometheus-client decides between in-memory and file-backed values
when a metric object is created, so the metric objects are created lazily, by the first
WorkerMetrics, after the environment is final.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import prometheus_client
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import multiprocess as _multiprocess

from rrq_flow.worker.observer import WorkerObserver
from rrq_flow.worker.redis_calls import TRANSIENT

if TYPE_CHECKING:
    from rrq_flow.worker.worker import Worker

log = logging.getLogger("rrq_flow.metrics")

multiprocess: Any = _multiprocess  # untyped functions

SAMPLE_EVERY = 2.0  # seconds between samples of the gauges (one Redis call per sample)
ADDR_ENV = "RRQ_FLOW_METRICS_ADDR"  # overrides workers.metrics_host (default 127.0.0.1)
DEFAULT_ADDR = "127.0.0.1"  # the endpoint has no authentication: loopback unless told
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

OUTCOMES = {
    "OK": "done",
    "RETRY": "retried",
    "DEAD": "dead",
    "FAILED": "failed",
    "CANCELLED": "cancelled",
}
DEPTH_STATES = ("ready", "retrying", "active")  # the drained snapshot's three counts
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)


@dataclass(frozen=True)
class _Metrics:
    finished: Counter
    duration: Histogram
    depth: Gauge
    in_flight: Gauge
    lease_lost: Counter
    recovered: Counter
    redis_errors: Counter


_metrics: _Metrics | None = None
_lock = threading.Lock()


def _get_metrics() -> _Metrics:
    """The process's metric objects, created on first use (see the module docstring)."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = _Metrics(
                finished=Counter(
                    "rrq_flow_jobs_finished",
                    "Attempts settled, by queue and outcome (done, retried, dead, failed, "
                    "cancelled); all but 'retried' end the job",
                    ["pipeline", "queue", "outcome"],
                ),
                duration=Histogram(
                    "rrq_flow_job_duration_seconds",
                    "How long settled attempts ran, by queue",
                    ["pipeline", "queue"],
                    buckets=DURATION_BUCKETS,
                ),
                depth=Gauge(
                    "rrq_flow_queue_jobs",
                    "Jobs in a queue by state (ready now, waiting to retry, active), "
                    f"sampled from Redis every {SAMPLE_EVERY:g}s",
                    ["pipeline", "queue", "state"],
                    # Every worker samples the same Redis: take the latest, never the sum.
                    multiprocess_mode="livemostrecent",
                ),
                in_flight=Gauge(
                    "rrq_flow_jobs_in_flight",
                    "Jobs running in this worker (summed over worker processes), by queue",
                    ["pipeline", "queue"],
                    multiprocess_mode="livesum",
                ),
                lease_lost=Counter(
                    "rrq_flow_lease_renewals_failed",
                    "Running jobs whose lease renewal failed (fenced or past the hard deadline)",
                    ["pipeline", "queue"],
                ),
                recovered=Counter(
                    "rrq_flow_jobs_recovered",
                    "Jobs brought back by the reaper after their lease expired",
                    ["pipeline", "queue"],
                ),
                redis_errors=Counter(
                    "rrq_flow_redis_errors",
                    "Redis calls that failed (connection, timeout) and were retried",
                    ["pipeline"],
                ),
            )
        return _metrics


def metrics_addr(host: str | None = None) -> str:
    """Where the endpoint listens: $RRQ_FLOW_METRICS_ADDR, else ``workers.metrics_host``."""
    return os.environ.get(ADDR_ENV) or host or DEFAULT_ADDR


class WorkerMetrics(WorkerObserver):
    """Counts a worker's outcomes and samples its queues; serves ``/metrics`` when the worker
    is the only process (``worker.serve_metrics``)."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.pipeline = worker.config.pipeline
        self.metrics = _get_metrics()
        m, p = self.metrics, self.pipeline
        # Every series exists from the start, at 0: rate() and alerts need no warm-up.
        for q in worker.queue_names:
            for outcome in OUTCOMES.values():
                m.finished.labels(p, q, outcome)
            m.duration.labels(p, q)
            m.lease_lost.labels(p, q)
            m.recovered.labels(p, q)
            m.in_flight.labels(p, q).set(0)
        m.redis_errors.labels(p)

    # --- observer hooks (on the worker's trio thread; cheap, never blocking) ---------------

    def job_finished(self, queue: str, verdict: str, duration: float) -> None:
        outcome = OUTCOMES.get(verdict)
        if outcome is None:
            return
        self.metrics.finished.labels(self.pipeline, queue, outcome).inc()
        self.metrics.duration.labels(self.pipeline, queue).observe(max(duration, 0.0))

    def lease_lost(self, queue: str) -> None:
        self.metrics.lease_lost.labels(self.pipeline, queue).inc()

    def jobs_recovered(self, queue: str, count: int) -> None:
        self.metrics.recovered.labels(self.pipeline, queue).inc(count)

    def redis_error(self) -> None:
        self.metrics.redis_errors.labels(self.pipeline).inc()

    # --- running -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the endpoint (if this worker should), then sample the gauges until cancelled."""
        stop: Callable[[], None] | None = None
        if self.worker.serve_metrics:
            workers = self.worker.config.workers
            stop = _serve(workers.metrics_port, workers.metrics_host)
        try:
            while True:
                await self.sample()
                await trio.sleep(SAMPLE_EVERY)
        finally:
            if stop is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(stop)

    async def sample(self) -> None:
        """In-flight jobs from the runners; queue depths from one Redis snapshot."""
        m, p, w = self.metrics, self.pipeline, self.worker
        in_flight = dict.fromkeys(w.queue_names, 0)
        for runner in w.runners:  # one per queue and partition
            in_flight[runner.name] += len(runner.running)
        for name, n in in_flight.items():
            m.in_flight.labels(p, name).set(n)
        try:
            counts = await w.drained_counts()
        except TRANSIENT:
            return  # counted through redis_error; the next sample tries again
        for i, q in enumerate(w.queue_names):
            for j, state in enumerate(DEPTH_STATES):
                m.depth.labels(p, q, state).set(int(counts[i * 3 + j]))


def _serve(port: int | None, host: str | None = None) -> Callable[[], None] | None:
    """Start ``/metrics`` for this process alone (or, if PROMETHEUS_MULTIPROC_DIR is set by
    someone else, for every process writing there)."""
    if port is None:
        return None
    registry: Any = prometheus_client.REGISTRY
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        registry = _multiprocess_registry(Path(directory))
    return _start_http(port, registry, host)


def _start_http(port: int, registry: Any, host: str | None = None) -> Callable[[], None] | None:
    addr = metrics_addr(host)
    try:
        server, thread = prometheus_client.start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        # Metrics must never stop the work: say so loudly and carry on without them.
        log.error("cannot serve metrics on %s:%d (%s); running without them", addr, port, exc)
        return None
    log.info("metrics on http://%s:%d/metrics", addr, port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)

    return stop


_PID_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")


class _LiveProcessCollector:
    """MultiProcessCollector that first forgets the live gauges of processes that are gone
    (a worker that died and was restarted), which prometheus-client otherwise keeps adding."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.inner = multiprocess.MultiProcessCollector(None, path=str(directory))

    def collect(self) -> Any:
        for path in self.directory.glob("gauge_live*.db"):
            match = _PID_FILE.match(path.name)
            if match and not _pid_alive(int(match.group(1))):
                with contextlib.suppress(OSError):
                    multiprocess.mark_process_dead(int(match.group(1)), str(self.directory))
        return self.inner.collect()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _multiprocess_registry(directory: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(_LiveProcessCollector(directory))
    return registry


def serve_multiprocess(port: int, directory: Path, host: str | None = None) -> Callable[[], None]:
    """Serve ``/metrics`` in the supervisor, summing what the worker processes write to
    ``directory`` (their PROMETHEUS_MULTIPROC_DIR). Returns the function that stops it."""
    stop = _start_http(port, _multiprocess_registry(directory), host)
    return stop or (lambda: None)
