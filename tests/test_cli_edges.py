"""Bad input at the edges: one clear line, the documented exit code, nothing half-enqueued.

The real CLI runs in a subprocess where the point is what a user sees (argv bytes, exit codes,
stdout/stderr); the many small variations run in-process through ``main`` to keep the suite fast.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from rrq_flow.cli import main
from rrq_flow.client.payload import MAX_JSON_DEPTH
from rrq_flow.client.sync_client import SyncClient
from rrq_flow.config import load
from rrq_flow.config.loader import MAX_EXPANDED_NODES, MAX_NESTING, parse_text
from rrq_flow.errors import ConfigUsageError, PayloadError
from tests.conftest import run_burst
from tests.test_cli_run import cli

QUEUES = "queues:\n  q: {handler: 'tests.handlers:echo'}\n"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`main(["run", ...])` in-process sets up logging on pytest's captured stderr: undo it, so
    later tests do not log to a closed stream."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def pipeline(tmp_path: Path, url: str | None, extra: str = "") -> Path:
    path = tmp_path / "pipeline.yaml"
    redis_line = f'redis: {{url: "{url}", connect_timeout: 30s}}\n' if url else ""
    path.write_text(f"version: 1\npipeline: t\n{redis_line}{extra}{QUEUES}")
    return path


def refused_url() -> str:
    """A TCP port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def nothing_enqueued(sync_redis: redis.Redis) -> None:
    assert [k for k in sync_redis.scan_iter("*") if ":job" in k or "job:" in k] == []


# --- --json: every failure is an object on stdout ---------------------------------------------


def test_refused_connection_is_reported_at_once_as_json(tmp_path: Path) -> None:
    path = pipeline(tmp_path, refused_url())  # connect_timeout 30s: no waiting for it
    started = time.monotonic()
    out = cli("status", str(path), "--json")
    elapsed = time.monotonic() - started
    assert out.returncode == 3
    data = json.loads(out.stdout)
    assert data["exit_code"] == 3
    assert data["error"].startswith("cannot reach Redis at redis://127.0.0.1:")
    assert "refused" in one_line(out.stderr).lower()
    assert elapsed < 25  # well under the 30 s connect timeout, even on a loaded machine


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["workers"],
        ["job", "x"],
        ["dlq list"],
        ["dlq show", "x"],
        ["cancel", "x"],
        ["health"],
        ["enqueue", "q", "--args", "[1]"],
        ["run", "--burst", "--progress", "off"],
    ],
)
def test_every_command_gives_a_json_error_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    path = pipeline(tmp_path, refused_url())
    code = main([*command[0].split(), str(path), *command[1:], "--json"])
    out, err = capsys.readouterr()
    assert code == 3
    assert json.loads(out) == {"error": err.strip().removeprefix("rrq-flow: "), "exit_code": 3}


def test_usage_errors_and_config_problems_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = pipeline(tmp_path, refused_url())
    assert main(["job", str(path), "--json"]) == 2  # JOB_ID missing: argparse's error
    out, err = capsys.readouterr()
    assert json.loads(out) == {
        "error": "rrq-flow job: the following arguments are required: JOB_ID",
        "exit_code": 2,
    }
    assert "usage:" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\npipeline: t\n" + QUEUES + "  r: {handler: 'tests.handlers:echo', timout: 1}\n"
    )
    assert main(["status", str(bad), "--json"]) == 2
    data = json.loads(capsys.readouterr().out)
    assert data["exit_code"] == 2
    assert data["error"] == f"{bad}: 1 problem(s); run `rrq-flow validate {bad}`"
    assert data["details"] == [f"{bad}:5:39: queues.r.timout: unknown key; did you mean 'timeout'?"]
    assert main(["enqueue", str(path), "nope", "--json"]) == 2
    assert json.loads(capsys.readouterr().out) == {
        "error": "unknown queue 'nope'; the pipeline has: q",
        "exit_code": 2,
    }


# --- run ------------------------------------------------------------------------------------


def test_processes_0_is_a_usage_error(tmp_path: Path, redis_url: str) -> None:
    out = cli("run", str(pipeline(tmp_path, redis_url)), "--burst", "--processes", "0", "--json")
    assert out.returncode == 2
    assert one_line(out.stderr) == "rrq-flow: --processes must be at least 1"
    assert json.loads(out.stdout) == {"error": "--processes must be at least 1", "exit_code": 2}


def test_an_unusable_state_directory_is_named(tmp_path: Path) -> None:
    path = pipeline(tmp_path, None)  # embedded Redis, kept in .rrq-flow/ beside the file
    (tmp_path / ".rrq-flow").write_text("a file where the directory should be")
    out = cli("status", str(path))
    assert out.returncode == 3
    assert one_line(out.stderr) == (
        f"rrq-flow: {tmp_path / '.rrq-flow'}: it exists and is not a directory; the embedded "
        "Redis keeps its data there (fix its permissions, or set redis.url to use another Redis)"
    )


# --- enqueue: input that is not UTF-8 or nested too deeply ------------------------------------


def test_a_jsonl_file_that_is_not_utf8(
    tmp_path: Path, redis_url: str, sync_redis: redis.Redis
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b'[1]\n["caf\xe9"]\n[3]\n')  # latin-1, line 2
    out = cli("enqueue", str(pipeline(tmp_path, redis_url)), "q", "--jsonl", str(jobs))
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"{jobs}:2: not UTF-8 text (undecodable byte 0xe9 at column 6)",
        f"{jobs}: 1 bad line(s); nothing was enqueued",
    ]
    nothing_enqueued(sync_redis)


def test_run_input_that_is_not_utf8(
    tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str], sync_redis: redis.Redis
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b"[1]\n[2]\n\xff\xfe[3]\n")
    path = pipeline(tmp_path, redis_url)
    assert main(["run", str(path), "--burst", "--input", f"q={jobs}", "--json"]) == 2
    out, err = capsys.readouterr()
    assert f"{jobs}:3: not UTF-8 text (undecodable byte 0xff at column 1)" in err
    assert json.loads(out)["error"] == f"{jobs}: 1 bad line(s); nothing was enqueued"
    nothing_enqueued(sync_redis)


def test_args_nested_too_deeply(tmp_path: Path, redis_url: str, sync_redis: redis.Redis) -> None:
    deep = "[" * 5000 + "]" * 5000  # Python's own parser gives up at about 1,000
    out = cli("enqueue", str(pipeline(tmp_path, redis_url)), "q", "--args", deep)
    assert out.returncode == 2
    assert one_line(out.stderr) == (
        f"rrq-flow: --args: nested deeper than {MAX_JSON_DEPTH} levels "
        "(the limit for job arguments)"
    )
    nothing_enqueued(sync_redis)


def test_kwargs_and_jsonl_nested_too_deeply(
    tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str], sync_redis: redis.Redis
) -> None:
    path = pipeline(tmp_path, redis_url)
    just_enough = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    one_more = "[" + just_enough + "]"
    kwargs = '{"a": ' + one_more + "}"  # the object is a level too
    assert main(["enqueue", str(path), "q", "--kwargs", kwargs]) == 2
    assert "--kwargs: nested deeper than" in capsys.readouterr().err
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(f"{just_enough}\n{one_more}\n")
    assert main(["enqueue", str(path), "q", "--jsonl", str(jobs)]) == 2
    assert f"{jobs}:2: nested deeper than {MAX_JSON_DEPTH} levels" in capsys.readouterr().err
    nothing_enqueued(sync_redis)
    jobs.write_text(f"{just_enough}\n")
    assert main(["enqueue", str(path), "q", "--jsonl", str(jobs)]) == 0


def test_a_lone_surrogate_in_args(tmp_path: Path, redis_url: str, sync_redis: redis.Redis) -> None:
    # A byte that is not UTF-8 in argv reaches Python as a lone surrogate (surrogateescape).
    path = pipeline(tmp_path, redis_url)
    out = cli("enqueue", str(path), "q", "--args", os.fsdecode(b'["caf\xe9"]'))
    assert out.returncode == 2
    assert one_line(out.stderr) == (
        "rrq-flow: job for queue 'q': arguments: a lone surrogate \\udce9 (at character 5 of "
        "the JSON) is not valid UTF-8 (a file name that is not UTF-8?); decode such text with "
        "errors='replace', or pass bytes as base64"
    )
    nothing_enqueued(sync_redis)


def test_the_client_refuses_what_redis_must_not_get(redis_url: str, tmp_path: Path) -> None:
    config = load(pipeline(tmp_path, redis_url))
    deep: list[object] = []
    for _ in range(MAX_JSON_DEPTH):
        deep = [deep]
    cases = [
        (("bad\udcff",), {}, r"lone surrogate \\udcff"),
        ((), {"name": "\ud800"}, r"lone surrogate \\ud800"),
        ((deep,), {}, "nested deeper than"),
    ]
    with SyncClient(config) as client:
        for args, kwargs, message in cases:
            with pytest.raises(PayloadError, match=message):
                client.enqueue("q", *args, **kwargs)
        with pytest.raises(PayloadError, match="unique_key"):
            client.enqueue("q", 1, unique_key="k\udcff")
        with pytest.raises(ValueError, match="job id must not contain"):
            client.enqueue("q", 1, job_id="id\udcff")
        nested = [0]
        for _ in range(100_000):  # deeper than the encoder's recursion limit
            nested = [nested]
        with pytest.raises(PayloadError, match="nested deeper than"):
            client.enqueue("q", nested)
        assert client.redis.dbsize() == 0


# --- redis.url: validate refuses what cannot be used, and never shows the password -----------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://u:s3cret@h:abc/0", "redis://u:***@h:abc/0: the port 'abc' must be a number"),
        ("redis://h:99999", "redis://h:99999: the port '99999' must be a number from 1 to 65535"),
        ("redis://:s3cret@h:6379/x", "the database number (path 'x') must be a whole number"),
        ("redis://h/0?db=two", "the database number (?db= 'two') must be a whole number"),
        ("rediss://h/0/1", "the path is the database number only"),
        ("unix://", "unix:// needs the socket's path"),
        ("unix:///tmp/r.sock?db=-1", "the database number (?db= '-1') must be a whole number"),
        ("http://u:s3cret@h/0", "got 'http://u:***@h/0'"),
    ],
)
def test_validate_refuses_unusable_urls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, message: str
) -> None:
    path = pipeline(tmp_path, url)
    assert main(["validate", str(path), "--no-imports"]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{path}:3:14: redis.url: ")
    assert message in out
    assert "s3cret" not in out


def test_usable_urls_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for url in ("redis://h", "rediss://u:p@h:6380/2", "redis://h/0?db=3", "unix:///r.sock?db=1"):
        assert main(["validate", str(pipeline(tmp_path, url)), "--no-imports"]) == 0, url
    capsys.readouterr()


def test_validate_in_a_subprocess_shows_the_url_masked(tmp_path: Path) -> None:
    out = cli("validate", str(pipeline(tmp_path, "redis://ops:s3cret@db:63x9/0")))
    assert out.returncode == 1
    assert out.stdout.splitlines()[0] == (
        f"{tmp_path / 'pipeline.yaml'}:3:14: redis.url: redis://ops:***@db:63x9/0: "
        "the port '63x9' must be a number from 1 to 65535"
    )
    assert "s3cret" not in out.stdout + out.stderr


# --- YAML: aliases are bounded, positions have one shape -------------------------------------


def billion_laughs() -> str:
    lines = ["version: 1", "pipeline: t", "a0: &a0 [lol,lol,lol,lol,lol,lol,lol,lol,lol]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\nqueues: {q: {handler: 'm:f', x: *a8}}\n"


def test_an_alias_bomb_is_refused_quickly_and_in_little_memory() -> None:
    text = billion_laughs()
    assert len(text.encode()) < 500  # 9 levels of 9: 387,420,489 strings once expanded
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, the peak so far
    started = time.monotonic()
    with pytest.raises(ConfigUsageError) as info:
        parse_text(text, "bomb.yaml")
    elapsed = time.monotonic() - started
    peak_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert str(info.value) == (
        f"bomb.yaml:8:5: a5[0]: YAML aliases expand to more than {MAX_EXPANDED_NODES:,} nodes "
        "(an alias bomb?); write the settings out instead"
    )
    assert peak_growth < 100 * 1024  # under 100 MB more than the test process had used
    assert elapsed < 30  # it stops after MAX_EXPANDED_NODES, not after 387 million


def test_an_alias_bomb_through_validate(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs())
    out = cli("validate", str(path))
    assert out.returncode == 2
    assert one_line(out.stderr).startswith(f"rrq-flow: {path}:8:5: a5[0]: YAML aliases expand")


def test_merge_key_bombs_and_deep_nesting_are_refused() -> None:
    merges = ["version: 1", "m0: &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9}"]
    for i in range(1, 9):  # merging repeats keys without building values: counted too
        merges.append(f"m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 9) + "]}")
    with pytest.raises(ConfigUsageError, match="YAML aliases expand to more than"):
        parse_text("\n".join(merges) + "\n", "m.yaml")
    with pytest.raises(ConfigUsageError) as info:
        parse_text("version: 1\nx: " + "[" * 5000 + "]" * 5000 + "\n", "deep.yaml")
    assert str(info.value) == f"deep.yaml:2:{MAX_NESTING + 3}: (root): nested deeper than 64 levels"
    chain = ["a0: &a0 [1]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 200)]
    with pytest.raises(ConfigUsageError, match=r"nested deeper than 64 levels \(through aliases\)"):
        parse_text("\n".join(chain) + "\n", "chain.yaml")


def test_ordinary_anchors_and_merges_still_work(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\npipeline: t\n"
        "x-base: &base {concurrency: 3, retry: &retry {max_attempts: 5}}\n"
        "x-many: &many [" + ", ".join(["*base"] * 50) + "]\n"
        "queues:\n"
        "  a: {<<: *base, handler: 'tests.handlers:echo'}\n"
        "  b: {<<: [*base], handler: 'tests.handlers:echo', retry: *retry, concurrency: 2}\n"
    )
    config = load(path)
    assert config.queues["a"].concurrency == 3
    assert config.queues["b"].concurrency == 2
    assert config.queues["b"].retry.max_attempts == 5


def test_a_problem_at_the_root_says_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\n" + QUEUES)
    assert main(["validate", str(path), "--no-imports"]) == 1
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{path}:1:1: (root): missing required key 'pipeline'"
    )


# --- terminal output: handler data is shown escaped -------------------------------------------

NASTY = "\x1b[2J\rgotcha\x9b1m\u202eevil\nforged line"
NASTY_SHOWN = "\\x1b[2J\\rgotcha\\x9b1m\\u202eevil\\nforged line"


async def raise_message(message: str) -> None:
    """A handler (used by name) whose error message is whatever it was given."""
    raise ValueError(message)


def _no_terminal_controls(text: str) -> None:
    for char in ("\x1b", "\r", "\x9b", "\u202e"):
        assert char not in text


async def test_job_dlq_and_status_show_handler_data_escaped(
    tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = pipeline(tmp_path, redis_url, "defaults: {retry: {max_attempts: 1}}\n")
    path.write_text(path.read_text() + "  bad: {handler: 'tests.test_cli_edges:raise_message'}\n")
    config = load(path)
    with SyncClient(config) as client:
        bad = client.enqueue("bad", NASTY)
        good = client.enqueue("q", NASTY)
    await run_burst(config)
    capsys.readouterr()

    for command in (["job", str(path), bad], ["dlq", "show", str(path), bad]):
        assert main(command) == 0
        out = capsys.readouterr().out
        _no_terminal_controls(out)
        assert f"last error (attempt 1): ValueError: {NASTY_SHOWN}" in out
        assert 'args         ["\\u001b[2J\\rgotcha\\x9b1m\\u202eevil\\nforged line"]' in out
        assert "  ValueError: \\x1b[2J\\rgotcha\\x9b1m\\u202eevil\n  forged line\n" in out
    assert main(["job", str(path), good]) == 0
    out = capsys.readouterr().out
    _no_terminal_controls(out)
    assert "gotcha\\x9b1m\\u202eevil" in out  # JSON escapes C0 itself; C1 and bidi are ours
    assert main(["dlq", "list", str(path)]) == 0
    out = capsys.readouterr().out
    _no_terminal_controls(out)
    assert "ValueError: \\x1b[2J gotcha\\x9b1m\\u202eevil forged line" in out


def test_status_and_text_logs_escape_what_they_show() -> None:
    from rrq_flow.cli.status import render_status
    from rrq_flow.client.admin import WorkerInfo
    from rrq_flow.logs import TextFormatter

    worker = WorkerInfo(
        id="w\x1b]0;owned\x07", host="h\roverwritten", pid=1, queues=["q"], in_flight=0,
        started_at=None, uptime=None, last_beat=0.0, last_beat_age=0.0, interval=1.0,
        version=None, burst=False, stopping=False, alive=True,
    )  # fmt: skip
    shown = render_status([], [worker])
    _no_terminal_controls(shown)
    assert "w\\x1b]0;owned\\x07  h\\roverwritten:1" in shown

    record = logging.LogRecord(
        "rrq_flow", logging.ERROR, __file__, 1, "job failed: %s", (NASTY,), None
    )
    line = TextFormatter().format(record)
    assert "\n" not in line  # one record, one line: no forged log lines
    assert line.endswith(f"job failed: {NASTY_SHOWN}")


def test_job_in_a_subprocess_writes_no_escape_bytes(
    tmp_path: Path, redis_url: str, sync_redis: redis.Redis
) -> None:
    path = pipeline(tmp_path, redis_url)
    with SyncClient(load(path)) as client:
        job_id = client.enqueue("q", "\x1b[2J", "\r", "\u202e")
    out = cli("job", str(path), job_id)
    assert out.returncode == 0, out.stderr
    _no_terminal_controls(out.stdout)
    assert '["\\u001b[2J", "\\r", "\\u202e"]' in out.stdout


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_state_directory_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = pipeline(tmp_path, None)
    state = tmp_path / ".rrq-flow"
    state.mkdir(mode=0o500)
    try:
        assert main(["status", str(path)]) == 3
    finally:
        state.chmod(0o700)
    assert capsys.readouterr().err == (
        f"rrq-flow: {state}: it is not writable; the embedded Redis keeps its data there (fix "
        "its permissions, or set redis.url to use another Redis)\n"
    )


# --- Redis at maxmemory: one line and exit 3, never a traceback --------------------------------


def test_a_full_redis_is_one_line_and_exit_3(tmp_path: Path) -> None:
    """maxmemory reached (noeviction): writes are refused with what to do (a worker's summary
    says Redis refused, not that it is unreachable). Redis then refuses everything queued in
    MULTI, but the access check still passes and `status` reads without its transaction, so the
    read-only commands still answer."""
    from rrq_flow.redis_server import start_redis_server

    base = tmp_path / "redis"
    base.mkdir()
    server = start_redis_server(base, unix_socket=base / "r.sock", appendonly=False)
    try:
        path = tmp_path / "full.yaml"
        path.write_text(
            f'version: 1\npipeline: t\nredis: {{url: "{server.url}", persistence: none}}\n{QUEUES}'
        )
        admin = redis.Redis(unix_socket_path=str(base / "r.sock"))
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
        jobs = tmp_path / "jobs.jsonl"
        jobs.write_text("[1]\n[2]\n")
        for args in (
            ("enqueue", str(path), "q", "--args", "[1]"),
            ("enqueue", str(path), "q", "--jsonl", str(jobs)),
            ("run", str(path), "--burst", "--progress", "off", "--input", f"q={jobs}"),
        ):
            out = cli(*args)
            assert out.returncode == 3, (args, out.stderr)
            assert "Traceback" not in out.stderr, out.stderr
            assert "refused the call" in out.stderr and "out of memory" in out.stderr, out.stderr
        worker = cli("run", str(path), "--burst", "--progress", "off")
        assert worker.returncode == 3 and "Traceback" not in worker.stderr, worker.stderr
        assert "out of memory" in worker.stderr
        assert "finished (Redis refused the call)" in worker.stdout + worker.stderr
        status = cli("status", str(path))  # its transaction is refused: read without one
        assert status.returncode == 0 and status.stdout.splitlines()[2].split()[0] == "q", status
        health = cli("health", str(path))
        assert health.returncode == 1 and "no live worker" in health.stdout + health.stderr
        assert "refused" not in health.stderr and "Traceback" not in health.stderr
        admin.close()
    finally:
        server.stop()
