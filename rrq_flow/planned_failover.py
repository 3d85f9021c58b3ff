"""A planned Sentinel failover that loses no acknowledged write (``rrq-flow failover``).

``SENTINEL FAILOVER`` alone is not that: Redis 7's Sentinel promotes a replica with
``REPLICAOF NO ONE`` without pausing the old master (redis/redis#6062, #13118), so whatever the
old master acknowledges after the replica stopped reading its stream is dropped when the
sentinels demote it. The clients cannot close that window by themselves: the sentinels announce
the new master only after they have seen the promotion (their next ``INFO``, up to a second
later), and until it is demoted the old master answers ``ROLE`` as a master.

This module does what Redis' own ``FAILOVER`` command does, but through the sentinels, so that
they stay in charge of the topology:

1. ``CLIENT PAUSE <timeout> WRITE`` on the master: from now on it acknowledges no write (every
   write and every script waits);
2. wait until a replica has acknowledged the master's whole replication offset;
3. ``SENTINEL FAILOVER <master>``;
4. wait until every sentinel names the new master and that node says it is master;
5. ``REPLICAOF <new master>`` on the old master (what the sentinels would do some ten seconds
   later): the writes the pause held now fail with ``READONLY``, which sends their clients to
   the sentinels and the new master (the calls are retried; every script is safe to repeat);
6. ``CLIENT UNPAUSE``.

If step 2 or 3 fails the master is unpaused and nothing changed. The pause's own timeout is the
safety net should this process die in between. Needs a user allowed ``CLIENT PAUSE``,
``INFO``, ``REPLICAOF`` on the data nodes and ``SENTINEL FAILOVER`` on the sentinels.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rrq_flow.config.model import RedisSettings

__all__ = ["FailoverError", "FailoverResult", "planned_failover"]


class FailoverError(Exception):
    """The planned failover did not happen (``changed`` says whether the topology moved)."""

    def __init__(self, message: str, changed: bool):
        super().__init__(message)
        self.changed = changed


@dataclass(frozen=True)
class FailoverResult:
    """Where the master was and is, and for how long writes were held."""

    old_master: str
    new_master: str
    paused_seconds: float


def _addr(host: str, port: int) -> str:
    return f"{host}:{port}"


def _wait(pred: Callable[[], Any], deadline: float, interval: float = 0.05) -> Any:
    """Poll ``pred`` until truthy or ``deadline`` (monotonic); None on timeout."""
    import redis.exceptions

    while True:
        try:
            got = pred()
        except (redis.exceptions.RedisError, OSError):
            got = None
        if got:
            return got
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def _online_replicas(master: Any) -> list[dict[str, Any]]:
    """The master's replicas in state ``online`` (INFO replication's ``slaveN`` fields)."""
    info = master.info("replication")
    return [
        v
        for k, v in info.items()
        if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
    ]


def _replica_caught_up(master: Any) -> bool:
    """Whether some online replica has acknowledged the master's whole replication offset."""
    offset = int(master.info("replication")["master_repl_offset"])
    return any(int(v.get("offset", -1)) >= offset for v in _online_replicas(master))


def _master_of(sentinel: Any, name: str) -> tuple[str, int]:
    """Where one sentinel says the master is (its replies are bytes)."""
    host, port = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", name)
    return (host.decode() if isinstance(host, bytes) else str(host), int(port))


def _start_failover(sentinels: list[Any], name: str) -> None:
    """``SENTINEL FAILOVER`` on the first sentinel that answers (FailoverError if it refuses,
    e.g. ``NOGOODSLAVE``; the connection error of the last one if none answers)."""
    import redis.exceptions

    for i, sentinel in enumerate(sentinels):
        try:
            sentinel.execute_command("SENTINEL", "FAILOVER", name)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            if i == len(sentinels) - 1:
                raise
        except redis.exceptions.ResponseError as exc:
            raise FailoverError(f"SENTINEL FAILOVER {name} refused: {exc}", False) from None
        else:
            return


def planned_failover(url: str, settings: RedisSettings, timeout: float = 30.0) -> FailoverResult:
    """Move the master of ``settings.sentinel`` to a replica without losing an acknowledged
    write (module docstring). ``timeout`` bounds each wait and the write pause."""
    import redis

    from rrq_flow.connection import sync_redis_kwargs, sync_sentinel_manager

    if settings.sentinel is None:
        raise FailoverError("rrq-flow failover needs redis.sentinel in the pipeline", False)
    name = settings.sentinel.master
    common = sync_redis_kwargs(url, settings)
    manager = sync_sentinel_manager(settings, common)
    host, port = manager.discover_master(name)
    old = _addr(host, port)
    pause_ms = int(timeout * 3 * 1000)  # covers the three waits below
    with redis.Redis(host=host, port=port, **common) as master:
        if not _online_replicas(master):
            raise FailoverError(f"{old} has no online replica to fail over to", False)
        master.execute_command("CLIENT", "PAUSE", pause_ms, "WRITE")
        paused = time.monotonic()
        try:
            if not _wait(lambda: _replica_caught_up(master), time.monotonic() + timeout):
                raise FailoverError(
                    f"no replica of {old} caught up within {timeout:g}s; nothing changed", False
                )
            _start_failover(manager.sentinels, name)
        except BaseException:
            master.execute_command("CLIENT", "UNPAUSE")
            raise

        def switched() -> tuple[str, int] | None:
            seen = {_master_of(s, name) for s in manager.sentinels}
            if len(seen) != 1:
                return None
            (new,) = seen
            if new == (host, port):
                return None
            with redis.Redis(host=new[0], port=new[1], **common) as r:
                role = r.execute_command("ROLE")[0]
            return new if role == "master" else None

        got = _wait(switched, time.monotonic() + timeout, interval=0.1)
        if got is None:
            # The sentinels may still be at it: leave the pause to its timeout rather than let
            # the old master take writes a promotion would drop.
            raise FailoverError(
                f"the sentinels did not name a new master within {timeout:g}s; {old} stays "
                f"paused for writes until the pause ends ({pause_ms / 1000:g}s after it began)",
                True,
            )
        nhost, nport = got
        master.execute_command("REPLICAOF", nhost, nport)
        held = time.monotonic() - paused
        master.execute_command("CLIENT", "UNPAUSE")
    return FailoverResult(old, _addr(nhost, nport), round(held, 3))
