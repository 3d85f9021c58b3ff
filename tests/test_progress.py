"""Progress of a run, read from the pipeline's shared Redis counters (real Redis, real workers)."""

from __future__ import annotations

import io
import logging
import re

import pytest
import trio

from rrq_flow.client.sync_client import SyncClient
from rrq_flow.worker.progress import Progress
from tests.conftest import make_pipeline, make_queue, run_burst
from tests.test_cli_run import cli, write_pipeline

ONE_TRY = {"max_attempts": 1}


async def _burst_with_progress(cfg, progress: Progress) -> None:  # type: ignore[no-untyped-def]
    async with trio.open_nursery() as nursery:
        await nursery.start(progress.run)
        await run_burst(cfg)
        progress.finish()


async def test_counts_only_this_runs_jobs_and_logs_a_line_without_a_terminal(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_pipeline(
        redis_url,
        make_queue("ok", "tests.handlers:sleep_for", concurrency=4),
        make_queue("bad", "tests.handlers:always_fail", retry=ONE_TRY),
    )
    with SyncClient(cfg) as client:
        client.enqueue_many("ok", [[0] for _ in range(7)])  # an earlier run's jobs
        await run_burst(cfg)
        client.enqueue_many("ok", [[0.05] for _ in range(20)])
        client.enqueue_many("bad", [[] for _ in range(3)])
    progress = Progress(cfg, redis_url, ["ok", "bad"], live=False, log_every=0.1)
    with caplog.at_level(logging.INFO, logger="rrq_flow.progress"):
        await _burst_with_progress(cfg, progress)
    assert (progress.now["ok"].done, progress.now["ok"].left) == (20, 0)
    assert (progress.now["bad"].dead, progress.now["bad"].done) == (3, 0)
    lines = [r.getMessage() for r in caplog.records if r.name == "rrq_flow.progress"]
    assert lines and all(line.startswith("progress: ok: ") for line in lines)
    assert re.search(r"ok: \d+/\d+ done, [\d,]+/s, eta \S+, 0 retried, 0 dead", lines[-1])


async def test_live_display_ends_on_the_final_figures(redis_url: str) -> None:
    cfg = make_pipeline(redis_url, make_queue("q", "tests.handlers:sleep_for", concurrency=2))
    with SyncClient(cfg) as client:
        client.enqueue_many("q", [[0.1] for _ in range(12)])
    screen = io.StringIO()  # not a terminal: rich draws the block once, when it stops
    progress = Progress(cfg, redis_url, ["q"], live=True, out=screen)
    await _burst_with_progress(cfg, progress)
    drawn = screen.getvalue()
    assert drawn.count("q: ") == 1
    assert drawn.rstrip("\n").splitlines()[-1].startswith("q: 12/12 done")


def test_cli_progress_counts_the_jobs_of_every_worker_process(tmp_path, redis_url) -> None:  # type: ignore[no-untyped-def]
    p = write_pipeline(
        tmp_path,
        redis_url,
        "  q: {handler: 'tests.handlers:sleep_for', concurrency: 3}",
        extra="",
    )
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("[0.05]\n" * 40)
    out = cli(
        "run", str(p), "--burst", "--processes", "2", "--progress", "on", "--input", f"q={jobs}"
    )
    assert out.returncode == 0, out.stderr
    last_draw = out.stderr.rstrip("\n").splitlines()[-1]
    assert last_draw.startswith("q: 40/40 done"), out.stderr[-2000:]
