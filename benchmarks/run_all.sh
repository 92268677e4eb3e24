#!/usr/bin/env bash
# `make bench`: the CPU benchmarks at full size, one after the other (about 45 minutes
# on a quiet 2-core machine). Each writes benchmarks/results/<name>.json and prints one summary line.
#   bash benchmarks/run_all.sh            # full size
#   bash benchmarks/run_all.sh --quick    # smoke run of each (< 1 minute each)
# Extra arguments are passed to every benchmark (e.g. --wait-quiet 0).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || { echo "error: $PY not found: run \`make venv\` first (or set PYTHON)" >&2; exit 2; }
status=0
for bench in bench_encode bench_train bench_rank_memory bench_search bench_checkpoint_disk bench_transfer; do
    "$PY" "benchmarks/$bench.py" "$@" || { echo "$bench: FAILED" >&2; status=1; }
done
exit $status
