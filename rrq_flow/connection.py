"""Build Redis clients (coredis for trio/asyncio, redis-py for sync code) from a URL.

Connect and command timeouts are always set: both libraries default to none, and a worker
waiting forever on a half-open socket would hold its jobs' leases hostage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlparse

import coredis

from rrq_flow.config.model import RedisSettings
from rrq_flow.errors import RRQFlowError

if TYPE_CHECKING:
    import redis

# Blocking wake-up calls wait at most this long server-side; the socket timeout must exceed it.
MAX_BLOCK_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class RedisLocation:
    host: str | None = None
    port: int | None = None
    unix_socket: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False


def parse_redis_url(url: str) -> RedisLocation:
    """Understand ``redis://``, ``rediss://`` and ``unix://`` URLs (``?db=N`` for sockets)."""
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    username = unquote(parsed.username) if parsed.username else None
    password = unquote(parsed.password) if parsed.password else None
    if parsed.scheme == "unix":
        db = int(query.get("db", ["0"])[0])
        return RedisLocation(unix_socket=parsed.path, db=db, username=username, password=password)
    if parsed.scheme not in ("redis", "rediss"):
        raise RRQFlowError(
            f"unsupported Redis URL scheme {parsed.scheme!r} in {url!r}: "
            "use redis://, rediss:// or unix://"
        )
    path = parsed.path.lstrip("/")
    db = int(path) if path else int(query.get("db", ["0"])[0])
    return RedisLocation(
        host=parsed.hostname or "localhost",
        port=parsed.port or 6379,
        db=db,
        username=username,
        password=password,
        ssl=parsed.scheme == "rediss",
    )


def _command_timeout(settings: RedisSettings) -> float:
    # A blocking wake-up call must not be cut off by the socket timeout.
    return max(settings.command_timeout, MAX_BLOCK_SECONDS + 2.0)


def open_async_redis(url: str, settings: RedisSettings, **extra: Any) -> coredis.Redis[str]:
    """A coredis client (decoded str replies). Use it as ``async with``."""
    loc = parse_redis_url(url)
    common: dict[str, Any] = dict(
        db=loc.db,
        username=loc.username,
        password=loc.password,
        connect_timeout=settings.connect_timeout,
        stream_timeout=_command_timeout(settings),
        decode_responses=True,
        # Our scripts are written to be safe when repeated after a lost reply, so the default
        # retry on connection errors is kept; outage handling lives in the worker loop.
        verify_version=False,
    )
    common.update(extra)
    if loc.unix_socket is not None:
        return coredis.Redis(unix_socket_path=loc.unix_socket, **common)
    return coredis.Redis(host=loc.host or "localhost", port=loc.port or 6379, ssl=loc.ssl, **common)


def open_sync_redis(url: str, settings: RedisSettings, **extra: Any) -> redis.Redis:
    """A redis-py client (decoded str replies)."""
    import redis  # here, not at module level: workers never need redis-py (6 MiB of RSS)

    loc = parse_redis_url(url)
    common: dict[str, Any] = dict(
        db=loc.db,
        username=loc.username,
        password=loc.password,
        socket_connect_timeout=settings.connect_timeout,
        socket_timeout=_command_timeout(settings),
        decode_responses=True,
    )
    common.update(extra)
    if loc.unix_socket is not None:
        return redis.Redis(unix_socket_path=loc.unix_socket, **common)
    return redis.Redis(host=loc.host or "localhost", port=loc.port or 6379, ssl=loc.ssl, **common)
