"""Shared by the tests of the scripts as Redis functions (test_clients, test_wake_connection)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import redis

from rrq_flow.redis_server import free_port, start_redis_server


def calls(r: redis.Redis, command: str) -> int:
    """How many times ``command`` ran on the server (INFO commandstats)."""
    return int(r.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def libraries(r: redis.Redis) -> list[str]:
    """The names of the function libraries loaded on the server."""
    return [lib[lib.index("library_name") + 1] for lib in r.function_list()]


def users_without_functions(tmp_path: Path) -> Iterator[tuple[redis.Redis, str, str]]:
    """On a redis-server of its own: (admin client, user, URL) for a user who may run every
    command but FCALL, then for one who may run every command but FUNCTION LOAD; no library is
    loaded when each is handed out."""
    server = start_redis_server(tmp_path, port=free_port(), appendonly=False)
    try:
        admin = redis.Redis(port=server.port, decode_responses=True)
        for user, denied in (("nofcall", "-fcall"), ("noload", "-function|load")):
            admin.acl_setuser(
                user, enabled=True, passwords=["+pw"], keys="*", commands=["+@all", denied]
            )
            admin.function_flush()
            yield admin, user, f"redis://{user}:pw@127.0.0.1:{server.port}/0"
    finally:
        server.stop()
