"""Parse durations: seconds as a number, or ``<number><unit>`` parts such as ``1h30m``.

Kept separate because the worker (``Retry(delay="10s")``) and the client use it too.
"""

from __future__ import annotations

import math
import re

# Largest unit first so that "ms" is tried before "m" and "s".
UNITS: dict[str, float] = {"ms": 0.001, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}

_NUMBER = r"\d+(?:\.\d+)?"
_PART = re.compile(rf"({_NUMBER})(ms|d|h|m|s)")
# The same grammar as the schema's duration pattern (a test keeps the two in step).
PATTERN = rf"^\s*(?:{_NUMBER}|(?:{_NUMBER}(?:ms|d|h|m|s))+)\s*$"
_FULL = re.compile(PATTERN)

FORM = (
    "a number of seconds, or <number><unit> parts with units ms, s, m, h, d "
    "(e.g. 250ms, 30s, 1h30m, 1.5s)"
)


def parse_duration(value: object) -> float:
    """Return ``value`` in seconds; raise ValueError naming the value and the allowed form.

    Accepts an int or float >= 0, a numeric string ("30", read as seconds) or unit parts
    ("1h30m", "250ms"). Booleans, negative and non-finite numbers are rejected.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"invalid duration {value!r}: expected {FORM}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        if not _FULL.match(value):
            raise ValueError(f"invalid duration {value!r}: expected {FORM}")
        text = value.strip()
        parts = _PART.findall(text)
        seconds = sum(float(n) * UNITS[u] for n, u in parts) if parts else float(text)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {value!r}: expected {FORM}")
    return seconds
