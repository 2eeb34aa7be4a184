#!/usr/bin/env bash
# Real-model GSA run on the GPU device machine (no network there, 64 MiB per transfer).
# The SmolLM2 Q4_1 GGUF (94 MiB) travels in two carried halves, split here with
#   split -b 49000000 -d <gguf> .devcarry/gguf.part.   (00 + 02 -> .devcarry/m1, 01 -> .devcarry/m2)
# plus the gguf wheel and the file's sha256 in .devcarry/m2. A first call carries .devcarry/m1 (it stays
# on the warm machine), the second carries .devcarry/m2 and runs this script, which rebuilds the file,
# checks the sha256, and runs the demo and a passkey sweep on CUDA. Results land in $OUT.
set -euo pipefail
: "${OUT:?run on the device machine (needs \$OUT)}"
export GSA_CACHE_DIR=/tmp/gsacache PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .devcarry/m2/gguf-*.whl
G="$GSA_CACHE_DIR/gguf/SmolLM2-135M-Instruct.Q4_1.gguf"
mkdir -p "$(dirname "$G")"
cat .devcarry/m1/gguf.part.00 .devcarry/m2/gguf.part.01 .devcarry/m1/gguf.part.02 > "$G"
echo "$(cut -d' ' -f1 .devcarry/m2/gguf.sha256)  $G" | sha256sum -c -
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/device.txt"
python3 -m gsa.eval.demo --device cuda 2>&1 | grep -v "Loading weights" | tee "$OUT/demo_cuda.log"
python3 -m gsa.eval.cli --model smollm2 --parts passkey --device cuda --lengths 2048 4096 8192 \
    --depths 0.1 0.3 0.5 0.7 0.9 --passkey-configs shipped r0.125-b128 r0.125-b128-bs32 r0.125-b128-bs16 \
    --tag smollm2-passkey-cuda --out "$OUT" 2>&1 | grep -v "Loading weights" | tee "$OUT/passkey_cuda.log"
