#!/usr/bin/env bash
# Op tests a second time under triton-ascend 3.2.0 (PyPI `triton-ascend`, top-level package
# `triton`) in its interpreter mode (TRITON_INTERPRET=1): CPU only, no CANN, no NPU.
#
#   bash ci/triton_ascend.sh            # fresh venv, then the tests
#   GSA_TA_REUSE=1 bash ci/triton_ascend.sh   # reuse an existing venv (local iteration)
#
# Env: GSA_TA_VENV (default /work/venvs/triton-ascend; outside the repo, because
# triton-ascend's `triton` can never share an environment with upstream Triton),
# PYTHON (default python3.11 if present, else python3).
#
# Pins and why:
#   torch==2.13.0+cpu  the CPU wheel (same as the main env); the script refuses CUDA wheels.
#   numpy<2.3          triton-ascend 3.2's interpreter turns 1-element arrays into ints with
#                      int(ndarray) (interpreter.py `tensor.__index__`); numpy 2.4.6 raises
#                      "TypeError: only 0-dimensional arrays can be converted to Python scalars"
#                      on `for i in range(...)` in a kernel; numpy 2.2.6 only warns.
#   pybind11           triton-ascend needs it at import.
# Exit status: 0 when every test passed, else non-zero. Nothing is skipped: the interpreter
# was verified to run on a CPU-only machine without CANN (see npu_ops/README.md).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GSA_TA_VENV:-/work/venvs/triton-ascend}"
if [[ -z "${PYTHON:-}" ]]; then
  if command -v python3.11 >/dev/null; then PYTHON=python3.11; else PYTHON=python3; fi
fi
t0=$(date +%s)

if [[ "${GSA_TA_REUSE:-0}" != 1 || ! -x "$VENV/bin/python" ]]; then
  echo "== creating $VENV"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
  # the CPU torch wheel first, so that nothing later can pull the CUDA build
  if ! "${PIP[@]}" "torch==2.13.0+cpu"; then
    "${PIP[@]}" --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
  fi
  "${PIP[@]}" "numpy<2.3" pytest hypothesis pybind11 safetensors
  "${PIP[@]}" "triton-ascend==3.2.0"
fi
PY="$VENV/bin/python"

if "$PY" -m pip list 2>/dev/null | grep -qi '^nvidia-'; then
  echo "error: CUDA wheels (nvidia-*) in $VENV; torch must be the CPU build" >&2
  exit 1
fi
"$PY" - <<'PYEOF'
import importlib.util, torch, numpy, triton
assert importlib.util.find_spec("triton.backends.ascend"), "the triton in this venv is not triton-ascend"
assert torch.__version__.startswith("2.13.0") and not torch.cuda.is_available()
print(f"torch {torch.__version__}, numpy {numpy.__version__}, triton(-ascend) {triton.__version__}")
PYEOF
echo "== venv ready in $(( $(date +%s) - t0 ))s"

cd "$ROOT"
export TRITON_INTERPRET=1
export PYTHONDONTWRITEBYTECODE=1
status=0

# 1. the upstream-Triton backend's op tests, forced onto the triton backend
if [[ -f cuda_ops/__init__.py ]]; then
  files=(tests/test_ops_*.py tests/test_triton_ops.py)
  existing=()
  for f in "${files[@]}"; do [[ -f "$f" ]] && existing+=("$f"); done
  if (( ${#existing[@]} )); then
    echo "== GSA_BACKEND=triton: ${existing[*]}"
    GSA_BACKEND=triton GSA_TEST_BACKENDS=triton "$PY" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning "${existing[@]}" || status=1
  else
    echo "== no tests/test_ops_*.py or tests/test_triton_ops.py in this checkout"
  fi
else
  echo "== cuda_ops is not in this checkout: the triton backend's op tests cannot run"
fi

# 2. the Ascend-shaped kernels, the npu backend logic and crosscheck (incl. npu_triton target)
echo "== npu_ops tests"
"$PY" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning \
  tests/test_npu_triton.py tests/test_npu_backend.py tests/test_crosscheck.py || status=1

echo "== triton-ascend interpreter run finished in $(( $(date +%s) - t0 ))s, status $status"
exit $status
