#!/usr/bin/env bash
# Interleaved A/B of worker trees on one burst of no-op jobs (one worker process, c=10).
#
#   bench/interleave_worker.sh N REPS TREE [TREE ...]
#
# TREE: a directory holding an `rrq_flow` package (a `git worktree` of another commit), run
# with PYTHONPATH=TREE from an empty directory (python -m puts the current directory first on
# sys.path). Per run: N jobs enqueued by bench/rrqflow_enqueue.py (SyncClient.enqueue_many),
# then `rrq-flow run --burst`; printed: jobs/s (first start to last end), the worker's CPU per
# job and its busy fraction over the steady part (5 %..95 % of the jobs, from bench_handlers.job_with_cpu),
# Redis script time per job (INFO commandstats) and jobs per script call. Needs a redis-server
# on $PORT (default 6390; started here without persistence if none answers) and peerbench's
# benchjob.py (for the enqueue side) at $PEERBENCH (default /work/shared/bench-peers).
set -euo pipefail
N=$1; REPS=$2; shift 2
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-$HERE/../.venv/bin/python}
PORT=${PORT:-6390}
PEERBENCH=${PEERBENCH:-/work/shared/bench-peers}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
redis-cli -p "$PORT" ping >/dev/null 2>&1 ||
  redis-server --port "$PORT" --save '' --appendonly no --daemonize yes >/dev/null
cat > "$WORK/pipeline.yaml" <<YAML
version: 1
pipeline: peerbench
redis:
  url: redis://127.0.0.1:$PORT
  persistence: none
queues:
  bench:
    handler: bench_handlers:job_with_cpu
    concurrency: 10
YAML
export REDIS_URL=redis://127.0.0.1:$PORT BENCH_OUT=$WORK/out.txt
mkdir "$WORK/cwd" && cd "$WORK/cwd"
for _ in $(seq "$REPS"); do
  for tree in "$@"; do
    redis-cli -p "$PORT" flushall >/dev/null
    PYTHONPATH=$PEERBENCH "$PY" "$HERE/rrqflow_enqueue.py" enqueue --variant rrq-flow --n "$N" --sleep 0 >/dev/null
    rm -f "$BENCH_OUT"
    redis-cli -p "$PORT" config resetstat >/dev/null
    PYTHONPATH=$tree:$HERE "$PY" -m rrq_flow run "$WORK/pipeline.yaml" --burst --log-level WARNING --progress off >"$WORK/run.log" 2>&1
    stats=$(redis-cli -p "$PORT" info commandstats)
    "$PY" - "$tree" "$BENCH_OUT" <<PYEOF
import re, sys
stats = """$stats"""
calls = usec = 0
for name, c, u in re.findall(r"cmdstat_(fcall|evalsha):calls=(\d+),usec=(\d+)", stats):
    calls += int(c); usec += int(u)
rows = sorted((l.split() for l in open(sys.argv[2])), key=lambda r: float(r[2]))
n = len(rows)
span = float(rows[-1][2]) - min(float(r[1]) for r in rows)
a, b = rows[n // 20], rows[n * 19 // 20]
cpu = (float(b[3]) - float(a[3])) / (n * 0.9) * 1e6
wall = (float(b[2]) - float(a[2])) / (n * 0.9) * 1e6
print(f"{sys.argv[1]:30s} {n / span:7.0f} jobs/s  worker CPU {cpu:5.1f} µs/job, busy {cpu / wall:4.2f}"
      f"  Redis scripts {usec / n:5.1f} µs/job  {n / max(calls, 1):5.1f} jobs/call")
PYEOF
  done
done
