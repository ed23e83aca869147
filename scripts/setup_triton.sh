#!/usr/bin/env bash
# Lay out a runnable Triton Inference Server under .triton/ (git-ignored) from the venv:
#   .triton/server/{bin,backends,caches}   tritonserver 2.51 bundled with nvidia-pytriton, plus the python-backend
#                                          stub built for the venv's Python minor version
#   .triton/perf_analyzer/perf_analyzer    from the tritonclient==2.50.0 wheel (2.73 ships none)
#   .triton/perf_analyzer/lib/             symlinks to pytriton's bundled libcudart / libb64
# Idempotent: re-running after a successful setup only checks a stamp file and exits.
# Usage: scripts/setup_triton.sh [--force]      (env: VENV=<path to venv>, default <repo>/.venv)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
DEST="$ROOT/.triton"
PA_VERSION="2.50.0"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

log() { echo "[setup_triton] $*"; }
die() { echo "[setup_triton] ERROR: $*" >&2; exit 1; }

[[ -x "$PY" ]] || die "no venv python at $PY (create the venv first)"
SP="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
PYMINOR="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
PT="$SP/pytriton/tritonserver"
LIBS="$SP/nvidia_pytriton.libs"
[[ -d "$PT/bin" ]] || die "pytriton's tritonserver not found at $PT (pip install nvidia-pytriton into $VENV)"
PT_VERSION="$("$PY" -c 'from importlib.metadata import version; print(version("nvidia-pytriton"))')"
STAMP_TEXT="pytriton=$PT_VERSION python=$PYMINOR perf_analyzer=$PA_VERSION venv=$VENV"
STAMP="$DEST/.stamp"

if [[ $FORCE == 0 && -f "$STAMP" && "$(cat "$STAMP")" == "$STAMP_TEXT" \
      && -x "$DEST/server/bin/tritonserver" && -x "$DEST/server/backends/python/triton_python_backend_stub" \
      && -x "$DEST/perf_analyzer/perf_analyzer" ]]; then
  log "already set up ($STAMP_TEXT); nothing to do (use --force to redo)"
  exit 0
fi

mkdir -p "$DEST"
# 1) server: copy the bundled distribution and drop in the stub for this Python.
STUB="$PT/python_backend_stubs/$PYMINOR/triton_python_backend_stub"
[[ -f "$STUB" ]] || die "pytriton has no python-backend stub for Python $PYMINOR ($STUB)"
rm -rf "$DEST/server.tmp"
mkdir -p "$DEST/server.tmp"
cp -r "$PT/bin" "$PT/backends" "$PT/caches" "$DEST/server.tmp/"
cp "$STUB" "$DEST/server.tmp/backends/python/"
chmod +x "$DEST/server.tmp/bin/tritonserver" "$DEST/server.tmp/backends/python/triton_python_backend_stub"
rm -rf "$DEST/server"
mv "$DEST/server.tmp" "$DEST/server"
log "tritonserver (pytriton $PT_VERSION) -> $DEST/server; python backend stub for Python $PYMINOR"

# 2) perf_analyzer from the tritonclient 2.50.0 wheel (download only, never installed).
PA="$DEST/perf_analyzer"
mkdir -p "$PA/lib" "$DEST/downloads"
WHL="$(ls "$DEST/downloads"/tritonclient-$PA_VERSION-*.whl 2>/dev/null | head -n1 || true)"
if [[ -z "$WHL" ]]; then
  log "downloading tritonclient==$PA_VERSION wheel (no deps) for perf_analyzer"
  "$PY" -m pip download --quiet --no-deps "tritonclient==$PA_VERSION" -d "$DEST/downloads" \
    || die "pip download tritonclient==$PA_VERSION failed"
  WHL="$(ls "$DEST/downloads"/tritonclient-$PA_VERSION-*.whl | head -n1)"
fi
"$PY" - "$WHL" "$PA/perf_analyzer" <<'EOF'
import shutil, sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith("/data/bin/perf_analyzer"))
    with z.open(name) as src, open(out + ".tmp", "wb") as dst:
        shutil.copyfileobj(src, dst)
import os; os.chmod(out + ".tmp", 0o755); os.replace(out + ".tmp", out)
EOF
CUDART="$(ls "$LIBS"/libcudart-*.so.* | head -n1)"
B64="$(ls "$LIBS"/libb64-*.so.* | head -n1)"
ln -sfn "$CUDART" "$PA/lib/libcudart.so.12"
ln -sfn "$B64" "$PA/lib/libb64.so.0d"
if LD_LIBRARY_PATH="$PA/lib" ldd "$PA/perf_analyzer" | grep -q "not found"; then
  LD_LIBRARY_PATH="$PA/lib" ldd "$PA/perf_analyzer" | grep "not found" >&2
  die "perf_analyzer has unresolved libraries"
fi
log "perf_analyzer $PA_VERSION -> $PA/perf_analyzer (lib/: libcudart, libb64 from nvidia_pytriton.libs)"

echo "$STAMP_TEXT" > "$STAMP"
log "done: $STAMP_TEXT"
