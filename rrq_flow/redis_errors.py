"""What a failed Redis call means: the one place that classifies errors and error replies.

Every failure of a call to Redis is one of:

- ``transient``: Redis is away or momentarily unable to serve and will be back on its own —
  connection loss, timeouts, ``BUSY`` (a long script), ``LOADING``, ``TRYAGAIN``,
  ``MASTERDOWN``, ``READONLY`` (a failover), ``CLUSTERDOWN``, ``MOVED``/``ASK`` (the Cluster
  clients follow redirections themselves; one that still arrives is retried).
- ``operator``: Redis refuses and will keep refusing until someone acts — ``OOM``, ``MISCONF``,
  ``NOPERM``, ``NOREPLICAS``, ``WRONGPASS``, a script error, anything unknown.

``READONLY`` and ``NOREPLICAS`` are also *stale master* replies (:func:`is_stale_master`): the
node written to is no master any more, so the client drops its connections and asks Sentinel
again before the retry (rrq_flow.failover).

Worker loops retry both with capped backoff (every script is safe to repeat); they differ only
in what is logged: a transient outage is a warning once per outage, an ``operator`` reply is an
error once per kind, with what to do. ``NOSCRIPT`` is neither: the caller reloads the script.
"""

from __future__ import annotations

import re
from typing import Literal

import coredis.exceptions
import trio

Kind = Literal["transient", "operator"]

# Redis error codes (the first word of an error reply) that clear up without anyone acting.
TRANSIENT_CODES = frozenset(
    {"BUSY", "LOADING", "TRYAGAIN", "MASTERDOWN", "READONLY", "CLUSTERDOWN", "MOVED", "ASK"}
)

# Replies meaning "this node is not (or no longer) the master": a failover happened.
STALE_MASTER_CODES = frozenset({"READONLY", "NOREPLICAS"})

# coredis maps some codes to classes and drops the code from the message.
_TRANSIENT_CLASSES: tuple[type[BaseException], ...] = (
    coredis.exceptions.ConnectionError,  # includes BusyLoadingError (LOADING), ProtocolError
    coredis.exceptions.ReadOnlyError,
    coredis.exceptions.TryAgainError,
    coredis.exceptions.ClusterDownError,
    coredis.exceptions.AskError,  # and MovedError
    TimeoutError,
    OSError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    EOFError,
)

_CLASS_CODES: tuple[tuple[type[BaseException], str], ...] = (
    (coredis.exceptions.AuthorizationError, "NOPERM"),
    (coredis.exceptions.AuthenticationError, "WRONGPASS"),
    (coredis.exceptions.WrongTypeError, "WRONGTYPE"),
    (coredis.exceptions.UnknownCommandError, "ERR"),
    (coredis.exceptions.ExecAbortError, "EXECABORT"),
)

# redis-py (the sync client) maps these codes to classes and drops the code from the message;
# by name, so that this module need not import redis-py (a worker never does).
_REDIS_PY_CODES = {
    "OutOfMemoryError": "OOM",
    "NoPermissionError": "NOPERM",
    "AuthenticationError": "WRONGPASS",
    "ReadOnlyError": "READONLY",
    "BusyLoadingError": "LOADING",
    "ExecAbortError": "EXECABORT",
    "NoScriptError": "NOSCRIPT",
    "TryAgainError": "TRYAGAIN",
    "ClusterDownError": "CLUSTERDOWN",
    "MasterDownError": "MASTERDOWN",
}

_INNER_CODE = re.compile(r"(?:^|\s)-([A-Z]{2,})\s")
# Both clients report an error reply inside a pipeline as "Command # n (...) of pipeline caused
# error: <reply>" (coredis keeps the reply's code; redis-py maps it to a class, above).
_PIPELINE_CODE = re.compile(r"of pipeline caused error: ([A-Z]{2,})\s")

# What an operator should do about the commonest refusals.
ADVICE = {
    "OOM": "Redis is out of memory (maxmemory reached): free memory or raise maxmemory",
    "MISCONF": "Redis cannot persist to disk and refuses writes: check its disk and logs",
    "NOPERM": "the Redis user lacks a permission rrq-flow needs: see docs/security.md",
    "WRONGPASS": "Redis rejected the credentials",
    "NOAUTH": "Redis requires a password",
    "NOREPLICAS": "Redis has fewer healthy replicas than min-replicas-to-write",
    "WRONGTYPE": "a key of the pipeline holds the wrong type of value (damaged data?)",
}

# Everything a worker loop catches around a Redis call (wake_connection's ReplyError included,
# by its Exception base, through ``is_redis_failure``).
REDIS_FAILURES: tuple[type[BaseException], ...] = (
    coredis.exceptions.RedisError,
    *_TRANSIENT_CLASSES,
)


def error_code(exc: BaseException) -> str:
    """The Redis error code of a reply (``BUSY``, ``OOM``...), or "" for a non-reply failure."""
    for cls, code in _CLASS_CODES:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, coredis.exceptions.ReadOnlyError):
        return "READONLY"
    if isinstance(exc, coredis.exceptions.BusyLoadingError):
        return "LOADING"
    if isinstance(exc, coredis.exceptions.NoScriptError):
        return "NOSCRIPT"
    if type(exc).__module__.startswith("redis."):
        for cls in type(exc).__mro__:
            if cls.__name__ in _REDIS_PY_CODES:
                return _REDIS_PY_CODES[cls.__name__]
    try:
        text = str(exc).lstrip("-")
    except Exception:
        return ""
    word = text.split(" ", 1)[0]
    if word.isupper() and word.isalpha():
        return word
    piped = _PIPELINE_CODE.search(text)
    if piped is not None:
        return piped.group(1)
    # Redis 6 wraps a refusal inside a script: "Error running script (...): ... -OOM command..."
    inner = _INNER_CODE.search(text)
    if inner is not None:
        return inner.group(1)
    if "user_script" in text or "user_function" in text:
        return "SCRIPT"  # a script raised an error: a bug, or damaged data
    return ""


def classify(exc: BaseException) -> Kind:
    """``transient`` or ``operator`` (see the module docstring)."""
    code = error_code(exc)
    if code in TRANSIENT_CODES:
        return "transient"
    if code == "" and isinstance(exc, _TRANSIENT_CLASSES):
        return "transient"
    return "operator"


def is_stale_master(exc: BaseException) -> bool:
    """True for a reply saying the node we write to is not (or no longer) a master."""
    return error_code(exc) in STALE_MASTER_CODES


def is_error_reply(exc: BaseException) -> bool:
    """True for an error reply from Redis to either client (not a connection failure)."""
    return any(
        cls.__name__ == "ResponseError" and cls.__module__.startswith(("redis.", "coredis."))
        for cls in type(exc).__mro__
    )


def explain(exc: BaseException) -> str:
    """One line for a log: what failed and, for an ``operator`` reply, what to do."""
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:
        text = type(exc).__name__
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")[:500]
    advice = ADVICE.get(error_code(exc))
    return f"{text} ({advice})" if advice else text


__all__ = [
    "ADVICE",
    "REDIS_FAILURES",
    "STALE_MASTER_CODES",
    "TRANSIENT_CODES",
    "Kind",
    "classify",
    "error_code",
    "explain",
    "is_error_reply",
    "is_stale_master",
]
