"""A CI-sized run of bench/bench.py, so that the benchmark cannot rot (issue 16, "keep it honest").

It checks that the bench runs end to end against this tree (its own redis-server, the real
``rrq-flow run`` CLI), that every job it enqueued ran, and that the report has every figure.
Nothing about speed: the figures are whatever this machine gives. It starts three workers
(10-25 s on a busy 2-core machine), so it is marked ``slow``: .ci/run's marker step runs it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "bench.py"

N, SINGLE_N, LATENCY_N, SLEEP_N = 300, 50, 30, 60

# Every figure the report's table shows (bench.render), by its key in the medians.
FIGURES = [
    "enqueue_many_rate",
    "enqueue_single_rate",
    "process_rate",
    "process_cli_jobs_per_second",
    "process_drain_wall_s",
    "process_startup_s",
    "process_exit_wall_s",
    "process_rss_mib",
    "latency_p50_ms",
    "latency_p99_ms",
    "latency_max_ms",
    "sleep_span_s",
    "sleep_ratio",
    "sleep_peak_running",
    "sleep_rss_mib",
]


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rrqflow_bench", BENCH)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_bench_smoke(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        str(BENCH),
        "--json",
        "--repeat",
        "1",
        "--n",
        str(N),
        "--single-n",
        str(SINGLE_N),
        "--latency-n",
        str(LATENCY_N),
        "--spacing-ms",
        "2",
        "--sleep-n",
        str(SLEEP_N),
        "--sleep-s",
        "0.01",
        "--sleep-concurrency",
        "20",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=110, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    res: dict[str, Any] = json.loads(p.stdout)
    (run,) = res["runs"]
    assert not {k: v for k, v in run.items() if k.endswith("error")}, run
    # Every job ran: the burst workers recorded every job and exited by themselves.
    assert run["process_done"] == N
    assert run["sleep_done"] == SLEEP_N
    assert run["process_stop"] == "exited" and run["process_exit_code"] == 0
    assert run["sleep_stop"] == "exited" and run["sleep_exit_code"] == 0
    # The report has every figure, and the table renders each of them (no "—" cell).
    missing = [k for k in FIGURES if k not in res["median"]]
    assert not missing, missing
    table = load_bench().render(res)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == len(FIGURES) + 1  # + the header
    assert not [r for r in rows[1:] if r.split("|")[3].strip() == "—"], table
