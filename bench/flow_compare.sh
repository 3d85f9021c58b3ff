#!/usr/bin/env bash
# Interleaved no-op throughput runs of bench.py (this tree's), on two commits' code: BASE, NEW,
# and NEW with rate_limit / max_running set (limits far above what one worker reaches, so the
# figures show the cost of the bookkeeping, not the limiting). One JSON line per run.
#
#   bench/flow_compare.sh BASE NEW [REPS] [N] > results.jsonl
set -euo pipefail
base=${1:?base commit}
new=${2:?new commit}
reps=${3:-6}
n=${4:-5000}
here=$(cd "$(dirname "$0")/.." && pwd)
py="$here/.venv/bin/python"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for which in base new; do
  mkdir -p "$tmp/$which"
  git -C "$here" archive "${!which}" | tar -x -C "$tmp/$which"
  cat > "$tmp/$which/rrq-flow" <<EOS
#!/bin/sh
PYTHONPATH=$tmp/$which\${PYTHONPATH:+:\$PYTHONPATH} exec $py -m rrq_flow "\$@"
EOS
  chmod +x "$tmp/$which/rrq-flow"
done
cd /tmp  # not a source tree: python imports rrq_flow from the PYTHONPATH given below
run() {  # variant, tree, then bench.py arguments
  local variant=$1 tree=$2
  shift 2
  local out
  out=$(PYTHONPATH="$tmp/$tree" "$py" "$here/bench/bench.py" --rrq-flow "$tmp/$tree/rrq-flow" \
    --only process --n "$n" --repeat 1 --json "$@" 2>/dev/null || true)
  "$py" -c 'import json,sys; d=json.loads(sys.argv[2] or "{}"); r=(d.get("runs") or [{}])[0]
print(json.dumps({"variant": sys.argv[1], "rate": r.get("process_rate"), "span_s": r.get("process_span_s"), "done": r.get("process_done"), "error": r.get("process_error")}))' "$variant" "$out"
}
for rep in $(seq 1 "$reps"); do
  run before base
  run after new
  run after+rate_limit new --setting rate_limit=100000000/s
  run after+max_running new --setting max_running=1000
  echo "rep $rep done" >&2
done
