"""The idle wait's own Redis connection: BLPOP + claim in one write, on a plain trio stream.

This is the pick-up path of every job that reaches an idle worker, and the one place where
the client's own overhead is most of the latency: coredis spends about 170 µs of CPU on a
two-command pipeline where this minimal RESP2 client spends about 60 (bench/README.md). It
speaks just what that path needs: AUTH, SELECT, one pipelined BLPOP + script call, and reading
their replies. Everything else stays on coredis, which is also the fallback when this
connection cannot be used (see :func:`wake_connection_for`).

It calls the scripts as functions of rrq-flow's library (FCALL; loaded by FUNCTION LOAD the
first time the server lacks it), where each call skips building the scripts' helpers
(docs/protocol.md). A server without functions (Redis 6) or a user without FCALL or FUNCTION
LOAD gets EVALSHA, as before.

A connection that fails, times out or is cancelled mid-call is closed and reopened on the
next use: a reply arriving late must never be read as the answer to a later call. Where it
reopens is its locator's answer (:mod:`rrq_flow.worker.wake_locator`): with Sentinel the master
named now, with a Cluster the owner of the queue's slot, following ``MOVED`` and failovers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import coredis.exceptions
import hiredis
import trio

from rrq_flow.config.model import RedisSettings
from rrq_flow.connection import RedisLocation, open_stream, setup_commands
from rrq_flow.protocol.scripts import Script, ScriptArg, function_refusal, library
from rrq_flow.protocol.scripts import pack_command as _encode
from rrq_flow.worker.wake_locator import FixedLocator, Locator, locator_for

Reply = Any  # str | int | None | list[Reply]

log = logging.getLogger("rrq_flow.worker")


class ReplyError(coredis.exceptions.ResponseError):
    """Redis answered with an error (``-ERR ...``) to a command of this connection."""


_INCOMPLETE = object()  # hiredis' answer while a reply is not whole yet


class _Parser:
    """Incremental RESP2 reader: replies as str (utf-8), int, None or lists of those; an error
    reply as a ReplyError object (returned, not raised). hiredis' C reader: a ten-job claim
    reply takes it about 30 µs where the pure-Python reader this replaced took about 500."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader(
            protocolError=coredis.exceptions.ConnectionError,
            replyError=ReplyError,
            encoding="utf-8",
            notEnoughData=_INCOMPLETE,
        )

    def feed(self, data: bytes | bytearray) -> None:
        self._reader.feed(data)  # type: ignore[arg-type]  # any buffer; the stub says bytes

    def reply(self) -> tuple[bool, Reply]:
        """(True, reply) when one whole reply is buffered, else (False, None), consuming none."""
        reply = self._reader.gets()
        if reply is _INCOMPLETE:
            return False, None
        return True, reply


class WakeConnection:
    """One dedicated connection; calls are sequential (one queue runner owns it)."""

    def __init__(self, location: RedisLocation | Locator, settings: RedisSettings):
        self.locator = FixedLocator(location) if isinstance(location, RedisLocation) else location
        self.settings = settings
        self._stream: trio.abc.Stream | None = None
        self._parser = _Parser()
        # Calls go by FCALL until the server or the user turns functions down (then EVALSHA).
        self.functions = True

    async def _connect(self) -> trio.abc.Stream:
        loc = await self.locator.locate()
        stream = await open_stream(loc, self.settings)
        with trio.fail_after(self.settings.connect_timeout):
            self._stream, self._parser = stream, _Parser()
            setup = [_encode(*command) for command in setup_commands(loc)]
            if setup:
                await stream.send_all(b"".join(setup))
                for reply in await self._read(len(setup)):
                    if isinstance(reply, ReplyError):
                        raise coredis.exceptions.ConnectionError(f"Redis refused setup: {reply}")
        return stream

    async def _read(self, count: int) -> list[Reply]:
        assert self._stream is not None
        replies: list[Reply] = []
        while len(replies) < count:
            complete, reply = self._parser.reply()
            if complete:
                replies.append(reply)
                continue
            data = await self._stream.receive_some(65536)
            if not data:
                raise coredis.exceptions.ConnectionError("Redis closed the connection")
            self._parser.feed(data)
        return replies

    async def wait_then_claim(
        self,
        wait_keys: Sequence[str],
        timeout: float,
        script: Script,
        keys: Sequence[str],
        args: Sequence[ScriptArg],
    ) -> tuple[Reply, Reply]:
        """Send ``BLPOP wait_keys timeout`` and the call of ``script`` in one write; return both
        replies.

        Raises coredis' ConnectionError (a TRANSIENT error of the worker) when the connection
        breaks, NoScriptError when Redis lacks the script or the function library (loaded now:
        the caller's next call finds it), ReplyError for any other error reply.
        """
        try:
            woke, claimed = await self._roundtrip(
                _encode("BLPOP", *wait_keys, f"{timeout:.3f}") + self._command(script, keys, args),
                2,
            )
        except ReplyError as exc:
            if await self._function_missing(exc):
                raise coredis.exceptions.NoScriptError(str(exc)) from exc
            raise
        return woke, claimed

    async def call(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Reply:
        """One call of ``script`` (a queue runner's direct claim or acknowledgement); its reply.

        Raises as :meth:`wait_then_claim` does, except that a missing function library is
        loaded and the call made again.
        """
        try:
            (reply,) = await self._roundtrip(self._command(script, keys, args), 1)
        except ReplyError as exc:
            if not await self._function_missing(exc):
                raise
            (reply,) = await self._roundtrip(self._command(script, keys, args), 1)
        return reply

    def _command(self, script: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> bytes:
        if self.functions:
            return _encode("FCALL", script.function, len(keys), *keys, *args)
        return _encode("EVALSHA", script.sha, len(keys), *keys, *args)

    async def _function_missing(self, exc: ReplyError) -> bool:
        """Whether ``exc`` says an FCALL did not run for want of its function; if so, the
        library is loaded now, or calls go by EVALSHA from now on where the server (Redis 6) or
        the user (no FCALL or FUNCTION LOAD in its ACL rule) cannot have it."""
        text = str(exc)
        if not self.functions:
            return False
        refusal = function_refusal(text)
        if refusal == "missing":
            try:
                await self._roundtrip(_encode("FUNCTION", "LOAD", library().source), 1)
            except ReplyError as refused:
                if "already exists" in str(refused):
                    return True  # another worker loaded it first
                if function_refusal(str(refused)) != "unavailable":
                    raise
                self._without_functions(str(refused))
            return True
        if refusal == "unavailable":
            self._without_functions(text)
            return True
        return False

    def _without_functions(self, why: str) -> None:
        global _told_without_functions
        self.functions = False
        if not _told_without_functions:
            _told_without_functions = True
            log.info("Redis functions unavailable (%s): scripts are called by EVALSHA", why)

    async def _roundtrip(self, payload: bytes, count: int) -> list[Reply]:
        """Send ``payload`` (``count`` commands) in one write; their replies, errors raised."""
        if self._stream is not None and await self.locator.changed():
            await self.aclose()  # Sentinel names another master now
        try:
            stream = self._stream or await self._connect()
            await stream.send_all(payload)
            replies = await self._read(count)
        except BaseException as exc:
            await self.aclose()  # unknown state: a late reply must not answer the next call
            if isinstance(exc, (coredis.exceptions.ConnectionError, trio.TooSlowError, OSError)):
                self.locator.forget()  # Sentinel: ask again; Cluster: find the slot's owner
            if isinstance(exc, (OSError, trio.BrokenResourceError, trio.ClosedResourceError)):
                raise coredis.exceptions.ConnectionError(str(exc) or type(exc).__name__) from exc
            raise
        for reply in replies:
            if isinstance(reply, ReplyError):
                await self._redirected(reply)
        return replies

    async def _redirected(self, reply: ReplyError) -> None:
        """Raise ``reply`` as what it means; first point the locator elsewhere when it says the
        data lives elsewhere now (MOVED), or that this node is no master any more."""
        text = str(reply)
        if text.startswith("NOSCRIPT"):
            raise coredis.exceptions.NoScriptError(text)
        kind, _, rest = text.partition(" ")
        if kind == "MOVED":
            host, _, port = rest.split(" ")[-1].rpartition(":")
            self.locator.moved((host, int(port)))
            await self.aclose()
        elif kind in ("READONLY", "NOREPLICAS", "UNBLOCKED", "MASTERDOWN", "CLUSTERDOWN"):
            self.locator.forget()
            await self.aclose()
        raise reply

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()


_told_without_functions = False  # logged once per process


def wake_connection_for(url: str, settings: RedisSettings, key: str = "") -> WakeConnection:
    """The idle wait's connection for ``url`` (every URL rrq-flow accepts can use one); it
    follows Sentinel's master, or the Cluster node owning ``key``'s slot."""
    return WakeConnection(locator_for(url, settings, key), settings)
