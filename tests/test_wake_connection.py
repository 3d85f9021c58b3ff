"""The idle wait's minimal RESP connection, against a real redis-server."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import coredis.exceptions
import pytest
import redis
import trio

from rrq_flow.config.model import RedisSettings
from rrq_flow.redis_server import start_redis_server
from rrq_flow.worker.wake_connection import (
    ReplyError,
    WakeConnection,
    _encode,
    _Parser,
    wake_connection_for,
)

FAST = RedisSettings(connect_timeout=2)

SCRIPT = "return {ARGV[1], redis.call('LLEN', KEYS[1]), {1, 'two'}}"


def test_parser_reads_replies_fed_a_byte_at_a_time() -> None:
    wire = (
        b"*2\r\n$1\r\nw\r\n$6\r\nh\xc3\xa9llo\r\n"  # BLPOP answer, utf-8 payload
        b"*-1\r\n"  # BLPOP timeout
        b"*4\r\n+OK\r\n:-12\r\n$-1\r\n*2\r\n:1\r\n$0\r\n\r\n"  # nested, nil, empty string
        b"-NOSCRIPT No matching script\r\n"
    )
    parser = _Parser()
    replies = []
    for i in range(len(wire)):
        parser.feed(wire[i : i + 1])
        while True:
            complete, reply = parser.reply()
            if not complete:
                break
            replies.append(reply)
    assert replies[:3] == [["w", "héllo"], None, ["OK", -12, None, [1, ""]]]
    assert isinstance(replies[3], ReplyError) and str(replies[3]).startswith("NOSCRIPT")


@pytest.fixture
async def conn(redis_url: str) -> AsyncIterator[WakeConnection]:
    connection = wake_connection_for(redis_url, FAST)
    try:
        yield connection
    finally:
        await connection.aclose()


def test_encode_is_a_resp_array_of_bulk_strings() -> None:
    assert _encode("BLPOP", "k", 1.5) == b"*3\r\n$5\r\nBLPOP\r\n$1\r\nk\r\n$3\r\n1.5\r\n"


async def test_wait_then_claim_returns_both_replies(
    conn: WakeConnection, sync_redis: redis.Redis
) -> None:
    sha = sync_redis.script_load(SCRIPT)
    sync_redis.rpush("wake", "t")
    woke, claimed = await conn.wait_then_claim(["wake", "stop"], 1.0, sha, ["wake"], ["a"])
    assert woke == ["wake", "t"] and claimed == ["a", 0, [1, "two"]]
    # Nothing to pop: BLPOP times out (nil) and the claim still runs after it.
    woke, claimed = await conn.wait_then_claim(["wake", "stop"], 0.05, sha, ["wake"], ["b"])
    assert woke is None and claimed[0] == "b"


async def test_noscript_and_error_replies_keep_the_connection_usable(
    conn: WakeConnection, sync_redis: redis.Redis
) -> None:
    with pytest.raises(coredis.exceptions.NoScriptError):
        await conn.wait_then_claim(["w"], 0.01, "0" * 40, ["w"], [])
    sha = sync_redis.script_load("return redis.call('INCR', KEYS[1])")
    sync_redis.set("s", "text")
    with pytest.raises(ReplyError, match="not an integer"):
        await conn.wait_then_claim(["w"], 0.01, sha, ["s"], [])
    sync_redis.delete("s")
    assert (await conn.wait_then_claim(["w"], 0.01, sha, ["s"], []))[1] == 1


async def test_a_killed_connection_is_transient_and_the_next_call_reconnects(
    conn: WakeConnection, sync_redis: redis.Redis
) -> None:
    sha = sync_redis.script_load(SCRIPT)
    await conn.wait_then_claim(["w"], 0.01, sha, ["w"], ["x"])
    sync_redis.client_kill_filter(_type="normal", skipme=True)
    with pytest.raises(coredis.exceptions.ConnectionError):
        await conn.wait_then_claim(["w"], 0.01, sha, ["w"], ["x"])
    assert (await conn.wait_then_claim(["w"], 0.01, sha, ["w"], ["y"]))[1][0] == "y"


async def test_a_cancelled_call_never_hands_its_late_reply_to_the_next(
    conn: WakeConnection, sync_redis: redis.Redis
) -> None:
    sha = sync_redis.script_load(SCRIPT)
    with trio.move_on_after(0.1):  # cut off while BLPOP blocks; its reply comes later
        await conn.wait_then_claim(["w"], 0.5, sha, ["w"], ["late"])
    # The cut-off connection is closed; until Redis has noticed, its BLPOP could still take a
    # token pushed now (a race of the test, not of the worker: that token is not handed over).
    with trio.fail_after(10):
        while any(c.get("cmd") == "blpop" for c in sync_redis.client_list()):
            await trio.sleep(0.01)
    sync_redis.rpush("w", "t")
    woke, claimed = await conn.wait_then_claim(["w"], 1.0, sha, ["w"], ["fresh"])
    assert claimed[0] == "fresh" and woke == ["w", "t"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_tcp_with_acl_user_and_database(tmp_path: Path) -> None:
    port = _free_port()
    server = start_redis_server(tmp_path, port=port, appendonly=False)
    try:
        admin = redis.Redis(port=port, decode_responses=True)
        admin.acl_setuser("rf", enabled=True, passwords=["+s3cret"], keys="*", commands=["+@all"])
        sha = admin.script_load(SCRIPT)
        db3 = redis.Redis(port=port, db=3, decode_responses=True)
        db3.rpush("w", "in-db-3")
        conn = wake_connection_for(f"redis://rf:s3cret@127.0.0.1:{port}/3", FAST)
        try:
            woke, claimed = await conn.wait_then_claim(["w"], 1.0, sha, ["w"], ["ok"])
            assert woke == ["w", "in-db-3"] and claimed[0] == "ok"
        finally:
            await conn.aclose()
        bad = wake_connection_for(f"redis://rf:wrong@127.0.0.1:{port}/3", FAST)
        with pytest.raises(coredis.exceptions.ConnectionError, match="refused setup"):
            await bad.wait_then_claim(["w"], 0.01, sha, ["w"], [])
    finally:
        server.stop()
