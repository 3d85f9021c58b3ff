"""A million jobs (issue 16, target 5): a ``--lines``-line ``--input`` burst through two stages.

Writes a JSON Lines file of ``[i, "<90 x>"]`` (a ~100-byte payload per line), starts a private
redis-server (no persistence), and runs the real CLI once:

    rrq-flow run PIPELINE --burst --input s1=FILE --run million --processes P --progress off

with ``s1`` (``bench_handlers:stage1``, returns ``i``) feeding ``s2`` (``bench_handlers:stage2``),
both concurrency 10, ``result_ttl`` short (``--result-ttl``). Every job appends one byte to a
file, so the bytes in it are the jobs finished. Every ``--every`` seconds it samples the jobs
done, the VmRSS of the CLI process and of each worker process it starts, and Redis'
``used_memory``; after the run it waits for ``result_ttl`` (and a margin) and reads Redis again.

Figures:
- enqueue side: peak RSS (VmHWM) of the CLI process, which streams the file (with P ≥ 2 the
  workers are separate processes; with P = 1 the same process then runs the jobs);
- worker RSS per worker process at 10,000 / 100,000 / 1,000,000 / all jobs finished (all
  stages, all workers), and the growth from 10,000 to 1,000,000;
- Redis ``used_memory`` before the enqueue, at its peak, after the run, and after result_ttl,
  with the number of keys left.

    .venv/bin/python bench/million.py --lines 20000                 # a quick look
    .venv/bin/python bench/million.py --lines 1000000 --md m.md --json m.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from rrq_flow.redis_server import start_redis_server  # noqa: E402

MILESTONES = (10_000, 100_000, 1_000_000)


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def write_input(path: Path, n: int) -> None:
    pad = "x" * 90
    with path.open("w") as f:
        for start in range(0, n, 10_000):
            f.write("".join(f'[{i}, "{pad}"]\n' for i in range(start, min(n, start + 10_000))))


def measure(a: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="rrqmillion-"))
    server = start_redis_server(tmp / "redis", unix_socket=tmp / "r.sock", appendonly=False)
    try:
        data = tmp / "input.jsonl"
        t = time.perf_counter()
        write_input(data, a.lines)
        log(
            f"# wrote {a.lines:,} lines ({data.stat().st_size / 1e6:.0f} MB) in "
            f"{time.perf_counter() - t:.1f}s"
        )
        done_file = tmp / "done"
        done_file.write_bytes(b"")
        pipeline = tmp / "million.yaml"
        pipeline.write_text(
            "version: 1\npipeline: million\n"
            f"redis: {{url: '{server.url}', persistence: none}}\n"
            f"defaults: {{result_ttl: {a.result_ttl}s}}\n"
            "queues:\n"
            "  s1: {handler: 'bench_handlers:stage1', concurrency: 10, next: s2}\n"
            "  s2: {handler: 'bench_handlers:stage2', concurrency: 10}\n"
        )
        r = redis.Redis(unix_socket_path=str(tmp / "r.sock"))
        info0 = r.info("memory")
        mem0 = int(info0["used_memory"])
        env = dict(os.environ)
        env["BENCH_OUT"] = str(done_file)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        cli = a.rrq_flow or str(Path(sys.executable).parent / "rrq-flow")
        cmd = [cli, "run", str(pipeline), "--burst", "--input", f"s1={data}", "--run", "million"]
        cmd += ["--processes", str(a.processes), "--progress", "off", "--log-level", "WARNING"]
        cmd += ["--json"]
        started = time.monotonic()
        out = open(tmp / "cli.out", "w")  # noqa: SIM115 - closed below
        err = open(tmp / "cli.err", "w")  # noqa: SIM115
        p = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=out, stderr=err)
        total = 2 * a.lines
        samples: list[dict[str, Any]] = []
        enqueue_hwm = 0
        first_job_at = None
        while p.poll() is None:
            done = done_file.stat().st_size
            main_rss = rss_kb(p.pid)
            workers = {c: rss_kb(c) for c in descendants(p.pid)} if a.processes > 1 else {}
            if done == 0:
                enqueue_hwm = max(enqueue_hwm, rss_kb(p.pid, "VmHWM"))
            elif first_job_at is None:
                first_job_at = time.monotonic() - started
            mem = int(r.info("memory")["used_memory"])
            samples.append(
                {
                    "t": round(time.monotonic() - started, 2),
                    "done": done,
                    "cli_rss_kb": main_rss,
                    "workers_rss_kb": {str(k): v for k, v in workers.items() if v},
                    "redis_used_memory": mem,
                }
            )
            if len(samples) % 20 == 0:
                log(
                    f"# t={samples[-1]['t']:.0f}s done {done:,}/{total:,} "
                    f"cli {main_rss / 1024:.0f} MB workers "
                    f"{[round(v / 1024) for v in workers.values() if v]} MB "
                    f"redis {mem / 1e6:.0f} MB"
                )
            time.sleep(a.every)
        out.close()
        err.close()
        wall = time.monotonic() - started
        done = done_file.stat().st_size
        mem_end = int(r.info("memory")["used_memory"])
        keys_end = int(r.dbsize())
        time.sleep(a.result_ttl + a.margin)
        info_after = r.info("memory")
        mem_after = int(info_after["used_memory"])
        keys_after = int(r.dbsize())
        # What is left, by key kind (rrq:{million}:<kind>...), with MEMORY USAGE of each.
        left: dict[str, int] = {}
        for key in r.scan_iter(count=1000):
            parts = key.decode().split(":")
            kind = ":".join(parts[2:4]) if len(parts) > 3 else ":".join(parts[2:])
            left[kind] = left.get(kind, 0) + int(r.memory_usage(key) or 0)
        cli_hwm_kb = max((s["cli_rss_kb"] for s in samples), default=0)
        res: dict[str, Any] = {
            "lines": a.lines,
            "jobs_expected": total,
            "jobs_done": done,
            "processes": a.processes,
            "result_ttl_s": a.result_ttl,
            "exit_code": p.returncode,
            "wall_s": round(wall, 1),
            "first_job_s": first_job_at,
            "enqueue_peak_rss_mb": round(enqueue_hwm / 1024, 1),
            "cli_peak_rss_sampled_mb": round(cli_hwm_kb / 1024, 1),
            "redis_used_memory_mb": {
                "before": round(mem0 / 1e6, 2),
                "peak": round(max(s["redis_used_memory"] for s in samples) / 1e6, 1),
                "at_end": round(mem_end / 1e6, 2),
                "after_result_ttl": round(mem_after / 1e6, 2),
                # Loaded scripts: a constant the first enqueue adds, not a per-job cost.
                "scripts_after": round(int(info_after.get("used_memory_scripts", 0)) / 1e6, 2),
                # used_memory minus Redis' own overhead (clients, the keyspace's hash tables,
                # which shrink only gradually after a million keys went): the data itself.
                "dataset_before": round(int(info0["used_memory_dataset"]) / 1e6, 2),
                "dataset_after_result_ttl": round(int(info_after["used_memory_dataset"]) / 1e6, 2),
            },
            "redis_keys": {"at_end": keys_end, "after_result_ttl": keys_after},
            "redis_keys_left_bytes": dict(sorted(left.items(), key=lambda kv: -kv[1])[:20]),
            "cli_stderr_tail": (tmp / "cli.err").read_text()[-1500:],
            "cli_summary": (tmp / "cli.out").read_text()[-3000:],
        }
        res["worker_rss_mb"] = worker_rss_at(samples, a.processes, total)
        if a.json:
            res["samples"] = samples
        return res
    finally:
        server.stop()
        if a.keep:
            log(f"# kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def worker_rss_at(samples: list[dict[str, Any]], processes: int, total: int) -> dict[str, Any]:
    """RSS (MB) of each worker process (or of the CLI with one process) at each milestone."""
    out: dict[str, Any] = {}
    full = max((len(s["workers_rss_kb"]) for s in samples), default=0)
    for m in (*[x for x in MILESTONES if x < total], "end"):
        row = None
        for s in samples:
            if processes > 1 and len(s["workers_rss_kb"]) < full:
                continue  # before every worker started, or after one exited
            if m == "end" or s["done"] >= m:
                row = s
                if m != "end":
                    break
        if row is None:
            continue
        if processes > 1:
            out[str(m)] = {pid: round(v / 1024, 1) for pid, v in row["workers_rss_kb"].items()}
        else:
            out[str(m)] = {"cli": round(row["cli_rss_kb"] / 1024, 1)}
        out[str(m)]["done"] = row["done"]
    return out


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def markdown(res: dict[str, Any]) -> str:
    mem = res["redis_used_memory_mb"]
    lines = [
        f"{res['lines']:,} lines through s1 → s2 ({res['jobs_expected']:,} jobs), "
        f"--processes {res['processes']}, result_ttl {res['result_ttl_s']} s: exit "
        f"{res['exit_code']}, {res['jobs_done']:,} jobs done in {res['wall_s']} s "
        f"(first job at {res['first_job_s']} s).",
        "",
        "| figure | value |",
        "|---|---|",
        "| enqueue side (the CLI streaming the file): peak RSS | "
        f"{res['enqueue_peak_rss_mb']} MB |",
    ]
    for m, row in res["worker_rss_mb"].items():
        per = ", ".join(f"{v} MB" for k, v in row.items() if k != "done")
        lines.append(f"| worker RSS at {m} jobs done (actual {row['done']:,}) | {per} |")
    lines += [
        f"| Redis used_memory before the enqueue | {mem['before']} MB |",
        f"| Redis used_memory peak (sampled) | {mem['peak']} MB |",
        f"| Redis used_memory at the end of the run | {mem['at_end']} MB "
        f"({res['redis_keys']['at_end']:,} keys) |",
        f"| Redis used_memory after result_ttl + margin | {mem['after_result_ttl']} MB, "
        f"of which {mem['scripts_after']} MB loaded scripts; dataset {mem['dataset_before']} → "
        f"{mem['dataset_after_result_ttl']} MB "
        f"({res['redis_keys']['after_result_ttl']:,} keys left, bytes by kind: "
        + ", ".join(f"{k} {v:,}" for k, v in res["redis_keys_left_bytes"].items())
        + ") |",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--result-ttl", type=float, default=30.0)
    ap.add_argument("--margin", type=float, default=15.0, help="seconds past result_ttl")
    ap.add_argument("--every", type=float, default=0.5, help="sampling period, seconds")
    ap.add_argument("--rrq-flow", default=None, help="the CLI (default: beside this python)")
    ap.add_argument("--md", help="write the markdown table here")
    ap.add_argument("--json", help="write everything (with the samples) here")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    res = measure(a)
    md = markdown(res)
    print(md)
    if a.md:
        Path(a.md).write_text(md)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0 if res["exit_code"] == 0 and res["jobs_done"] == res["jobs_expected"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
