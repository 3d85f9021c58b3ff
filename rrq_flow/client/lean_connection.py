"""The async Client's own connection for its script calls: RESP on one anyio byte stream.

coredis spends about 300 µs of CPU on each command (a writer task, memory streams, context
managers, per-command objects): three quarters of an async ``enqueue`` whose Redis share is
~50 µs. This connection packs the command with hiredis, writes it, and reads the reply with
hiredis' reader. It speaks only what the Client's script calls need (AUTH, SELECT, then FCALL
or EVALSHA), over TCP, a unix socket or TLS (the same verified context as every other
connection), under asyncio and trio alike (anyio). It is the async twin of
:class:`~rrq_flow.client.held_connection.HeldConnection`.

One call at a time on each: concurrent calls of several tasks take one each, up to a few per
Client (``LeanConnections``), and go through coredis beyond that, so they never queue up behind
one another. A call that
fails, times out or is cancelled closes the connection, so a late reply can never answer a
later call; the next call connects again. A connection the server closed while it sat idle is
found out by the next call (its write or read fails), which is then made once more on a new
connection: every script is safe to repeat.
"""

from __future__ import annotations

import ssl
from typing import Any

import anyio
import anyio.abc
import coredis.exceptions
import hiredis
from coredis.parser import Parser

from rrq_flow.config.model import RedisSettings
from rrq_flow.connection import RedisLocation, data_location, setup_commands, tls_context
from rrq_flow.protocol.scripts import ScriptArg, pack_command

_INCOMPLETE = object()  # hiredis' answer while a reply is not whole yet


class _ErrorReply(Exception):
    """An error reply as hiredis' reader returns it; raised as coredis' class for it."""


# A broken connection (a timeout is not one): when it was made before this call, the server (or
# a proxy) may have closed it while it sat idle, and the call is made again on a new one.
_BROKEN = (
    OSError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    coredis.exceptions.ConnectionError,
)


def _raised(reply: _ErrorReply) -> coredis.exceptions.RedisError:
    """The exception coredis raises for this error reply (its class by the error code, and its
    text without the code), so callers read both clients' refusals alike."""
    return Parser().parse_error(str(reply))


class LeanConnection:
    """One dedicated connection of an async Client; see the module's docstring."""

    def __init__(self, location: RedisLocation, settings: RedisSettings) -> None:
        self._loc = location
        self._settings = settings
        self._ssl: ssl.SSLContext | None = None
        self._stream: anyio.abc.ByteStream | None = None
        self._reader = self._new_reader()
        self._freed: anyio.Event | None = None  # made only when a call waits for this one
        self._closed = False
        self.busy = False

    async def call(self, *command: ScriptArg) -> Any:
        """``command``'s reply (str, int, None or lists of those); an error reply raised as
        coredis raises it. Waits for a call in progress (the Client avoids that: it checks
        ``busy`` first)."""
        while self.busy:
            if self._freed is None:
                self._freed = anyio.Event()
            await self._freed.wait()
        self.busy = True
        try:
            reply = await self._roundtrip(pack_command(*command))
        finally:
            self.busy = False
            freed, self._freed = self._freed, None
            if freed is not None:
                freed.set()
        if isinstance(reply, _ErrorReply):
            raise _raised(reply)  # the reply was read whole: the connection stays clean
        return reply

    async def _roundtrip(self, payload: bytes) -> Any:
        timeout = self._settings.command_timeout
        for again in (True, False):
            reused = self._stream is not None
            try:
                # A bare scope with a deadline (anyio.fail_after wraps one in a generator).
                with anyio.CancelScope(deadline=anyio.current_time() + timeout):
                    stream = self._stream or await self._connect()
                    await stream.send(payload)
                    return await self._read(stream)
                raise TimeoutError(f"Redis did not answer within {timeout:g} s")
            except BaseException as exc:
                await self._drop()  # unknown state: a late reply must not answer the next call
                if isinstance(exc, _BROKEN) and not isinstance(exc, TimeoutError):
                    if again and reused:
                        continue
                    if not isinstance(exc, coredis.exceptions.ConnectionError):
                        raise coredis.exceptions.ConnectionError(
                            str(exc) or type(exc).__name__
                        ) from exc
                raise
        raise AssertionError("unreachable")  # the second round returns or raises

    async def _read(self, stream: anyio.abc.ByteStream) -> Any:
        reader = self._reader
        while True:
            reply = reader.gets()
            if reply is not _INCOMPLETE:
                return reply
            reader.feed(await stream.receive(65536))

    async def _connect(self) -> anyio.abc.ByteStream:
        if self._closed:
            raise anyio.ClosedResourceError("the client was closed")
        loc, settings = self._loc, self._settings
        stream: anyio.abc.ByteStream
        with anyio.fail_after(settings.connect_timeout):
            if loc.unix_socket is not None:
                stream = await anyio.connect_unix(loc.unix_socket)
            elif loc.ssl:
                if self._ssl is None:
                    self._ssl = tls_context(settings.tls)
                host = loc.host or "localhost"
                stream = await anyio.connect_tcp(
                    host,
                    loc.port or 6379,
                    ssl_context=self._ssl,
                    tls_hostname=host,
                    tls_standard_compatible=False,  # Redis closes without close_notify
                )
            else:
                stream = await anyio.connect_tcp(loc.host or "localhost", loc.port or 6379)
            try:
                await self._set_up(stream)
            except BaseException:
                await anyio.aclose_forcefully(stream)
                raise
        self._stream, self._reader = stream, self._new_reader()
        return stream

    async def _set_up(self, stream: anyio.abc.ByteStream) -> None:
        """AUTH and SELECT, as the URL says; an error reply raised as coredis raises it."""
        setup = [pack_command(*command) for command in setup_commands(self._loc)]
        if not setup:
            return
        self._reader = self._new_reader()
        await stream.send(b"".join(setup))
        for _ in setup:
            reply = await self._read(stream)
            if isinstance(reply, _ErrorReply):
                raise _raised(reply)

    @staticmethod
    def _new_reader() -> hiredis.Reader:
        return hiredis.Reader(
            protocolError=coredis.exceptions.ProtocolError,
            replyError=_ErrorReply,
            encoding="utf-8",
            notEnoughData=_INCOMPLETE,
        )

    async def _drop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await anyio.aclose_forcefully(stream)

    async def aclose(self) -> None:
        """Close it for good: a call still running (a task outliving its Client) fails
        instead of connecting again."""
        self._closed = True
        await self._drop()


LEAN_CONNECTIONS = 4  # per Client: concurrent calls beyond that go through coredis


class LeanConnections:
    """Up to ``size`` lean connections of one Client, each made when concurrent calls first
    need it (most producers only ever make one)."""

    def __init__(self, location: RedisLocation, settings: RedisSettings, size: int) -> None:
        self._loc = location
        self._settings = settings
        self._size = size
        self.connections: list[LeanConnection] = []

    def free(self) -> LeanConnection | None:
        """A connection no call is using (a new one while there are fewer than ``size``), or
        None: the call then goes through coredis."""
        for conn in self.connections:
            if not conn.busy:
                return conn
        if len(self.connections) < self._size:
            conn = LeanConnection(self._loc, self._settings)
            self.connections.append(conn)
            return conn
        return None

    async def aclose(self) -> None:
        for conn in self.connections:
            await conn.aclose()


def lean_connections_for(
    url: str, settings: RedisSettings, size: int = LEAN_CONNECTIONS
) -> LeanConnections | None:
    """The lean connections for ``url``; None for a Cluster or Sentinel (whose clients follow
    slots and failovers: coredis carries every call there)."""
    if settings.cluster or settings.sentinel is not None:
        return None
    return LeanConnections(data_location(url, settings), settings, size)
