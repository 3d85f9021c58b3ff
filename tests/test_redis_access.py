"""Redis users and passwords, on a real server: least-privilege ACL, clear refusals, no leaks.

- A user with exactly the documented rule (rrq_flow.acl) runs the whole command-line surface,
  with one and two worker processes, and ``ACL LOG`` shows nothing denied.
- A user missing a command, or a wrong password: exit 3 and one line that says so ("permission
  denied: user … lacks BLPOP", "authentication failed"), progress display on or off.
- The password is in no process's command line (supervisor and workers) and in no output.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from rrq_flow.acl import (
    OPTIONAL,
    PIPELINE_COMMANDS,
    SCRIPT_COMMANDS,
    TOP_LEVEL_ONLY,
    acl_rule,
    missing_commands_sync,
    probe_reply_sync,
)
from rrq_flow.cli import main
from rrq_flow.redis_server import RedisServerProcess, start_redis_server

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "pw-S3cr3t-7f2a"  # distinctive: found in any output it leaks into
USER = "rrq-t"


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServerProcess]:
    base = Path(tempfile.mkdtemp(prefix="rrqacl-"))
    srv = start_redis_server(base, appendonly=False)
    admin = redis.Redis(port=srv.port)
    admin.execute_command("ACL", "SETUSER", USER, *acl_rule("t", PASSWORD).split())
    no_blpop = acl_rule("t", PASSWORD).replace(" +blpop", "")
    admin.execute_command("ACL", "SETUSER", "rrq-noblpop", *no_blpop.split())
    admin.close()
    yield srv
    srv.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def admin(server: RedisServerProcess) -> Iterator[redis.Redis]:
    r = redis.Redis(port=server.port, decode_responses=True)
    r.flushall()
    r.execute_command("ACL", "LOG", "RESET")
    yield r
    r.close()


def _pipeline(tmp_path: Path, port: int, user: str, password: str, processes: int = 1) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"""version: 1
pipeline: t
redis:
  url: "redis://{user}:{password}@127.0.0.1:{port}/0"
  connect_timeout: 2s
  persistence: none
workers: {{heartbeat_interval: 500ms, shutdown_grace_period: 2s, processes: {processes}}}
queues:
  ok: {{handler: 'tests.handlers:echo'}}
  bad: {{handler: 'tests.handlers:always_fail', retry: {{max_attempts: 1}}}}
  slow: {{handler: 'tests.handlers:sleep_for'}}
"""
    )
    return path


def _cli(*args: str | Path, check_secret: bool = True, real: bool = False) -> tuple[int, str, str]:
    """Run ``rrq-flow``, in this process or (``real``) as a user does, and check the password
    stays hidden in what it prints."""
    if real:
        done = subprocess.run(
            [sys.executable, "-m", "rrq_flow", *map(str, args)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=300,
            check=False,
        )
        code, out, err = done.returncode, done.stdout, done.stderr
    else:
        out_buf, err_buf = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out_buf), contextlib.redirect_stderr(err_buf):
            code = main([str(a) for a in args])
        out, err = out_buf.getvalue(), err_buf.getvalue()
    if check_secret:
        assert PASSWORD not in out + err, (args, out, err)
    return code, out, err


def _denied(admin: redis.Redis) -> list[dict[str, object]]:
    return [dict(entry) for entry in admin.execute_command("ACL", "LOG")]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_documented_rule_runs_the_whole_cli_surface(
    server: RedisServerProcess, admin: redis.Redis, tmp_path: Path
) -> None:
    assert server.port is not None
    p = _pipeline(tmp_path, server.port, USER, PASSWORD)
    code, out, err = _cli("enqueue", p, "ok", "--args", "[1]")
    assert code == 0, err
    ok_job = out.strip()
    assert _cli("enqueue", p, "bad", "--args", "[]")[0] == 0
    code, out, err = _cli("run", p, "--burst", "--progress", "off", real=True)
    assert code == 1, err  # the "bad" job is dead-lettered
    for _ in range(4):
        assert _cli("enqueue", p, "ok", "--args", "[2]")[0] == 0
    assert _cli("enqueue", p, "bad", "--args", "[]")[0] == 0
    code, _, err = _cli("run", p, "--burst", "--processes", "2", "--progress", "on", real=True)
    assert code == 1, err
    dead = admin.zrange("rrq:{t}:q:bad:dead", 0, -1)
    assert len(dead) == 2
    code, out, err = _cli("enqueue", p, "slow", "--args", "[30]", "--defer", "1h")
    assert code == 0, err
    waiting = out.strip()
    for args in (
        ("status", p),
        ("status", p, "--json"),
        ("workers", p),
        ("job", p, ok_job),
        ("job", p, ok_job, "--json"),
        ("cancel", p, waiting),
        ("dlq", "list", p),
        ("dlq", "show", p, dead[0]),
        ("dlq", "requeue", p, dead[0]),
        ("dlq", "purge", p, "--yes"),
        ("health", p),
        ("validate", p),
        ("validate", p, "--json"),
    ):
        code, out, err = _cli(*args)
        assert code in (0, 1), (args, code, out, err)  # health: no live worker is exit 1
        assert "permission" not in err and "Traceback" not in err, (args, err)
    assert _denied(admin) == [], [(e["object"], e["client-info"]) for e in _denied(admin)]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_missing_command_is_one_clear_line_and_exit_3(
    server: RedisServerProcess, admin: redis.Redis, tmp_path: Path
) -> None:
    assert server.port is not None
    p = _pipeline(tmp_path, server.port, "rrq-noblpop", PASSWORD)
    for args in (
        ("run", p, "--burst", "--progress", "off"),
        ("run", p, "--burst", "--progress", "on"),
        ("run", p, "--burst", "--processes", "2"),
        ("status", p),
        ("enqueue", p, "ok", "--args", "[1]"),
    ):
        code, _, err = _cli(*args, real=args[0] == "run")
        assert code == 3, (args, code, err)
        assert "permission denied: user 'rrq-noblpop' lacks BLPOP" in err, (args, err)
        assert "cannot reach" not in err and "Traceback" not in err, (args, err)
        assert err.count("permission denied") == 1, (args, err)
    # What the check tried and Redis refused: one BLPOP per command run, nothing else (no storm).
    # The check queues it in MULTI (where it never blocks), so Redis logs it in that context.
    entries = _denied(admin)
    assert {(e["object"], e["context"]) for e in entries} == {("blpop", "multi")}
    assert sum(int(e["count"]) for e in entries) <= 5


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_wrong_password_says_authentication_failed(
    server: RedisServerProcess, admin: redis.Redis, tmp_path: Path
) -> None:
    assert server.port is not None
    wrong = PASSWORD[::-1]
    p = _pipeline(tmp_path, server.port, USER, wrong)
    for args in (
        ("run", p, "--burst", "--progress", "off"),
        ("run", p, "--burst", "--progress", "on"),
        ("run", p, "--burst", "--processes", "2"),
        ("status", p),
        ("status", p, "--json"),
        ("workers", p),
        ("job", p, "x"),
        ("health", p),
        ("enqueue", p, "ok", "--args", "[1]"),
    ):
        code, out, err = _cli(*args, check_secret=False, real=args[0] == "run")
        assert wrong not in out + err, (args, out, err)
        assert code == 3, (args, code, err)
        assert f"authentication failed for user '{USER}'" in err, (args, err)
        assert "cannot reach" not in err and "Traceback" not in err, (args, err)


def test_every_needed_command_is_checked_and_the_check_leaves_no_key(
    admin: redis.Redis,
) -> None:
    """Each command of PIPELINE_COMMANDS is probed (in the script, or at top level), and the
    scratch keys are gone afterwards; the rule docs/security.md prints is built from the list."""
    assert probe_reply_sync(admin, "t") == [[], [], []]
    assert missing_commands_sync(admin, "t") == []
    assert admin.keys("*") == []
    assert set(SCRIPT_COMMANDS) | TOP_LEVEL_ONLY | OPTIONAL == set(PIPELINE_COMMANDS)
    docs = (ROOT / "docs" / "security.md").read_text()
    assert acl_rule("thumbnails", "${REDIS_PASSWORD}") in " ".join(docs.split())


def _tree(root: int) -> list[int]:
    """``root`` and every descendant, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_the_password_is_in_no_command_line_of_the_process_tree(
    server: RedisServerProcess, admin: redis.Redis, tmp_path: Path
) -> None:
    assert server.port is not None
    p = _pipeline(tmp_path, server.port, USER, PASSWORD, processes=2)
    for _ in range(4):
        assert _cli("enqueue", p, "slow", "--args", "[0.5]")[0] == 0
    run = subprocess.Popen(
        [sys.executable, "-m", "rrq_flow", "run", str(p), "--burst", "--progress", "off"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: dict[int, str] = {}
    deadline = time.monotonic() + 60
    while run.poll() is None and time.monotonic() < deadline:
        for pid in _tree(run.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline:  # empty once the process has exited
                seen[pid] = cmdline.replace(b"\0", b" ").decode()
        time.sleep(0.05)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    workers = [cmd for cmd in seen.values() if "process_main" in cmd]
    assert len(workers) >= 2, seen  # the supervisor's two worker processes were looked at
    for pid, cmd in seen.items():
        assert PASSWORD not in cmd, (pid, cmd)
    assert PASSWORD not in out + err
    assert os.environ.get("RRQ_FLOW_REDIS_URL") is None  # nothing leaks through our own env
