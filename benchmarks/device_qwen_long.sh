#!/usr/bin/env bash
# Qwen2.5-Coder-0.5B passkey at 8K/16K/32K on the GPU device machine. The 491 MB GGUF travels in
# eight carried pieces (split -b 62000000 -d <gguf> qpart. -> .devcarry/q0..q7, one per call: each
# stays on the warm machine); q7 also holds the gguf wheel.
set -euo pipefail
: "${OUT:?run on the device machine (needs \$OUT)}"
export GSA_CACHE_DIR=/tmp/gsacache PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
G="$GSA_CACHE_DIR/gguf/qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .devcarry/q7/gguf-*.whl
mkdir -p "$(dirname "$G")"
cat .devcarry/q0/qpart.00 .devcarry/q1/qpart.01 .devcarry/q2/qpart.02 .devcarry/q3/qpart.03 \
    .devcarry/q4/qpart.04 .devcarry/q5/qpart.05 .devcarry/q6/qpart.06 .devcarry/q7/qpart.07 > "$G"
want=$(python3 -c "from gsa.eval.assets import QWEN_SHA256; print(QWEN_SHA256)")
echo "$want  $G" | sha256sum -c -
python3 -m gsa.eval.cli --model qwen --parts passkey --device cuda --lengths 8192 16384 32000 \
    --depths 0.1 0.5 0.9 --passkey-configs shipped r0.125-b128 r0.125-b128-bs16 \
    --tag qwen-passkey-cuda --out "$OUT" 2>&1 | grep -v "Loading weights" | tee "$OUT/qwen_passkey_cuda.log"
