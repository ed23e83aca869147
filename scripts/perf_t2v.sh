#!/usr/bin/env bash
# perf_analyzer against the served wan_t2v ensemble (gRPC, count_windows: generation takes seconds to minutes).
# Usage: scripts/perf_t2v.sh [-u URL] [-m MODEL] [-c START:END[:STEP]] [-n COUNT] [-t MAX_TRIALS] [-s STABILITY_%] [-d INPUT_JSON]
#                            [-f OUT.csv] [-- extra perf_analyzer args]
# Env defaults: URL=127.0.0.1:8001 MODEL=wan_t2v CONCURRENCY=1:1 COUNT=3 MAX_TRIALS=3
#               STABILITY= (perf_analyzer's 10 %; raise it for few, long requests)
#               INPUT_DATA=bench/perf_input_t2v.json CSV= (no CSV unless set)
# Needs scripts/setup_triton.sh (puts perf_analyzer 2.50.0 + its libs under .triton/perf_analyzer).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
URL="${URL:-127.0.0.1:8001}"
MODEL="${MODEL:-wan_t2v}"
CONCURRENCY="${CONCURRENCY:-1:1}"
COUNT="${COUNT:-3}"
MAX_TRIALS="${MAX_TRIALS:-3}"
INPUT_DATA="${INPUT_DATA:-$ROOT/bench/perf_input_t2v.json}"
CSV="${CSV:-}"
STABILITY="${STABILITY:-}"
usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while getopts "u:m:c:n:t:s:d:f:h" opt; do
  case $opt in
    u) URL=$OPTARG ;; m) MODEL=$OPTARG ;; c) CONCURRENCY=$OPTARG ;; n) COUNT=$OPTARG ;;
    t) MAX_TRIALS=$OPTARG ;; s) STABILITY=$OPTARG ;; d) INPUT_DATA=$OPTARG ;; f) CSV=$OPTARG ;; h) usage 0 ;; *) usage 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift

PA_DIR="$ROOT/.triton/perf_analyzer"
PA="$PA_DIR/perf_analyzer"
[[ -x "$PA" ]] || { echo "perf_t2v: $PA missing; run scripts/setup_triton.sh" >&2; exit 1; }
[[ -f "$INPUT_DATA" ]] || { echo "perf_t2v: input data $INPUT_DATA not found" >&2; exit 1; }
[[ "$CONCURRENCY" == *:* ]] || CONCURRENCY="$CONCURRENCY:$CONCURRENCY"

ARGS=(-m "$MODEL" -i grpc -u "$URL" --input-data "$INPUT_DATA"
      --measurement-mode count_windows --measurement-request-count "$COUNT"
      --concurrency-range "$CONCURRENCY" --max-trials "$MAX_TRIALS")
[[ -n "$STABILITY" ]] && ARGS+=(--stability-percentage "$STABILITY")
if [[ -n "$CSV" ]]; then
  mkdir -p "$(dirname "$CSV")"
  ARGS+=(-f "$CSV")
fi
echo "+ perf_analyzer ${ARGS[*]} $*" >&2
export LD_LIBRARY_PATH="$PA_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$PA" "${ARGS[@]}" "$@"
