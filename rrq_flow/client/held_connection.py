"""One connection of a redis-py pool, kept checked out for a producer's script calls."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
import redis.exceptions

from rrq_flow.protocol.scripts import ScriptArg, call_on, lean_command, pack_command

C = TypeVar("C")
R = TypeVar("R")

# Pools whose connections all go to one fixed address: a Sentinel pool picks the master per
# checkout (a held connection would stay with the old one), a Cluster client has no one pool.
_PLAIN_POOLS = (redis.ConnectionPool, redis.BlockingConnectionPool)


class HeldConnection:
    """Sends a producer's commands on a connection the client's pool lent once and for all.

    A checkout and return of redis-py 8's pool (a lock, observability counters, a pid check
    each way) costs ~15 µs of CPU per call, and about ten times that in a producer that slept
    in between (caches gone cold): most of the time an ``enqueue`` of a web request spends
    before its command leaves. Here a call only checks, as the pool's checkout does, that the
    connection is connected and holds no stray data (a connection the server closed reads as
    such, and is made again before the command is sent).

    Thread-safe: a call that finds the held connection busy (another thread's call) goes
    through the pool. After a fork the child never touches the parent's socket: it takes a
    connection of its own. An error that may leave a reply unread (a timeout, an interrupt)
    drops the connection, so a late reply can never answer the next call; an error reply of
    the command leaves it clean. Retries follow the connection's own ``retry``, as in
    :func:`~rrq_flow.protocol.scripts.lean_command`: every script is safe to repeat.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        pool = getattr(client, "connection_pool", None)
        plain = type(pool) in _PLAIN_POOLS and getattr(client, "connection", None) is None
        self._pool: redis.ConnectionPool | None = pool if plain else None
        self._conn: Any = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def call(self, *command: ScriptArg) -> Any:
        """``client.execute_command(*command)``; the reply as redis-py's parser gives it."""
        if self._pool is None or not self._lock.acquire(blocking=False):
            return lean_command(self._client, *command)
        try:
            return _guarded(self._ready(), call_on, command)
        finally:
            self._lock.release()

    def call_many(self, commands: Sequence[Sequence[ScriptArg]]) -> list[Any] | None:
        """``commands`` sent back to back, then their replies read (:func:`call_all_on`): a
        batch of script calls without a pipeline object's per-command bookkeeping, and Redis
        runs the first while the rest are packed. None for a client without a plain pool
        (Cluster, Sentinel): its caller uses a pipeline. While another thread's call holds the
        connection, one from the pool carries them.
        """
        if self._pool is None:
            return None
        if not self._lock.acquire(blocking=False):
            conn = self._pool.get_connection()
            try:
                return _guarded(conn, call_all_on, commands)
            finally:
                self._pool.release(conn)
        try:
            return _guarded(self._ready(), call_all_on, commands)
        finally:
            self._lock.release()

    def _ready(self) -> Any:
        assert self._pool is not None
        conn, pid = self._conn, os.getpid()
        if conn is None or self._pid != pid:  # none yet, or the parent's (after a fork)
            self._conn, self._pid = self._pool.get_connection(), pid
            return self._conn
        try:
            conn.connect()  # a no-op while connected
            stale = conn.can_read()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            stale = True
        if stale:  # closed by the server, or data nobody asked for: start afresh
            conn.disconnect()
            conn.connect()
        return conn

    def close(self) -> None:
        """Give the connection back to its pool (the client's close then closes it)."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and self._pool is not None and self._pid == os.getpid():
                self._pool.release(conn)


def _guarded(conn: Any, call: Callable[[Any, C], R], command: C) -> R:
    """``call(conn, command)``; an error that may leave a reply unread drops the connection."""
    try:
        return call(conn, command)
    except redis.exceptions.ResponseError:
        raise  # every reply was read: the connection is clean
    except BaseException:
        conn.disconnect()  # a reply may still be on its way
        raise


def call_all_on(conn: Any, commands: Sequence[Sequence[ScriptArg]]) -> list[Any]:
    """``commands`` on a redis-py connection, sent back to back, then their replies read in
    order, under the connection's retry policy (each try sends them all again: callers send
    only commands that are safe to repeat). Redis runs the first while the rest are packed and
    sent. Every reply is read before an error reply is raised (the first), so the connection
    stays clean.
    """
    return conn.retry.call_with_retry(  # type: ignore[no-any-return]
        lambda: _send_all_and_read(conn, commands), lambda _error: conn.disconnect()
    )


def _send_all_and_read(conn: Any, commands: Sequence[Sequence[ScriptArg]]) -> list[Any]:
    for command in commands:
        conn.send_packed_command([pack_command(*command)], check_health=False)
    replies: list[Any] = []
    error: redis.exceptions.ResponseError | None = None
    for _ in commands:
        try:
            replies.append(conn.read_response())
        except redis.exceptions.ResponseError as exc:
            replies.append(exc)
            error = error or exc
    if error is not None:
        raise error
    return replies
