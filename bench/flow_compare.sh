#!/usr/bin/env bash
# Interleaved no-op throughput runs of bench.py: a baseline commit against this tree, and this
# tree with rate_limit / max_running set (limits far above what one worker reaches, so the
# figures show the cost of the bookkeeping, not the limiting). One JSON line per run.
#
#   bench/flow_compare.sh BASE_COMMIT [REPS] [N] > results.jsonl
set -euo pipefail
base=${1:?base commit}
reps=${2:-6}
n=${3:-5000}
here=$(cd "$(dirname "$0")/.." && pwd)
py="$here/.venv/bin/python"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git -C "$here" archive "$base" | tar -x -C "$tmp"
cat > "$tmp/rrq-flow" <<EOS
#!/bin/sh
PYTHONPATH=$tmp\${PYTHONPATH:+:\$PYTHONPATH} exec $py -m rrq_flow "\$@"
EOS
chmod +x "$tmp/rrq-flow"
cd /tmp  # not the source tree: python must import rrq_flow from the tree chosen below
run() {  # variant, then bench.py arguments
  local variant=$1
  shift
  local out
  out=$("$@" --only process --n "$n" --repeat 1 --json 2>/dev/null || true)
  "$py" -c 'import json,sys; d=json.loads(sys.argv[2] or "{}"); r=(d.get("runs") or [{}])[0]
print(json.dumps({"variant": sys.argv[1], "rate": r.get("process_rate"), "span_s": r.get("process_span_s"), "done": r.get("process_done")}))' "$variant" "$out"
}
for rep in $(seq 1 "$reps"); do
  run before env PYTHONPATH="$tmp" "$py" "$here/bench/bench.py" --rrq-flow "$tmp/rrq-flow"
  run after "$py" "$here/bench/bench.py"
  run after+rate_limit "$py" "$here/bench/bench.py" --setting rate_limit=100000000/s
  run after+max_running "$py" "$here/bench/bench.py" --setting max_running=1000
  echo "rep $rep done" >&2
done
