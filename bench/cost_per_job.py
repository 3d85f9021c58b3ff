"""CPU and Redis cost per job, rrq-flow and BullMQ side by side, through the peerbench adapters.

For each system (adapter ``peer_<name>*``: ``rrqflow`` from this folder, ``bullmq`` from the shared
harness), interleaved over ``--reps`` repetitions (the order rotates), on one private redis-server
(no persistence):

1. ``FLUSHALL``, ``CONFIG RESETSTAT``; read ``INFO`` (baseline memory, CPU, commandstats).
2. ``ADAPTER enqueue --n N --sleep 0`` (the system's bulk API); read ``INFO`` again: the enqueue
   phase.
3. ``ADAPTER work --concurrency C [--burst]`` in its own process group; the worker process tree's
   CPU (utime + stime from ``/proc``, every process of the group) is sampled when the first job has
   recorded itself and when the last has; a non-burst worker gets SIGINT then. ``INFO`` once all N
   jobs ran, before the worker stops: the processing phase (claim, complete, lease renewal, and
   whatever else the worker sends). The worker's whole-life CPU comes from ``wait4``'s rusage.
4. ``used_memory`` right after the last job and ``--settle`` seconds later, minus the baseline.

Figures per job (medians over the repetitions):

- worker CPU µs/job, steady: process-tree CPU between the first job's start and the last job's end
  (no interpreter start, imports, connecting or shutdown); whole: ``wait4`` rusage over the
  worker's life, divided by N (start-up included).
- Redis CPU µs/job: redis-server's own CPU (``INFO cpu``, user + sys) over the phase. This is what
  a Redis core spends, socket I/O and reply encoding included; ``jobs per Redis core`` is
  1e6 / (enqueue + processing).
- commandstats µs/job: ``usec`` of the top-level calls over the phase — scripts (``EVALSHA``,
  ``EVAL``, ``FCALL``, ``EXEC``) plus the commands no script sends (blocking pops, ``PING``...). A
  command a Lua script calls is also counted under its own name, so those are left out of the sum
  and listed as a breakdown only.
- Redis memory per job: ``used_memory`` growth per queued job after the enqueue, and per finished
  job after the run (rrq-flow keeps each result for ``result_ttl``; BullMQ's adapter runs with
  ``removeOnComplete``, so it keeps nothing: compare with that in mind).

    .venv/bin/python bench/cost_per_job.py                      # rrqflow + bullmq, N=20000, 3 reps
    .venv/bin/python bench/cost_per_job.py --n 5000 --reps 1    # quick
    .venv/bin/python bench/cost_per_job.py --md out.md --json out.json
    RRQFLOW_VENV=/work/wt/x/.venv .venv/bin/python bench/cost_per_job.py   # another tree

Needs the peerbench venvs (``/work/shared/bench-peers/setup.sh``) for BullMQ; rrq-flow runs from
``$RRQFLOW_VENV`` (default: the venv running this script, i.e. this tree).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from rrq_flow.redis_server import start_redis_server  # noqa: E402

HARNESS = Path(os.environ.get("PEERBENCH_DIR", "/work/shared/bench-peers"))
VENVS = Path(os.environ.get("PEERBENCH_VENVS", "/tmp/peerbench"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Commands a client sends itself; a script's inner commands show up under their own names too,
# so only these (and the script calls) are summed.
TOP_LEVEL = {
    "evalsha",
    "eval",
    "evalsha_ro",
    "eval_ro",
    "fcall",
    "fcall_ro",
    "exec",
    "blpop",
    "brpop",
    "bzpopmin",
    "bzpopmax",
    "blmove",
    "brpoplpush",
    "xreadgroup",
    "ping",
    "info",
    "client|setname",
    "client|setinfo",
    "client|id",
    "hello",
    "select",
    "script|load",
    "script|exists",
    "multi",
}


def adapter(name: str) -> list[str]:
    """The command of adapter ``peer_<name>*`` (this folder first, then the shared harness)."""
    for folder in (HERE, HARNESS):
        for path in sorted(glob.glob(str(folder / f"peer_{name}*"))):
            if path.endswith(".py"):
                venv = VENVS / f"venv-{name}"
                py = venv / "bin" / "python"
                return [str(py if py.exists() else VENVS / "venv" / "bin" / "python"), path]
            if os.access(path, os.X_OK) and not path.endswith((".example", "~")):
                return [path]
    raise SystemExit(f"no adapter peer_{name}* in {HERE} or {HARNESS}")


def snapshot(r: redis.Redis) -> dict[str, Any]:
    info = r.info("all")
    cmds = {
        k.removeprefix("cmdstat_"): (int(v["calls"]), float(v["usec"]))
        for k, v in info.items()
        if k.startswith("cmdstat_")
    }
    return {
        "cpu_s": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
        "used_memory": int(info["used_memory"]),
        "cmds": cmds,
    }


def phase(a: dict[str, Any], b: dict[str, Any], n: int) -> dict[str, Any]:
    """Per-job deltas between two snapshots."""
    per_cmd: dict[str, float] = {}
    for name, (calls, usec) in b["cmds"].items():
        c0, u0 = a["cmds"].get(name, (0, 0.0))
        if calls > c0:
            per_cmd[name] = (usec - u0) / n
    top = sum(v for k, v in per_cmd.items() if k in TOP_LEVEL)
    return {
        "redis_cpu_us": (b["cpu_s"] - a["cpu_s"]) * 1e6 / n,
        "commandstats_us": top,
        "by_command_us": dict(sorted(per_cmd.items(), key=lambda kv: -kv[1])[:10]),
    }


def tree_cpu_s(pgid: int) -> float:
    """utime + stime of every live process in the group (seconds)."""
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


class Lines:
    """Counts the lines of a growing file, reading only what was appended since the last call."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.count = 0

    def poll(self) -> int:
        while chunk := self.f.read(1 << 20):
            self.count += chunk.count(b"\n")
        return self.count

    def close(self) -> None:
        self.f.close()


def adapter_env(port: int, tmp: Path) -> dict[str, str]:
    """The environment the adapters run in: the private Redis, the records file, the venvs."""
    env = dict(os.environ)
    env.update(
        REDIS_URL=f"redis://127.0.0.1:{port}/0",
        BENCH_OUT=str(tmp / "records"),
        PEERBENCH_VENVS=str(VENVS),
        PYTHONPATH=str(HARNESS) + (os.pathsep + env["PYTHONPATH"] if "PYTHONPATH" in env else ""),
        PYTHONUNBUFFERED="1",
    )
    env.setdefault("RRQFLOW_VENV", sys.prefix)
    return env


@dataclass
class Session:
    """A private redis-server and the peer adapters to run against it."""

    cmds: dict[str, list[str]]  # adapter command per system
    env: dict[str, str]
    r: redis.Redis
    variants: dict[str, dict[str, Any]]  # per system: its adapter's `info` variants

    def interleaved(self, systems: list[str], reps: int) -> Iterator[tuple[int, str]]:
        """(repetition, system), the order rotating by one system each repetition."""
        for rep in range(reps):
            for s in systems[rep % len(systems) :] + systems[: rep % len(systems)]:
                yield rep, s


@contextmanager
def session(systems: list[str], prefix: str) -> Iterator[Session]:
    """Start a private redis-server (no persistence), ask each adapter for its variants, and
    remove it all afterwards."""
    cmds = {s: adapter(s) for s in systems}
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    server = start_redis_server(tmp / "redis", appendonly=False)
    try:
        env = adapter_env(server.port, tmp)
        variants = {}
        for s in systems:
            info = subprocess.run([*cmds[s], "info"], env=env, capture_output=True, text=True)
            variants[s] = json.loads(info.stdout.strip().splitlines()[-1])["variants"]
        r = redis.Redis(host="127.0.0.1", port=server.port, decode_responses=True)
        yield Session(cmds, env, r, variants)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def measured_enqueue(
    r: redis.Redis, cmd: list[str], name: str, env: dict[str, str], n: int, *extra: str
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """On an emptied Redis with fresh counters, ``ADAPTER enqueue`` of N no-op jobs (``extra``:
    more adapter options): the snapshots before and after, and the adapter's output."""
    r.flushall()
    r.config_resetstat()
    time.sleep(0.2)
    s0 = snapshot(r)
    enq = subprocess.run(
        [*cmd, "enqueue", "--variant", name, "--n", str(n), "--sleep", "0", *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if enq.returncode != 0:
        raise RuntimeError(f"{name} enqueue failed: {enq.stderr[-800:]}")
    return s0, snapshot(r), enq.stdout


def one(
    name: str, cmd: list[str], burst: bool, r: redis.Redis, env: dict[str, str], args: Any
) -> dict[str, Any]:
    n = args.n
    out = Path(env["BENCH_OUT"])
    out.write_bytes(b"")
    s0, s1, _ = measured_enqueue(r, cmd, name, env, n)
    work = [*cmd, "work", "--variant", name, "--concurrency", str(args.concurrency)]
    if burst:
        work.append("--burst")
    log = open(Path(env["BENCH_OUT"]).with_suffix(f".{name}.log"), "w")  # noqa: SIM115
    p = subprocess.Popen(
        work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    cpu_first = cpu_last = None
    deadline = time.monotonic() + args.timeout
    lines = Lines(out)
    while time.monotonic() < deadline:
        done = lines.poll()
        if done and cpu_first is None:
            cpu_first = tree_cpu_s(p.pid)
        if done >= n:
            cpu_last = tree_cpu_s(p.pid)
            break
        if p.poll() is not None:
            break
        time.sleep(0.002)
    done = lines.poll()
    lines.close()
    s2 = snapshot(r)
    if p.poll() is None and not burst:
        os.killpg(p.pid, signal.SIGINT)
    try:
        _, status, ru = os.wait4(p.pid, 0)
    except ChildProcessError:  # pragma: no cover - reaped elsewhere
        status, ru = 0, None
    log.close()
    time.sleep(args.settle)
    s3 = snapshot(r)
    if done < n:
        raise RuntimeError(f"{name}: only {done}/{n} jobs ran (exit status {status})")
    whole = (ru.ru_utime + ru.ru_stime) if ru else float("nan")
    steady = (cpu_last - cpu_first) if cpu_first is not None and cpu_last is not None else 0.0
    enqueue = phase(s0, s1, n)
    process = phase(s1, s2, n)
    return {
        "system": name,
        "jobs": done,
        "worker_cpu_us_steady": steady * 1e6 / n,
        "worker_cpu_us_whole": whole * 1e6 / n,
        "redis_cpu_us_enqueue": enqueue["redis_cpu_us"],
        "redis_cpu_us_process": process["redis_cpu_us"],
        "cmdstat_us_enqueue": enqueue["commandstats_us"],
        "cmdstat_us_process": process["commandstats_us"],
        "mem_bytes_per_queued_job": (s1["used_memory"] - s0["used_memory"]) / n,
        "mem_bytes_per_finished_job": (s2["used_memory"] - s0["used_memory"]) / n,
        "mem_bytes_per_job_after_settle": (s3["used_memory"] - s0["used_memory"]) / n,
        "by_command_enqueue_us": enqueue["by_command_us"],
        "by_command_process_us": process["by_command_us"],
    }


FIGURES = [
    ("worker_cpu_us_steady", "worker CPU µs/job, first→last job"),
    ("worker_cpu_us_whole", "worker CPU µs/job, whole life (wait4)"),
    ("redis_cpu_us_process", "Redis CPU µs/job, processing (INFO cpu)"),
    ("redis_cpu_us_enqueue", "Redis CPU µs/job, enqueue (INFO cpu)"),
    ("cmdstat_us_process", "commandstats µs/job, processing (top-level calls)"),
    ("cmdstat_us_enqueue", "commandstats µs/job, enqueue (top-level calls)"),
    ("mem_bytes_per_queued_job", "Redis used_memory bytes per queued job"),
    ("mem_bytes_per_finished_job", "Redis used_memory bytes per finished job (at the last job)"),
    ("mem_bytes_per_job_after_settle", "… after the settle pause"),
]


def medians(runs: list[dict[str, Any]], systems: list[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for s in systems:
        mine = [r for r in runs if r["system"] == s]
        out[s] = {k: statistics.median(r[k] for r in mine) for k, _ in FIGURES}
        out[s]["jobs_per_redis_core_s"] = 1e6 / (
            out[s]["redis_cpu_us_process"] + out[s]["redis_cpu_us_enqueue"]
        )
    return out


def markdown(
    med: dict[str, dict[str, float]], runs: list[dict[str, Any]], meta: dict[str, Any]
) -> str:
    systems = list(med)
    ratio = len(systems) == 2
    head = "| figure | " + " | ".join(systems) + (" | ratio (first / second) |" if ratio else " |")
    lines = [
        f"N = {meta['n']} no-op jobs, concurrency {meta['concurrency']}, one worker process, "
        f"medians of {meta['reps']} interleaved repetitions; redis-server {meta['redis_version']}.",
        "",
        head,
        "|---" * (len(systems) + 1 + ratio) + "|",
    ]
    rows = [
        *FIGURES,
        ("jobs_per_redis_core_s", "jobs/s one Redis core carries (enqueue + processing)"),
    ]
    for key, label in rows:
        vals = [med[s][key] for s in systems]
        cells = [f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.1f}" for v in vals]
        extra = ""
        if ratio:
            extra = f" | {vals[0] / vals[1]:.2f}×" if vals[1] else " | —"  # noqa: RUF001
        lines.append(f"| {label} | " + " | ".join(cells) + extra + " |")
    lines += [
        "",
        "Top commands per job (µs, commandstats, first repetition; script-inner commands "
        "are counted inside the script too):",
        "",
    ]
    for s in systems:
        r = next(x for x in runs if x["system"] == s)
        for ph in ("enqueue", "process"):
            top = ", ".join(f"{k} {v:.1f}" for k, v in list(r[f"by_command_{ph}_us"].items())[:6])
            lines.append(f"- {s}, {ph}: {top}")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--systems", default="rrqflow bullmq", help="adapter names (peer_<name>)")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--settle", type=float, default=1.0, help="seconds before the last INFO")
    ap.add_argument("--timeout", type=float, default=300.0, help="per run")
    ap.add_argument("--md", help="write the markdown table here")
    ap.add_argument("--json", help="write every run and the medians here")
    args = ap.parse_args()
    systems = args.systems.split()
    with session(systems, "rrqcost-") as ses:
        env, r = ses.env, ses.r
        runs = []
        for rep, s in ses.interleaved(systems, args.reps):
            variants = ses.variants[s]
            burst = bool(next(iter(variants.values())).get("burst"))
            res = one(next(iter(variants)), ses.cmds[s], burst, r, env, args)
            res["system"], res["rep"] = s, rep
            print(
                f"[rep {rep}] {s}: worker {res['worker_cpu_us_steady']:.0f} µs/job, "
                f"redis process {res['redis_cpu_us_process']:.0f} / enqueue "
                f"{res['redis_cpu_us_enqueue']:.0f} µs/job",
                file=sys.stderr,
                flush=True,
            )
            runs.append(res)
        meta = {
            "n": args.n,
            "concurrency": args.concurrency,
            "reps": args.reps,
            "redis_version": r.info("server")["redis_version"],
            "rrqflow_venv": env["RRQFLOW_VENV"],
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        }
        med = medians(runs, systems)
        md = markdown(med, runs, meta)
        print(md)
        if args.md:
            Path(args.md).write_text(md)
        if args.json:
            Path(args.json).write_text(
                json.dumps({"meta": meta, "medians": med, "runs": runs}, indent=1)
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
