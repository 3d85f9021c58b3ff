"""Where the idle wait's connection connects: a fixed address, Sentinel's master, or the Cluster
node that owns the queue's slot.

The wake connection (:mod:`rrq_flow.worker.wake_connection`) is a minimal RESP client, so it
cannot lean on a library to follow a failover. A locator answers "where now?" on every
(re)connect and is told what went wrong: a broken connection or ``READONLY`` (the master
became a replica) makes Sentinel's locator ask the sentinels again; ``MOVED`` hands the Cluster
locator the new owner's address directly. ``ASK`` (a slot half-way through a migration) is left
to the worker's direct claim, which coredis routes with ``ASKING``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

import coredis.exceptions
import trio
from coredis._utils import hash_slot

from rrq_flow.config.model import RedisSettings
from rrq_flow.connection import (
    RedisLocation,
    cluster_seeds,
    data_location,
    parse_host_port,
)
from rrq_flow.failover import MASTER_CHECK_INTERVAL

Address = tuple[str, int]


class Locator(Protocol):
    async def locate(self) -> RedisLocation:
        """The location to connect to now."""

    def forget(self) -> None:
        """The last location failed (connection error, READONLY): find it again next time."""

    def moved(self, address: Address) -> None:
        """Redis said MOVED: the slot lives at ``address`` now."""

    async def changed(self) -> bool:
        """True when the location should be looked up again before the next call (Sentinel
        named another master since the connection was made)."""


class FixedLocator:
    """One address for ever (plain Redis, unix sockets, the embedded server)."""

    def __init__(self, location: RedisLocation):
        self.location = location

    async def locate(self) -> RedisLocation:
        return self.location

    def forget(self) -> None:
        pass

    def moved(self, address: Address) -> None:
        pass

    async def changed(self) -> bool:
        return False


async def query(
    address: Address,
    commands: Sequence[Sequence[str | int]],
    timeout: float,
) -> list[object]:
    """Send ``commands`` to ``address`` on a fresh connection; their replies (errors as
    ReplyError objects). Raises coredis' ConnectionError when the node cannot be asked."""
    from rrq_flow.protocol.scripts import pack_command
    from rrq_flow.worker.wake_connection import _Parser

    parser = _Parser()
    replies: list[object] = []
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(*address)
            async with stream:
                await stream.send_all(b"".join(pack_command(*c) for c in commands))
                while len(replies) < len(commands):
                    complete, reply = parser.reply()
                    if complete:
                        replies.append(reply)
                        continue
                    data = await stream.receive_some(65536)
                    if not data:
                        raise coredis.exceptions.ConnectionError("connection closed")
                    parser.feed(data)
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        raise coredis.exceptions.ConnectionError(
            f"{address[0]}:{address[1]}: {type(exc).__name__}: {exc}"
        ) from exc
    return replies


class SentinelLocator:
    """The master Sentinel names, asked again after every failure."""

    def __init__(self, base: RedisLocation, settings: RedisSettings):
        assert settings.sentinel is not None
        self.base = base
        self.sentinel = settings.sentinel
        self.timeout = settings.connect_timeout
        self.sentinels = [parse_host_port(n) for n in settings.sentinel.nodes]
        self._current: RedisLocation | None = None
        self._checked = 0.0

    async def locate(self) -> RedisLocation:
        if self._current is None:
            self._checked = trio.current_time()
            host, port = await self.master_address()
            self._current = replace(self.base, host=host, port=port, unix_socket=None)
        return self._current

    async def master_address(self) -> Address:
        """Ask each sentinel in turn; the first that names the master wins (and is asked first
        next time)."""
        errors = []
        for i, address in enumerate(self.sentinels):
            commands: list[list[str | int]] = []
            if self.sentinel.sentinel_password:
                commands.append(["AUTH", self.sentinel.sentinel_password])
            commands.append(["SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.sentinel.master])
            try:
                reply = (await query(address, commands, self.timeout))[-1]
            except coredis.exceptions.ConnectionError as exc:
                errors.append(str(exc))
                continue
            if isinstance(reply, list) and len(reply) == 2:
                self.sentinels.insert(0, self.sentinels.pop(i))
                return str(reply[0]), int(reply[1])
            errors.append(f"{address[0]}:{address[1]}: {reply!r}")
        raise coredis.exceptions.ConnectionError(
            f"no sentinel names master {self.sentinel.master!r}: {'; '.join(errors)}"
        )

    def forget(self) -> None:
        self._current = None

    def moved(self, address: Address) -> None:
        self._current = None

    async def changed(self) -> bool:
        """Ask the sentinels again at most every MASTER_CHECK_INTERVAL seconds."""
        current = self._current
        if current is None or trio.current_time() - self._checked < MASTER_CHECK_INTERVAL:
            return False
        self._checked = trio.current_time()
        try:
            address = await self.master_address()
        except coredis.exceptions.ConnectionError:
            return False  # the sentinels are away; the connection itself may still be right
        if address == (current.host, current.port):
            return False
        self._current = None
        return True


class ClusterLocator:
    """The master owning ``key``'s slot: MOVED's address, else asked from the seed nodes."""

    def __init__(self, base: RedisLocation, seeds: Sequence[Address], key: str, timeout: float):
        self.base = base
        self.seeds = list(seeds)
        self.slot = hash_slot(key.encode())
        self.timeout = timeout
        self._current: RedisLocation | None = None

    async def locate(self) -> RedisLocation:
        if self._current is None:
            host, port = await self.owner()
            self._current = replace(self.base, host=host, port=port, db=0)
        return self._current

    async def owner(self) -> Address:
        errors = []
        for address in self.seeds:
            commands: list[list[str | int]] = []
            if self.base.password is not None:
                auth = [self.base.username, self.base.password] if self.base.username else []
                commands.append(["AUTH", *(auth or [self.base.password])])
            commands.append(["CLUSTER", "SLOTS"])
            try:
                reply = (await query(address, commands, self.timeout))[-1]
            except coredis.exceptions.ConnectionError as exc:
                errors.append(str(exc))
                continue
            if isinstance(reply, list):
                ranges = [
                    (int(r[0]), int(r[1]), str(r[2][0]) or address[0], int(r[2][1])) for r in reply
                ]
                # Every master becomes a seed too: the configured seeds may be the nodes gone.
                self.seeds += [(h, p) for _, _, h, p in ranges if (h, p) not in self.seeds]
                for start, end, host, port in ranges:
                    if start <= self.slot <= end:
                        return host, port
            errors.append(f"{address[0]}:{address[1]}: {reply!r}")
        raise coredis.exceptions.ConnectionError(
            f"no cluster node owns slot {self.slot}: {'; '.join(errors)}"
        )

    def forget(self) -> None:
        self._current = None

    def moved(self, address: Address) -> None:
        self._current = replace(self.base, host=address[0], port=address[1], db=0)

    async def changed(self) -> bool:
        return False  # a Cluster says MOVED itself


def locator_for(url: str, settings: RedisSettings, key: str) -> Locator:
    """The locator for this pipeline's Redis; ``key`` picks the Cluster slot (the wake list)."""
    base = data_location(url, settings)
    if settings.sentinel is not None:
        return SentinelLocator(base, settings)
    if settings.cluster:
        return ClusterLocator(base, cluster_seeds(url, settings), key, settings.connect_timeout)
    return FixedLocator(base)
