"""The Redis permissions one pipeline needs, and a check that the connected user has them.

:data:`PIPELINE_COMMANDS` is the single list of every command rrq-flow sends for a pipeline —
directly (the clients, the CLI, the idle wait's BLPOP) and from inside its Lua scripts (which
Redis checks against the same ACL user). docs/security.md prints the rule built from it and
tests/test_acl.py runs the whole command-line surface as a user with exactly that rule. A change
that makes rrq-flow send a new command adds it here, nowhere else.

:func:`missing_commands_sync` / :func:`missing_commands_async` find out which of them the user
lacks (one probe script, see ``_PROBE``); a worker and every command check this at start, so a
missing permission is one clear line and exit 3 instead of a retry storm.
"""

from __future__ import annotations

from typing import Any

# Sorted; "a|b" is the subcommand b of a (ACL syntax).
PIPELINE_COMMANDS: tuple[str, ...] = (
    "blpop",  # the idle wait (rrq_flow/worker/wake_connection.py)
    "del",
    "eval",  # a script the server forgot (NOSCRIPT) is sent again whole
    "evalsha",
    "exec",  # MULTI/EXEC: the admin's one transaction (rrq_flow/client/admin.py)
    "exists",
    "fcall",  # the scripts as functions (worker/wake_connection.py, the clients' enqueue); optional
    "function|load",  # loads rrq-flow's function library where a server lacks it; optional
    "get",
    "hdel",
    "hget",
    "hgetall",
    "hincrby",
    "hkeys",  # a batch run's per-queue job lists, when the run ends (fragments/runs.lua)
    "hmget",
    "hset",
    "hsetnx",
    "info",  # run's persistence/eviction check (rrq_flow/server_checks.py); optional, see below
    "llen",
    "lpush",
    "lrange",
    "ltrim",
    "multi",
    "pexpire",
    "persist",
    "ping",
    "rpush",
    "script|load",
    "set",
    "time",
    "type",  # scripts check key types before their first write
    "unlink",  # a big fan-out's staging list of an attempt that did not commit (common.lua)
    "unwatch",  # WATCH/MULTI/EXEC: the dashboard's checked updates (rrq_flow/client/browse.py)
    "watch",
    "zadd",
    "zcard",
    "zcount",
    "zrange",
    "zrangebyscore",
    "zrem",
    "zremrangebyrank",  # only the newest 1000 runs stay listed (fragments/runs.lua)
    "zremrangebyscore",
    "zrevrange",
    "zrevrangebyscore",  # the dashboard's dead-letter pages (rrq_flow/client/browse.py)
    "zscore",
)


def key_pattern(pipeline: str) -> str:
    """The ACL key patterns of every key of ``pipeline`` (see rrq_flow/protocol/keys.py): its
    own hash tag and its partitions' (``partitions``; a pipeline name holds no dot)."""
    return f"~rrq:{{{pipeline}}}:* ~rrq:{{{pipeline}.*}}:*"


def acl_rule(pipeline: str, password: str = "<password>") -> str:
    """The ``ACL SETUSER <name> ...`` rule a user of this pipeline needs, nothing more."""
    commands = " ".join(f"+{c}" for c in PIPELINE_COMMANDS)
    return f"on >{password} resetkeys {key_pattern(pipeline)} resetchannels -@all {commands}"


# Sent at top level only (Redis refuses them inside a script); the check exercises them by
# how it runs: a trivial EVAL, a BLPOP on a scratch key inside MULTI/EXEC, SCRIPT LOAD of the
# probe, EVALSHA of it (and, from the sync client, WATCH/MULTI/EXEC around a PING, and UNWATCH).
# The BLPOP goes in a transaction because there it never blocks (it answers at once, as LPOP
# would) while Redis still checks its permission when it is queued: a BLPOP with a timeout
# returns only at Redis' next timer tick (every 100 ms at the default hz 10), which cost every
# command that checks access 0-100 ms before it could start.
TOP_LEVEL_ONLY = frozenset(
    {"blpop", "eval", "evalsha", "exec", "multi", "script|load", "unwatch", "watch"}
)

# The probe: each command that may run in a script, called through redis.pcall with valid
# arguments on scratch keys of the pipeline (deleted again before the script ends, so nobody
# ever sees them). A denied command answers NOPERM ("can't run this command") instead of
# running; any other error (a wrong type, a read-only replica) is not a permission problem.
# redis.acl_check_cmd is not used: Redis 7.0 crashes (SIGSEGV) when it is given a command
# without its key arguments for a user with a key pattern.
_PROBE = """
local p = KEYS[1]
local h, z, l, s = p .. 'h', p .. 'z', p .. 'l', p .. 's'
local probes = {
  del = {s}, exists = {s}, get = {s}, hdel = {h, 'f'},
  hget = {h, 'f'}, hgetall = {h}, hincrby = {h, 'n', '1'}, hkeys = {h}, hmget = {h, 'f'},
  hset = {h, 'f', 'v'}, hsetnx = {h, 'g', 'v'}, llen = {l}, lpush = {l, 'v'},
  lrange = {l, '0', '-1'}, ltrim = {l, '0', '-1'}, pexpire = {h, '60000'}, persist = {h},
  ping = {}, rpush = {l, 'v'}, set = {s, 'v'}, time = {}, zadd = {z, '1', 'm'},
  zcard = {z}, zcount = {z, '-inf', '+inf'}, zrange = {z, '0', '-1'},
  zrangebyscore = {z, '-inf', '+inf'}, zrem = {z, 'm'}, zremrangebyscore = {z, '2', '3'},
  zremrangebyrank = {z, '5', '6'}, zrevrange = {z, '0', '-1'}, zscore = {z, 'm'}, type = {s},
  zrevrangebyscore = {z, '+inf', '-inf'}, unlink = {s},
}
local denied, unknown, unscriptable = {}, {}, {}
for _, name in ipairs(ARGV) do
  local args = probes[name]
  if args == nil then
    unknown[#unknown + 1] = name
  else
    local reply = redis.pcall(name, unpack(args))
    if type(reply) == 'table' and reply.err then
      local e = string.lower(reply.err)
      if string.find(e, 'noperm', 1, true) or string.find(e, "can't run this command", 1, true)
        or string.find(e, 'no permissions', 1, true) then
        denied[#denied + 1] = name
      elseif string.find(e, 'not allowed from script', 1, true) then
        unscriptable[#unscriptable + 1] = name
      end
    end
  end
end
redis.pcall('DEL', h, z, l, s)
return {denied, unknown, unscriptable}
"""

# In the rule, but not demanded: without INFO, `run` warns that it cannot check the server's
# persistence and eviction settings and goes on (rrq_flow/server_checks.py); without FCALL or
# FUNCTION LOAD (or on Redis 6, which has neither), the worker and the clients' enqueues call
# the scripts by EVALSHA.
OPTIONAL = frozenset({"info", "fcall", "function|load"})

SCRIPT_COMMANDS = tuple(
    c for c in PIPELINE_COMMANDS if c not in TOP_LEVEL_ONLY and c not in OPTIONAL
)


def probe_key(pipeline: str) -> str:
    """The prefix of the scratch keys the check writes (and deletes) inside its script."""
    return f"rrq:{{{pipeline}}}:acl-probe:"


def _missing(reply: Any) -> list[str]:
    denied, unknown, _unscriptable = reply  # tests/test_redis_access.py checks the last is empty
    if unknown:  # a command added to PIPELINE_COMMANDS without a probe: a bug, say so
        raise AssertionError(f"rrq_flow.acl: no probe for {', '.join(map(str, unknown))}")
    return [str(name) for name in denied]


def probe_reply_sync(client: Any, pipeline: str) -> Any:
    """The probe's raw reply: [denied, without a probe, not allowed in scripts] (for tests)."""
    sha = client.script_load(_PROBE)
    return client.evalsha(sha, 1, probe_key(pipeline), *SCRIPT_COMMANDS)


def missing_commands_sync(client: Any, pipeline: str) -> list[str]:
    """The commands of :data:`PIPELINE_COMMANDS` the user of a redis-py client lacks.

    A denied EVAL, EVALSHA or SCRIPT LOAD raises (NoPermissionError) instead: the check runs
    through them.
    """
    client.eval("return 1", 0)
    transaction = client.pipeline(transaction=True)
    # Keyed commands: a Redis Cluster's transaction must name the slot it runs in.
    transaction.exists(probe_key(pipeline))
    transaction.execute_command("BLPOP", probe_key(pipeline) + "l", "0.01")  # never blocks here
    try:
        transaction.execute()
    except Exception as exc:
        if not _refused_for_memory(exc):
            raise
        client.execute_command("BLPOP", probe_key(pipeline) + "l", "0.01")  # see _refused_...
    return _missing(probe_reply_sync(client, pipeline))


async def missing_commands_async(client: Any, pipeline: str) -> list[str]:
    """The same for a coredis client."""
    await client.eval("return 1", keys=[], args=[])
    try:
        async with client.pipeline(transaction=True) as transaction:
            transaction.blpop([probe_key(pipeline) + "l"], timeout=0.01)  # never blocks here
    except Exception as exc:
        if not _refused_for_memory(exc):
            raise
        await client.blpop([probe_key(pipeline) + "l"], timeout=0.01)  # see _refused_...
    sha = await client.script_load(_PROBE)
    reply = await client.evalsha(sha, keys=[probe_key(pipeline)], args=list(SCRIPT_COMMANDS))
    return _missing(reply)


def _refused_for_memory(exc: BaseException) -> bool:
    """Whether the transaction was refused for want of memory (``OOM``), not for permission.

    At maxmemory Redis refuses every command queued in MULTI (after checking its permission), so
    the check then sends BLPOP on its own, which waits for Redis' next timer tick: slower, but
    the operator's commands (status, health...) still run while Redis is full.
    """
    from rrq_flow.redis_errors import error_code

    return error_code(exc) == "OOM"


def denial_message(user: str, missing: list[str], pipeline: str) -> str:
    """``permission denied: user U lacks A, B`` and where to find the rule."""
    names = ", ".join(name.upper().replace("|", " ") for name in missing)
    return (
        f"permission denied: user {user!r} lacks {names} (the ACL rule a pipeline needs is in "
        f"docs/security.md: {key_pattern(pipeline)} and {len(PIPELINE_COMMANDS)} commands)"
    )
