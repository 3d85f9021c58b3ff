"""``results`` of a large run streams with flat memory: it pages the run's index, so the peak
memory of reading every line does not grow with the number of jobs. Runs only with
``pytest -m slow``; size it with ``RRQ_RESULTS_JOBS`` (default 20,000; the issue's figure is
100,000)."""

from __future__ import annotations

import os
import tracemalloc

import pytest

from rrq_flow.client._core import JobSpec
from tests.conftest import make_pipeline, make_queue

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # tracemalloc slows 100,000 reads


def _peak_reading(client: object, run: str) -> tuple[int, int]:
    tracemalloc.start()
    try:
        count = sum(1 for _ in client.results(run, "q"))  # type: ignore[attr-defined]
        return count, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_results_of_a_large_run_stream_with_flat_memory(
    redis_url: str, request: pytest.FixtureRequest
) -> None:
    if "slow" not in (request.config.getoption("-m") or ""):
        pytest.skip("slow: run with `pytest -m slow` (RRQ_RESULTS_JOBS=100000 for the full size)")
    n = int(os.environ.get("RRQ_RESULTS_JOBS", "20000"))
    small = 1000
    cfg = make_pipeline(redis_url, make_queue("q"), name="big")
    with cfg.sync_client() as client:
        for run, size in (("small", small), ("large", n)):
            for start in range(0, size, 10_000):
                batch = [
                    JobSpec(args=(i, "x" * 40)) for i in range(start, min(size, start + 10_000))
                ]
                client.enqueue_many("q", batch, run=run)
        small_count, small_peak = _peak_reading(client, "small")
        large_count, large_peak = _peak_reading(client, "large")
    assert (small_count, large_count) == (small, n)
    # One page (500 ids and their records) at a time: the large run's peak stays within a small
    # constant of the small run's, although it has n / 1000 times the jobs.
    print(f"peak bytes: {small} jobs {small_peak:,}, {n} jobs {large_peak:,}")
    assert large_peak < small_peak * 2 + 256 * 1024
