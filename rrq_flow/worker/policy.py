"""Retry policy: what a failed attempt turns into (retry after a delay, or dead), and the
error record kept for it. Pure functions, no I/O."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from rrq_flow.config.model import DEFAULT_MAX_ERROR_BYTES, RetryPolicy
from rrq_flow.errors import Fatal, Retry
from rrq_flow.protocol.ops import encode_json
from rrq_flow.worker.outcome import cap_bytes, describe, format_traceback, type_name, valid_utf8


def backoff_delay(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds before the retry that follows failed attempt number ``attempt`` (1-based).

    Exponential doubles ``delay`` per attempt; both kinds are capped at ``max_delay``. Jitter
    picks uniformly in [delay/2, delay] ("equal jitter"), so retries of a burst of failures
    spread out without ever retrying sooner than half the nominal delay.
    """
    if policy.backoff == "exponential":
        base = policy.delay * (2 ** max(0, attempt - 1))
    else:
        base = policy.delay
    base = min(base, policy.max_delay)
    if policy.jitter and base > 0:
        base = (rng or random).uniform(base / 2, base)
    return float(base)


@dataclass(frozen=True, slots=True)
class Verdict:
    action: str  # 'retry' | 'dead'
    delay: float
    error_json: str


def error_record(
    exc: BaseException | None,
    attempt: int,
    message: str | None = None,
    kind: str | None = None,
    max_error_bytes: int = DEFAULT_MAX_ERROR_BYTES,
) -> dict[str, object]:
    """The stored record of a failed attempt. Never raises, whatever ``exc`` is; every string
    is valid UTF-8 and the message at most ``max_error_bytes``."""
    tb = format_traceback(exc) if exc is not None else ""
    if message is None:
        message = describe(exc, max_error_bytes) if exc is not None else "error"
    return {
        "type": kind or (type_name(exc) if exc is not None else "Error"),
        "message": cap_bytes(valid_utf8(message), max_error_bytes),
        "attempt": attempt,
        "traceback": tb,
    }


def classify(
    exc: BaseException,
    attempt: int,
    policy: RetryPolicy,
    fatal_types: Sequence[type[BaseException]],
    max_error_bytes: int = DEFAULT_MAX_ERROR_BYTES,
) -> Verdict:
    """Turn a handler's exception into retry-or-dead. Retry(delay=...) wins over the policy's
    backoff; Fatal and the queue's fatal_errors skip retries."""
    record = error_record(exc, attempt, max_error_bytes=max_error_bytes)
    if isinstance(exc, Fatal) or (fatal_types and isinstance(exc, tuple(fatal_types))):
        return Verdict("dead", 0.0, encode_json(record))
    delay = backoff_delay(policy, attempt)
    if isinstance(exc, Retry) and exc.delay is not None:
        from rrq_flow.config.durations import parse_duration

        try:
            delay = parse_duration(exc.delay)
        except Exception as bad:  # the delay is the user's object
            note = f"{record['message']} (Retry delay ignored: {describe(bad, 200)})"
            record["message"] = cap_bytes(note, max_error_bytes)
    return Verdict("retry", delay, encode_json(record))


def timeout_verdict(timeout: float, attempt: int, policy: RetryPolicy) -> Verdict:
    record = error_record(None, attempt, f"timed out after {format_seconds(timeout)}", "Timeout")
    return Verdict("retry", backoff_delay(policy, attempt), encode_json(record))


def format_seconds(seconds: float) -> str:
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds:g}s"
