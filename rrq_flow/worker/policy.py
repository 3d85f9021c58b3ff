"""Retry policy: what a failed attempt turns into (retry after a delay, or dead), and the
error record kept for it. Pure functions, no I/O."""

from __future__ import annotations

import random
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

from rrq_flow.config.model import RetryPolicy
from rrq_flow.errors import Fatal, Retry
from rrq_flow.protocol.ops import encode_json

TRACEBACK_LIMIT = 8000  # characters of traceback kept per error


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
    exc: BaseException | None, attempt: int, message: str | None = None, kind: str | None = None
) -> dict[str, object]:
    tb = ""
    if exc is not None:
        tb = "".join(traceback.format_exception(exc))[-TRACEBACK_LIMIT:]
    return {
        "type": kind or (type(exc).__qualname__ if exc is not None else "Error"),
        "message": message if message is not None else str(exc),
        "attempt": attempt,
        "traceback": tb,
    }


def classify(
    exc: BaseException,
    attempt: int,
    policy: RetryPolicy,
    fatal_types: Sequence[type[BaseException]],
) -> Verdict:
    """Turn a handler's exception into retry-or-dead. Retry(delay=...) wins over the policy's
    backoff; Fatal and the queue's fatal_errors skip retries."""
    record = error_record(exc, attempt)
    if isinstance(exc, Fatal) or (fatal_types and isinstance(exc, tuple(fatal_types))):
        return Verdict("dead", 0.0, encode_json(record))
    delay = backoff_delay(policy, attempt)
    if isinstance(exc, Retry) and exc.delay is not None:
        from rrq_flow.config.durations import parse_duration

        try:
            delay = parse_duration(exc.delay)
        except ValueError as bad:
            record["message"] = f"{record['message']} (Retry delay ignored: {bad})"
    return Verdict("retry", delay, encode_json(record))


def timeout_verdict(timeout: float, attempt: int, policy: RetryPolicy) -> Verdict:
    record = error_record(None, attempt, f"timed out after {format_seconds(timeout)}", "Timeout")
    return Verdict("retry", backoff_delay(policy, attempt), encode_json(record))


def format_seconds(seconds: float) -> str:
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds:g}s"
