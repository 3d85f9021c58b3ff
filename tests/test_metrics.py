"""Prometheus metrics: scraped from a real ``rrq-flow run`` (one process, and two processes behind
the supervisor's aggregating endpoint), and the observer hooks in-process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest
import trio
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from rrq_flow.client.sync_client import SyncClient
from rrq_flow.config import load
from rrq_flow.config.model import WorkersConfig
from rrq_flow.metrics import WorkerMetrics
from rrq_flow.worker.worker import Worker
from tests.conftest import make_pipeline, make_queue, run_burst

ROOT = Path(__file__).resolve().parent.parent

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def values(samples: Samples, name: str, key: str) -> dict[str, float]:
    """Sum the samples of ``name`` by the label ``key``."""
    out: dict[str, float] = defaultdict(float)
    for (n, labels), v in samples.items():
        if n == name:
            out[dict(labels)[key]] += v
    return dict(out)


def finished_by(samples: Samples, queue: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (n, labels), v in samples.items():
        d = dict(labels)
        if n == "rrq_flow_jobs_finished_total" and d["queue"] == queue:
            out[d["outcome"]] = v
    return out


@pytest.mark.parametrize("processes", [1, 2])
def test_metrics_endpoint_counts_every_job_of_a_run(
    tmp_path: Path, redis_url: str, processes: int
) -> None:
    port = free_port()
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"""version: 1
pipeline: m{processes}
redis: {{url: "{redis_url}", connect_timeout: 1s, command_timeout: 2s}}
workers:
  processes: {processes}
  metrics_port: {port}
  heartbeat_interval: 500ms
  shutdown_grace_period: 0s
queues:
  ok: {{handler: 'tests.handlers:echo', concurrency: 4}}
  bad: {{handler: 'tests.handlers:always_fail', retry: {{max_attempts: 1}}}}
  slow: {{handler: 'tests.handlers:sleep_for', concurrency: 1}}
"""
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from rrq_flow.cli import run; run()", "run", str(path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with SyncClient(load(path)) as client:
            client.enqueue_many("ok", [[i] for i in range(40)])
            client.enqueue_many("bad", [[] for _ in range(5)])
        deadline = time.monotonic() + 20
        samples: Samples = {}
        while time.monotonic() < deadline:
            try:
                samples = scrape(port)
            except (urllib.error.URLError, ConnectionError):
                samples = {}
            ok, bad = finished_by(samples, "ok"), finished_by(samples, "bad")
            if ok.get("done") == 40 and bad.get("dead") == 5:
                break
            time.sleep(0.1)
        assert finished_by(samples, "ok") == {
            "done": 40, "retried": 0, "dead": 0, "failed": 0, "cancelled": 0,
        }  # fmt: skip
        assert finished_by(samples, "bad") == {
            "done": 0, "retried": 0, "dead": 5, "failed": 0, "cancelled": 0,
        }  # fmt: skip
        counts = values(samples, "rrq_flow_job_duration_seconds_count", "queue")
        assert counts == {"ok": 40, "bad": 5, "slow": 0}
        # Gauges: one series per label set, not one per process, and not summed where every
        # process sees the same Redis: 5 slow jobs, one running per process.
        with SyncClient(load(path)) as client:
            client.enqueue_many("slow", [[30] for _ in range(5)])
        # Sampled every 2 s; on a loaded machine the next sample (and the claims) can come late.
        deadline = time.monotonic() + 60
        while True:
            time.sleep(0.5)
            samples = scrape(port)
            depth = {
                (dict(lb)["queue"], dict(lb)["state"]): v
                for (n, lb), v in samples.items()
                if n == "rrq_flow_queue_jobs"
            }
            in_flight = values(samples, "rrq_flow_jobs_in_flight", "queue")
            busy = in_flight.get("slow") == processes
            settled = busy and depth.get(("slow", "active")) == processes
            if settled or time.monotonic() > deadline:
                break
        assert len(depth) == 3 * 3
        assert depth[("slow", "active")] == processes
        assert depth[("slow", "ready")] == 5 - processes
        assert depth[("ok", "ready")] == 0
        in_flight = values(samples, "rrq_flow_jobs_in_flight", "queue")
        assert in_flight == {"ok": 0, "bad": 0, "slow": processes}
        errors = values(samples, "rrq_flow_redis_errors_total", "pipeline")
        assert errors == {f"m{processes}": 0}
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err


async def test_worker_metrics_hooks_and_gauges_in_process(redis_url: str) -> None:
    name = "mhooks"
    q = make_queue("q", "tests.handlers:fail_until", retry={"max_attempts": 2, "delay": 0.01})
    cfg = make_pipeline(
        redis_url,
        q,
        name=name,
        workers=WorkersConfig(heartbeat_interval=0.5, metrics_port=free_port()),
    )
    with SyncClient(cfg) as client:
        client.enqueue_many("q", [[2] for _ in range(3)])
        worker, code = await run_burst(cfg, serve_metrics=False)
    assert code == 0

    def value(metric: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(metric, {"pipeline": name, **labels})

    assert value("rrq_flow_jobs_finished_total", queue="q", outcome="done") == 3
    assert value("rrq_flow_jobs_finished_total", queue="q", outcome="retried") == 3
    assert value("rrq_flow_job_duration_seconds_count", queue="q") == 6
    metrics = next(o for o in worker.observers if isinstance(o, WorkerMetrics))
    metrics.lease_lost("q")
    metrics.jobs_recovered("q", 4)
    metrics.redis_error()
    assert value("rrq_flow_lease_renewals_failed_total", queue="q") == 1
    assert value("rrq_flow_jobs_recovered_total", queue="q") == 4
    assert value("rrq_flow_redis_errors_total") == 1


async def test_gauges_sample_queue_depth_and_in_flight(redis_url: str) -> None:
    name = "mgauge"
    cfg = make_pipeline(
        redis_url,
        make_queue("q", "tests.handlers:sleep_for", concurrency=2),
        name=name,
        workers=WorkersConfig(heartbeat_interval=0.5, metrics_port=free_port()),
    )
    worker = Worker(cfg, url=redis_url, handle_signals=False, serve_metrics=False)
    with SyncClient(cfg) as client:
        client.enqueue_many("q", [[30] for _ in range(5)])
        client.enqueue("q", 1, defer=3600)  # scheduled: not part of the depth
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            with trio.fail_after(5):
                while sum(len(r.running) for r in worker.runners) < 2:
                    await trio.sleep(0.01)
            metrics = next(o for o in worker.observers if isinstance(o, WorkerMetrics))
            await metrics.sample()
            labels = {"pipeline": name, "queue": "q"}
            depth = {
                state: REGISTRY.get_sample_value("rrq_flow_queue_jobs", {**labels, "state": state})
                for state in ("ready", "retrying", "active")
            }
            assert depth == {"ready": 3, "retrying": 0, "active": 2}
            assert REGISTRY.get_sample_value("rrq_flow_jobs_in_flight", labels) == 2
            worker.request_stop("test over")
            worker.hard_stop.set()


def test_supervisor_endpoint_forgets_gauges_of_dead_workers(tmp_path: Path) -> None:
    """A worker that died (and was restarted) must not keep adding its last in-flight value;
    its counters stay, since they are cumulative."""
    from rrq_flow.metrics import _multiprocess_registry

    code = (
        "from prometheus_client import Counter, Gauge\n"
        "Gauge('g', 'g', multiprocess_mode='livesum').set(7)\n"
        "Counter('c', 'c').inc(3)\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    registry = _multiprocess_registry(tmp_path)
    assert registry.get_sample_value("c_total") == 3
    assert registry.get_sample_value("g") is None
