"""The supervisor: ``rrq-flow run`` with ``workers.processes`` > 1.

Starts N worker processes and waits on them. A worker that dies unexpectedly is restarted with
backoff; several deaths within a short window (a crash loop) stop everything with a clear
message. The first SIGTERM/SIGINT is passed on to every worker (graceful drain), a second one
too (each worker then cancels at once). Workers hold a lifeline pipe, so they stop by
themselves if the supervisor is killed. In burst mode the supervisor exits once every worker
has drained, with the worst of their exit codes, and one summary for the whole run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from rrq_flow.config.model import PipelineConfig
from rrq_flow.worker.progress import Progress
from rrq_flow.worker.signals import stop_signals
from rrq_flow.worker.summary import RunStats

log = logging.getLogger("rrq_flow.supervisor")

EXIT_CRASH_LOOP = 4
CRASH_WINDOW = 30.0  # seconds
CRASH_LIMIT = 5  # unexpected deaths within the window that count as a crash loop
RESTART_BACKOFF = (0.5, 10.0)  # first and largest delay before a restart
RELAY_GRACE = 5.0  # seconds to read a worker's remaining output after it exited


@dataclass
class Slot:
    index: int
    process: trio.Process | None = None
    restarts: int = 0
    finished: bool = False
    codes: list[int] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        config: PipelineConfig,
        *,
        url: str,
        processes: int,
        queues: list[str] | None = None,
        burst: bool = False,
        max_jobs: int | None = None,
        max_duration: float | None = None,
        log_format: str = "text",
        log_level: str | None = None,
        progress: Progress | None = None,
    ):
        if config.source is None:
            raise ValueError("the supervisor needs a pipeline loaded from a file")
        self.config = config
        self.url = url
        self.processes = processes
        self.queues = queues
        self.burst = burst
        self.max_jobs = max_jobs
        self.max_duration = max_duration
        self.log_format = log_format
        self.log_level = log_level
        self.progress = progress
        self.stats = RunStats()
        self.wall_time = 0.0
        self.stop_reason = ""
        self.stopping = False
        self._signals_seen = 0
        self._deaths: deque[float] = deque()
        self._crash_loop = False
        self._slots = [Slot(i) for i in range(processes)]
        self._codes: list[int] = []
        self._tmp = Path(tempfile.mkdtemp(prefix="rrq-flow-sup-"))
        # The write end stays open in this process only; workers watch the read end.
        self._lifeline_r, self._lifeline_w = os.pipe()
        self._child_env: dict[str, str] = dict(os.environ)
        os.set_inheritable(self._lifeline_r, True)

    def run(self) -> int:
        started = time.monotonic()
        try:
            code = trio.run(self._main)
        finally:
            os.close(self._lifeline_r)
            os.close(self._lifeline_w)
            shutil.rmtree(self._tmp, ignore_errors=True)
        self.wall_time = time.monotonic() - started
        return code

    def _command(self, slot: Slot, url_fd: int) -> list[str]:
        # The URL (it may hold a password) goes through a pipe, never argv: any local user can
        # read every process's command line in /proc or with ps.
        cmd = [
            sys.executable,
            "-P",  # no working directory first on sys.path: it must not shadow a package
            "-m",
            "rrq_flow.worker.process_main",
            str(self.config.source),
            "--url-fd",
            str(url_fd),
            "--stats-file",
            str(self._stats_file(slot)),
            "--lifeline-fd",
            str(self._lifeline_r),
            "--log-format",
            self.log_format,
        ]
        if self.log_level is not None:
            cmd += ["--log-level", self.log_level]
        for q in self.queues or ():
            cmd += ["--queue", q]
        if self.burst:
            cmd.append("--burst")
        if "PROMETHEUS_MULTIPROC_DIR" in self._child_env:
            cmd.append("--no-metrics-server")
        if self.max_jobs is not None:
            cmd += ["--max-jobs", str(math.ceil(self.max_jobs / self.processes))]
        return cmd

    def _url_pipe(self) -> int:
        """The read end of a pipe that holds the Redis URL, for one child to read once."""
        read_end, write_end = os.pipe()
        try:
            os.write(write_end, self.url.encode())  # far below the pipe's buffer
        finally:
            os.close(write_end)
        return read_end

    def _stats_file(self, slot: Slot) -> Path:
        return self._tmp / f"worker-{slot.index}-{slot.restarts}.json"

    async def _main(self) -> int:
        stop_metrics = self._start_metrics()
        try:
            if self.progress is None:
                return await self._supervise()
            async with trio.open_nursery() as nursery:
                await nursery.start(self.progress.run)
                try:
                    code = await self._supervise()
                finally:
                    self.progress.finish()
            return code
        finally:
            stop_metrics()

    def _start_metrics(self) -> Callable[[], None]:
        """With several processes the supervisor serves the one metrics endpoint, aggregating
        what the workers write (prometheus-client's multiprocess mode)."""
        port = self.config.workers.metrics_port
        if port is None:
            return lambda: None
        try:
            from rrq_flow.metrics import serve_multiprocess
        except ImportError as exc:
            log.warning("metrics unavailable (%s): pip install 'rrq-flow[metrics]'", exc)
            return lambda: None
        metrics_dir = self._tmp / "metrics"
        metrics_dir.mkdir()
        self._child_env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        return serve_multiprocess(port, metrics_dir, self.config.workers.metrics_host)

    async def _supervise(self) -> int:
        # The receiver stays installed until the end, and a signal arriving as it closes is
        # dropped (see rrq_flow.worker.signals): a SIGTERM landing then used to kill the
        # supervisor on its way out (exit -15, no summary).
        with stop_signals(lambda: self._signals_seen > 0) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._signals, signals)
                if self.max_duration is not None:
                    nursery.start_soon(self._duration_limit, self.max_duration)
                async with trio.open_nursery() as workers:
                    for slot in self._slots:
                        workers.start_soon(self._keep_running, slot)
                nursery.cancel_scope.cancel()
        if not self.stop_reason:
            self.stop_reason = "drained" if self.burst else "stopped"
        if self._crash_loop:
            # Not max(): the other workers' codes while stopping (a crashing handler's own exit
            # code, say 70) must not hide the crash loop.
            return EXIT_CRASH_LOOP
        return max(self._codes, default=0)

    async def _keep_running(self, slot: Slot) -> None:
        """Run one worker slot: start, wait, restart after an unexpected death."""
        delay = RESTART_BACKOFF[0]
        while True:
            # New session: a terminal's Ctrl-C reaches only the supervisor, which passes it on
            # once; otherwise every worker would see it too and take the forward as a second.
            # Under a live progress block the workers' output is relayed line by line through
            # this process, which prints it above the block (they would draw over it otherwise).
            relay = self.progress is not None and self.progress.live
            pipe = subprocess.PIPE if relay else None
            url_fd = self._url_pipe()
            try:
                process = await trio.lowlevel.open_process(
                    self._command(slot, url_fd),
                    pass_fds=(self._lifeline_r, url_fd),
                    start_new_session=True,
                    env=self._child_env,
                    stdout=pipe,
                    stderr=pipe,
                )
            finally:
                os.close(url_fd)
            slot.process = process
            log.info("worker %d started (pid %d)", slot.index, process.pid)
            if relay:
                async with trio.open_nursery() as relays:
                    relays.start_soon(relay_lines, process.stdout, "stdout")
                    relays.start_soon(relay_lines, process.stderr, "stderr")
                    code = await process.wait()
                    # A grandchild may still hold the pipes: what is left is read for a while.
                    relays.cancel_scope.deadline = trio.current_time() + RELAY_GRACE
            else:
                code = await process.wait()
            self._collect(slot)
            if self._expected_exit(code):
                self._codes.append(code)
                return
            cause = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            log.error("worker %d (pid %d) died unexpectedly (%s)", slot.index, process.pid, cause)
            now = time.monotonic()
            self._deaths.append(now)
            while self._deaths and now - self._deaths[0] > CRASH_WINDOW:
                self._deaths.popleft()
            if len(self._deaths) >= CRASH_LIMIT:
                log.error(
                    "crash loop: %d worker deaths within %.0fs; stopping. Check the worker "
                    "logs above (a handler that kills its process, or an exhausted resource).",
                    len(self._deaths),
                    CRASH_WINDOW,
                )
                self.stop_reason = "crash loop"
                self._crash_loop = True
                self._codes.append(EXIT_CRASH_LOOP)
                self._forward(signal.SIGTERM)
                return
            await trio.sleep(delay)
            delay = min(delay * 2, RESTART_BACKOFF[1])
            if self.stopping:
                return
            slot.restarts += 1

    def _expected_exit(self, code: int) -> bool:
        if self.stopping:
            return True  # whatever it returned while we were stopping it
        if code == 3:
            # Redis unreachable or data lost: restarting would not help; stop the rest too.
            self.stop_reason = self.stop_reason or "Redis unreachable or data lost"
            self._forward(signal.SIGTERM)
            return True
        if self.burst and code in (0, 1):
            return True  # drained
        return code == 2  # a configuration error will not fix itself

    def _collect(self, slot: Slot) -> None:
        path = self._stats_file(slot)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return  # killed before it could write: its jobs are recovered by the reaper
        self.stats.merge(RunStats.from_json(data["stats"]))
        path.unlink(missing_ok=True)

    def _forward(self, signum: int) -> None:
        self.stopping = True
        for slot in self._slots:
            if slot.process is not None and slot.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(signum)

    async def _signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            self._signals_seen += 1
            name = signal.Signals(signum).name
            if self._signals_seen == 1:
                self.stop_reason = f"{name} received"
                log.warning("%s: workers drain in-flight jobs (send it again to stop now)", name)
            else:
                log.warning("%s again: workers cancel in-flight jobs now", name)
            self._forward(signal.SIGTERM)

    async def _duration_limit(self, seconds: float) -> None:
        await trio.sleep(seconds)
        self.stop_reason = f"max duration {seconds:g}s reached"
        self._forward(signal.SIGTERM)


async def relay_lines(stream: trio.abc.ReceiveStream | None, name: str) -> None:
    """Copy a worker's output to this process's ``sys.<name>`` a whole line at a time (looked
    up per line: while a live block is shown, that is rich's proxy printing above it)."""
    if stream is None:
        return
    pending = b""
    async with stream:
        async for chunk in stream:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if lines:
                _write(name, b"".join(line + b"\n" for line in lines))
    if pending:
        _write(name, pending + b"\n")


def _write(name: str, data: bytes) -> None:
    out = getattr(sys, name)
    out.write(data.decode(errors="replace"))
    out.flush()
