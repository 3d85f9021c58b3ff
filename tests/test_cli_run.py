"""`rrq-flow run` and `rrq-flow enqueue` as a user runs them: real processes, real Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import redis

from rrq_flow.config import load
from rrq_flow.protocol.keys import KeyLayout

CLI = [sys.executable, "-m", "rrq_flow"]
ROOT = Path(__file__).resolve().parent.parent


def write_pipeline(tmp_path: Path, redis_url: str, queues: str, extra: str = "") -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"""version: 1
pipeline: t
redis: {{url: "{redis_url}", connect_timeout: 1s, command_timeout: 2s}}
defaults: {{lock_extension: 1s, retry: {{max_attempts: 2, delay: 10ms, jitter: false}}}}
workers: {{heartbeat_interval: 500ms, shutdown_grace_period: 2s}}
{extra}
queues:
{queues}
"""
    )
    return path


def cli(
    *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_burst_exits_0_and_prints_the_summary(tmp_path: Path, redis_url: str) -> None:
    p = write_pipeline(tmp_path, redis_url, "  q: {handler: 'tests.handlers:echo'}")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(f"[{i}]\n" for i in range(25)))
    out = cli("run", str(p), "--burst", "--input", f"q={jobs}")
    assert out.returncode == 0, out.stderr
    assert "rrq-flow run finished (drained)" in out.stdout
    row = next(line for line in out.stdout.splitlines() if line.startswith("q "))
    assert row.split()[1:4] == ["25", "0", "0"]  # done, retried, dead
    assert "25 jobs finished" in out.stdout


def test_burst_json_summary_shape(tmp_path: Path, redis_url: str) -> None:
    p = write_pipeline(tmp_path, redis_url, "  q: {handler: 'tests.handlers:echo'}")
    cli("enqueue", str(p), "q", "--args", "[1]")
    out = cli("run", str(p), "--burst", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["exit_code"] == 0 and summary["reason"] == "drained"
    assert summary["finished"] == 1
    assert set(summary["queues"]["q"]) >= {"done", "retried", "dead", "p50_ms", "p95_ms"}


def test_burst_exits_1_when_a_job_is_dead_lettered(tmp_path: Path, redis_url: str) -> None:
    p = write_pipeline(
        tmp_path,
        redis_url,
        "  ok: {handler: 'tests.handlers:echo'}\n  bad: {handler: 'tests.handlers:always_fail'}",
    )
    cli("enqueue", str(p), "ok", "--args", "[1]")
    cli("enqueue", str(p), "bad")
    out = cli("run", str(p), "--burst")
    assert out.returncode == 1
    row = next(line for line in out.stdout.splitlines() if line.startswith("bad "))
    assert row.split()[1:4] == ["0", "1", "1"]


def test_burst_exits_2_on_a_configuration_error(tmp_path: Path, redis_url: str) -> None:
    p = write_pipeline(tmp_path, redis_url, "  q: {handler: 'tests.handlers:no_such_function'}")
    out = cli("run", str(p), "--burst")
    assert out.returncode == 2
    assert "no_such_function" in out.stderr
    assert "Traceback" not in out.stderr


def test_burst_exits_2_for_an_unknown_queue(tmp_path: Path, redis_url: str) -> None:
    p = write_pipeline(tmp_path, redis_url, "  q: {handler: 'tests.handlers:echo'}")
    out = cli("run", str(p), "--burst", "--queue", "nope")
    assert out.returncode == 2
    assert "unknown queue 'nope'" in out.stderr


def test_burst_exits_3_when_redis_is_unreachable(tmp_path: Path) -> None:
    p = write_pipeline(
        tmp_path, f"unix://{tmp_path}/none.sock", "  q: {handler: 'tests.handlers:echo'}"
    )
    out = cli("run", str(p), "--burst")
    assert out.returncode == 3
    assert "cannot reach Redis" in out.stderr
    assert "Traceback" not in out.stderr


def test_enqueue_prints_ids_and_rejects_bad_json_with_exit_2(
    tmp_path: Path, redis_url: str
) -> None:
    p = write_pipeline(tmp_path, redis_url, "  q: {handler: 'tests.handlers:echo'}")
    out = cli(
        "enqueue", str(p), "q", "--args", '[1, "a"]', "--kwargs", '{"k": 2}', "--job-id", "j1"
    )
    assert out.returncode == 0 and out.stdout.strip() == "j1"
    bad = cli("enqueue", str(p), "q", "--args", "[1,")
    assert bad.returncode == 2 and "--args: not JSON" in bad.stderr


def test_enqueue_jsonl_is_all_or_nothing(
    tmp_path: Path, redis_url: str, sync_redis: redis.Redis
) -> None:
    p = write_pipeline(tmp_path, redis_url, "  q: {handler: 'tests.handlers:echo'}")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('[1]\n{"args": [2], "job_id": "x"}\n{"args": [3}\n"str"\n[5]\n')
    out = cli("enqueue", str(p), "q", "--jsonl", str(bad))
    assert out.returncode == 2
    assert f"{bad}:3: not JSON" in out.stderr
    assert f"{bad}:4: expected a JSON array of args or an object" in out.stderr
    assert "nothing was enqueued" in out.stderr
    assert sync_redis.zcard(KeyLayout("t").queue("q").ready) == 0

    good = tmp_path / "good.jsonl"
    good.write_text("".join(f'{{"args": [{i}], "job_id": "g{i}"}}\n' for i in range(300)))
    out = cli("enqueue", str(p), "q", "--jsonl", "-", stdin=good.read_text())
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [f"g{i}" for i in range(300)]
    assert "enqueued 300 job(s)" in out.stderr
    assert sync_redis.zcard(KeyLayout("t").queue("q").ready) == 300


def _history(path: Path) -> dict[str, list[tuple[str, float]]]:
    events: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        kind, job_id, _epoch, _pid, at = line.split()
        events[job_id].append((kind, float(at)))
    return events


def _all_ended(events: dict[str, list[tuple[str, float]]], n: int) -> bool:
    return len(events) == n and all(len(e) >= 2 for e in events.values())


def test_two_worker_processes_never_run_one_job_twice(
    tmp_path: Path, redis_url: str, sync_redis: redis.Redis
) -> None:
    """Both processes are up (registered) before the jobs arrive, so both take part however
    their start-ups differ (one used to drain the 600 jobs before the other had imported)."""
    p = write_pipeline(
        tmp_path, redis_url, "  q: {handler: 'tests.handlers:record', concurrency: 20}"
    )
    history = tmp_path / "history.txt"
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(f'["{history}", 0.01]\n' for _ in range(600)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [*CLI, "run", str(p)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 60  # generous: only a broken start-up takes this long
        while sync_redis.zcard(KeyLayout("t").workers) < 2:
            assert time.monotonic() < deadline and all(proc.poll() is None for proc in procs)
            time.sleep(0.05)
        assert cli("enqueue", str(p), "q", "--jsonl", str(jobs)).returncode == 0
        while not (history.exists() and _all_ended(_history(history), 600)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
    outputs = [proc.communicate(timeout=60)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    events = _history(history)
    assert len(events) == 600
    assert all([kind for kind, _ in e] == ["start", "end"] for e in events.values())
    done = [
        int(next(line for line in o.splitlines() if line.startswith("q ")).split()[1])
        for o in outputs
    ]
    assert sum(done) == 600
    assert all(d > 0 for d in done), done  # both processes took part


@pytest.mark.slow  # SIGKILL at a chosen point of a fan-out (a fault scenario, ~30 s under load)
def test_sigkill_between_parent_success_and_child_claim_loses_and_duplicates_nothing(
    tmp_path: Path, redis_url: str, sync_redis: redis.Redis
) -> None:
    p = write_pipeline(
        tmp_path,
        redis_url,
        "  parent: {handler: 'tests.stage_handlers:numbers', fan_out: true, next: child,"
        " concurrency: 4}\n"
        "  child: {handler: 'tests.stage_handlers:double', concurrency: 50}",
    )
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(f'{{"args": [10], "job_id": "p{i}"}}\n' for i in range(200)))
    assert cli("enqueue", str(p), "parent", "--jsonl", str(jobs)).returncode == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Only the parent stage runs, then the process is killed without warning mid-way.
    proc = subprocess.Popen(
        [*CLI, "run", str(p), "--queue", "parent"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    layout = KeyLayout("t")
    deadline = time.monotonic() + 30
    while sync_redis.hget(layout.queue("parent").stats, "done") in (None, "0", "1", "2"):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = int(sync_redis.hget(layout.queue("parent").stats, "done") or 0)
    assert done_before < 200  # killed mid-way
    out = cli("run", str(p), "--burst")
    assert out.returncode == 0, out.stderr
    config = load(p)
    with config.sync_client() as client:
        for i in range(200):
            parent = client.job(f"p{i}")
            assert parent.status == "done"
            kids = client.children(f"p{i}")
            assert parent.children == 10 and kids == [f"p{i}:child:{k}" for k in range(10)]
            assert [client.job(c).result for c in kids] == [2 * k for k in range(10)]
    children = sync_redis.zcard(layout.queue("child").ready) + sync_redis.zcard(
        layout.queue("child").active
    )
    assert children == 0
    assert int(sync_redis.hget(layout.queue("child").stats, "enqueued") or 0) == 2000


def test_enqueue_refuses_bad_job_ids_with_exit_2(
    tmp_path: Path, redis_url: str, sync_redis: redis.Redis
) -> None:
    p = write_pipeline(tmp_path, redis_url, "  q: {handler: 'tests.handlers:echo'}")
    for bad_id in ("a b", "x" * 257, "esc\x1b[2J", ""):
        out = cli("enqueue", str(p), "q", "--job-id", bad_id)
        assert out.returncode == 2 and "--job-id: job id" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1
    lines = tmp_path / "ids.jsonl"
    lines.write_text('{"job_id": "ok"}\n{"job_id": "tab\\there"}\n{"job_id": 7}\n')
    out = cli("enqueue", str(p), "q", "--jsonl", str(lines))
    assert out.returncode == 2
    assert f"{lines}:2: job id must not contain whitespace" in out.stderr
    assert f"{lines}:3: job id must be a string" in out.stderr
    assert sync_redis.zcard(KeyLayout("t").queue("q").ready) == 0


def test_one_line_per_finished_job_only_when_info_is_asked_for(
    tmp_path: Path, redis_url: str
) -> None:
    p = write_pipeline(tmp_path, redis_url, "  q: {handler: 'tests.handlers:echo'}")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(f"[{i}]\n" for i in range(5)))
    quiet = cli("run", str(p), "--burst", "--input", f"q={jobs}")
    assert quiet.returncode == 0, quiet.stderr
    assert " done: queue q, " not in quiet.stderr  # the default stays quiet
    loud = cli("run", str(p), "--burst", "--log-level", "INFO", "--input", f"q={jobs}")
    assert loud.returncode == 0, loud.stderr
    lines = [line for line in loud.stderr.splitlines() if " done: queue q, " in line]
    assert len(lines) == 5, loud.stderr
    assert all(" INFO " in line and "[worker=" in line for line in lines)
