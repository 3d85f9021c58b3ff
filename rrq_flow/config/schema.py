"""The pipeline JSON Schema: load it, validate data with it, and explain its errors to humans.

``schemas/pipeline.schema.json`` is the single source of truth for the structure of a pipeline
file. jsonschema finds every error; this module turns each one into a :class:`Problem` located
at the offending YAML node, with a short message instead of jsonschema's raw text.
"""

from __future__ import annotations

import difflib
import functools
import importlib.resources
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from rrq_flow.config.loader import Document, PathKey
from rrq_flow.errors import Problem
from rrq_flow.redact import redact_url

SCHEMA_PACKAGE = "rrq_flow.schemas"
SCHEMA_FILE = "pipeline.schema.json"

# Human names for the schema's $defs; a value failing one of these is described by the phrase.
_PHRASES = {
    "duration": (
        "a duration such as 30s, 1h30m or 250ms (units ms, s, m, h, d; a number is seconds)"
    ),
    "redisUrl": "a redis://, rediss:// or unix:// URL (or empty for embedded Redis)",
    "handlerSpec": "a handler reference 'package.module:function'",
    "exceptionSpec": "an exception class 'package.module:Name' (or 'builtins.Name')",
    "next": "a queue name or a list of queue names",
    "hostPort": "host:port, such as 10.0.0.1:26379",
}
_MISSING = "missing required key"
# Defs whose alternatives are never explained one by one.
_ATOMIC = {"duration"}

# Where each setting lives, for "belongs under ..." hints on misplaced keys.
_SECTION_NAMES = {
    "redis": "'redis'",
    "workers": "'workers'",
    "defaults": "'defaults' or a queue",
    "queue": "a queue",
    "retry": "'retry'",
}


@functools.cache
def schema_text() -> str:
    """The schema file's text, as shipped in the package ``rrq_flow.schemas``."""
    try:
        resource = importlib.resources.files(SCHEMA_PACKAGE) / SCHEMA_FILE
        return resource.read_text(encoding="utf-8")
    except ModuleNotFoundError:
        # An editable install maps only `rrq_flow` itself; read the source tree's copy then.
        return (Path(__file__).resolve().parents[2] / "schemas" / SCHEMA_FILE).read_text("utf-8")


@functools.cache
def load_schema() -> dict[str, Any]:
    """The parsed schema (cached; do not modify)."""
    schema: dict[str, Any] = json.loads(schema_text())
    return schema


@functools.cache
def validator() -> Draft202012Validator:
    return Draft202012Validator(load_schema())


def _defs() -> dict[str, Any]:
    defs: dict[str, Any] = load_schema()["$defs"]
    return defs


def _resolve(schema: Any) -> Any:
    """Follow a local ``#/$defs/...`` reference (the only kind the schema uses)."""
    if isinstance(schema, dict) and str(schema.get("$ref", "")).startswith("#/$defs/"):
        return _defs()[schema["$ref"].removeprefix("#/$defs/")]
    return schema


def _def_name(schema: Any) -> str | None:
    for name, definition in _defs().items():
        if schema is definition or schema == definition:
            return name
    return None


def show(value: Any) -> str:
    """A value as the message shows it: YAML spelling for scalars, the kind for containers."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        value = redact_url(value)  # a URL's password never reaches a message
        return repr(value if len(value) <= 60 else value[:57] + "...")
    return str(value)


def _bounds(schema: dict[str, Any]) -> str:
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        return f" from {low} to {high}"
    if low is not None:
        return f" >= {low}"
    if high is not None:
        return f" <= {high}"
    return ""


def describe(schema: Any) -> str:
    """What a schema accepts, in words ("an integer >= 1", "true or false", ...)."""
    schema = _resolve(schema)
    name = _def_name(schema)
    if name in _PHRASES:
        return _PHRASES[name]
    if "const" in schema:
        return show(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(show(v) for v in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            branches = [b for b in schema[key] if _resolve(b).get("type") != "null"]
            return " or ".join(describe(b) for b in branches)
    types = schema.get("type")
    if isinstance(types, list):
        types = next((t for t in types if t != "null"), None)
    if types == "integer":
        return "an integer" + _bounds(schema)
    if types == "number":
        return "a number" + _bounds(schema)
    if types == "boolean":
        return "true or false"
    if types == "string":
        return f"a string matching {schema['pattern']}" if "pattern" in schema else "a string"
    if types == "object":
        return "a mapping"
    if types == "array":
        return "a list"
    return "valid"


_TYPE_TESTS: dict[str, Any] = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def _accepts_type(schema: Any, instance: Any) -> bool:
    """Whether ``instance`` has a type that ``schema`` allows (ignoring all other keywords)."""
    schema = _resolve(schema)
    if "anyOf" in schema:
        return any(_accepts_type(b, instance) for b in schema["anyOf"])
    types = schema.get("type")
    if types is None:
        return True
    names = [types] if isinstance(types, str) else types
    return any(_TYPE_TESTS[t](instance) for t in names)


def _value_message(error: ValidationError) -> str:
    """The message for a value that breaks ``error.schema``."""
    name = _def_name(error.schema)
    # A URL may carry a password: never echo it.
    instance = error.instance
    got = show(
        redact_url(instance) if name == "redisUrl" and isinstance(instance, str) else instance
    )
    if name in _PHRASES:
        return f"must be {_PHRASES[name]}, got {got}"
    keyword = error.validator
    if keyword == "pattern":
        return f"must match {error.validator_value}, got {got}"
    if keyword == "enum":
        message = f"must be {describe(error.schema)}, got {got}"
        if isinstance(error.instance, str):
            choices = [str(v) for v in error.validator_value]  # type: ignore[union-attr]
            close = difflib.get_close_matches(error.instance, choices, n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
        return message
    if keyword in ("minProperties", "minItems"):
        return "must not be empty"
    if keyword == "uniqueItems":
        items = error.instance if isinstance(error.instance, list) else []
        dupes = [v for i, v in enumerate(items) if v in items[:i]]
        return f"must not list {show(dupes[0]) if dupes else 'an entry'} twice"
    if keyword in ("type", "const", "minimum", "maximum", "anyOf", "oneOf"):
        return f"must be {describe(error.schema)}, got {got}"
    text = error.message if len(error.message) <= 120 else error.message[:117] + "..."
    return f"is invalid: {text}"


def _sections() -> dict[str, dict[str, Any]]:
    root = load_schema()["properties"]
    return {
        "redis": root["redis"]["properties"],
        "workers": root["workers"]["properties"],
        "defaults": root["defaults"]["properties"],
        "queue": _defs()["queue"]["properties"],
        "retry": _defs()["retry"]["properties"],
    }


def _unknown_key_message(path: PathKey, key: str, schema: dict[str, Any]) -> str:
    """ "unknown key" plus the most useful hint: where it belongs, a close match, or the list."""
    known = list(schema.get("properties", {}))
    homes = [section for section, props in _sections().items() if key in props]
    if "defaults" in homes:
        homes = ["defaults"]  # "defaults or a queue" covers both
    if path == ("defaults",) and homes == ["queue"]:
        return f"unknown key; {key!r} is set per queue, not in defaults"
    if homes:
        return f"unknown key; {key!r} belongs under {_SECTION_NAMES[homes[0]]}"
    lowered = {k.lower(): k for k in known}
    close = [lowered[key.lower()]] if key.lower() in lowered else []
    close = close or difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return f"unknown key; expected one of: {', '.join(known)}"


def _findings(error: ValidationError) -> Iterator[tuple[PathKey, str, bool]]:
    """(path, message, at_key) for one jsonschema error, descending into the useful branch."""
    path: PathKey = tuple(error.absolute_path)
    if "propertyNames" in error.absolute_schema_path:
        yield (*path, str(error.instance)), f"name {_value_message(error)}", True
        return
    if (
        error.validator == "additionalProperties"
        and isinstance(error.instance, dict)
        and isinstance(error.schema, dict)
    ):
        schema = error.schema
        patterns = list(schema.get("patternProperties", {}))
        for key in error.instance:
            if key in schema.get("properties", {}):
                continue
            if isinstance(key, str) and any(re.search(p, key) for p in patterns):
                continue
            yield (*path, str(key)), _unknown_key_message(path, str(key), schema), True
        return
    if error.validator == "required" and isinstance(error.instance, dict):
        for key in error.validator_value:  # type: ignore[union-attr]
            if key not in error.instance:
                yield path, f"{_MISSING} {key!r}", False
        return
    if error.validator in ("anyOf", "oneOf") and _def_name(error.schema) not in _ATOMIC:
        branches = [
            i
            for i, branch in enumerate(error.validator_value)  # type: ignore[arg-type]
            if _accepts_type(branch, error.instance)
        ]
        if len(branches) == 1:
            inner = [e for e in error.context if e.relative_schema_path[0] == branches[0]]
            if inner:
                for sub in inner:
                    yield from _findings(sub)
                return
    yield path, _value_message(error), False


def schema_problems(doc: Document) -> list[Problem]:
    """Every schema violation in ``doc.data``, skipping nodes already reported while reading."""
    problems: list[Problem] = []
    seen: set[tuple[PathKey, str]] = set()
    for error in validator().iter_errors(doc.data):
        for path, message, at_key in _findings(error):
            if (path, message) in seen or doc.is_blocked(path):
                continue
            seen.add((path, message))
            problems.append(doc.problem(path, message, at_key=at_key))
            if not at_key and not message.startswith(_MISSING):
                doc.blocked.add(path)  # a bad value: later checks leave this node alone
    return problems
