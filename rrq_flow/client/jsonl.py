"""Reading jobs from JSON Lines (``enqueue --jsonl``, ``run --input``): all lines are checked
before anything is enqueued, so a bad line means nothing from the file is written."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rrq_flow.client._core import JobSpec, check_priority
from rrq_flow.client.payload import JsonLimitError, loads
from rrq_flow.errors import PayloadError, RRQFlowError
from rrq_flow.protocol.ids import validate_job_id
from rrq_flow.runs import check_run_id

ALLOWED_KEYS = {"args", "kwargs", "job_id", "unique_key", "defer", "priority", "run"}
MAX_REPORTED = 20


@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    message: str


class JsonlError(RRQFlowError):
    def __init__(self, source: str, errors: list[LineError], total_bad: int):
        self.source = source
        self.errors = errors
        self.total_bad = total_bad
        lines = [f"{source}:{e.line}: {e.message}" for e in errors]
        if total_bad > len(errors):
            lines.append(f"... and {total_bad - len(errors)} more bad line(s)")
        lines.append(f"{source}: {total_bad} bad line(s); nothing was enqueued")
        super().__init__("\n".join(lines))


def parse_job_line(data: Any, priority: int = 0) -> JobSpec:
    """One line's JSON: an array of args, or an object with args / kwargs / job_id /
    unique_key / defer / priority / run (``priority``: for lines that do not set one)."""
    if isinstance(data, list):
        return JobSpec(args=tuple(data), priority=priority)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON array of args or an object, got {type(data).__name__}")
    unknown = set(data) - ALLOWED_KEYS
    if unknown:
        allowed = ", ".join(sorted(ALLOWED_KEYS))
        raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))}; allowed: {allowed}")
    args = data.get("args", [])
    kwargs = data.get("kwargs", {})
    if not isinstance(args, list):
        raise ValueError("'args' must be a JSON array")
    if not isinstance(kwargs, dict):
        raise ValueError("'kwargs' must be a JSON object")
    for key in ("unique_key", "run"):
        if key in data and not (isinstance(data[key], str) and data[key]):
            raise ValueError(f"'{key}' must be a non-empty string")
    if "job_id" in data:
        validate_job_id(data["job_id"])
    defer = data.get("defer")
    if defer is not None and not isinstance(defer, int | float | str):
        raise ValueError("'defer' must be a duration (seconds or a string like '10s')")
    line_priority = data.get("priority", priority)
    check_priority(line_priority)
    return JobSpec(
        args=tuple(args),
        kwargs=kwargs,
        job_id=data.get("job_id"),
        unique_key=data.get("unique_key"),
        defer=defer,
        priority=line_priority,
        run=check_run_id(data["run"]) if "run" in data else None,
    )


def _text(raw: str | bytes) -> str:
    """A line as text: bytes must be UTF-8 (a file opened in binary mode gives bytes)."""
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"not UTF-8 text (undecodable byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
        ) from None


def check_line(
    raw: str | bytes,
    priority: int = 0,
    check: Callable[[JobSpec], object] | None = None,
) -> JobSpec | str | None:
    """One line: None if blank, the JobSpec if good, else the message saying what is wrong.

    ``priority`` is for a line that sets none. ``check``, if given, is run on the spec too (the
    first pass of a file encodes it exactly as the enqueue will, ``ClientCore.build_job``);
    what it raises makes the line bad. Without it the line is only parsed.
    """
    if not raw.strip():
        return None
    try:
        spec = parse_job_line(loads(_text(raw)), priority)
        if check is not None:
            check(spec)
    except json.JSONDecodeError as exc:
        return f"not JSON: {exc.msg} (column {exc.colno})"
    except JsonLimitError as exc:
        return str(exc)
    except (ValueError, PayloadError, TypeError) as exc:
        return str(exc)
    return spec


class BadLines:
    """The bad lines of a source: how many, and the first MAX_REPORTED of them."""

    def __init__(self, source: str):
        self.source = source
        self.errors: list[LineError] = []
        self.count = 0

    def add(self, line: int, message: str) -> None:
        self.count += 1
        if len(self.errors) < MAX_REPORTED:
            self.errors.append(LineError(line, message))

    def raise_if_any(self) -> None:
        if self.count:
            raise JsonlError(self.source, self.errors, self.count)
