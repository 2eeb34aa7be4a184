#!/usr/bin/env bash
# Build the GSA AscendC kernels against the REAL AscendC API in CPU twin-debug mode (g++, no
# NPU, no CANN needed) and test them: the ONE script, run by CI (ci/test.sh). See README.md here.
#
#   bash npu_ops/ascendc/cpu/build_and_test.sh                # build, intrinsic tests, op_host compile, pytest
#   bash npu_ops/ascendc/cpu/build_and_test.sh --no-pytest    # all but pytest (CI: the suite runs the pytest file)
#   bash npu_ops/ascendc/cpu/build_and_test.sh --build-only   # build; last line: the runner's path (or SKIP: why)
#
# Which AscendC it builds against, first found:
#   ASCEND_HOME_PATH=<CANN toolkit>  the toolkit's own headers and CPU libraries (tikicpulib, via CMake;
#                                    SOC: GSA_ASCENDC_SOC, default Ascend910B1). Set by CANN's set_env.sh.
#   GSA_ASCENDC_API=<dir>            the open-source API sources (asc-devkit + asc-tools), default
#                                    <repo>/../shared/vendor/ascendc, with our stand-ins (include/) for
#                                    CANN's binary-only parts.
# Neither: prints why and exits 0 (nothing to build on such a machine).
# Other knobs: GSA_ASCENDC_CPU_BUILD (build dir, default npu_ops/ascendc/cpu/build), GSA_ASCENDC_OPT
# (default -O1), CXX (default g++), PYTHON (default python3).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ASC="$(cd "$HERE/.." && pwd)"                 # npu_ops/ascendc
REPO="$(cd "$ASC/../.." && pwd)"
MODE=all
case "${1:-}" in
  "") ;;
  --no-pytest) MODE=nopytest ;;
  --build-only) MODE=build ;;
  *) echo "usage: $0 [--no-pytest|--build-only]" >&2; exit 2 ;;
esac
BUILD="${GSA_ASCENDC_CPU_BUILD:-$HERE/build}"
OPT="${GSA_ASCENDC_OPT:--O1}"
CXX="${CXX:-g++}"
PY="${PYTHON:-python3}"
JOBS="$(nproc 2>/dev/null || echo 2)"
log() { echo "[ascendc-cpu] $*"; }
skip() { log "SKIP: $*"; [[ "$MODE" == build ]] && echo "SKIP: $*"; exit 0; }

if ! command -v "$CXX" >/dev/null; then skip "no C++ compiler ($CXX)"; fi

# ---------------------------------------------------------------- toolkit mode (CANN installed)
if [[ -n "${ASCEND_HOME_PATH:-}" && -d "${ASCEND_HOME_PATH}/tools/tikicpulib/lib/cmake" ]]; then
  SOC="${GSA_ASCENDC_SOC:-Ascend910B1}"
  log "CANN toolkit at $ASCEND_HOME_PATH: its AscendC headers and CPU libraries (tikicpulib::$SOC)"
  command -v cmake >/dev/null || { echo "[ascendc-cpu] cmake is needed with a CANN toolkit" >&2; exit 1; }
  cmake -S "$HERE" -B "$BUILD/cann" -DASCEND_HOME_PATH="$ASCEND_HOME_PATH" -DSOC_VERSION="$SOC" \
        -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS="$OPT" >/dev/null
  cmake --build "$BUILD/cann" -j "$JOBS"
  BIN="$BUILD/cann"
else
# ---------------------------------------------------------------- vendored open-source API
  API="${GSA_ASCENDC_API:-$REPO/../shared/vendor/ascendc}"
  if [[ ! -f "$API/asc-devkit/include/kernel_operator.h" || ! -f "$API/asc-tools/cpudebug/include/tikicpulib.h" ]]; then
    skip "no AscendC API: neither a CANN toolkit (ASCEND_HOME_PATH) nor the open-source sources at $API (GSA_ASCENDC_API)"
  fi
  API="$(cd "$API" && pwd)"
  DEV="$API/asc-devkit"; CPU="$API/asc-tools/cpudebug"
  log "AscendC API sources at $API (asc-devkit + asc-tools cpudebug), stand-ins from $HERE/include"
  BIN="$BUILD/vendor"
  mkdir -p "$BIN/obj" "$BIN/gen/kernel_tiling"
  # dav-c220 (Atlas A2/A3) vector core, CPU twin-debug mode; npuchk hooks off (binary-only in CANN)
  DEFS=(-D__CCE_KT_TEST__=1 -DASCENDC_CPU_DEBUG=1 -DASCENDC_DEBUG=1 -D__CCE_AICORE__=220 -D__DAV_C220__
        -D__DAV_C220_VEC__ -D__NPU_ARCH__=2201 -DASCENDC_NPUCHK_OFF)
  INCS=(-I"$HERE/include" -I"$BIN/gen" -I"$DEV" -I"$DEV/include" -I"$DEV/include/basic_api" -I"$DEV/include/utils"
        -I"$DEV/impl" -I"$DEV/impl/basic_api" -I"$DEV/impl/utils" -I"$CPU/include" -I"$CPU/utils"
        -I"$CPU/src/api_check" -I"$CPU/src/api_check/inc" -I"$ASC/op_kernel" -I"$ASC/op_host")
  FLAGS=(-std=c++17 "$OPT" -w "${DEFS[@]}" "${INCS[@]}")
  # rebuild only when our sources, the API location or the flags changed
  STAMP="$( { echo "$API $CXX ${FLAGS[*]}"; cat "$HERE"/*.cpp "$HERE"/*.h "$HERE"/include/*.h "$HERE"/include/*.inc \
             "$HERE"/include/model/*.h "$ASC"/op_kernel/* "$ASC"/op_host/gsa_tiling.h; } | sha256sum | cut -c1-16)"
  if [[ -x "$BIN/gsa_ascendc_cpu" && -x "$BIN/test_intrinsics" && "$(cat "$BIN/stamp" 2>/dev/null)" == "$STAMP" ]]; then
    log "up to date ($BIN)"
  else
    t0=$(date +%s)
    rm -f "$BIN"/obj/*.o "$BIN/stamp"
    "$PY" "$DEV/impl/adv_api/cmake/scripts/gen_kernel_tiling_data_def.py" "$DEV/include/adv_api" \
          "$BIN/gen/kernel_tiling/kernel_tiling.h" >/dev/null
    SRCS=("$CPU"/src/regfwk/kernel_print_lock.cpp "$CPU"/src/regfwk/stub_backtrace.cpp "$CPU"/src/regfwk/stub_base.cpp
          "$CPU"/src/regfwk/stub_reg.cpp "$CPU"/src/api_check/*.cpp "$CPU"/src/acl_stub/kernel_fp16.cpp
          "$HERE/cpu_support.cpp"
          "$HERE/gsa_ascendc_cpu.cpp" "$HERE/test_intrinsics.cpp" "$HERE/test_intrinsics_dma_select.cpp")
    export CXX_CMD="$CXX ${FLAGS[*]}"
    printf '%s\n' "${SRCS[@]}" | xargs -P "$JOBS" -I{} sh -c \
      'o="$0/obj/$(basename "$1" .cpp).o"; $CXX_CMD -c "$1" -o "$o" 2> "$o.log" ||
       { cat "$o.log" >&2; echo "[ascendc-cpu] FAILED: $1" >&2; exit 255; }' \
      "$BIN" {}
    COMMON=()
    for o in "$BIN"/obj/*.o; do
      case "$(basename "$o")" in gsa_ascendc_cpu.o|test_intrinsics*.o) ;; *) COMMON+=("$o") ;; esac
    done
    "$CXX" "${COMMON[@]}" "$BIN/obj/gsa_ascendc_cpu.o" -o "$BIN/gsa_ascendc_cpu" -ldl -lpthread
    "$CXX" "${COMMON[@]}" "$BIN/obj/test_intrinsics.o" "$BIN/obj/test_intrinsics_dma_select.o" \
          -o "$BIN/test_intrinsics" -ldl -lpthread
    echo "$STAMP" > "$BIN/stamp"
    log "built in $(( $(date +%s) - t0 )) s: $BIN/gsa_ascendc_cpu, $BIN/test_intrinsics"
  fi
fi

if [[ "$MODE" == build ]]; then echo "$BIN/gsa_ascendc_cpu"; exit 0; fi

# ---------------------------------------------------------------- intrinsic stand-ins vs the docs
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
log "intrinsic tests (through the real API calls)"
( cd "$WORK" && "$BIN/test_intrinsics" | grep -v '^\[SUCCESS\]' )
log "the API's own parameter check fires (DataCopy of 250 int16: not 32-byte aligned)"
( cd "$WORK" && "$BIN/test_intrinsics" misaligned > "$WORK/misaligned.txt" 2>&1 ) || { cat "$WORK/misaligned.txt"; exit 1; }
grep -q "must be 32B align" "$WORK/misaligned.txt" || { cat "$WORK/misaligned.txt"; echo "[ascendc-cpu] the API check message is missing" >&2; exit 1; }
grep -m1 "must be 32B align" "$WORK/misaligned.txt" | sed 's/^.*\]\[DataCopyCheck\]/  API check: /' | cut -c1-160
log "the models' own UB bounds check fires (an intrinsic writing past the Unified Buffer)"
( cd "$WORK" && "$BIN/test_intrinsics" ub_overrun > "$WORK/ub.txt" 2>&1 ) || { cat "$WORK/ub.txt"; exit 1; }
grep -q "outside the Unified Buffer" "$WORK/ub.txt" || { cat "$WORK/ub.txt"; echo "[ascendc-cpu] the bounds-check message is missing" >&2; exit 1; }
grep -m1 "outside the Unified Buffer" "$WORK/ub.txt" | sed 's/^/  /' | cut -c1-160

# ---------------------------------------------------------------- host code (op_host/) where g++ can
log "op_host: gsa_tiling.h, and the torch library code if torch's headers are at hand"
echo '#include "gsa_tiling.h"
int main() { return gsa::BlockDim(10, 4) == 4 && gsa::HashDTile(64, 128) == 64 ? 0 : 1; }' > "$WORK/tiling.cpp"
"$CXX" -std=c++17 -I"$ASC/op_host" "$WORK/tiling.cpp" -o "$WORK/tiling" && "$WORK/tiling"
TORCH_INC="$("$PY" -c 'from torch.utils.cpp_extension import include_paths; print(" ".join("-I" + p for p in include_paths()))' 2>/dev/null || true)"
if [[ -n "$TORCH_INC" ]]; then
  # torch >= 2.10 headers want C++20 (CMakeLists.txt: -DCMAKE_CXX_STANDARD=20 then)
  for f in gsa_ops_def.cpp gsa_infer_shape.cpp; do
    # shellcheck disable=SC2086
    "$CXX" -std=c++20 -fsyntax-only $TORCH_INC -I"$ASC/op_host" "$ASC/op_host/$f"
    echo "  $f: compiles against torch's headers"
  done
  # shellcheck disable=SC2086
  "$CXX" -std=c++20 -fsyntax-only $TORCH_INC -I"$HERE/host_stubs" -I"$ASC/op_host" "$ASC/op_host/gsa_torch_npu.cpp"
  echo "  gsa_torch_npu.cpp: compiles against torch's headers + declaration stubs of acl/torch_npu (host_stubs/)"
else
  echo "  torch not importable: gsa_ops_def.cpp, gsa_infer_shape.cpp, gsa_torch_npu.cpp not compiled"
fi

if [[ "$MODE" == all ]]; then
  log "kernels vs the reference (pytest tests/test_npu_ascendc_cpu.py)"
  cd "$REPO"
  GSA_ASCENDC_CPU_BIN="$BIN/gsa_ascendc_cpu" PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" \
    "$PY" -m pytest -q -p no:cacheprovider tests/test_npu_ascendc_cpu.py
fi
log "done"
