"""Loading the Lua scripts and calling them by SHA, with reload on NOSCRIPT.

Each transition of a job is one ``.lua`` file under ``lua/``; shared fragments under
``lua/fragments/`` are pulled in by a ``-- #include NAME`` line, so they are written once. The
SHA is computed locally; a call first tries EVALSHA and, when the server does not know the script
(restart, SCRIPT FLUSH, a new cluster node), falls back to EVAL, which also caches it server-side.
Every script is safe to repeat after a lost reply, so this fallback never does harm.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import coredis
import coredis.exceptions
import hiredis

_INCLUDE = re.compile(r"^-- #include (\w+)\s*$", re.MULTILINE)

ScriptArg = str | int | float


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str
    function: str  # its name in the function library (see :func:`library`)


def _read(relative: str) -> str:
    return (resources.files("rrq_flow.protocol") / "lua" / relative).read_text(encoding="utf-8")


@cache
def script(name: str) -> Script:
    """The script ``lua/<name>.lua`` with its includes expanded to the definitions it uses."""
    source = expand_includes(_read(f"{name}.lua"))
    sha = hashlib.sha1(source.encode()).hexdigest()
    return Script(name, source, sha, f"{library_name()}_{name}")


# A top-level definition in a fragment starts at column 0: `local function NAME`, `local NAME
# [, NAME...] [= ...]` (a value, or a forward declaration) or `NAME = function` (the body of a
# forward declaration). Fragments hold nothing else at top level (test_protocol_scripts.py).
_DEFINITION = re.compile(
    r"^(?:local function (?P<fn>\w+)"
    r"|local (?P<names>\w+(?:, *\w+)*)\b(?! *\()"
    r"|(?P<late>\w+) = function)"
)
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")


@dataclass(frozen=True, slots=True)
class _Definition:
    names: frozenset[str]
    text: str  # the comment lines above it, then the definition
    kind: str  # "function" | "value" (local NAME = ...) | "forward" (local NAME, no value)
    statement: str = ""  # a value's assignment without `local` (the function library's reset)


@cache
def _fragment(name: str) -> tuple[str, list[_Definition]]:
    """``lua/fragments/<name>.lua`` as :func:`_definitions` splits it (read and split once)."""
    return _definitions(_read(f"fragments/{name}.lua"))


def _definitions(fragment: str) -> tuple[str, list[_Definition]]:
    """A fragment's leading comment, and its top-level definitions in order (each with the
    comment lines above it)."""
    head: list[str] = []
    out: list[tuple[set[str], list[str]]] = []
    pending: list[str] = []  # comment or blank lines: they go with the next definition
    for line in fragment.splitlines(keepends=True):
        m = _DEFINITION.match(line)
        if m:
            names = m.group("fn") or m.group("late") or m.group("names")
            out.append(({n.strip() for n in names.split(",")}, [*pending, line]))
            pending = []
        elif not out:
            head.append(line)
        elif line.startswith("--") or not line.strip():
            pending.append(line)
        else:
            out[-1][1].extend([*pending, line])
            pending = []
    return "".join(head), [_definition(names, "".join(lines)) for names, lines in out]


def _definition(names: set[str], text: str) -> _Definition:
    lines = text.splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if _DEFINITION.match(line))
    m = _DEFINITION.match(lines[first])
    assert m is not None
    if m.group("fn") or m.group("late"):
        return _Definition(frozenset(names), text, "function")
    if not lines[first][m.end() :].lstrip().startswith("="):
        return _Definition(frozenset(names), text, "forward")
    statement = "".join(lines[first:]).removeprefix("local ")
    return _Definition(frozenset(names), text, "value", statement)


def expand_includes(source: str) -> str:
    """``source`` with each ``-- #include NAME`` line replaced by the definitions of
    ``lua/fragments/NAME.lua`` that the script uses, directly or through other definitions.

    Redis runs a script's whole text on every call, so every helper defined is a closure built
    per call: including only what is used takes ~20 µs off each call of the larger scripts (the
    fragments hold about 60 helpers; enqueue uses a third of them). Order is kept, so every
    helper is still defined before the helpers and code that refer to it.
    """
    texts, fragments, chosen = _selection(source)
    out, i = [texts[0]], 0
    for (head, defs), text in zip(fragments, texts[1:], strict=True):
        out.append(head)
        for d in defs:
            if i in chosen:
                out.append(d.text)
            i += 1
        out.append(text)
    return "".join(out)


def _selection(
    source: str,
) -> tuple[list[str], list[tuple[str, list[_Definition]]], set[int]]:
    """``source``'s text between its includes, the included fragments (leading comment,
    definitions) and the indices of the definitions it uses, counted across the fragments."""
    parts = _INCLUDE.split(source)  # text, include name, text, include name, ..., text
    texts, names = parts[0::2], parts[1::2]
    fragments = [_fragment(n) for n in names]
    wanted = set(_IDENTIFIER.findall("".join(texts)))
    chosen: set[int] = set()
    flat = [d for _, defs in fragments for d in defs]
    grew = True
    while grew:  # until no used definition brings in another
        grew = False
        for i, d in enumerate(flat):
            if i not in chosen and d.names & wanted:
                chosen.add(i)
                wanted |= set(_IDENTIFIER.findall(d.text))
                grew = True
    return texts, fragments, chosen


SCRIPT_NAMES = (
    "enqueue",
    "claim",
    "refresh",
    "complete",
    "fail",
    "pause",
    "release",
    "reap",
    "requeue",
    "cancel",
    "heartbeat",
    "drained",
    "purge",
    "stage",
    "expand",
)


# The fragments in the order the scripts include them (each includes some of them, in this order).
FRAGMENT_ORDER = ("common", "runs", "add_job", "groups")


@dataclass(frozen=True, slots=True)
class Library:
    """Every script as one Redis function library (Redis 7+), for FUNCTION LOAD and FCALL."""

    name: str  # rrq_<12 hex digits of the sources' SHA-1>: each version is a library of its own
    source: str


_LIBRARY_HEAD = """--[[
  rrq-flow's scripts as one function library (rrq_flow/protocol/scripts.py builds it from
  lua/*.lua and lua/fragments/*.lua; docs/protocol.md). The fragments' helpers are built once,
  when Redis loads the library, instead of on every call as in an EVAL. Each function starts as
  its script does: it sets KEYS and ARGV and evaluates again every value definition its script
  uses (the key prefix, the check tables, the number memo), so no state outlives a call. Then
  it runs the script's own text unchanged.
]]
local KEYS, ARGV
"""


@cache
def library_name() -> str:
    """``rrq_<12 hex digits of the SHA-1 of every script and fragment source>``: each version of
    the scripts is a library of its own (its functions are ``<name>_<script>``)."""
    sources = [_read(f"{n}.lua") for n in SCRIPT_NAMES]
    sources += [_read(f"fragments/{f}.lua") for f in FRAGMENT_ORDER]
    return f"rrq_{hashlib.sha1(chr(0).join(sources).encode()).hexdigest()[:12]}"


@cache
def library() -> Library:
    """The function library of every script in :data:`SCRIPT_NAMES`; function ``<name>_<script>``.

    An EVAL runs the script's whole text on each call, so each helper a script uses is a
    closure built anew per call: ~40 µs of a one-job ``complete``, a third of it. Loaded once as
    a library, the helpers are built when Redis loads it
    (bench/results/costs-2026-11-30-functions.md).
    """
    raw = {n: _read(f"{n}.lua") for n in SCRIPT_NAMES}
    fragments = [_fragment(f) for f in FRAGMENT_ORDER]
    name = library_name()
    functions = {n for _, defs in fragments for d in defs if d.kind == "function" for n in d.names}
    out = [f"#!lua name={name}\n", _LIBRARY_HEAD]
    for head, defs in fragments:
        out.append(head)
        for d in defs:
            if d.kind == "value":  # declared here, given its value at the start of each call
                comments = d.text[: len(d.text) - len(d.statement) - len("local ")]
                out.append(f"{comments}local {d.statement.split('=', 1)[0].strip()}\n")
            else:
                out.append(d.text)
    for script_name, source in raw.items():
        texts, used, chosen = _selection(source)
        included = _INCLUDE.findall(source)
        assert included == [f for f in FRAGMENT_ORDER if f in included], script_name
        starts, i = ["KEYS, ARGV = keys, args\n"], 0
        for _, defs in used:
            for d in defs:
                if i in chosen and d.kind == "value":
                    starts.append(d.statement)
                elif i in chosen and d.kind == "forward" and not d.names & functions:
                    starts.append(f"{', '.join(sorted(d.names))} = nil\n")
                i += 1
        out.append(
            f"redis.register_function('{name}_{script_name}', function(keys, args)\n"
            f"{''.join(starts)}{''.join(texts)}\nend)\n"
        )
    return Library(name, "".join(out))


# What a producer's pipelines call by SHA (its other calls go through call_sync/call_async,
# which fall back to EVAL).
ENQUEUE_SCRIPTS = ("enqueue",)


def all_scripts() -> list[Script]:
    return [script(n) for n in SCRIPT_NAMES]


async def call_async(client: Any, s: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
    """Run ``s`` on a coredis client (or pipeline-free client)."""
    try:
        return await client.evalsha(s.sha, keys=keys, args=args)
    except coredis.exceptions.NoScriptError:
        return await client.eval(s.source, keys=keys, args=args)


def call_sync(client: Any, s: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> Any:
    """Run ``s`` on a redis-py client."""
    import redis.exceptions  # here: a worker never uses redis-py, and it costs 6 MiB of RSS

    try:
        return client.evalsha(s.sha, len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:
        return client.eval(s.source, len(keys), *keys, *args)


class FunctionsUnavailable(Exception):
    """The server has no functions (Redis 6, or FCALL renamed away), or the user may not run
    FCALL or FUNCTION LOAD: call the scripts by EVALSHA."""


def function_refusal(text: str) -> str | None:
    """What an error reply to FCALL or FUNCTION LOAD says about functions (as hiredis gives it,
    "ERR ...", or as redis-py does, without the code): ``"missing"`` (the library is not
    loaded), ``"unavailable"`` (the command is unknown, or not in the user's ACL rule), or None
    (anything else, e.g. an error of the script itself)."""
    lowered = text.lower().removeprefix("-").removeprefix("err ")
    if lowered.startswith("function not found"):
        return "missing"
    if lowered.startswith("unknown command") and (
        "fcall" in lowered[:40] or "function" in lowered[:40]
    ):
        return "unavailable"
    if "no permissions to run the 'fcall'" in lowered or "run the 'function|load'" in lowered:
        return "unavailable"
    return None


def fcall_sync(
    client: Any,
    s: Script,
    keys: Sequence[str],
    args: Sequence[ScriptArg],
    send: Callable[..., Any] | None = None,
) -> Any:
    """Run ``s`` as its function of the library (FCALL) on a redis-py client, loading the
    library where the server lacks it. Raises FunctionsUnavailable where functions cannot be
    used (the caller then calls by EVALSHA, :func:`call_sync`), and any other error as is.
    ``send``: what sends the command (default: :func:`lean_command` on ``client``)."""
    import redis.exceptions

    for attempt in range(2):
        try:
            if send is not None:
                return send("FCALL", s.function, len(keys), *keys, *args)
            return lean_command(client, "FCALL", s.function, len(keys), *keys, *args)
        except redis.exceptions.ResponseError as exc:
            _after_refused_call(exc, attempt)
        try:
            client.function_load(library().source)
        except redis.exceptions.ResponseError as exc:
            _after_refused_load(exc)
    raise AssertionError("unreachable")  # the second attempt returns or raises


async def fcall_async(
    client: Any,
    s: Script,
    keys: Sequence[str],
    args: Sequence[ScriptArg],
    send: Callable[..., Awaitable[Any]] | None = None,
) -> Any:
    """:func:`fcall_sync` on a coredis client. ``send``: what sends the command (default:
    ``client.fcall``); it raises an error reply as coredis does."""
    for attempt in range(2):
        try:
            if send is not None:
                return await send("FCALL", s.function, len(keys), *keys, *args)
            return await client.fcall(s.function, keys=keys, args=args)
        except coredis.exceptions.ResponseError as exc:
            _after_refused_call(exc, attempt)
        try:
            await client.function_load(library().source)
        except coredis.exceptions.ResponseError as exc:
            _after_refused_load(exc)
    raise AssertionError("unreachable")  # the second attempt returns or raises


def _after_refused_call(exc: Exception, attempt: int) -> None:
    """An FCALL's error reply: returns when the library is missing the first time (load it and
    call again); raises FunctionsUnavailable where functions cannot be used, else ``exc``."""
    refusal = function_refusal(str(exc))
    if refusal == "unavailable" or (refusal == "missing" and attempt):
        raise FunctionsUnavailable(str(exc)) from exc
    if refusal is None:
        raise exc


def _after_refused_load(exc: Exception) -> None:
    """FUNCTION LOAD's error reply: returns when someone else loaded the library meanwhile;
    raises FunctionsUnavailable where functions cannot be used, else ``exc``."""
    if "already exists" in str(exc):
        return
    if function_refusal(str(exc)) == "unavailable":
        raise FunctionsUnavailable(str(exc)) from exc
    raise exc


def lean_command(client: Any, *command: ScriptArg) -> Any:
    """``client.execute_command(*command)`` on a plain redis-py client, without its per-call
    bookkeeping: a connection from the client's pool, the same retry policy (a connection
    error or timeout disconnects and tries again, as the client's ``retry`` says), the reply as
    its parser gives it. redis-py 8 spends ~60 µs of CPU per command on observability and
    event hooks around that, about a fifth of a producer's single ``enqueue`` (which is safe
    to repeat, as every script is). A client of another kind (Cluster, or one pinned to a
    single connection) goes through ``execute_command``.
    """
    pool = getattr(client, "connection_pool", None)
    if pool is None or getattr(client, "connection", None) is not None:
        return client.execute_command(*command)
    conn = pool.get_connection()
    try:
        return call_on(conn, command)
    finally:
        pool.release(conn)


def call_on(conn: Any, command: Sequence[ScriptArg]) -> Any:
    """``command`` on a redis-py connection, under the connection's own retry policy (a
    connection error or timeout disconnects and tries again); its reply."""
    return conn.retry.call_with_retry(
        lambda: _send_and_read(conn, command), lambda _error: conn.disconnect()
    )


def _send_and_read(conn: Any, command: Sequence[ScriptArg]) -> Any:
    # Sent as one chunk (packed by hiredis): send_packed_command takes a list of chunks.
    conn.send_packed_command([pack_command(*command)])
    return conn.read_response()


def evalsha_command(s: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> list[ScriptArg]:
    """The EVALSHA command of ``s`` as one list of arguments."""
    return ["EVALSHA", s.sha, len(keys), *keys, *args]


def pack_command(*parts: str | bytes | int | float) -> bytes:
    """One command as a RESP array of bulk strings: hiredis' packer (C, not a loop of ours; the
    same text as redis-py's encoder for str, int and float). The worker's own connection and
    :func:`lean_command` send what it packs."""
    packed: bytes = hiredis.pack_command(parts)  # type: ignore[arg-type]  # stub: a 1-tuple
    return packed


def pipe_evalsha(pipe: Any, s: Script, keys: Sequence[str], args: Sequence[ScriptArg]) -> None:
    """Queue an EVALSHA of ``s`` on a redis-py pipeline (a cluster pipeline refuses ``evalsha()``
    but routes the raw command by its keys)."""
    pipe.execute_command(*evalsha_command(s, keys, args))


_TIME_SCRIPT = "return redis.call('TIME')"  # the server's clock from the node that owns a key


def pipe_time(pipe: Any, key: str) -> None:
    """Queue the server's TIME on a redis-py pipeline. A Cluster pipeline cannot route a keyless
    command, so there it is asked through a one-line EVAL on ``key`` (the pipeline's own node:
    the same clock as the rest of the snapshot)."""
    from redis.cluster import ClusterPipeline

    if isinstance(pipe, ClusterPipeline):
        pipe.execute_command("EVAL", _TIME_SCRIPT, 1, key)  # type: ignore[no-untyped-call]
    else:
        pipe.time()


def pipe_server_ms(pipe: Any, key: str) -> Callable[[], Awaitable[int]]:
    """Queue the server's TIME on a coredis pipeline; returns an async getter of it in ms
    (after the pipeline ran).

    It is asked through a one-line EVAL on ``key``: on a Cluster a keyless TIME cannot be routed
    to the pipeline's node (as in :func:`pipe_time`), and coredis' ``time()`` drops the
    sub-second part (its callback divides the microseconds by 1000), which put cron ticks and
    the worker's clock offset up to a second early.
    """
    request = pipe.eval(_TIME_SCRIPT, keys=[key])

    async def from_eval() -> int:
        sec, usec = await request
        return int(sec) * 1000 + int(usec) // 1000

    return from_eval


async def server_seconds(client: Any, key: str) -> float:
    """The server's clock (Unix seconds, to the microsecond) from a coredis client, through the
    same one-line EVAL on ``key`` as :func:`pipe_server_ms`."""
    sec, usec = await client.eval(_TIME_SCRIPT, keys=[key])
    return int(sec) + int(usec) / 1e6


def _chosen(names: Sequence[str] | None) -> list[Script]:
    return all_scripts() if names is None else [script(n) for n in names]


def preload_sync(client: Any, names: Sequence[str] | None = None) -> None:
    """Load the scripts ``names`` (default: every script) in one pipelined round trip, so that
    pipelines may use EVALSHA. A producer loads only ``enqueue``: the others are ~300 KB of Lua
    that Redis hashes (and compiles, when new) for nothing, 10-40 ms at a producer's first call.

    A cluster client loads each on every master instead (it cannot pipeline SCRIPT LOAD)."""
    from redis.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        for s in _chosen(names):
            client.script_load(s.source)
        return
    pipe = client.pipeline(transaction=False)
    for s in _chosen(names):
        pipe.script_load(s.source)
    pipe.execute()


async def preload_async(client: Any, names: Sequence[str] | None = None) -> None:
    """The coredis twin of :func:`preload_sync`."""
    if isinstance(client, coredis.RedisCluster):
        for s in _chosen(names):
            await client.script_load(s.source)
        return
    async with client.pipeline(transaction=False) as pipe:
        for s in _chosen(names):
            pipe.script_load(s.source)
