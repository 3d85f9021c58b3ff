"""What a handler returned or raised, made safe to store: valid UTF-8, bounded, never raising.

A handler may return any object and raise any exception, including ones whose ``__str__`` or
``__repr__`` raise. Nothing here may raise on such input (a formatting error in the worker used
to release the job, attempt not used, and loop it forever), and nothing it produces may fail to
encode on its way to Redis (a lone surrogate used to kill the acknowledgement sender).
"""

from __future__ import annotations

import traceback
from typing import Any

from rrq_flow.config.model import DEFAULT_MAX_ERROR_BYTES
from rrq_flow.protocol.ops import encode_json

TRACEBACK_BYTES = 8000  # bytes of traceback kept per error (its end: the raising frame)


class UnstorableResult(ValueError):
    """A handler's result cannot be stored; the message names the problem."""


class Unstorable:
    """Stands for a result already found unstorable (in a handler's process): encoding it
    raises UnstorableResult with the reason."""

    def __init__(self, reason: str):
        self.reason = reason


def valid_utf8(text: str) -> str:
    """``text`` with anything UTF-8 cannot encode (lone surrogates) shown as ``\\udcff``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def cap_bytes(text: str, limit: int, *, keep_end: bool = False) -> str:
    """``text`` (valid UTF-8) cut to at most ``limit`` bytes, marked where it was cut."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    mark = f" … [cut: {len(data)} bytes]"
    room = max(0, limit - len(mark.encode("utf-8")))
    if keep_end:
        kept = data[len(data) - room :].decode("utf-8", "ignore")
        return mark.strip() + " … " + kept
    return data[:room].decode("utf-8", "ignore") + mark


def type_name(exc: BaseException) -> str:
    """The exception's class name (the original one, for a process handler's stand-in)."""
    try:
        name = getattr(exc, "rrq_type", None) or type(exc).__qualname__
    except BaseException:  # a metaclass may do anything
        name = None
    return valid_utf8(name) if isinstance(name, str) else "Exception"


def describe(exc: BaseException, limit: int = DEFAULT_MAX_ERROR_BYTES) -> str:
    """``str(exc)``, or ``<unprintable ValueError>`` when that raises; valid UTF-8, capped."""
    try:
        text = str(exc)
    except BaseException:  # str() of a user's exception may raise anything
        return f"<unprintable {type_name(exc)}>"
    if not isinstance(text, str):  # pragma: no cover - str() always returns a str
        return f"<unprintable {type_name(exc)}>"
    return cap_bytes(valid_utf8(text), limit)


def format_traceback(exc: BaseException, limit: int = TRACEBACK_BYTES) -> str:
    """The traceback of ``exc`` (its end, where it was raised), or a note when it cannot be had."""
    remote = getattr(exc, "rrq_traceback", None)
    if isinstance(remote, str) and remote:
        return cap_bytes(valid_utf8(remote), limit, keep_end=True)
    try:
        text = "".join(traceback.format_exception(exc))
    except BaseException:  # a broken exception may break the formatter too
        return f"{type_name(exc)} (traceback unavailable)"
    return cap_bytes(valid_utf8(text), limit, keep_end=True)


def encode_result(result: Any, max_bytes: int) -> str:
    """``result`` as compact JSON (valid UTF-8, at most ``max_bytes``), or UnstorableResult."""
    # The common results first: None, and a plain int (whose JSON is its decimal digits; bool
    # is another type). Beyond 18 digits the general path decides (Python's digit limit).
    if result is None:
        text = "null"
    elif type(result) is int and -_PLAIN_INT < result < _PLAIN_INT:
        text = str(result)
    else:
        text = _encode_any(result)
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end].encode("utf-8", "backslashreplace").decode()
        raise UnstorableResult(
            f"result contains {bad}, a lone surrogate (not valid UTF-8; "
            "a file name read as str from a non-UTF-8 directory gives these)"
        ) from None
    if size > max_bytes:
        raise UnstorableResult(
            f"result is {size} bytes of JSON, over max_result_bytes ({max_bytes}); "
            "store large data elsewhere and return a reference"
        )
    return text


_PLAIN_INT = 10**18


def _encode_any(result: Any) -> str:
    """Compact JSON of any result, or UnstorableResult saying why it cannot be stored."""
    if isinstance(result, Unstorable):
        raise UnstorableResult(result.reason)
    try:
        text = encode_json(result)  # one shared encoder (json.dumps builds one per call)
    except RecursionError:
        raise UnstorableResult("result is nested too deep to store as JSON") from None
    except ValueError as exc:
        msg = describe(exc, 200)
        if "ircular" in msg:
            raise UnstorableResult("result contains a reference cycle (not JSON)") from None
        if "float" in msg:
            raise UnstorableResult("result contains NaN or Infinity (not JSON)") from None
        raise UnstorableResult(f"result is not JSON: {msg}") from None
    except BaseException as exc:  # a user's object may raise anything
        raise UnstorableResult(
            f"result is not JSON: {type_name(exc)}: {describe(exc, 200)}"
        ) from None
    return text


__all__ = [
    "Unstorable",
    "UnstorableResult",
    "cap_bytes",
    "describe",
    "encode_result",
    "format_traceback",
    "type_name",
    "valid_utf8",
]
