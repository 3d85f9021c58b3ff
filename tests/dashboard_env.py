"""A pipeline with finished and dead jobs, a running worker and a running dashboard, all real
processes on the suite's Redis: shared by the dashboard's API tests and its browser tests."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from rrq_flow.client.admin import Admin
from rrq_flow.client.sync_client import SyncClient
from rrq_flow.config import load
from rrq_flow.errors import JobNotFound
from tests.conftest import run_burst
from tests.test_cli_run import CLI, ROOT, cli, write_pipeline

PWN = "<script>window.__pwned=1</script>"
MESSAGES = ("disk full on /data", f"bad row {PWN}", "timeout talking to the API")
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@dataclass
class Env:
    pipeline: Path
    fixed: Path  # once it exists, the dead jobs succeed when requeued
    dead_ids: list[str]
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @contextlib.contextmanager
    def admin(self) -> Iterator[Admin]:
        with SyncClient(load(self.pipeline)) as client:
            yield Admin(client)

    def status_of(self, job_id: str) -> str | None:
        with self.admin() as admin:
            try:
                return admin.job(job_id).info.status
            except JobNotFound:
                return None

    def cli_json(self, command: str, *rest: str) -> Any:
        """``rrq-flow COMMAND PIPELINE REST... --json`` (COMMAND may be two words)."""
        out = cli(*command.split(), str(self.pipeline), *rest, "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def start_worker(self) -> None:
        self.procs.append(
            subprocess.Popen(
                [*CLI, "run", str(self.pipeline), "--progress", "off"],
                cwd=ROOT,
                env=ENV,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        )
        deadline = time.monotonic() + 60
        with self.admin() as admin:
            while not admin.workers():
                assert time.monotonic() < deadline, "the worker never sent a heartbeat"
                time.sleep(0.2)

    def start_dashboard(self, *flags: str, token: str | None = None) -> Dashboard:
        env = dict(ENV)
        env.pop("RRQ_FLOW_DASHBOARD_TOKEN", None)
        if token is not None:
            env["RRQ_FLOW_DASHBOARD_TOKEN"] = token
        proc = subprocess.Popen(
            [*CLI, "dashboard", str(self.pipeline), "--port", "0", *flags],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        m = re.search(r"(http://\S+/)", first)
        assert m, first + (proc.stderr.read() if proc.stderr else "")
        second = proc.stdout.readline()
        found = re.search(r"with the token (\S+)", second)
        return Dashboard(m.group(1).rstrip("/"), found.group(1) if found else token, proc)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class Dashboard:
    url: str
    token: str | None
    proc: subprocess.Popen[str]

    def stop(self) -> str:
        """SIGTERM it; its stderr."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.communicate(timeout=30)[1]

    def get(self, path: str, **headers: str) -> tuple[int, str, dict[str, str]]:
        return self.request("GET", path, None, headers)

    def request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, str, dict[str, str]]:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(req, timeout=30) as answer:
                return answer.status, answer.read().decode(), dict(answer.headers)
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(), dict(err.headers)

    def get_json(self, path: str) -> Any:
        code, body, _ = self.get(path)
        assert code == 200, body
        return json.loads(body)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def make_env(tmp_path: Path, redis_url: str) -> Env:
    """Six done jobs in ``ok``, three dead ones in ``flaky`` (one error message carries a
    script tag), and a worker running."""
    fixed = tmp_path / "fixed"
    p = write_pipeline(
        tmp_path,
        redis_url,
        "  ok: {handler: 'tests.handlers:echo'}\n"
        "  flaky: {handler: 'tests.handlers:fail_unless_exists', retry: {max_attempts: 1}}",
    )
    config = load(p)
    with SyncClient(config) as client:
        client.enqueue_many("ok", [[i, f"<b>{i}</b>"] for i in range(6)])
        client.enqueue_many("flaky", [[str(fixed), m] for m in MESSAGES])
    trio.run(run_burst, config)  # in this process: a worker process starts slowly
    env = Env(p, fixed, [])
    with env.admin() as admin:
        env.dead_ids = [e.id for e in admin.dlq_list().entries]
    assert len(env.dead_ids) == 3
    return env


@contextlib.contextmanager
def running_env(tmp_path: Path, redis_url: str) -> Iterator[Env]:
    """:func:`make_env`, with every process it started stopped at the end."""
    env = make_env(tmp_path, redis_url)
    try:
        yield env
    finally:
        env.stop()
