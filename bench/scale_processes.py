# ruff: noqa: RUF001
"""Throughput of 1, 2, 4 ... worker processes on one queue (issue 16, target 2), interleaved.

Per round and per process count P, on one private redis-server (no persistence): ``FLUSHALL``,
N no-op jobs enqueued in bulk (``rrqflow_enqueue.py``, the peerbench adapter's producer), then
``rrq-flow run --burst --processes P`` (c=10 per process, handler ``benchjob:trio_job``, the
harness' job). Printed per run: jobs/s from the first job's start to the last job's end, Redis'
own CPU per job over the run (``INFO cpu``, user + sys), and the worker processes' CPU per job
over their whole life (``RUSAGE_CHILDREN``: the supervisor and its workers, start-up included).

    .venv/bin/python bench/scale_processes.py      # 1, 2, 4 processes, 60,000 jobs, 3 rounds
    .venv/bin/python bench/scale_processes.py --processes 1 2 --n 20000 --rounds 1

Needs redis-server on PATH and the peerbench harness' ``benchjob.py`` ($PEERBENCH, default
/work/shared/bench-peers).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERBENCH = os.environ.get("PEERBENCH", "/work/shared/bench-peers")
QUIET = ("--log-level", "WARNING", "--progress", "off")


def redis_cpu(port: int) -> float:
    """redis-server's CPU seconds so far (user + sys)."""
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "info", "cpu"], capture_output=True, text=True, check=True
    ).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def one_run(port: int, work: Path, n: int, processes: int) -> tuple[float, float, float]:
    """(jobs/s, Redis CPU µs/job, worker CPU µs/job) of one burst of n jobs."""
    url = f"redis://127.0.0.1:{port}"
    env = {**os.environ, "REDIS_URL": url, "PYTHONPATH": PEERBENCH}
    records = work / "records.txt"
    records.unlink(missing_ok=True)
    env["BENCH_OUT"] = str(records)
    subprocess.run(["redis-cli", "-p", str(port), "flushall"], check=True, capture_output=True)
    enqueue = [sys.executable, str(HERE / "rrqflow_enqueue.py"), "enqueue", "--variant", "rrq-flow"]
    enqueue += ["--n", str(n), "--sleep", "0"]
    subprocess.run(enqueue, env=env, check=True, capture_output=True)
    pipeline = work / "pipeline.yaml"
    subprocess.run(
        [sys.executable, str(HERE / "rrqflow_enqueue.py"), "yaml", str(pipeline), "10"],
        env=env,
        check=True,
        capture_output=True,
    )
    rrq_flow = shutil.which("rrq-flow", path=str(Path(sys.executable).parent)) or "rrq-flow"
    redis_before, workers_before = redis_cpu(port), children_cpu()
    subprocess.run(
        [rrq_flow, "run", str(pipeline), "--burst", "--processes", str(processes), *QUIET],
        env=env,
        cwd=work,
        check=True,
        capture_output=True,
    )
    redis_used, workers_used = redis_cpu(port) - redis_before, children_cpu() - workers_before
    rows = [line.split() for line in records.read_text().splitlines()]
    if len(rows) != n:
        raise SystemExit(f"{len(rows)} of {n} jobs recorded")
    span = max(float(r[2]) for r in rows) - min(float(r[1]) for r in rows)
    return n / span, redis_used / n * 1e6, workers_used / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--n", type=int, default=60000, help="jobs per run (60000)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    p.add_argument("--port", type=int, default=6395)
    opt = p.parse_args()
    server = subprocess.Popen(
        ["redis-server", "--port", str(opt.port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    rates: dict[int, list[float]] = {k: [] for k in opt.processes}
    try:
        time.sleep(0.5)
        with tempfile.TemporaryDirectory(prefix="rrqflow-scale-") as tmp:
            for rnd in range(opt.rounds):
                for procs in opt.processes:
                    rate, redis_us, worker_us = one_run(opt.port, Path(tmp), opt.n, procs)
                    rates[procs].append(rate)
                    print(
                        f"round {rnd + 1} processes {procs}: {rate:8.0f} jobs/s  Redis CPU "
                        f"{redis_us:5.1f} µs/job  workers' CPU (whole life) "
                        f"{worker_us:5.1f} µs/job",
                        flush=True,
                    )
    finally:
        server.terminate()
        server.wait()
    base = statistics.median(rates[opt.processes[0]])
    for procs in opt.processes:
        med = statistics.median(rates[procs])
        ratio = med / base
        print(f"processes {procs}: median {med:8.0f} jobs/s  ({ratio:.2f}× {opt.processes[0]})")


if __name__ == "__main__":
    main()
