"""Local files and imports: a private ``.rrq-flow/``, no shadowing of installed packages, and a
metrics endpoint on loopback unless the file says otherwise."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from rrq_flow.config import load
from rrq_flow.metrics import metrics_addr

ROOT = Path(__file__).resolve().parent.parent

SHADOW = """\
import pathlib
pathlib.Path(__file__).with_name("SHADOWED").write_text("imported " + __name__)
raise ImportError("the shadowing module was imported")
"""


def _rrq_flow(cwd: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-m", "rrq_flow", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_an_existing_state_dir_is_made_private(tmp_path: Path) -> None:
    """A ``.rrq-flow/`` someone made with umask 022 ends 0700, its files 0600, and the files
    the embedded Redis writes (AOF, log) are 0600 too."""
    state = tmp_path / ".rrq-flow"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    leftover = state / "old.aof"
    leftover.write_text("args of an old job")
    leftover.chmod(0o644)
    (tmp_path / "pipeline.yaml").write_text(
        "version: 1\npipeline: t\nqueues: {q: {handler: 'tests.handlers:echo'}}\n"
    )
    done = _rrq_flow(ROOT, "enqueue", tmp_path / "pipeline.yaml", "q", "--args", "[1]")
    assert done.returncode == 0, done.stderr  # the embedded Redis stops with its last user
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for path in state.rglob("*"):
        st = path.lstat()
        if stat.S_ISDIR(st.st_mode):
            assert stat.S_IMODE(st.st_mode) & 0o077 == 0, path
        elif stat.S_ISREG(st.st_mode):
            assert stat.S_IMODE(st.st_mode) & 0o077 == 0, (path, oct(st.st_mode))


@pytest.mark.slow
def test_a_module_in_the_working_directory_does_not_shadow_an_installed_package(
    tmp_path: Path, redis_url: str
) -> None:
    """``redis.py`` in the working directory and in the pipeline's directory are never
    imported instead of redis-py; the pipeline's own handler module still is found."""
    work, pipe_dir = tmp_path / "work", tmp_path / "pipe"
    work.mkdir()
    pipe_dir.mkdir()
    for d in (work, pipe_dir):
        (d / "redis.py").write_text(SHADOW)
        (d / "trio.py").write_text(SHADOW)
    (pipe_dir / "my_handlers.py").write_text("async def handle(x):\n    return x\n")
    pipeline = pipe_dir / "pipeline.yaml"
    pipeline.write_text(
        f"version: 1\npipeline: t\nredis: {{url: '{redis_url}', persistence: none}}\n"
        "queues: {q: {handler: 'my_handlers:handle'}}\n"
    )
    for args in (
        ("validate", pipeline),
        ("enqueue", pipeline, "q", "--args", "[1]"),
        ("run", pipeline, "--burst", "--processes", "2"),
        ("status", pipeline),
    ):
        done = _rrq_flow(work, *args)
        assert done.returncode == 0, (args, done.stderr)
    assert not (work / "SHADOWED").exists()
    assert not (pipe_dir / "SHADOWED").exists()


def test_metrics_listen_on_loopback_unless_the_file_says_otherwise(
    tmp_path: Path, monkeypatch: object
) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text("version: 1\npipeline: t\nqueues: {q: {handler: 'm:f'}}\n")
    config = load(path)
    assert config.workers.metrics_host == "127.0.0.1"
    os.environ.pop("RRQ_FLOW_METRICS_ADDR", None)
    assert metrics_addr(config.workers.metrics_host) == "127.0.0.1"
    assert metrics_addr() == "127.0.0.1"
    path.write_text(
        "version: 1\npipeline: t\nworkers: {metrics_host: 0.0.0.0}\nqueues: {q: {handler: 'm:f'}}\n"
    )
    assert metrics_addr(load(path).workers.metrics_host) == "0.0.0.0"
