"""Generated handler behaviours against a real worker and Redis (issue 10).

Each example enqueues a few jobs with generated valid ids, each told (by its JSON arguments) to
return something — ordinary or pathological (a lone surrogate, a cycle, nesting 200,000 deep,
NaN, an object, too big) — or to raise something (any exception type, BaseException subclasses,
exceptions whose ``str``/``repr`` raise, huge or invalid-UTF-8 messages), possibly after a
sleep, under the async, thread or process executor. Then a normal job. After each example:
every job is terminal within ``max_attempts`` executions, no key lies outside the documented
layout, the normal job is done and the worker did not die.

Default size: a few examples (seconds). ``RRQ_HYPOTHESIS_EXAMPLES=200`` runs it larger.
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import trio
import trio_parallel
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from rrq_flow.client.sync_client import SyncClient
from rrq_flow.worker.worker import EXIT_FAILED, EXIT_OK
from tests.conftest import make_pipeline, make_queue, run_burst

HERE = "tests.test_worker_hypothesis"
EXAMPLES = int(os.environ.get("RRQ_HYPOTHESIS_EXAMPLES", "3"))
MAX_ATTEMPTS = 2
TERMINAL = {"done", "dead", "failed"}


# --- behaviours (plain JSON, so that a process handler gets them too) -------------------------


class BrokenStr(ValueError):
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class BrokenBase(BaseException):
    def __str__(self) -> str:
        raise KeyboardInterrupt


class Custom(Exception):
    pass


RAISES: dict[str, Any] = {
    "ValueError": ValueError,
    "RuntimeError": RuntimeError,
    "KeyError": KeyError,
    "Custom": Custom,
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
    "BrokenStr": BrokenStr,
    "BrokenBase": BrokenBase,
    "RecursionError": RecursionError,
    "MemoryError": MemoryError,
}


def pathological(name: str) -> Any:
    if name == "surrogate":
        return "bad\udcff"
    if name == "surrogate-key":
        return {"\ud800": 1}
    if name == "deep":
        value: list[Any] = []
        for _ in range(200_000):
            value = [value]
        return value
    if name == "cycle":
        loop: list[Any] = []
        loop.append(loop)
        return loop
    if name == "nan":
        return [math.nan]
    if name == "object":
        return object()
    if name == "set":
        return {1, 2}
    if name == "big":
        return "x" * 5000  # over the example's max_result_bytes
    return None


def act(spec: dict[str, Any], log_path: str, job: str) -> Any:
    with open(log_path, "a") as f:
        f.write(job + "\n")
    if spec.get("sleep"):
        time.sleep(spec["sleep"])
    kind = spec["kind"]
    if kind == "return":
        return spec["value"]
    if kind == "weird":
        return pathological(spec["value"])
    message = {"surrogate": "é\udcff", "huge": "x" * 100_000}.get(spec["message"], spec["message"])
    raise RAISES[spec["type"]](message)


def behave(spec: dict[str, Any], log_path: str, job: str) -> Any:
    return act(spec, log_path, job)


async def behave_async(spec: dict[str, Any], log_path: str, job: str) -> Any:
    if spec.get("sleep"):
        await trio.sleep(spec["sleep"])
        spec = {**spec, "sleep": 0}
    return act(spec, log_path, job)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)
behaviours = st.fixed_dictionaries(
    {"sleep": st.sampled_from([0, 0, 0.05])},
).flatmap(
    lambda base: st.one_of(
        st.builds(lambda v: {**base, "kind": "return", "value": v}, json_values),
        st.builds(
            lambda v: {**base, "kind": "weird", "value": v},
            st.sampled_from(
                ["surrogate", "surrogate-key", "deep", "cycle", "nan", "object", "set", "big"]
            ),
        ),
        st.builds(
            lambda t, m: {**base, "kind": "raise", "type": t, "message": m},
            st.sampled_from(sorted(RAISES)),
            st.sampled_from(["", "boom", "surrogate", "huge"]),
        ),
    )
)
job_ids = st.from_regex(r"[A-Za-z0-9._:-]{1,30}", fullmatch=True)

LAYOUT = re.compile(
    r"rrq:\{t\}:(meta|workers|worker:.+|job:.+|args:.+|result:.+|errors:.+|children:.+|unique:.+"
    r"|q:q(:(retry|active|dead|wake|stats|tput|reaper|flow))?)"
)


@pytest.mark.slow  # real workers per example (~40 s under load): CI's second step
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    # Shrinking re-runs real workers: minutes. The failing example is printed as generated.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(
    executor=st.sampled_from(["async", "thread", "process"]),
    jobs=st.lists(st.tuples(job_ids, behaviours), min_size=1, max_size=4, unique_by=lambda j: j[0]),
)
def test_any_behaviour_ends_terminal_and_the_worker_serves_on(
    redis_url: str, sync_redis: redis.Redis, tmp_path: Path, executor: str, jobs: list[Any]
) -> None:
    sync_redis.flushall()
    log = tmp_path / f"runs-{time.monotonic_ns()}.txt"
    handler = f"{HERE}:behave_async" if executor == "async" else f"{HERE}:behave"
    q = make_queue(
        "q",
        handler,
        executor=executor,
        concurrency=2,  # fewer pool processes to start per example
        timeout=30,
        max_result_bytes=4096,
        max_error_bytes=1024,
        retry={"max_attempts": MAX_ATTEMPTS, "delay": 0.01, "jitter": False},
    )
    cfg = make_pipeline(redis_url, q)
    normal = {"kind": "return", "value": "normal"}
    with SyncClient(cfg) as client:
        for job_id, spec in jobs:
            client.enqueue("q", spec, str(log), job_id, job_id=job_id)
        client.enqueue("q", normal, str(log), "normal-job", job_id="normal-job")

        async def main() -> int:
            async with trio_parallel.cache_scope():
                _, code = await run_burst(cfg)
            return code

        code = trio.run(main)
        infos = {job_id: client.job(job_id) for job_id, _ in jobs}
        assert client.job("normal-job").status == "done"
    assert code in (EXIT_OK, EXIT_FAILED), code  # never died of an internal error
    runs = log.read_text().split() if log.exists() else []
    for job_id, spec in jobs:
        info = infos[job_id]
        assert info.status in TERMINAL, (job_id, spec, info.status)
        assert 1 <= runs.count(job_id) <= MAX_ATTEMPTS, (job_id, spec, runs.count(job_id))
        if info.error is not None:
            info.error["message"].encode("utf-8")  # valid UTF-8, whatever was raised
            assert len(info.error["message"].encode()) <= 1024
    stray = [k for k in sync_redis.keys("*") if not LAYOUT.fullmatch(k)]
    assert not stray, stray
