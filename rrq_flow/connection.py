"""The one place where rrq-flow opens connections to Redis.

Every connection — the async coredis client (worker, async Client, progress display), the sync
redis-py client (CLI, SyncClient, embedded probe) and the idle wait's raw RESP stream — is built
here from a URL and the pipeline's ``redis:`` settings (timeouts, ``redis.tls``), so that TLS
verification, timeouts and credentials are the same on every path.

Connect and command timeouts are always set: both libraries default to none, and a worker
waiting forever on a half-open socket would hold its jobs' leases hostage. Server certificates
are verified and host names checked unless ``redis.tls`` says otherwise.
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlparse

import coredis
import trio

from rrq_flow.config.model import RedisSettings, TLSSettings
from rrq_flow.errors import RedisSettingsError
from rrq_flow.redact import redact_url

if TYPE_CHECKING:
    import redis

__all__ = [
    "MAX_BLOCK_SECONDS",
    "RedisLocation",
    "open_async_redis",
    "open_stream",
    "open_sync_redis",
    "parse_redis_url",
    "redact_url",
    "tls_context",
]

# Blocking wake-up calls wait at most this long server-side; the socket timeout must exceed it.
MAX_BLOCK_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class RedisLocation:
    host: str | None = None
    port: int | None = None
    unix_socket: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False


def parse_redis_url(url: str) -> RedisLocation:
    """Understand ``redis://``, ``rediss://`` and ``unix://`` URLs (``?db=N`` for sockets).

    Errors never repeat the URL's password.
    """
    try:
        parsed = urlparse(url)
        query = parse_qs(parsed.query)
        username = unquote(parsed.username) if parsed.username else None
        password = unquote(parsed.password) if parsed.password else None
        if parsed.scheme == "unix":
            db = int(query.get("db", ["0"])[0])
            return RedisLocation(
                unix_socket=parsed.path, db=db, username=username, password=password
            )
        if parsed.scheme not in ("redis", "rediss"):
            raise RedisSettingsError(
                f"unsupported Redis URL scheme {parsed.scheme!r} in {redact_url(url)!r}: "
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
    except ValueError as exc:
        # urlparse's port and int() errors; neither names the password, but say it our way.
        if isinstance(exc, RedisSettingsError):
            raise
        raise RedisSettingsError(f"invalid Redis URL {redact_url(url)!r}: {exc}") from None


@functools.lru_cache(maxsize=16)
def tls_context(tls: TLSSettings) -> ssl.SSLContext:
    """The TLS context of every ``rediss://`` connection (one per settings, reused).

    Raises RedisSettingsError naming the setting when a file cannot be loaded.
    """
    context = ssl.create_default_context()
    if tls.ca_file:
        try:
            context.load_verify_locations(cafile=tls.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise RedisSettingsError(
                f"redis.tls.ca_file: cannot load {tls.ca_file!r}: {exc}"
            ) from None
    if tls.cert_file:
        try:
            context.load_cert_chain(certfile=tls.cert_file, keyfile=tls.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise RedisSettingsError(
                f"redis.tls.cert_file/key_file: cannot load {tls.cert_file!r}: {exc}"
            ) from None
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = tls.check_hostname
    return context


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
    if loc.ssl:
        # coredis' own ssl=True does not check host names; our context does.
        common["ssl_context"] = tls_context(settings.tls)
    return coredis.Redis(host=loc.host or "localhost", port=loc.port or 6379, **common)


def _no_client_commands() -> dict[str, Any]:
    """redis-py's arguments for sending no CLIENT command on connect (CLIENT SETINFO, CLIENT
    MAINT_NOTIFICATIONS): a least-privilege ACL user (rrq_flow.acl) is not allowed CLIENT, and
    each refusal would be an entry in the server's ACL LOG. Spelled per redis-py version."""
    kwargs: dict[str, Any] = {}
    try:
        import redis.driver_info  # noqa: F401
    except ImportError:
        kwargs.update(lib_name=None, lib_version=None)
    else:
        kwargs["driver_info"] = None
    try:
        from redis.maint_notifications import MaintNotificationsConfig
    except ImportError:
        pass
    else:
        kwargs["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
    return kwargs


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
        **_no_client_commands(),
    )
    common.update(extra)
    if loc.unix_socket is not None:
        return redis.Redis(unix_socket_path=loc.unix_socket, **common)
    if loc.ssl:
        tls = settings.tls
        tls_context(tls)  # fail early, with our message, on a file that cannot be loaded
        common.update(
            ssl=True,
            ssl_ca_certs=tls.ca_file,
            ssl_certfile=tls.cert_file,
            ssl_keyfile=tls.key_file,
            ssl_cert_reqs="required" if tls.verify else "none",
            ssl_check_hostname=tls.verify and tls.check_hostname,
        )
    return redis.Redis(host=loc.host or "localhost", port=loc.port or 6379, **common)


async def open_stream(loc: RedisLocation, settings: RedisSettings) -> trio.abc.Stream:
    """A raw byte stream to Redis (TCP, unix socket, TLS as the URL and settings say).

    For connections that speak RESP themselves (the idle wait's); authentication is theirs.
    Raises OSError, trio's errors or ssl.SSLError (certificate problems) on failure.
    """
    with trio.fail_after(settings.connect_timeout):
        if loc.unix_socket is not None:
            return await trio.open_unix_socket(loc.unix_socket)
        stream: trio.abc.Stream = await trio.open_tcp_stream(
            loc.host or "localhost", loc.port or 6379
        )
        if not loc.ssl:
            return stream
        ssl_stream = trio.SSLStream(
            stream, tls_context(settings.tls), server_hostname=loc.host or "localhost"
        )
        try:
            await ssl_stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return ssl_stream
