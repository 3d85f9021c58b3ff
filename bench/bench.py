#!/usr/bin/env python3
# ruff: noqa: RUF001
"""rrq-flow's own benchmark (no peers; for the side-by-side comparison see README.md here).

Starts a private redis-server (127.0.0.1, a free port, no persistence; ``--unix`` for a unix
socket), then measures, ``--repeat`` times, in this order:

  enqueue   N no-op jobs through SyncClient.enqueue_many (jobs/s), and single enqueue() calls
  process   ``rrq-flow run --burst`` (the real CLI, a subprocess, one worker process,
            concurrency 10) on N queued no-op jobs: jobs/s from the jobs' own timestamps
            (first start -> last end), drain wall (launch -> last end), worker peak RSS
  latency   an idle, already running worker (not burst); jobs enqueued one at a time every
            5 ms; latency = job start - producer t0 (p50 / p99 / max)
  sleep     2,000 jobs of trio.sleep(0.05) at concurrency 50: span first start -> last end
            against the ideal 2.0 s

and prints a table of medians (``--json``: everything as JSON on stdout). Every redis-server
and worker process it starts is stopped on exit, also on Ctrl-C / SIGTERM.

    .venv/bin/python bench/bench.py                   # N=20000, 3 repetitions
    .venv/bin/python bench/bench.py --n 5000 --repeat 1 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PIPELINE = "rrqbench"
HANDLER = "bench_handlers:job"
GNU_TIME = "/usr/bin/time"

# Reference targets: the brief's targets applied to the best peers of the latest side-by-side
# peerbench run on this machine (results/peerbench-2026-11-28-final.md). That run is the
# authority; these only flag a regression when bench.py runs alone (figures drift with load).
TARGETS = {
    "enqueue_many_rate": (">=", 45200, "2x RQ enqueue_many, 22.6k/s side by side"),
    "process_rate": (">=", 9000, "2x taskiq, 4.5k/s side by side"),
    "latency_p50_ms": ("<=", 0.41, "taskiq p50 side by side"),
    "sleep_ratio": ("<=", 1.05, "within 5% of ideal"),
    "rss_mib": ("<", 60, "worker peak RSS"),
}


def log(*a: Any) -> None:
    print(*a, file=sys.stderr, flush=True)


def pct(xs: list[float], q: float) -> float | None:
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class Records:
    """The $BENCH_OUT file the handler appends ``t0 start end`` lines to."""

    def __init__(self, path: Path):
        self.path = path
        path.write_bytes(b"")

    def count(self) -> int:
        with open(self.path, "rb") as f:
            return f.read().count(b"\n")

    def rows(self) -> list[tuple[float, float, float]]:
        out = []
        for line in self.path.read_text().splitlines():
            p = line.split()
            if len(p) == 3:
                out.append((float(p[0]), float(p[1]), float(p[2])))
        return out


class WorkerProc:
    """``[/usr/bin/time -v] rrq-flow run PIPELINE ...`` in its own session (process group)."""

    def __init__(self, bench: Bench, cfg: Path, burst: bool, records: Records, tag: str):
        self.tag = tag
        self.timefile = bench.tmp / f"{tag}.time"
        cmd = [
            bench.rrq_flow,
            "run",
            str(cfg),
            "--log-level",
            "WARNING",
            "--progress",
            "off",
            "--json",
        ]
        if burst:
            cmd.append("--burst")
        self.gnu_time = bench.gnu_time
        if self.gnu_time:
            # GNU time ignores SIGINT, so a SIGINT to the group reaches only the worker.
            cmd = [GNU_TIME, "-v", "-o", str(self.timefile), *cmd]
        env = dict(os.environ)
        env["BENCH_OUT"] = str(records.path)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        env["PYTHONUNBUFFERED"] = "1"
        self.stdout_path = bench.tmp / f"{tag}.out"
        self.stderr_path = bench.tmp / f"{tag}.err"
        with open(self.stdout_path, "wb") as so, open(self.stderr_path, "wb") as se:
            self.t_launch = time.time()
            self.p = subprocess.Popen(
                cmd,
                env=env,
                cwd=bench.tmp,
                stdout=so,
                stderr=se,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        bench.procs.append(self.p)
        self.hwm_kb = 0
        self.t_exit: float | None = None

    def sample(self) -> None:
        """Without GNU time: sample the worker's VmHWM (peak RSS) while it runs."""
        if self.gnu_time:
            return
        with contextlib.suppress(OSError), open(f"/proc/{self.p.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    self.hwm_kb = max(self.hwm_kb, int(line.split()[1]))

    def alive(self) -> bool:
        if self.p.poll() is None:
            return True
        if self.t_exit is None:
            self.t_exit = time.time()
        return False

    def wait_records(self, records: Records, n: int, timeout: float) -> int:
        end = time.monotonic() + timeout
        got = records.count()
        while got < n and time.monotonic() < end:
            self.sample()
            if not self.alive():
                return records.count()
            time.sleep(0.005)
            got = records.count()
        return got

    def wait_exit(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.sample()
            if not self.alive():
                return True
            time.sleep(0.005)
        return False

    def stop(self, grace: float = 10.0) -> str:
        """SIGINT to the group (the worker drains and exits), SIGKILL after ``grace``."""
        if not self.alive():
            return "exited"
        self.sample()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.p.pid, signal.SIGINT)
        if self.wait_exit(grace):
            return "SIGINT"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.p.pid, signal.SIGKILL)
        self.p.wait(10)
        self.alive()
        return f"SIGKILL after {grace:g}s"

    def rss_mib(self) -> float | None:
        if self.gnu_time:
            with contextlib.suppress(OSError, ValueError):
                for line in self.timefile.read_text().splitlines():
                    if "Maximum resident set size" in line:
                        return int(line.rsplit(":", 1)[1]) / 1024
            return None
        return self.hwm_kb / 1024 if self.hwm_kb else None

    def summary(self) -> dict[str, Any] | None:
        """The ``--json`` end-of-run summary rrq-flow printed (burst runs)."""
        text = self.stdout_path.read_text(errors="replace")
        start = text.find("{")
        if start < 0:
            return None
        try:
            return json.loads(text[start:])
        except ValueError:
            return None

    def stderr_tail(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-1500:]


class Bench:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.tmp = Path(tempfile.mkdtemp(prefix="rrqflow-bench-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.server: Any = None
        self.client: Any = None
        self.gnu_time = os.access(GNU_TIME, os.X_OK) and not a.no_gnu_time
        self.rrq_flow = a.rrq_flow or self._find_cli()

    @staticmethod
    def _find_cli() -> str:
        beside = Path(sys.executable).parent / "rrq-flow"
        if beside.exists():
            return str(beside)
        found = shutil.which("rrq-flow")
        if not found:
            sys.exit("no rrq-flow executable beside this python or on PATH (use --rrq-flow)")
        return found

    # --- setup / teardown ---------------------------------------------------------------------

    def start(self) -> None:
        from rrq_flow.redis_server import start_redis_server

        if self.a.unix:
            self.server = start_redis_server(
                self.tmp / "redis", unix_socket=self.tmp / "r.sock", appendonly=False
            )
        else:
            self.server = start_redis_server(self.tmp / "redis", port=self.a.port, appendonly=False)
        self.url = self.server.url
        self.cfg10 = self.write_cfg(self.a.concurrency)
        self.cfg50 = self.write_cfg(self.a.sleep_concurrency)
        from rrq_flow.client.sync_client import SyncClient

        self.config = self.load(self.cfg10)
        self.client = SyncClient(self.config, url=self.url)
        self.client.redis.ping()

    def write_cfg(self, concurrency: int) -> Path:
        from rrq_flow.config.model import RedisSettings

        path = self.tmp / f"bench-c{concurrency}.yaml"
        # The benchmark's Redis runs without AOF, as for the others (a tree older than the
        # persistence check has no such setting: flow_compare.sh benchmarks older commits too).
        no_aof = "persistence" in RedisSettings.__dataclass_fields__
        path.write_text(
            "version: 1\n"
            f"pipeline: {PIPELINE}\n"
            "redis:\n"
            f"  url: {self.url}\n" + ("  persistence: none\n" if no_aof else "") + "queues:\n"
            "  bench:\n"
            f"    handler: {HANDLER}\n"
            f"    concurrency: {concurrency}\n"
            + "".join(f"    {k}: {v}\n" for k, v in (x.split("=", 1) for x in self.a.setting))
        )
        return path

    @staticmethod
    def load(path: Path) -> Any:
        from rrq_flow.config import load

        return load(path)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    p.wait(10)
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
        if self.server is not None:
            self.server.stop()
        if self.a.keep:
            log(f"# kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def flush(self) -> None:
        self.client.redis.flushall()

    # --- measurements -------------------------------------------------------------------------

    def enqueue_many(self, n: int, sleep_s: float = 0.0) -> float:
        t = time.perf_counter()
        self.client.enqueue_many("bench", [(time.time(), sleep_s) for _ in range(n)])
        return time.perf_counter() - t

    def m_enqueue(self) -> dict[str, Any]:
        n, m = self.a.n, self.a.single_n
        self.flush()
        secs = self.enqueue_many(n)
        self.flush()
        t = time.perf_counter()
        for _ in range(m):
            self.client.enqueue("bench", time.time(), 0.0)
        single = time.perf_counter() - t
        self.flush()
        return {
            "enqueue_many_rate": n / secs,
            "enqueue_single_rate": m / single,
            "enqueue_single_us": single / m * 1e6,
        }

    def drain(self, tag: str, cfg: Path, n: int, sleep_s: float, timeout: float) -> dict[str, Any]:
        self.flush()
        rec = Records(self.tmp / f"{tag}.records")
        self.enqueue_many(n, sleep_s)
        w = WorkerProc(self, cfg, True, rec, tag)
        got = w.wait_records(rec, n, timeout)
        exited = w.wait_exit(30)
        stop = "exited" if exited else w.stop()
        res: dict[str, Any] = {
            "stop": stop,
            "rss_mib": w.rss_mib(),
            "done": got,
            "exit_code": w.p.returncode,
        }
        rows = rec.rows()
        if got < n:
            res["error"] = f"only {got}/{n} jobs done; worker stderr: {w.stderr_tail()}"
        if rows:
            first = min(r[1] for r in rows)
            last = max(r[2] for r in rows)
            res.update(
                span_s=last - first,
                rate=len(rows) / (last - first),
                drain_wall_s=last - w.t_launch,
                startup_s=first - w.t_launch,
            )
            if w.t_exit is not None:
                res["exit_wall_s"] = w.t_exit - w.t_launch
            ev = sorted(
                [(r[1], 1) for r in rows] + [(r[2], -1) for r in rows], key=lambda e: (e[0], e[1])
            )
            cur = peak = 0
            for _, d in ev:
                cur += d
                peak = max(peak, cur)
            res["peak_running"] = peak
        s = w.summary()
        if s:
            res["cli_jobs_per_second"] = s.get("jobs_per_second")
            res["cli_wall_s"] = s.get("wall_seconds")
        return res

    def m_process(self) -> dict[str, Any]:
        r = self.drain("process", self.cfg10, self.a.n, 0.0, 300)
        return {"process_" + k if not k.startswith("process") else k: v for k, v in r.items()}

    def m_sleep(self) -> dict[str, Any]:
        n, s, c = self.a.sleep_n, self.a.sleep_s, self.a.sleep_concurrency
        r = self.drain("sleep", self.cfg50, n, s, 120)
        ideal = n * s / c
        out = {"sleep_" + k: v for k, v in r.items()}
        out["sleep_ideal_s"] = ideal
        if "span_s" in r:
            out["sleep_ratio"] = r["span_s"] / ideal
        return out

    def m_latency(self) -> dict[str, Any]:
        self.flush()
        rec = Records(self.tmp / "latency.records")
        w = WorkerProc(self, self.cfg10, False, rec, "latency")
        res: dict[str, Any] = {}
        try:
            self.client.enqueue("bench", time.time(), 0.0)  # probe: the worker is up
            if w.wait_records(rec, 1, 60) < 1:
                raise RuntimeError(f"worker did not run the probe job: {w.stderr_tail()}")
            time.sleep(0.3)
            m, spacing = self.a.latency_n, self.a.spacing_ms / 1000.0
            start = time.perf_counter()
            for i in range(m):
                delay = start + i * spacing - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                self.client.enqueue("bench", time.time(), 0.0)
            got = w.wait_records(rec, m + 1, 60)
            if got < m + 1:
                res["error"] = f"only {got - 1}/{m} latency jobs done"
        finally:
            res["latency_stop"] = w.stop()
            res["latency_rss_mib"] = w.rss_mib()
        rows = sorted(rec.rows())[1:]  # drop the probe (smallest t0)
        lat = [(r[1] - r[0]) * 1000 for r in rows]
        if lat:
            res.update(
                latency_p50_ms=pct(lat, 0.5),
                latency_p99_ms=pct(lat, 0.99),
                latency_max_ms=max(lat),
                latency_mean_ms=statistics.fmean(lat),
            )
        return res

    def run(self) -> dict[str, Any]:
        runs: list[dict[str, Any]] = []
        parts = self.a.only.split(",")
        for rep in range(self.a.repeat):
            r: dict[str, Any] = {}
            for name in ("enqueue", "process", "latency", "sleep"):
                if name not in parts:
                    continue
                t = time.time()
                try:
                    r.update(getattr(self, "m_" + name)())
                except Exception as exc:
                    r[name + "_error"] = repr(exc)
                log(
                    f"[rep {rep}] {name} ({time.time() - t:.1f}s): "
                    + json.dumps(
                        {
                            k: round(v, 4) if isinstance(v, float) else v
                            for k, v in r.items()
                            if k.startswith(name) or (name == "enqueue" and k.startswith("enqueue"))
                        }
                    )
                )
            runs.append(r)
        return {"settings": self.settings(), "runs": runs, "median": medians(runs)}

    def settings(self) -> dict[str, Any]:
        rv = subprocess.run(
            [self.server.args[0], "--version"], capture_output=True, text=True
        ).stdout.split()
        try:
            import hiredis  # noqa: F401

            has_hiredis = True
        except ImportError:
            has_hiredis = False
        from rrq_flow import __version__

        return {
            "n": self.a.n,
            "repeat": self.a.repeat,
            "single_n": self.a.single_n,
            "concurrency": self.a.concurrency,
            "latency_n": self.a.latency_n,
            "spacing_ms": self.a.spacing_ms,
            "sleep_n": self.a.sleep_n,
            "sleep_s": self.a.sleep_s,
            "sleep_concurrency": self.a.sleep_concurrency,
            "rrq_flow": __version__,
            "cli": self.rrq_flow,
            "python": platform.python_version(),
            "redis_server": next((x[2:] for x in rv if x.startswith("v=")), "?"),
            "redis_url": "unix socket" if self.a.unix else "127.0.0.1 TCP",
            "producer_hiredis": has_hiredis,
            "cpus": os.cpu_count(),
            "rss_source": "GNU time max RSS" if self.gnu_time else "VmHWM sampling",
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = {
        k
        for r in runs
        for k, v in r.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    out: dict[str, Any] = {}
    for k in sorted(keys):
        xs = [r[k] for r in runs if isinstance(r.get(k), (int, float)) and r.get(k) is not None]
        if xs:
            out[k] = {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}
    return out


def render(res: dict[str, Any]) -> str:
    med, st = res["median"], res["settings"]

    def cell(key: str, fmt: str) -> tuple[str, str]:
        if key not in med:
            return "—", ""
        m = med[key]
        rng = "" if len(res["runs"]) < 2 else f"{fmt.format(m['min'])}–{fmt.format(m['max'])}"
        return fmt.format(m["median"]), rng

    def target(key: str, tkey: str) -> str:
        if tkey not in TARGETS:
            return ""
        op, val, why = TARGETS[tkey]
        if key not in med:
            return f"{op} {val:g} ({why})"
        x = med[key]["median"]
        ok = {">=": x >= val, "<=": x <= val, "<": x < val}[op]
        return f"{op} {val:g} ({why}): {'met' if ok else 'MISSED'}"

    c, sc = st["concurrency"], st["sleep_concurrency"]
    rows = [
        ("enqueue: SyncClient.enqueue_many", "jobs/s", "enqueue_many_rate", "{:,.0f}"),
        (
            "enqueue: SyncClient.enqueue, one call per job",
            "jobs/s",
            "enqueue_single_rate",
            "{:,.0f}",
        ),
        (
            f"process: `rrq-flow run --burst`, c={c}, first start→last end",
            "jobs/s",
            "process_rate",
            "{:,.0f}",
        ),
        (
            "process: CLI summary (finished / worker wall)",
            "jobs/s",
            "process_cli_jobs_per_second",
            "{:,.0f}",
        ),
        ("process: drain wall, launch→last job end", "s", "process_drain_wall_s", "{:.2f}"),
        ("process: startup, launch→first job start", "s", "process_startup_s", "{:.2f}"),
        (
            "process: launch→process exit (burst detection + shutdown)",
            "s",
            "process_exit_wall_s",
            "{:.2f}",
        ),
        ("process: worker peak RSS", "MiB", "process_rss_mib", "{:.1f}"),
        (
            f"latency: enqueue→start p50 (idle worker, 1 job / {st['spacing_ms']:g} ms)",
            "ms",
            "latency_p50_ms",
            "{:.2f}",
        ),
        ("latency: p99", "ms", "latency_p99_ms", "{:.2f}"),
        ("latency: max", "ms", "latency_max_ms", "{:.2f}"),
        (
            f"sleep-bound: {st['sleep_n']} × sleep({st['sleep_s']:g}) at c={sc}, span",
            "s",
            "sleep_span_s",
            "{:.3f}",
        ),
        ("sleep-bound: span / ideal", "×", "sleep_ratio", "{:.3f}"),
        ("sleep-bound: peak jobs running", "", "sleep_peak_running", "{:.0f}"),
        ("sleep-bound: worker peak RSS", "MiB", "sleep_rss_mib", "{:.1f}"),
    ]
    L = [
        f"rrq-flow {st['rrq_flow']} bench — N={st['n']:,}, {st['repeat']} repetition(s), "
        f"python {st['python']}, redis-server {st['redis_server']} ({st['redis_url']}), "
        f"{st['cpus']} CPUs, producer hiredis: {'yes' if st['producer_hiredis'] else 'no'}, "
        f"RSS from {st['rss_source']}, {st['date']}",
        "",
        "| figure | unit | median | min–max | reference target |",
        "|---|---|---|---|---|",
    ]
    tkey = {"process_rss_mib": "rss_mib"}
    for label, unit, key, fmt in rows:
        m, rng = cell(key, fmt)
        L.append(f"| {label} | {unit} | {m} | {rng} | {target(key, tkey.get(key, key))} |")
    errs = [
        f"rep {i}: {k}: {v}"
        for i, r in enumerate(res["runs"])
        for k, v in r.items()
        if k.endswith("error")
    ]
    if errs:
        L += ["", "Errors:"] + [f"- {e}" for e in errs]
    return "\n".join(L) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=20000, help="jobs for enqueue and process (20000)")
    p.add_argument("--repeat", type=int, default=3, help="repetitions; medians shown (3)")
    p.add_argument("--json", action="store_true", help="print all results as JSON on stdout")
    p.add_argument(
        "--only",
        default="enqueue,process,latency,sleep",
        help="comma-separated subset of enqueue,process,latency,sleep",
    )
    p.add_argument("--single-n", type=int, default=5000, help="jobs for single enqueue() (5000)")
    p.add_argument("--concurrency", type=int, default=10, help="worker concurrency (10)")
    p.add_argument("--latency-n", type=int, default=1000, help="latency jobs (1000)")
    p.add_argument("--spacing-ms", type=float, default=5.0, help="latency job spacing (5)")
    p.add_argument("--sleep-n", type=int, default=2000, help="sleep-bound jobs (2000)")
    p.add_argument("--sleep-s", type=float, default=0.05, help="sleep per job (0.05)")
    p.add_argument("--sleep-concurrency", type=int, default=50, help="sleep-bound conc. (50)")
    p.add_argument("--port", type=int, default=None, help="redis port (default: a free one)")
    p.add_argument("--unix", action="store_true", help="redis on a unix socket instead of TCP")
    p.add_argument("--rrq-flow", default=None, help="the rrq-flow CLI (default: beside python)")
    p.add_argument("--no-gnu-time", action="store_true", help="sample VmHWM, not /usr/bin/time")
    p.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a queue setting for the bench queue, e.g. max_running=1000 (repeatable)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp folder (logs, records)")
    a = p.parse_args()

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    # KeyboardInterrupt on SIGINT even if it was inherited as ignored (a background job of a
    # non-interactive shell), so that the cleanup below always runs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    b = Bench(a)
    try:
        b.start()
        res = b.run()
    finally:
        b.close()
    if a.json:
        json.dump(res, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(render(res))
    return 1 if any(k.endswith("error") for r in res["runs"] for k in r) else 0


if __name__ == "__main__":
    sys.exit(main())
