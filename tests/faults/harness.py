"""The fault-injection harness: real redis-server and worker processes, real signals.

A scenario builds a :class:`FaultRun` (its own redis-server, pipeline file, history directory
and seeded ``random.Random``), starts workers with :meth:`FaultRun.start_worker`, runs a
:class:`Producer` that logs every enqueue as ok / failed / unknown, injects faults (recorded in
``run.faults`` with their time window, so the checker knows when a lease could legitimately
have run out), heals, waits for the live workers to drain and hands everything to
:func:`tests.faults.checker.check`.

Sizes come from the environment so the same suite runs small in CI and large by hand:
``RRQ_FAULT_JOBS`` (jobs per scenario, default 200), ``RRQ_FAULT_SEEDS`` (a count N for seeds
1..N, or a comma-separated list; default 1) and ``RRQ_FAULT_REPORT`` (a file to append each
scenario's figures to, as JSON lines).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from rrq_flow.client._core import JobSpec
from rrq_flow.client.sync_client import SyncClient
from rrq_flow.config import load
from rrq_flow.config.model import PipelineConfig
from rrq_flow.connection import open_sync_redis
from rrq_flow.errors import DurabilityError
from rrq_flow.protocol.keys import KeyLayout
from rrq_flow.redis_server import RedisServerProcess, free_port, start_redis_server
from tests.faults.probe import HISTORY_ENV

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = "faults"
QUEUE = "probe"
LAYOUT = KeyLayout(PIPELINE)
KEYS = LAYOUT.queue(QUEUE)


# --- sizes ----------------------------------------------------------------------------------


def fault_jobs() -> int:
    return max(10, int(os.environ.get("RRQ_FAULT_JOBS", "200")))


def fault_seeds() -> list[int]:
    raw = os.environ.get("RRQ_FAULT_SEEDS", "1").strip()
    if "," in raw:
        return [int(s) for s in raw.split(",") if s.strip()]
    return list(range(1, max(1, int(raw)) + 1))


def scenario_timeout(base: float = 120.0) -> float:
    """pytest-timeout budget for one scenario, grown with the job count."""
    return base + fault_jobs() * 0.02


# --- processes ------------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc/*/stat; no procps needed)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == pid:
            out.append(int(entry))
    return sorted(out)


def descendants_of(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children_of(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@dataclass
class Proc:
    """A process started by the harness (its own session), with its output in files."""

    name: str
    popen: subprocess.Popen[bytes]
    out: Path
    err: Path
    started: float = field(default_factory=time.time)
    killed_at: float | None = None  # when the harness sent it SIGKILL

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signum)

    def kill(self) -> None:
        self.killed_at = time.time()
        self.signal(signal.SIGKILL)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stdout(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def stderr(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""


class Processes:
    """Every process a test starts; :meth:`cleanup` kills whatever is left, descendants too."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []
        self.redis: list[RedisServerProcess] = []
        self.extra_pids: set[int] = set()
        self.on_cleanup: list[Callable[[], None]] = []  # e.g. stop a producer thread

    def spawn(self, name: str, cmd: Sequence[str], logdir: Path, env: dict[str, str]) -> Proc:
        n = sum(1 for p in self.procs if p.name.startswith(name))
        out, err = logdir / f"{name}-{n}.out", logdir / f"{name}-{n}.log"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            popen = subprocess.Popen(
                list(cmd),
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fo,
                stderr=fe,
                start_new_session=True,
            )
        proc = Proc(f"{name}-{n}", popen, out, err)
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for stop in self.on_cleanup:
            stop()
        pids = set(self.extra_pids)
        for proc in self.procs:
            if proc.alive():
                pids.update(descendants_of(proc.pid))
        for pid in pids:
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            if proc.alive():
                proc.signal(signal.SIGCONT)
                proc.signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(10)
        for server in self.redis:
            with contextlib.suppress(ProcessLookupError):
                server.process.send_signal(signal.SIGCONT)
            server.kill()


# --- redis ----------------------------------------------------------------------------------


class RedisNode:
    """One redis-server on a fixed port and data directory, restartable."""

    def __init__(
        self,
        procs: Processes,
        data_dir: Path,
        *,
        appendonly: bool,
        fsync: str,
        port: int | None = None,
        extra: Sequence[str] = (),
    ):
        self.procs = procs
        self.data_dir = data_dir
        self.port = port or free_port()
        self.appendonly = appendonly
        self.fsync = fsync
        self.extra = list(extra)  # more redis-server arguments (replication, cluster...)
        self.server: RedisServerProcess | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.server is not None
        return self.server.pid

    def start(self) -> None:
        for attempt in range(50):
            try:
                self.server = start_redis_server(
                    self.data_dir,
                    port=self.port,
                    appendonly=self.appendonly,
                    extra_args=["--appendfsync", self.fsync, *self.extra],
                    new_session=True,
                )
                break
            except Exception:
                if attempt == 49:
                    raise
                time.sleep(0.1)  # the port may linger for a moment after a kill
        assert self.server is not None
        self.procs.redis.append(self.server)

    def stop(self) -> None:
        assert self.server is not None
        self.server.stop()

    def kill(self) -> None:
        assert self.server is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.server.pid, signal.SIGCONT)  # a frozen server dies too
        self.server.kill()

    def alive(self) -> bool:
        return self.server is not None and self.server.alive()

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def client(self, **kw: Any) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            decode_responses=True,
            socket_timeout=5,
            socket_connect_timeout=2,
            **kw,
        )


# --- the pipeline ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    timeout: float = 3.0
    lock_extension: float = 1.0
    max_attempts: int = 3
    retry_delay_ms: int = 50
    processes: int = 1
    grace: float = 2.0
    heartbeat: float = 0.5
    concurrency: int = 8
    max_stalls: int = 3

    @property
    def reap_interval(self) -> float:
        return min(max(self.lock_extension / 4, 0.05), 5.0)


def pipeline_yaml(url: str, s: Settings, *, persistence: str = "aof", redis_extra: str = "") -> str:
    """The scenario's pipeline file; ``redis_extra`` adds settings to ``redis:`` (Sentinel...)."""
    redis = f'url: "{url}", connect_timeout: 1s, command_timeout: 2s, persistence: {persistence}'
    return f"""version: 1
pipeline: {PIPELINE}
redis: {{{redis}{redis_extra}}}
defaults:
  timeout: {s.timeout}s
  lock_extension: {s.lock_extension}s
  max_stalls: {s.max_stalls}
  retry: {{max_attempts: {s.max_attempts}, delay: {s.retry_delay_ms}ms, jitter: false}}
workers:
  processes: {s.processes}
  shutdown_grace_period: {s.grace}s
  heartbeat_interval: {s.heartbeat}s
queues:
  {QUEUE}: {{handler: "tests.faults.probe:probe", concurrency: {s.concurrency}}}
"""


# --- jobs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    id: str
    kwargs: dict[str, Any]

    def expected(self, max_attempts: int) -> tuple[str, str | None]:
        """The terminal (status, dead_reason) this payload must end in, faults aside."""
        if self.kwargs.get("crash"):
            return "dead", "stalled"
        if self.kwargs.get("fail_until", 0) > max_attempts:
            return "dead", "out of attempts"
        if self.kwargs.get("hang_until", 0) > max_attempts:
            return "dead", "out of attempts"
        return "done", None


def mean_duration(jobs: int, slots: int, active_seconds: float = 4.0) -> float:
    """Job duration that keeps ``slots`` busy for about ``active_seconds`` at any size."""
    return min(max(active_seconds * slots / jobs, 0.002), 0.25)


def make_jobs(
    rng: random.Random,
    n: int,
    *,
    seed: int,
    mean: float,
    fail_ratio: float = 0.06,
    dead_ratio: float = 0.02,
    hang_ratio: float = 0.0,
    long_ratio: float = 0.0,
    long_duration: float = 0.0,
) -> list[Job]:
    """A seeded mix: mostly plain jobs, some failing a few times, some failing for good, some
    hanging past the timeout once, some long (for shutdown scenarios)."""
    jobs = []
    for i in range(n):
        kw: dict[str, Any] = {"duration": round(rng.uniform(0, 2 * mean), 4)}
        roll = rng.random()
        if roll < dead_ratio:
            kw["fail_until"] = 99
        elif roll < dead_ratio + fail_ratio:
            kw["fail_until"] = rng.choice((2, 3))
        elif roll < dead_ratio + fail_ratio + hang_ratio:
            kw["hang_until"] = 2
        elif roll < dead_ratio + fail_ratio + hang_ratio + long_ratio:
            kw["duration"] = long_duration
        jobs.append(Job(f"s{seed}-{i:06d}", kw))
    return jobs


# --- the producer ---------------------------------------------------------------------------


@dataclass
class Enqueue:
    job: Job
    status: str  # ok | failed (certainly not sent) | unknown (may or may not be in)
    at: float
    error: str = ""
    calls: int = 1


class Producer:
    """Enqueues jobs with their own ids from a thread, spread over ``spread`` seconds, logging
    each call's outcome. No retries (neither ours nor redis-py's): an error after sending is
    logged as unknown, a failure to connect as failed; a chunk is tried up to TRIES times."""

    TRIES = 3

    def __init__(
        self, config: PipelineConfig, url: str, jobs: Sequence[Job], spread: float, chunk: int
    ):
        self.config = config
        self.url = url
        self.jobs = list(jobs)
        self.spread = spread
        self.chunk = max(1, chunk)
        self.log: list[Enqueue] = []
        self.thread = threading.Thread(target=self._run, name="producer", daemon=True)
        self.finished = threading.Event()
        self.stop = threading.Event()

    def start(self) -> Producer:
        self.thread.start()
        return self

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the producer did not finish"

    def _client(self) -> SyncClient:
        client = SyncClient(self.config, url=self.url)
        client.redis.close()
        client.redis = open_sync_redis(self.url, self.config.redis, retry=Retry(NoBackoff(), 0))
        return client

    def _run(self) -> None:
        try:
            client = self._client()
            chunks = [self.jobs[i : i + self.chunk] for i in range(0, len(self.jobs), self.chunk)]
            pause = self.spread / max(1, len(chunks))
            started = time.monotonic()
            for k, chunk in enumerate(chunks):
                if self.stop.is_set():
                    break
                self._send(client, chunk)
                delay = started + (k + 1) * pause - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            client.close()
        finally:
            self.finished.set()

    def _send(self, client: SyncClient, chunk: list[Job]) -> None:
        """Up to ``TRIES`` calls (safe: the ids are ours, a repeat answers 'exists'). The job's
        status: ok if any call was acknowledged, else unknown if any call may have reached
        Redis, else failed."""
        status, text = "failed", ""
        for attempt in range(self.TRIES):
            if self.stop.is_set():
                break
            try:
                if len(chunk) == 1:
                    client.enqueue(QUEUE, job_id=chunk[0].id, **chunk[0].kwargs)
                else:
                    specs = [JobSpec(kwargs=j.kwargs, job_id=j.id) for j in chunk]
                    client.enqueue_many(QUEUE, specs)
            except (redis.exceptions.RedisError, OSError, DurabilityError) as exc:
                # DurabilityError (redis.durability): sent, maybe kept: unknown, like a lost reply
                text = f"{type(exc).__name__}: {exc}"
                if "connecting to" not in str(exc):
                    status = "unknown"
                if attempt + 1 < self.TRIES:
                    time.sleep(0.25)
            else:
                status = "ok"
                break
        now = time.time()
        self.log.extend(Enqueue(j, status, now, text, attempt + 1) for j in chunk)


# --- faults ---------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str  # kill | stop | term | term2 | redis-stop | redis-kill | client-kill | freeze ...
    t0: float
    t1: float
    pid: int | None = None  # None: affects every worker (a Redis fault)
    detail: dict[str, Any] = field(default_factory=dict)


# --- one run --------------------------------------------------------------------------------


class FaultRun:
    def __init__(
        self,
        name: str,
        base: Path,
        procs: Processes,
        seed: int,
        settings: Settings,
        *,
        appendonly: bool = True,
        fsync: str = "everysec",
        redis_node: Any = None,
        redis_extra: str = "",
    ):
        """``redis_node`` replaces the scenario's own redis-server with anything that has
        ``url`` and ``client()`` (a Sentinel or Cluster topology's view); ``redis_extra`` goes
        into the pipeline's ``redis:`` mapping."""
        self.name = name
        self.seed = seed
        self.rng = random.Random(f"{name}:{seed}")
        self.settings = settings
        self.procs = procs
        self.dir = base
        self.history = base / "history"
        self.history.mkdir(parents=True, exist_ok=True)
        self.logs = base / "logs"
        self.logs.mkdir(exist_ok=True)
        self.redis = redis_node or RedisNode(
            procs, base / "redis", appendonly=appendonly, fsync=fsync
        )
        self.pipeline = base / "pipeline.yaml"
        # Without AOF `rrq-flow run` refuses to start unless the pipeline accepts the risk.
        persistence = "aof" if appendonly else "none"
        self.pipeline.write_text(
            pipeline_yaml(
                self.redis.url, settings, persistence=persistence, redis_extra=redis_extra
            )
        )
        self.config = load(self.pipeline)
        self.faults: list[Fault] = []
        self.workers: list[Proc] = []
        self.producer: Producer | None = None
        self.started = time.monotonic()

    # workers

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env[HISTORY_ENV] = str(self.history)
        return env

    def start_worker(self, *args: str, name: str = "worker") -> Proc:
        cmd = [sys.executable, "-m", "rrq_flow", "run", str(self.pipeline), *args]
        proc = self.procs.spawn(name, cmd, self.logs, self.env())
        self.workers.append(proc)
        return proc

    def live_workers(self) -> list[Proc]:
        return [w for w in self.workers if w.alive()]

    def wait_started(self, proc: Proc, timeout: float = 20.0) -> None:
        """Until the worker logged that it serves (imports take a while on a busy machine)."""
        ok = wait_until(lambda: "worker started" in proc.stderr() or not proc.alive(), timeout)
        assert ok and proc.alive(), f"{proc.name} did not start:\n{proc.stderr()[-2000:]}"

    # producing

    def produce(self, jobs: Sequence[Job], spread: float) -> Producer:
        chunk = max(1, len(jobs) // 400)
        self.producer = Producer(self.config, self.redis.url, jobs, spread, chunk)
        self.procs.on_cleanup.append(self.producer.stop.set)
        return self.producer.start()

    # observing

    def in_flight(self, pid: int) -> dict[str, dict[str, Any]]:
        """Executions in ``pid`` that started and have not ended (per its history file)."""
        open_: dict[str, dict[str, Any]] = {}
        for ev in read_history_file(self.history / f"history-{pid}.jsonl"):
            key = f"{ev['id']}@{ev['epoch']}"
            if ev["ev"] == "start":
                open_[key] = ev
            elif ev["ev"] in ("end", "fail", "cancel", "crash"):
                open_.pop(key, None)
        return {ev["id"]: ev for ev in open_.values()}

    def wait_in_flight(self, pid: int, timeout: float = 3.0) -> dict[str, dict[str, Any]]:
        """Until ``pid`` runs at least one job (or ``timeout``); what it runs then."""
        wait_until(lambda: bool(self.in_flight(pid)), timeout)
        return self.in_flight(pid)

    def wait_drained(self, timeout: float) -> None:
        """Until the producer is done and no job is ready, retrying or active."""
        r = self.redis.client()
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.producer is None or self.producer.finished.is_set():
                    try:
                        pipe = r.pipeline(transaction=False)
                        for key in (KEYS.ready, KEYS.retry, KEYS.active):
                            pipe.zcard(key)
                        if sum(pipe.execute()) == 0:
                            return
                    except redis.exceptions.RedisError:
                        pass
                gone = bool(self.workers) and not self.live_workers()
                if gone or time.monotonic() > deadline:
                    why = "every worker exited" if gone else f"not drained after {timeout:.0f}s"
                    raise AssertionError(f"{why}: {self.queue_state()}\n" + self.log_tail())
                time.sleep(0.1)
        finally:
            r.close()

    def queue_state(self) -> dict[str, Any]:
        r = self.redis.client()
        try:
            return {
                "ready": r.zcard(KEYS.ready),
                "retry": r.zcard(KEYS.retry),
                "active": r.zrange(KEYS.active, 0, 5, withscores=True),
                "stats": r.hgetall(KEYS.stats),
            }
        except redis.exceptions.RedisError as exc:
            return {"error": str(exc)}
        finally:
            r.close()

    def log_tail(self, chars: int = 1500) -> str:
        return "\n".join(f"--- {w.name}\n{w.stderr()[-chars:]}" for w in self.workers)

    def stop_workers(self, timeout: float | None = None) -> list[int]:
        """SIGTERM every live worker (graceful) and wait; returns their exit codes."""
        live = self.live_workers()
        for w in live:
            # Before its signal handlers are installed, SIGTERM simply kills a process.
            self.wait_started(w)
        if any(time.time() - w.started < 3 for w in live):
            time.sleep(0.3)  # "worker started" is logged just before the handlers go in
        for w in live:
            w.signal(signal.SIGTERM)
        limit = timeout if timeout is not None else self.settings.grace + 5
        return [w.wait(limit) for w in live]

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def worker_logs(self) -> str:
        return "\n".join(w.stderr() for w in self.workers)


def read_history_file(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with open(path) as f:
        for line in f:
            if line.endswith("\n"):
                yield json.loads(line)


def read_histories(directory: Path) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for path in sorted(directory.glob("history-*.jsonl")):
        events.extend(read_history_file(path))
    events.sort(key=lambda e: e["t"])
    return events


def report(figures: dict[str, Any]) -> None:
    """Print one scenario's figures and append them to $RRQ_FAULT_REPORT if set."""
    line = json.dumps(figures, sort_keys=True)
    print(f"FAULT-REPORT {line}")
    target = os.environ.get("RRQ_FAULT_REPORT")
    if target:
        with open(target, "a") as f:
            f.write(line + "\n")
