#!/usr/bin/env bash
# Every CPU benchmark, one after the other (each holds /tmp/wan-bench.lock), then bench/RESULTS.md is rebuilt.
# About 25 minutes on 2 cores. The GPU check runs separately on a GPU host (bench/gpu_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
run() { echo "== $*"; flock /tmp/wan-bench.lock "$PY" "$@"; }
run bench/inprocess_stages.py --reps 3 --write
run bench/serving_overhead.py --reps 5 --bench-reps 3 --write
run bench/distill_speedup.py --reps 3 --write
run bench/diffusers_side_by_side.py --reps 5 --write
run bench/load_test.py --write
run bench/load_test.py --threads 1 --write
run bench/memory.py --write
run bench/step_batching.py --requests 4 --rounds 3 --reps 3 --write
run bench/stream_cancel.py --write
"$PY" bench/collect_results.py
