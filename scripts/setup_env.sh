#!/usr/bin/env bash
# One setup step for make test / make demo / CI / Docker-less machines: creates .venv with the pinned
# dependencies, installs this project into it (editable), then prepares the bundled tritonserver and
# perf_analyzer (.triton/). Idempotent: a stamp keyed on the requirement files makes a second run quick.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
ver=$($PY -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case "$ver" in 3.10|3.11|3.12) ;; *) echo "setup_env: Python 3.10-3.12 required, found $ver ($PY)" >&2; exit 1;; esac

stamp=$VENV/.wan-setup-stamp
want=$(cat requirements.txt requirements-dev.txt pyproject.toml | sha1sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x $VENV/bin/python ]; then
  echo "setup_env: .venv up to date"
else
  [ -x $VENV/bin/python ] || { echo "setup_env: creating $VENV ($PY $ver)"; $PY -m venv $VENV; }
  $VENV/bin/python -m pip install -q --upgrade pip
  echo "setup_env: installing pinned requirements (torch==2.13.0 CPU build, numpy<2, ...)"
  $VENV/bin/python -m pip install -q -r requirements.txt -r requirements-dev.txt
  $VENV/bin/python -m pip install -q --no-deps -e .
  $VENV/bin/python - <<'PY'
import numpy, torch
assert numpy.__version__.startswith("1."), f"numpy must be < 2 for the Triton python-backend stub, got {numpy.__version__}"
print(f"setup_env: torch {torch.__version__}, numpy {numpy.__version__}")
PY
  echo "$want" > "$stamp"
fi
bash scripts/setup_triton.sh
