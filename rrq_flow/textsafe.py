"""Showing text from handlers and Redis on a terminal without letting it act on the terminal.

Error messages, results, arguments, job ids and worker hosts come from code and data rrq-flow
does not control. Printed raw, ``"\\x1b[2J"`` clears the operator's screen, ``"\\r"`` rewrites a
line to say something else, a newline forges a log line, a bidi override reverses text, and a lone
surrogate makes ``print`` raise. :func:`printable` shows every such character as an escape
(``\\x1b``, ``\\r``, ``\\u202e``, ``\\udcff``); every text output of the CLI and the text log
format go through it. JSON output needs nothing: ``json.dumps`` escapes what JSON must.
"""

from __future__ import annotations

import re

# DEL, C1 controls (0x9b is a one-byte CSI), bidi marks and overrides, lone surrogates.
_OTHERS = "\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_ANY = re.compile(f"[\x00-\x1f{_OTHERS}]")  # with every C0 control
_BUT_NEWLINE = re.compile(f"[\x00-\x09\x0b-\x1f{_OTHERS}]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, *, newlines: bool = False) -> str:
    """``str(text)`` with control characters and the like escaped; ``newlines`` keeps ``\\n``."""
    value = text if isinstance(text, str) else str(text)
    pattern = _BUT_NEWLINE if newlines else _ANY
    if pattern.search(value) is None:
        return value
    return pattern.sub(_escape, value)
