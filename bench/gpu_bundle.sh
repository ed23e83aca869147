#!/usr/bin/env bash
# What bench/gpu_serve.py needs on a GPU machine that has torch but no tritonserver and no network.
#
#   bench/gpu_bundle.sh pack [--python 3.12] [--out .gpu_bundle]   # here: the files to carry (git-ignored)
#   bench/gpu_bundle.sh unpack OUT/call1 DEST                      # there, first call: DEST/triton + DEST/venv
#   bench/gpu_bundle.sh wheels OUT/call2 DEST                      # there, second call: PyAV into DEST/venv
#
# Together they exceed one call's 64 MiB carry, hence two folders (the machine stays warm between the two calls
# only briefly: run the second at once):
#   call1/tritonserver.tar.xz  tritonserver 2.51 from the installed nvidia-pytriton wheel, trimmed: bin/tritonserver,
#                              the python backend (libtriton_python.so + utils) with the stub for --python, empty
#                              caches/, lib/ = only the bundled libraries those three link (ldd), ~26 MB
#   call1/*.whl                numpy 1.26.4 (numpy 2 silently corrupts stub tensors), ftfy + wcwidth (prompt cleaning),
#                              tritonclient + python-rapidjson + protobuf (the gRPC client), ~21 MB
#   call2/*.whl                PyAV (the MP4 stage), ~36 MB
# unpack extracts the server into DEST/triton and makes DEST/venv: a venv of the machine's python3 whose own
# site-packages (the wheels, numpy 1.26.4 first) come before the site-packages that hold torch (a .pth line), so
# the stub (which finds its environment through the first python3 on PATH) and the bench see the same packages.
set -euo pipefail
cmd=${1:?usage: gpu_bundle.sh pack|unpack ...}; shift
ROOT=$(cd "$(dirname "$0")/.." && pwd)

if [ "$cmd" = pack ]; then
  PY=3.12; OUTDIR=$ROOT/.gpu_bundle
  while [ $# -gt 0 ]; do
    case $1 in --python) PY=$2; shift 2;; --out) OUTDIR=$2; shift 2;; *) echo "unknown argument $1" >&2; exit 2;; esac
  done
  SP=$(ls -d "$ROOT"/.venv/lib/python3.*/site-packages | tail -1)
  SRC=$SP/pytriton/tritonserver; LIBS=$SP/nvidia_pytriton.libs
  STAGE=$(mktemp -d); trap 'rm -rf "$STAGE"' EXIT
  mkdir -p "$STAGE/triton/bin" "$STAGE/triton/backends/python" "$STAGE/triton/caches" "$STAGE/triton/lib"
  cp "$SRC/bin/tritonserver" "$STAGE/triton/bin/"
  cp "$SRC/backends/python/libtriton_python.so" "$SRC/backends/python/triton_python_backend_utils.py" \
     "$STAGE/triton/backends/python/"
  cp "$SRC/python_backend_stubs/$PY/triton_python_backend_stub" "$STAGE/triton/backends/python/"
  # the bundled libraries these three link (transitively), found with ldd against the wheel's lib folder
  for bin in "$STAGE/triton/bin/tritonserver" "$STAGE/triton/backends/python/libtriton_python.so" \
             "$STAGE/triton/backends/python/triton_python_backend_stub"; do
    LD_LIBRARY_PATH=$LIBS ldd "$bin" | awk -v d="$LIBS" 'index($3, d) == 1 {print $3}'
  done | sort -u | while read -r lib; do cp "$lib" "$STAGE/triton/lib/"; done
  mkdir -p "$OUTDIR/call1" "$OUTDIR/call2"
  tar -C "$STAGE" -cJf "$OUTDIR/call1/tritonserver.tar.xz" triton
  plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
        --platform manylinux_2_27_x86_64 --platform manylinux1_x86_64)
  "$ROOT/.venv/bin/python" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" \
      --implementation cp "${plat[@]}" -d "$OUTDIR/call1" \
      numpy==1.26.4 ftfy==6.3.1 wcwidth==0.9.4 tritonclient==2.73.0 python-rapidjson==1.25 protobuf==6.33.6
  "$ROOT/.venv/bin/python" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" \
      --implementation cp "${plat[@]}" -d "$OUTDIR/call2" av==18.1.0
  du -sh "$OUTDIR/call1" "$OUTDIR/call2"; ls "$OUTDIR"/call*
elif [ "$cmd" = unpack ]; then
  BUNDLE=${1:?bundle folder}; DEST=${2:?destination}
  mkdir -p "$DEST"
  tar -C "$DEST" -xJf "$BUNDLE/tritonserver.tar.xz"
  PY=${PYTHON:-python3}
  TORCH_SP=$("$PY" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')
  "$PY" -m venv --without-pip "$DEST/venv"
  VSP=$(ls -d "$DEST"/venv/lib/python3.*/site-packages)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$VSP" "$BUNDLE"/*.whl
  echo "$TORCH_SP" > "$VSP/zz_torch_site.pth"   # after the venv's own packages: numpy 1.26.4 wins
  "$DEST/venv/bin/python" -c 'import numpy, torch; print("venv ok: numpy", numpy.__version__, "torch", torch.__version__)'
  LD_LIBRARY_PATH=$DEST/triton/lib:$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR") or "")') \
    ldd "$DEST/triton/backends/python/triton_python_backend_stub" | grep -E "not found|libpython" || true
elif [ "$cmd" = wheels ]; then
  WHEELS=${1:?wheel folder}; DEST=${2:?destination}
  VSP=$(ls -d "$DEST"/venv/lib/python3.*/site-packages)
  "${PYTHON:-python3}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$VSP" "$WHEELS"/*.whl
  "$DEST/venv/bin/python" -c 'import av, numpy; print("venv ok: av", av.__version__, "numpy", numpy.__version__)'
else
  echo "usage: gpu_bundle.sh pack|unpack|wheels ..." >&2; exit 2
fi
