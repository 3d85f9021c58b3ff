"""``rrq-flow run --input`` and ``rrq-flow enqueue --jsonl`` stream their file (issue 16, target 5):
checked whole in a first pass, enqueued in bounded batches in a second, all or nothing kept —
against a real Redis.

The large tests (marked ``slow``) size themselves with RRQ_INPUT_LINES (default 1,000,000) and
check the enqueue side's peak RSS stays under 150 MB whatever the size.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import redis

from rrq_flow.cli import input_stream, main
from rrq_flow.cli._common import ExitWith
from rrq_flow.client.sync_client import SyncClient
from rrq_flow.config import load
from rrq_flow.redis_server import start_redis_server

ROOT = Path(__file__).resolve().parent.parent
RSS_LIMIT_MB = 150


def _pipeline(tmp_path: Path, url: str, extra: str = "") -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(
        f"version: 1\npipeline: stream\nredis: {{url: '{url}'{extra}}}\nqueues:\n"
        "  q: {handler: 'tests.handlers:echo', concurrency: 20}\n"
    )
    return path


def test_input_is_enqueued_in_batches_and_every_job_runs(
    tmp_path: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(input_stream, "CHUNK", 7)  # 50 jobs: 8 batches, the last one short
    p = _pipeline(tmp_path, redis_url)
    data = tmp_path / "in.jsonl"
    data.write_text("".join(f"[{i}]\n" + ("\n" if i % 10 == 0 else "") for i in range(50)))
    assert main(["run", str(p), "--burst", "--input", f"q={data}", "--run", "r1"]) == 0
    assert "enqueued 50 job(s) into q" in capsys.readouterr().err
    with SyncClient(load(p)) as client:
        info = client.run("r1")
        assert info.total == 50 and info.complete
        assert sorted(r["result"]["args"][0] for r in client.results("r1")) == list(range(50))


@pytest.mark.parametrize("command", ["run", "enqueue"])
def test_a_bad_line_after_many_batches_enqueues_nothing(
    command: str,
    tmp_path: Path,
    redis_url: str,
    sync_redis: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(input_stream, "CHUNK", 7)
    p = _pipeline(tmp_path, redis_url)
    data = tmp_path / "in.jsonl"
    # The last line is JSON but its unique_key has a lone surrogate: only encoding it as the
    # enqueue does (not parsing) finds it.
    data.write_text("".join(f"[{i}]\n" for i in range(40)) + '{"unique_key": "\\ud800"}\n')
    args = {
        "run": ["run", str(p), "--burst", "--input", f"q={data}"],
        "enqueue": ["enqueue", str(p), "q", "--jsonl", str(data)],
    }[command]
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert f"{data}:41:" in err and "nothing was enqueued" in err
    assert out == "" and sync_redis.dbsize() == 0


def test_a_file_changed_between_the_passes_is_refused(
    tmp_path: Path, redis_url: str, sync_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    p = _pipeline(tmp_path, redis_url)
    data = tmp_path / "in.jsonl"
    data.write_text("[1]\n[2]\n")
    config = load(p)
    checked = input_stream.check_inputs([f"q={data}"], config)
    assert [f.jobs for f in checked] == [2]
    with data.open("a") as f:
        f.write("not json\n")
    with SyncClient(config) as client, pytest.raises(ExitWith) as exc:
        input_stream.enqueue_inputs(client, checked, "r")
    assert exc.value.code == 2
    assert "changed after it was checked; nothing was enqueued" in capsys.readouterr().err
    assert sync_redis.dbsize() == 0


def test_stdin_is_read_once_and_enqueued(tmp_path: Path, redis_url: str) -> None:
    p = _pipeline(tmp_path, redis_url)
    out = subprocess.run(
        [sys.executable, "-m", "rrq_flow", "run", str(p), "--burst", "--input", "q=-"],
        input="".join(f"[{i}]\n" for i in range(30)),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    assert "enqueued 30 job(s) into q" in out.stderr


def test_enqueue_jsonl_prints_each_batch_of_ids_as_it_goes_in(
    tmp_path: Path,
    redis_url: str,
    sync_redis: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(input_stream, "CHUNK", 7)  # 50 jobs: 8 batches, the last one short
    p = _pipeline(tmp_path, redis_url)
    data = tmp_path / "in.jsonl"
    lines = [
        f'{{"args": [{i}], "job_id": "j{i}"}}\n' + ("\n" if i % 10 == 0 else "") for i in range(50)
    ]
    data.write_text("".join(lines))
    assert main(["enqueue", str(p), "q", "--jsonl", str(data), "--priority", "3"]) == 0
    out, err = capsys.readouterr()
    assert out.split() == [f"j{i}" for i in range(50)]
    assert "enqueued 50 job(s) into q" in err
    with SyncClient(load(p)) as client:
        assert client.job("j49").priority == 3  # --priority reached the lines of the second pass
    # --json: the same ids, in the file's order, in one object.
    sync_redis.flushdb()
    assert main(["enqueue", str(p), "q", "--jsonl", str(data), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["count"] == 50 and shown["ids"] == [f"j{i}" for i in range(50)]


def test_enqueue_jsonl_says_how_many_jobs_are_in_when_redis_fails_half_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real refusal mid-file: Redis reaches maxmemory after some batches (noeviction)."""
    monkeypatch.setattr(input_stream, "CHUNK", 500)
    base = Path(tempfile.mkdtemp(prefix="rrqin-"))
    server = start_redis_server(base, unix_socket=base / "r.sock", appendonly=False)
    try:
        p = _pipeline(tmp_path, server.url, ", persistence: none")
        admin = redis.Redis(unix_socket_path=str(base / "r.sock"))
        used = int(admin.info("memory")["used_memory"])
        admin.config_set("maxmemory", used + 2_000_000)  # room for a few batches, not 20
        admin.config_set("maxmemory-policy", "noeviction")
        data = tmp_path / "in.jsonl"
        pad = "x" * 400
        data.write_text("".join(f'[{i}, "{pad}"]\n' for i in range(10_000)))
        assert main(["enqueue", str(p), "q", "--jsonl", str(data)]) == 3
        out, err = capsys.readouterr()
        printed = out.split()
        assert 0 < len(printed) < 10_000 and len(printed) % 500 == 0  # whole batches only
        assert f"{len(printed)} of the file's 10000 jobs were enqueued before the failure" in err
        assert "Traceback" not in err
        admin.close()
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def _sample_hwm(pid: int, samples: list[int], stop: threading.Event) -> None:
    """Append the VmHWM (kB) of ``pid`` every 20 ms until ``stop`` is set or it is gone."""
    status = Path(f"/proc/{pid}/status")
    while not stop.is_set():
        try:
            text = status.read_text()
        except OSError:
            return
        for line in text.splitlines():
            if line.startswith("VmHWM:"):
                samples.append(int(line.split()[1]))
        stop.wait(0.02)


def _write_big_file(path: Path, n: int) -> None:
    """n lines of ~100-byte payloads."""
    pad = "x" * 90
    with path.open("w") as f:
        for start in range(0, n, 10_000):
            f.write("".join(f'[{i}, "{pad}"]\n' for i in range(start, min(n, start + 10_000))))


def _run_measured(cmd: list[str]) -> tuple[int, str, float]:
    """Run ``cmd`` (stdout discarded); its exit code, stderr and peak RSS in MB."""
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    # The child's own high-water mark (VmHWM), sampled while it runs: wait4's ru_maxrss is
    # not usable here, because Linux carries the RSS of the process that spawned it (this
    # pytest, ~190 MB after the long tests) across the exec into the child's figure.
    samples: list[int] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_hwm, args=(proc.pid, samples, stop))
    sampler.start()
    try:
        err = proc.stderr.read().decode()
    finally:
        stop.set()
        sampler.join()
    proc.wait()
    assert samples, "no VmHWM sample of the child was read"
    return proc.returncode, err, max(samples) / 1024  # kB


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("command", ["run --input", "enqueue --jsonl"])
def test_a_large_input_streams_in_bounded_memory(command: str, tmp_path: Path) -> None:
    """N lines of ~100-byte payloads through `rrq-flow run --input` (enqueue, then one job) or
    `rrq-flow enqueue --jsonl` (ids printed batch by batch): every line enqueued, peak RSS of
    the process under 150 MB whatever N is."""
    n = int(os.environ.get("RRQ_INPUT_LINES", "1000000"))
    data = tmp_path / "big.jsonl"
    _write_big_file(data, n)
    base = Path(tempfile.mkdtemp(prefix="rrqin-"))
    server = start_redis_server(base, unix_socket=base / "r.sock", appendonly=False)
    try:
        p = _pipeline(tmp_path, server.url, ", persistence: none")
        cmd = [sys.executable, "-m", "rrq_flow"]
        if command == "run --input":
            cmd += ["run", str(p), "--input", f"q={data}", "--max-jobs", "1", "--progress", "off"]
        else:
            cmd += ["enqueue", str(p), "q", "--jsonl", str(data)]
        code, err, peak_mb = _run_measured([*cmd, "--run", "big"])
        assert code == 0, err[-2000:]
        assert f"enqueued {n} job(s) into q" in err
        print(f"{command}, {n} lines: peak RSS {peak_mb:.1f} MB")
        assert peak_mb <= RSS_LIMIT_MB, peak_mb
        with SyncClient(load(p)) as client:
            assert client.run("big").total == n
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
