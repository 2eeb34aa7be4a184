#!/usr/bin/env bash
# The README's test command: install gsa-ops and everything its tests use on a
# fresh machine (CPU only), then run the whole suite. Exits non-zero when any
# test fails.
#
# Stages:
#   1. install: torch==2.13.0 (the CPU wheel), gsa-ops with test/triton/eval
#      extras (builds the C++ CPU backend), vLLM (CPU) for the plugin tests
#   2. the AscendC kernels built against the real AscendC API in CPU twin-debug mode
#      (npu_ops/ascendc/cpu/build_and_test.sh: build, intrinsic stand-in tests, op_host
#      compile; skips with a reason without ../shared/vendor/ascendc or a CANN toolkit).
#      The suite then runs tests/test_npu_ascendc_cpu.py on that build.
#   3. the whole suite (reference + C++ backends, real-model and vLLM tests)
#   4. the op tests again with Triton kernels in the interpreter (TRITON_INTERPRET=1),
#      with the bad-input suite and the hypothesis backend-vs-reference properties
#   5. the Triton kernels under triton-ascend 3.2's interpreter, in its own venv
#      (its top-level package is also `triton`, so it cannot share this env)
#   5. the vllm-ascend adapter against vllm-ascend 0.23.0.post1's real Python code (vLLM 0.23,
#      a stand-in torch_npu), in its own venv (ci/vllm_ascend.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
t0=$(date +%s)
stage() { echo; echo "=== [$(( $(date +%s) - t0 )) s] $*"; }

stage "install"
# The CPU wheel first: a bare `torch` requirement would pull GBs of CUDA packages.
$PY -m pip install -q --progress-bar off "torch==2.13.0"
$PY -m pip install -q --progress-bar off -e ".[test,triton,eval]"
PYTHON=$PY bash ci/install_vllm.sh
# Debian package lists, for the Jane Austen text (`apt-get download r-cran-janeaustenr`)
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then apt-get update -qq || echo "apt-get update failed"; fi

stage "AscendC kernels on the real AscendC API (CPU twin-debug)"
PYTHON=$PY bash npu_ops/ascendc/cpu/build_and_test.sh --no-pytest

stage "suite"
$PY -m pytest -q -ra -p no:cacheprovider "$@"

stage "triton interpreter: op tests with the triton backend"
TRITON_INTERPRET=1 GSA_TEST_BACKENDS=reference,triton $PY -m pytest -q -ra -p no:cacheprovider \
    tests/test_ops_hashing.py tests/test_ops_mlp_hashing.py tests/test_ops_centred.py tests/test_ops_select.py tests/test_ops_attention.py \
    tests/test_triton_ops.py tests/test_npu_triton.py tests/test_bad_inputs.py tests/test_backend_properties.py \
    tests/test_hotpath.py tests/test_vllm_static.py tests/test_offload_residency.py tests/test_triton_launch_choices.py \
    tests/test_hash_tiles.py tests/test_select_radix.py

stage "triton-ascend 3.2 interpreter"
GSA_TA_VENV="${TMPDIR:-/tmp}/gsa-triton-ascend" bash ci/triton_ascend.sh

stage "vllm-ascend 0.23.0.post1 (real sources, stand-in torch_npu)"
PYTHON=$PY bash ci/vllm_ascend.sh

stage "done"
