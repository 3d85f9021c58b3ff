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
from rrq_flow.protocol.keys import KeyLayout
from rrq_flow.protocol.ops import Call, Protocol
from rrq_flow.protocol.scripts import Script, library, pack_command
from rrq_flow.redis_server import start_redis_server
from rrq_flow.worker.wake_connection import (
    ReplyError,
    WakeConnection,
    _Parser,
    wake_connection_for,
)
from tests.functions_support import calls, libraries, users_without_functions

FAST = RedisSettings(connect_timeout=2)

SCRIPT = "return {ARGV[1], redis.call('LLEN', KEYS[1]), {1, 'two'}}"
NOT_LOADED = Script("none", "return 0", "0" * 40, "rrq_test_none")


def loaded_script(r: redis.Redis, name: str, source: str) -> Script:
    """``source`` loaded both as a script (EVALSHA) and as a function (FCALL) of its own
    library: the connection calls it either way."""
    r.function_load(
        f"#!lua name=wake_test_{name}\n"
        f"redis.register_function('wake_test_{name}', function(KEYS, ARGV) {source} end)",
        replace=True,
    )
    return Script(name, source, r.script_load(source), f"wake_test_{name}")


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
    assert pack_command("BLPOP", "k", 1.5) == b"*3\r\n$5\r\nBLPOP\r\n$1\r\nk\r\n$3\r\n1.5\r\n"


async def test_wait_then_claim_returns_both_replies(
    conn: WakeConnection, sync_redis: redis.Redis
) -> None:
    script = loaded_script(sync_redis, "s", SCRIPT)
    sync_redis.rpush("wake", "t")
    woke, claimed = await conn.wait_then_claim(["wake", "stop"], 1.0, script, ["wake"], ["a"])
    assert woke == ["wake", "t"] and claimed == ["a", 0, [1, "two"]]
    # Nothing to pop: BLPOP times out (nil) and the claim still runs after it.
    woke, claimed = await conn.wait_then_claim(["wake", "stop"], 0.05, script, ["wake"], ["b"])
    assert woke is None and claimed[0] == "b"


async def test_noscript_and_error_replies_keep_the_connection_usable(
    conn: WakeConnection, sync_redis: redis.Redis
) -> None:
    with pytest.raises(coredis.exceptions.NoScriptError):  # FCALL: "Function not found"
        await conn.wait_then_claim(["w"], 0.01, NOT_LOADED, ["w"], [])
    conn.functions = False
    with pytest.raises(coredis.exceptions.NoScriptError):  # EVALSHA: NOSCRIPT
        await conn.wait_then_claim(["w"], 0.01, NOT_LOADED, ["w"], [])
    conn.functions = True
    script = loaded_script(sync_redis, "incr", "return redis.call('INCR', KEYS[1])")
    sync_redis.set("s", "text")
    with pytest.raises(ReplyError, match="not an integer"):
        await conn.wait_then_claim(["w"], 0.01, script, ["s"], [])
    sync_redis.delete("s")
    assert (await conn.wait_then_claim(["w"], 0.01, script, ["s"], []))[1] == 1


async def test_a_killed_connection_is_transient_and_the_next_call_reconnects(
    conn: WakeConnection, sync_redis: redis.Redis
) -> None:
    script = loaded_script(sync_redis, "s", SCRIPT)
    await conn.wait_then_claim(["w"], 0.01, script, ["w"], ["x"])
    sync_redis.client_kill_filter(_type="normal", skipme=True)
    with pytest.raises(coredis.exceptions.ConnectionError):
        await conn.wait_then_claim(["w"], 0.01, script, ["w"], ["x"])
    assert (await conn.wait_then_claim(["w"], 0.01, script, ["w"], ["y"]))[1][0] == "y"


async def test_a_cancelled_call_never_hands_its_late_reply_to_the_next(
    conn: WakeConnection, sync_redis: redis.Redis
) -> None:
    script = loaded_script(sync_redis, "s", SCRIPT)
    with trio.move_on_after(0.1):  # cut off while BLPOP blocks; its reply comes later
        await conn.wait_then_claim(["w"], 0.5, script, ["w"], ["late"])
    # The cut-off connection is closed; until Redis has noticed, its BLPOP could still take a
    # token pushed now (a race of the test, not of the worker: that token is not handed over).
    with trio.fail_after(10):
        while any(c.get("cmd") == "blpop" for c in sync_redis.client_list()):
            await trio.sleep(0.01)
    sync_redis.rpush("w", "t")
    woke, claimed = await conn.wait_then_claim(["w"], 1.0, script, ["w"], ["fresh"])
    assert claimed[0] == "fresh" and woke == ["w", "t"]


def _empty_claim(r: redis.Redis) -> Call:
    """A claim of queue q of pipeline wt, which has no jobs: it answers OK and writes nothing."""
    layout = KeyLayout("wt")
    r.hset(layout.meta, "generation", "g")
    return Protocol(layout).claim("q", "g", "w", 1, 30000, 60000)


async def test_scripts_are_functions_and_a_missing_library_is_loaded(
    conn: WakeConnection, sync_redis: redis.Redis, redis_url: str
) -> None:
    sync_redis.function_flush()  # as after a restart that kept no data
    call = _empty_claim(sync_redis)
    evalsha = calls(sync_redis, "evalsha")
    reply = await conn.call(call.script, call.keys, call.args)
    assert reply[:4] == ["OK", reply[1], -1, 0]
    assert libraries(sync_redis) == [library().name]
    # In the wait, a missing library is loaded and the claim left to the caller's direct call.
    sync_redis.function_flush()
    with pytest.raises(coredis.exceptions.NoScriptError):
        await conn.wait_then_claim(["w"], 0.01, call.script, call.keys, call.args)
    assert libraries(sync_redis) == [library().name]
    woke, claimed = await conn.wait_then_claim(["w"], 0.01, call.script, call.keys, call.args)
    assert woke is None and claimed[0] == "OK"
    # Another connection finds the library there; one that loads it at the same time is told
    # it exists, which is as good.
    other = wake_connection_for(redis_url, FAST)
    try:
        assert (await other.call(call.script, call.keys, call.args))[0] == "OK"
    finally:
        await other.aclose()
    assert conn.functions and calls(sync_redis, "evalsha") == evalsha
    assert calls(sync_redis, "fcall") >= 3


async def _claims_by_evalsha(url: str, admin: redis.Redis) -> WakeConnection:
    call = _empty_claim(admin)
    admin.script_load(call.script.source)
    conn = wake_connection_for(url, FAST)
    evalsha = calls(admin, "evalsha")
    assert (await conn.call(call.script, call.keys, call.args))[0] == "OK"
    _, claimed = await conn.wait_then_claim(["w"], 0.01, call.script, call.keys, call.args)
    assert claimed[0] == "OK"
    assert calls(admin, "evalsha") == evalsha + 2
    return conn


async def test_a_user_without_fcall_or_function_load_gets_evalsha(tmp_path: Path) -> None:
    for admin, user, url in users_without_functions(tmp_path):
        conn = await _claims_by_evalsha(url, admin)
        await conn.aclose()
        assert not conn.functions, user
        assert admin.function_list() == [], user


async def test_a_server_without_functions_gets_evalsha(tmp_path: Path) -> None:
    """Redis 6 has no FCALL; a server with the command renamed away answers the same."""
    port = _free_port()
    args = ["--rename-command", "FCALL", "fcall-elsewhere"]
    server = start_redis_server(tmp_path, port=port, appendonly=False, extra_args=args)
    try:
        admin = redis.Redis(port=port, decode_responses=True)
        conn = await _claims_by_evalsha(f"redis://127.0.0.1:{port}/0", admin)
        await conn.aclose()
        assert not conn.functions
    finally:
        server.stop()


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
        script = loaded_script(admin, "s", SCRIPT)
        db3 = redis.Redis(port=port, db=3, decode_responses=True)
        db3.rpush("w", "in-db-3")
        conn = wake_connection_for(f"redis://rf:s3cret@127.0.0.1:{port}/3", FAST)
        try:
            woke, claimed = await conn.wait_then_claim(["w"], 1.0, script, ["w"], ["ok"])
            assert woke == ["w", "in-db-3"] and claimed[0] == "ok"
        finally:
            await conn.aclose()
        bad = wake_connection_for(f"redis://rf:wrong@127.0.0.1:{port}/3", FAST)
        with pytest.raises(coredis.exceptions.ConnectionError, match="refused setup"):
            await bad.wait_then_claim(["w"], 0.01, script, ["w"], [])
    finally:
        server.stop()
