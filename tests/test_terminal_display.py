"""`run --burst` in a real pseudo-terminal, its screen rendered by a terminal emulator (pyte): the
live progress block never hides, overwrites or repeats a log line, and ends on the final figures
above the summary."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pexpect
import pyte
import pytest

from tests.test_cli_run import CLI, ROOT, write_pipeline

ROWS, COLS = 200, 220  # tall enough that nothing scrolls off: the whole run stays on screen
DEAD = 33
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")
DEAD_LINE = re.compile(r"WARNING .*job (\S+) dead-lettered")


def _run_in_pty(args: list[str], *, interrupt_after: str | None = None) -> tuple[bytes, int]:
    child = pexpect.spawn(
        CLI[0],
        [*CLI[1:], *args],
        cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color"},
        dimensions=(ROWS, COLS),
        timeout=90,
    )
    raw = b""
    if interrupt_after is not None:
        child.expect(interrupt_after)
        raw += child.before + child.after
        child.kill(signal.SIGINT)
    child.expect(pexpect.EOF)
    raw += child.before
    child.close()
    return raw, child.exitstatus if child.exitstatus is not None else -1


def _screen(raw: bytes) -> list[str]:
    screen = pyte.Screen(COLS, ROWS)
    stream = pyte.ByteStream(screen)
    stream.feed(raw)  # the pty already turned each \n into \r\n
    return [line.rstrip() for line in screen.display]


def _written(raw: bytes) -> list[str]:
    """The lines as written, in order, control sequences stripped (what a log file would hold)."""
    return [line.decode(errors="replace") for line in ANSI.sub(b"", raw).split(b"\n")]


@pytest.mark.parametrize("processes", [1, 2])
def test_burst_progress_in_a_terminal_keeps_every_log_line(
    tmp_path: Path, redis_url: str, processes: int
) -> None:
    p = write_pipeline(
        tmp_path,
        redis_url,
        "  ok: {handler: 'tests.handlers:sleep_for', concurrency: 1}\n"
        "  bad: {handler: 'tests.handlers:always_fail', concurrency: 1, "
        "retry: {max_attempts: 1}}",
    )
    ok = tmp_path / "ok.jsonl"
    ok.write_text("[0.1]\n" * 20)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("[]\n" * DEAD)
    args = ["run", str(p), "--burst", "--processes", str(processes)]
    raw, code = _run_in_pty([*args, "--input", f"ok={ok}", "--input", f"bad={bad}"])
    assert code == 1, raw[-3000:]  # dead jobs: exit 1

    written = [m.group(1) for line in _written(raw) if (m := DEAD_LINE.search(line))]
    assert len(written) == DEAD, raw[-3000:]
    screen = _screen(raw)
    shown = [m.group(1) for line in screen if (m := DEAD_LINE.search(line))]
    assert shown == written  # every line still there, in order, none twice

    blocks = [i for i, line in enumerate(screen) if line.startswith("ok: ")]
    assert len(blocks) == 1, "\n".join(screen)  # the progress block appears once
    at = blocks[0]
    assert screen[at].startswith("ok: 20/20 done")
    assert screen[at + 1].startswith(f"bad: {DEAD}/{DEAD} done")
    assert screen[at + 1].endswith(f"{DEAD} dead")
    last_log = max(i for i, line in enumerate(screen) if DEAD_LINE.search(line))
    summary = next(i for i, line in enumerate(screen) if "rrq-flow run finished" in line)
    assert last_log < at < summary  # the final figures sit between the log and the summary


def test_sigint_draining_line_stays_on_screen(tmp_path: Path, redis_url: str) -> None:
    p = write_pipeline(
        tmp_path, redis_url, "  slow: {handler: 'tests.handlers:sleep_for', concurrency: 2}"
    )
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("[0.3]\n" * 40)
    raw, _ = _run_in_pty(
        ["run", str(p), "--burst", "--progress", "on", "--input", f"slow={jobs}"],
        interrupt_after="slow: [1-9]",
    )
    screen = _screen(raw)
    drain = [line for line in screen if "SIGINT" in line and "drain" in line]
    assert len(drain) == 1, "\n".join(screen)
    blocks = [i for i, line in enumerate(screen) if line.startswith("slow: ")]
    assert len(blocks) == 1, "\n".join(screen)
    assert screen.index(drain[0]) < blocks[0]
