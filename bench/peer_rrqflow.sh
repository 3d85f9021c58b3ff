#!/usr/bin/env bash
# peerbench adapter for rrq-flow (plug-in contract: /work/shared/bench-peers/README.md).
#   PEERBENCH_ADAPTERS=/path/to/rrq-flow/bench /work/shared/bench-peers/run.sh
# The driver calls, with REDIS_URL, BENCH_OUT and PYTHONPATH (the bench-peers folder,
# so `import benchjob` works) in the environment:
#   peer_rrqflow.sh info
#   peer_rrqflow.sh enqueue --variant V --n N --sleep S [--spacing-ms MS]
#   peer_rrqflow.sh work    --variant V --concurrency C [--burst]
# rrq-flow runs from its own venv, $PEERBENCH_VENVS/venv-rrqflow:
#   python3.11 -m venv "$PEERBENCH_VENVS/venv-rrqflow"
#   "$PEERBENCH_VENVS/venv-rrqflow/bin/pip" install -e /path/to/rrq-flow hiredis==3.5.0
# (hiredis, as in the peers' venvs: it speeds up the redis-py producer.)
# RRQFLOW_VENV=/path/to/venv overrides that venv, e.g. a worktree's own .venv (an editable
# install of that tree, with hiredis==3.5.0), to compare that tree against the peers in one run.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENVS="${PEERBENCH_VENVS:-${TMPDIR:-/tmp}/peerbench}"
VENV="${RRQFLOW_VENV:-$VENVS/venv-rrqflow}"
[ -x "$VENV/bin/rrq-flow" ] || { echo "no $VENV/bin/rrq-flow: create the venv (see $0)" >&2; exit 1; }
cmd="${1:?info|enqueue|work}"; shift

case "$cmd" in
info)
  ver="$("$VENV/bin/rrq-flow" --version 2>/dev/null | awk '{print $NF}')"
  printf '{"peer":"rrq-flow","version":"%s","variants":{"rrq-flow":{"burst":true,"note":"trio worker, `rrq-flow run --burst`, 1 process, async handler in the trio loop"}}}\n' "${ver:-unknown}"
  ;;
enqueue)
  # SyncClient.enqueue_many (bulk) or SyncClient.enqueue (--spacing-ms); prints the JSON line.
  exec "$VENV/bin/python" "$HERE/rrqflow_enqueue.py" enqueue "$@"
  ;;
work)
  conc=10; burst=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --concurrency) conc="$2"; shift 2 ;;
      --burst) burst="--burst"; shift ;;
      *) shift 2 ;;   # --variant V
    esac
  done
  # The same text as rrqflow_enqueue.pipeline_yaml(); written here in bash so that no extra
  # Python start-up sits between the launch and the exec (it would count as worker startup).
  # One file per Redis URL: runs on other ports (other helpers, same $PEERBENCH_VENVS) do not
  # overwrite each other's file between the write and the exec.
  dir="$VENVS/rrqflow"; mkdir -p "$dir"
  tag="$(printf '%s' "${REDIS_URL:?REDIS_URL is not set}" | tr -c 'A-Za-z0-9' '_')"
  cfg="$dir/bench-${tag}-c${conc}.yaml"; tmp="$cfg.$$.tmp"
  cat > "$tmp" <<YAML
version: 1
pipeline: peerbench
redis:
  url: ${REDIS_URL:?REDIS_URL is not set}
  persistence: none      # the harness' Redis runs without AOF, on purpose
queues:
  bench:
    handler: benchjob:trio_job
    concurrency: ${conc}
YAML
  mv -f "$tmp" "$cfg"
  # exec, so that /usr/bin/time measures rrq-flow itself and SIGINT reaches it.
  exec "$VENV/bin/rrq-flow" run "$cfg" $burst --log-level WARNING --progress off
  ;;
*) echo "unknown command $cmd" >&2; exit 2 ;;
esac
