"""``${VAR}`` / ``${VAR:-default}`` substitution from the environment in string values.

``$$`` stands for a literal ``$``; a ``$`` followed by anything else is kept as it is. The
default is used when the variable is unset *or empty* (as in POSIX shells) and may not contain
``}``. Errors are returned, not raised, so that the loader can report every one of them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_TOKEN = re.compile(r"\$\$|\$\{(?P<body>[^}]*)\}|\$\{")
_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Substitution:
    """The substituted text and one message per reference that could not be resolved."""

    value: str
    errors: list[str] = field(default_factory=list)


def has_references(text: str) -> bool:
    """Cheap test before :func:`substitute`: only strings with a ``$`` can change."""
    return "$" in text


def substitute(text: str, environ: Mapping[str, str] | None = None) -> Substitution:
    """Replace every ``${NAME}`` / ``${NAME:-default}`` in ``text`` from ``environ``."""
    env = os.environ if environ is None else environ
    errors: list[str] = []

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "$$":
            return "$"
        body = match.group("body")
        if body is None:
            errors.append(f"unclosed '${{' in {text!r}: write ${{NAME}}, or $$ for a literal $")
            return token
        ref = _BODY.fullmatch(body)
        if ref is None:
            errors.append(
                f"invalid reference {token!r}: use ${{NAME}} or ${{NAME:-default}}"
                " (write $$ for a literal $)"
            )
            return token
        name, default = ref.group("name"), ref.group("default")
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is not None:
                return default
            errors.append(
                f"environment variable {name!r} is not set"
                f" (write ${{{name}:-default}} to give a default)"
            )
            return token
        return value

    return Substitution(_TOKEN.sub(replace, text), errors)
