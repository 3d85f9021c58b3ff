"""Limits on job payload JSON that hold wherever a payload comes from (API, --args, JSONL).

Two things make JSON unusable although Python's encoder accepts them: nesting so deep that a
decoder (Python's, or Redis' cjson in a script) runs out of stack, and lone surrogates
(``"\\udcff"``, as ``os.listdir`` gives for a non-UTF-8 file name), which are not UTF-8, so
nothing holding them may be sent to Redis. Both are refused here, saying what and where.
"""

from __future__ import annotations

import json
from typing import Any

# Arrays and objects inside each other. Real job arguments nest a handful of levels; Python's
# json module fails near 1,000 and Redis' cjson at 1,000.
MAX_JSON_DEPTH = 100


class JsonLimitError(ValueError):
    """JSON text or a value is nested too deeply, or holds text that is not valid UTF-8."""


def too_deep_message() -> str:
    return f"nested deeper than {MAX_JSON_DEPTH} levels (the limit for job arguments)"


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether lists/dicts nest more than ``limit`` levels (iterative: no recursion limit)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth + 1 > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def check_encoded(text: str, value: Any) -> bytes:
    """The UTF-8 bytes of ``text`` (the JSON encoding of ``value``), or JsonLimitError."""
    # Every level opens a bracket: with few brackets in the text the walk is not needed.
    if _brackets(text) > MAX_JSON_DEPTH and _deeper_than(value, MAX_JSON_DEPTH):
        raise JsonLimitError(too_deep_message())
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end]
        raise JsonLimitError(
            f"a lone surrogate {ascii(bad)[1:-1]} (at character {exc.start} of the JSON) is not "
            "valid UTF-8 (a file name that is not UTF-8?); decode such text with "
            "errors='replace', or pass bytes as base64"
        ) from None


def loads(text: str | bytes) -> Any:
    """``json.loads`` that also refuses nesting deeper than MAX_JSON_DEPTH.

    Raises json.JSONDecodeError for text that is not JSON and JsonLimitError for too deep.
    """
    try:
        value = json.loads(text)
    except RecursionError:
        raise JsonLimitError(too_deep_message()) from None
    if _brackets(text) > MAX_JSON_DEPTH and _deeper_than(value, MAX_JSON_DEPTH):
        raise JsonLimitError(too_deep_message())
    return value


def _brackets(text: str | bytes) -> int:
    """Opening brackets in JSON text: at least its nesting depth (a cheap upper bound)."""
    if isinstance(text, bytes):
        return text.count(b"[") + text.count(b"{")
    return text.count("[") + text.count("{")
