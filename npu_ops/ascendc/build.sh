#!/usr/bin/env bash
# Build the GSA AscendC custom ops and their torch binding: ONE command.
#
#   bash npu_ops/ascendc/build.sh [--soc Ascend910B1|Ascend910B2|...|Ascend910_9391|Ascend910_9392]
#
# Needs CANN (ASCEND_HOME_PATH, e.g. after `source /usr/local/Ascend/ascend-toolkit/set_env.sh`),
# cmake >= 3.16 and a Python with torch + torch_npu. Output: npu_ops/lib/libgsa_npu_ops.so,
# which npu_ops/custom.py loads (or point GSA_NPU_OPS_LIB at it).
# Without CANN it prints why and exits 0: there is nothing to build on such a machine.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SOC=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --soc) SOC="$2"; shift 2 ;;
    *) echo "usage: $0 [--soc SOC_VERSION]" >&2; exit 2 ;;
  esac
done
if [[ -z "${ASCEND_HOME_PATH:-}" || ! -d "${ASCEND_HOME_PATH}" ]]; then
  echo "gsa AscendC build skipped: ASCEND_HOME_PATH is not set to a CANN toolkit (no CANN on this machine)."
  echo "On an Ascend machine: source /usr/local/Ascend/ascend-toolkit/set_env.sh && bash $0"
  exit 0
fi
if [[ -z "$SOC" ]]; then
  # npu-smi names the chip (e.g. 910B3, 910_9392); CANN's SoC name is "Ascend" + that
  chip="$(npu-smi info 2>/dev/null | awk '/^\| [0-9]+ +910/ {print $3; exit}' || true)"
  SOC="Ascend${chip:-910B1}"
fi
PY="${PYTHON:-python3}"
echo "== gsa AscendC build: SOC_VERSION=$SOC, CANN=$ASCEND_HOME_PATH, python=$("$PY" -c 'import sys; print(sys.executable)')"
cmake -S "$HERE" -B "$HERE/build" -DSOC_VERSION="$SOC" -DASCEND_HOME_PATH="$ASCEND_HOME_PATH" \
  -DPython3_EXECUTABLE="$(command -v "$PY")" -DCMAKE_BUILD_TYPE=Release
cmake --build "$HERE/build" -j "$(nproc)"
mkdir -p "$HERE/../lib"
cp "$HERE/build/libgsa_npu_ops.so" "$HERE/../lib/"
echo "== built $HERE/../lib/libgsa_npu_ops.so; check: python -c 'import gsa, npu_ops; print(npu_ops.plan())'"
