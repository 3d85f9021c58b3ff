"""The one place where rrq-flow opens connections to Redis.

Every connection — the async coredis client (worker, async Client, progress display), the sync
redis-py client (CLI, SyncClient, embedded probe) and the idle wait's raw RESP stream — is built
here from a URL and the pipeline's ``redis:`` settings (timeouts, ``redis.tls``), so that TLS
verification, timeouts and credentials are the same on every path.

Connect and command timeouts are always set: both libraries default to none, and a worker
waiting forever on a half-open socket would hold its jobs' leases hostage. Server certificates
are verified and host names checked unless ``redis.tls`` says otherwise.

With ``redis.sentinel`` the clients find the master through the sentinels (and find it again
after a failover); with ``redis.cluster`` they are cluster clients seeded by the URL and
``redis.nodes``, following ``MOVED``/``ASK`` by themselves. The URL then only gives the
credentials, TLS and database (Sentinel) or one seed node (Cluster).
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
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


def parse_host_port(node: str) -> tuple[str, int]:
    """``host:port`` (as the schema allows it) as a pair."""
    host, _, port = node.rpartition(":")
    return host, int(port)


def url_for(settings: RedisSettings) -> str | None:
    """The URL the clients are built from: ``url``, or for a Cluster without one its first seed
    node, or for Sentinel a placeholder (the master's address comes from the sentinels). None
    when the file says nothing about where Redis is (embedded Redis)."""
    if settings.url:
        return settings.url
    if settings.cluster and settings.nodes:
        return f"redis://{settings.nodes[0]}/0"
    if settings.sentinel is not None:
        return f"redis://{settings.sentinel.master}/0"
    return None


def cluster_seeds(url: str, settings: RedisSettings) -> list[tuple[str, int]]:
    """The seed nodes of a Cluster: the URL's host and every ``redis.nodes`` entry."""
    loc = parse_redis_url(url)
    seeds = [(loc.host or "localhost", loc.port or 6379)]
    seeds += [parse_host_port(n) for n in settings.nodes]
    return list(dict.fromkeys(seeds))


def setup_commands(loc: RedisLocation) -> list[tuple[str | int, ...]]:
    """AUTH and SELECT as ``loc`` says: what a connection that speaks RESP itself sends first."""
    commands: list[tuple[str | int, ...]] = []
    if loc.password is not None:
        commands.append(
            ("AUTH", loc.username, loc.password) if loc.username else ("AUTH", loc.password)
        )
    if loc.db:
        commands.append(("SELECT", loc.db))
    return commands


def data_location(url: str, settings: RedisSettings) -> RedisLocation:
    """The URL's location, with Sentinel's data-node password when ``redis.sentinel`` sets one."""
    loc = parse_redis_url(url)
    if settings.sentinel is not None and settings.sentinel.password is not None:
        loc = replace(loc, password=settings.sentinel.password)
    return loc


def _command_timeout(settings: RedisSettings) -> float:
    # A blocking wake-up call must not be cut off by the socket timeout.
    return max(settings.command_timeout, MAX_BLOCK_SECONDS + 2.0)


class _SentinelRedis(coredis.Redis[str]):
    """The master's client from coredis' Sentinel; entering it enters the sentinels too."""

    rrq_sentinel: coredis.Sentinel[str]

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncIterator[_SentinelRedis]:
        async with self.rrq_sentinel, super().__asynccontextmanager__():
            yield self


def open_async_redis(url: str, settings: RedisSettings, **extra: Any) -> coredis.Redis[str]:
    """A coredis client (decoded str replies). Use it as ``async with``.

    For a Cluster it is a ``coredis.RedisCluster`` (typed as the common client interface)."""
    loc = data_location(url, settings)
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
    if settings.cluster:
        from coredis.typing import Node

        del common["db"]  # a Cluster has only database 0
        nodes = [Node(host=h, port=p) for h, p in cluster_seeds(url, settings)]
        cluster: Any = coredis.RedisCluster(startup_nodes=nodes, **common)
        return cluster  # type: ignore[no-any-return]
    if settings.sentinel is not None:
        return _async_sentinel_master(settings, common)
    return coredis.Redis(host=loc.host or "localhost", port=loc.port or 6379, **common)


def _async_sentinel_master(settings: RedisSettings, common: dict[str, Any]) -> coredis.Redis[str]:
    from coredis.connection import TCPLocation

    s = settings.sentinel
    assert s is not None
    common = {k: v for k, v in common.items() if k != "verify_version"}
    sentinel_kwargs: dict[str, Any] = dict(
        connect_timeout=settings.connect_timeout,
        stream_timeout=settings.connect_timeout,
        password=s.sentinel_password,
        decode_responses=True,
        verify_version=False,
    )
    if "ssl_context" in common:  # redis.tls applies to the sentinels too
        sentinel_kwargs["ssl_context"] = common["ssl_context"]
    manager: coredis.Sentinel[str] = coredis.Sentinel(
        [TCPLocation(*parse_host_port(n)) for n in s.nodes],
        sentinel_kwargs=sentinel_kwargs,
        decode_responses=True,
    )
    primary = manager.primary_for(s.master, redis_class=_SentinelRedis, **common)
    assert isinstance(primary, _SentinelRedis)
    primary.rrq_sentinel = manager
    return primary


def _sentinel_connection_class() -> type:
    """redis-py's Sentinel connection, which also treats ``NOREPLICAS`` as "the master moved"
    (it already does so for ``READONLY``): see :mod:`rrq_flow.failover`."""
    import redis.exceptions
    from redis.sentinel import SentinelManagedConnection

    from rrq_flow.failover import is_stale_master

    class Connection(SentinelManagedConnection):
        def read_response(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().read_response(*args, **kwargs)
            except redis.exceptions.ResponseError as exc:
                if self.connection_pool.is_master and is_stale_master(exc):
                    self.disconnect()  # type: ignore[no-untyped-call]
                    raise redis.exceptions.ConnectionError(f"not the master now: {exc}") from exc
                raise

    return Connection


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


def sync_redis_kwargs(url: str, settings: RedisSettings, **extra: Any) -> dict[str, Any]:
    """redis-py's connection arguments for the pipeline's data nodes (credentials, database,
    timeouts, TLS) without the address; ``extra`` overrides."""
    loc = data_location(url, settings)
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
    if loc.unix_socket is None and loc.ssl:
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
    return common


def sync_sentinel_manager(settings: RedisSettings, common: dict[str, Any]) -> Any:
    """redis-py's ``Sentinel`` for ``redis.sentinel`` (its ``sentinels`` speak to each one,
    with the sentinels' password and the data nodes' TLS); ``common`` from
    :func:`sync_redis_kwargs`."""
    from redis.sentinel import Sentinel

    s = settings.sentinel
    assert s is not None
    tls_kwargs = {k: v for k, v in common.items() if k.startswith("ssl")}
    return Sentinel(  # type: ignore[no-untyped-call]
        [parse_host_port(n) for n in s.nodes],
        sentinel_kwargs=dict(
            password=s.sentinel_password,
            socket_connect_timeout=settings.connect_timeout,
            socket_timeout=settings.connect_timeout,
            **tls_kwargs,
        ),
    )


def open_sync_redis(url: str, settings: RedisSettings, **extra: Any) -> redis.Redis:
    """A redis-py client (decoded str replies)."""
    import redis  # here, not at module level: workers never need redis-py (6 MiB of RSS)

    loc = data_location(url, settings)
    common = sync_redis_kwargs(url, settings, **extra)
    if loc.unix_socket is not None:
        return redis.Redis(unix_socket_path=loc.unix_socket, **common)
    if settings.cluster:
        from redis.cluster import ClusterNode, RedisCluster

        del common["db"]  # a Cluster has only database 0
        common.pop("retry", None)  # a cluster client retries per node itself
        nodes = [ClusterNode(h, p) for h, p in cluster_seeds(url, settings)]  # type: ignore[no-untyped-call]
        cluster: Any = RedisCluster(startup_nodes=nodes, **common)
        return cluster  # type: ignore[no-any-return]
    if settings.sentinel is not None:
        manager = sync_sentinel_manager(settings, common)
        master: redis.Redis = manager.master_for(
            settings.sentinel.master, connection_class=_sentinel_connection_class(), **common
        )
        return master
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
