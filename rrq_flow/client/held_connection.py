"""One connection of a redis-py pool, kept checked out for a producer's one-at-a-time calls."""

from __future__ import annotations

import os
import threading
from typing import Any

import redis
import redis.exceptions

from rrq_flow.protocol.scripts import ScriptArg, call_on, lean_command

# Pools whose connections all go to one fixed address: a Sentinel pool picks the master per
# checkout (a held connection would stay with the old one), a Cluster client has no one pool.
_PLAIN_POOLS = (redis.ConnectionPool, redis.BlockingConnectionPool)


class HeldConnection:
    """Sends one command at a time on a connection the client's pool lent once and for all.

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
            conn = self._ready()
            try:
                return call_on(conn, command)
            except redis.exceptions.ResponseError:
                raise  # the whole reply was read: the connection is clean
            except BaseException:
                conn.disconnect()  # a reply may still be on its way
                raise
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
