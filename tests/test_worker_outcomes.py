"""Whatever a handler returns or raises, its job ends in one terminal state within max_attempts
executions and the worker keeps serving (issue 10, reproductions 1 and 2)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest

from rrq_flow.client.sync_client import SyncClient
from rrq_flow.worker.worker import EXIT_FAILED
from tests.conftest import make_pipeline, make_queue, run_burst

RETRY = {"max_attempts": 3, "delay": 0.01, "jitter": False}


class Unprintable(ValueError):
    def __str__(self) -> str:
        raise RuntimeError("str() of this exception raises")

    def __repr__(self) -> str:
        raise RuntimeError("repr() too")


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def cycle() -> list[Any]:
    value: list[Any] = []
    value.append(value)
    return value


async def run_one(
    redis_url: str, handler: Callable[..., Any], **queue: Any
) -> tuple[Any, list[int], int]:
    """Run ``handler`` for one job, then a normal job on the same worker; return the first
    job's info, the attempts seen by the handler, and the worker's exit code."""
    calls: list[int] = []

    async def wrapped(kind: str) -> Any:
        if kind == "normal":
            return "fine"
        calls.append(1)
        return await handler()

    cfg = make_pipeline(redis_url, make_queue("q", retry=RETRY, **queue))
    with SyncClient(cfg) as client:
        bad = client.enqueue("q", "bad")
        _, code = await run_burst(cfg, handlers={"q": wrapped})
        good = client.enqueue("q", "normal")
        _, _ = await run_burst(cfg, handlers={"q": wrapped})
        assert client.job(good).status == "done"
        return client.job(bad), calls, code


async def test_lone_surrogate_result_dead_letters_at_once(redis_url: str) -> None:
    """Reproduction 1: this used to kill the acknowledgement sender and wedge the job."""

    async def handler() -> str:
        return "bad\udcff"

    info, calls, code = await run_one(redis_url, handler)
    assert info.status == "dead" and len(calls) == 1
    assert "lone surrogate" in info.error["message"]
    assert "\\udcff" in info.error["message"]
    assert code == EXIT_FAILED


async def test_unprintable_exception_uses_its_attempts(redis_url: str) -> None:
    """Reproduction 2: this used to release the job (no attempt used) and loop it forever."""

    async def handler() -> None:
        raise Unprintable()

    info, calls, _ = await run_one(redis_url, handler)
    assert info.status == "dead" and len(calls) == 3
    assert info.error["message"] == "<unprintable Unprintable>"
    assert info.error["type"] == "Unprintable"


@pytest.mark.parametrize(
    ("result", "words"),
    [
        (nested(200_000), "nested too deep"),
        (cycle(), "reference cycle"),
        (math.nan, "NaN"),
        ({"x": [1, math.inf]}, "NaN or Infinity"),
        (object(), "not JSON"),
        ({("a", 1): 1}, "not JSON"),
        ("x" * 5000, "over max_result_bytes (4096)"),
    ],
    ids=["deep", "cycle", "nan", "inf", "object", "tuple-key", "too-big"],
)
async def test_unstorable_result_dead_letters_at_once(
    redis_url: str, result: Any, words: str
) -> None:
    async def handler() -> Any:
        return result

    info, calls, _ = await run_one(redis_url, handler, max_result_bytes=4096)
    assert info.status == "dead" and len(calls) == 1
    assert words in info.error["message"]


@pytest.mark.parametrize("kind", [SystemExit, KeyboardInterrupt, GeneratorExit, Unprintable])
async def test_base_exceptions_are_failed_attempts(redis_url: str, kind: type) -> None:
    async def handler() -> None:
        raise kind()

    info, calls, _ = await run_one(redis_url, handler)
    assert info.status == "dead" and len(calls) == 3


async def test_error_messages_are_capped_and_valid_utf8(redis_url: str) -> None:
    async def handler() -> None:
        raise ValueError("é\udcff" + "x" * 100_000)

    info, _, _ = await run_one(redis_url, handler, max_error_bytes=1000)
    message = info.error["message"]
    assert len(message.encode()) <= 1000
    assert message.startswith("é\\udcff") and "cut" in message
    json.dumps(info.error).encode()  # nothing stored is invalid UTF-8


@pytest.mark.parametrize(
    "value",
    [None, 0, 1, -7, 10**17, -(10**18), 10**18, 10**40, True, False, 1.5, "é\n", [1, {"a": None}]],
)
def test_stored_result_is_the_compact_json_of_the_value(value: Any) -> None:
    """The shortcuts for None and plain ints give exactly what the general encoder gives, and
    the size limit applies to them too."""
    from rrq_flow.worker.outcome import UnstorableResult, encode_result

    expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert encode_result(value, 1000) == expected
    with pytest.raises(UnstorableResult, match="over max_result_bytes"):
        encode_result(value, len(expected.encode()) - 1)
