#!/usr/bin/env bash
# Qwen2.5-Coder-0.5B on the GPU: passkey and the RULER-style multikey / vartrack tasks at
# 8K/16K/32K tokens x depths 10/50/90 %, dense vs GSA (random HATA codes, spec-13 centred codes)
# vs the Quest-style selector, all at ratio 1/8 with 128-token blocks (docs/accuracy.md,
# issue 17). One dense prefill per prompt serves every config (configs with other codes rehash
# its cached keys, gsa.eval.model.PagedRun.restore).
#
# Needs: the model already converted under $GSA_CACHE_DIR (default /tmp/gsacache:
# models/qwen2.5-coder-0.5b-instruct-v2/ with its .complete marker, as benchmarks/device_qwen_long.sh
# or `gsa data fetch qwen` leave it). Nothing else from the cache: the prompts' filler is built in
# (gsa.eval.metrics._FILLER) and the centred codes' key means travel in the repo
# (benchmarks/device_assets/qwen-centre.safetensors, 15 KB: `gsa calibrate-centre --model qwen
# --gate 128`, 4096 Shakespeare tokens). An MLP config (spec 12) joins only when its bundle was
# carried: benchmarks/device_assets/qwen-mlp1-b128.safetensors (git-ignored, 11 MB).
#
# Writes at most 4 files under $OUT: accuracy_qwen-long-tasks-cuda.{json,md}, _summary.png, .log.
# GSA_PARTS (default "passkey multikey vartrack") picks the tasks. GSA_TAG_SUFFIX names a partial run.
# Knobs for a short trial elsewhere (e.g. on a CPU): GSA_DEVICE=cpu GSA_LENGTHS="1024 2048"
# GSA_DEPTHS=0.5 GSA_TIMEOUT=seconds OUT=/tmp/out bash benchmarks/device_long_tasks.sh
set -euo pipefail
: "${OUT:?set OUT to the output folder (the device machine sets it)}"
export GSA_CACHE_DIR="${GSA_CACHE_DIR:-/tmp/gsacache}" PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 GSA_NO_PROGRESS=1
PY="${PYTHON:-python3}"
DEVICE="${GSA_DEVICE:-cuda}"
LENGTHS="${GSA_LENGTHS:-8192 16384 32000}"
DEPTHS="${GSA_DEPTHS:-0.1 0.5 0.9}"
LIMIT="${GSA_TIMEOUT:-210}"  # seconds for the eval itself; results so far are written after every prompt
PARTS="${GSA_PARTS:-passkey multikey vartrack}"  # e.g. GSA_PARTS=vartrack to complete an earlier run
TAG=qwen-long-tasks-cuda
[ "$DEVICE" = cuda ] || TAG="qwen-long-tasks-$DEVICE"
TAG="$TAG${GSA_TAG_SUFFIX:-}"
LOG="$OUT/accuracy_$TAG.log"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

MODEL_DIR="$GSA_CACHE_DIR/models/qwen2.5-coder-0.5b-instruct-v2"
if [ ! -f "$MODEL_DIR/.complete" ]; then
    echo "device_long_tasks: $MODEL_DIR/.complete missing: convert the model first (benchmarks/device_qwen_long.sh or \`gsa data fetch qwen\` with GSA_CACHE_DIR=$GSA_CACHE_DIR)" | tee "$LOG" >&2
    exit 2
fi
HW="$GSA_CACHE_DIR/hash_weights"
mkdir -p "$HW"
cp benchmarks/device_assets/qwen-centre.safetensors "$HW/qwen-centre.safetensors"
NEW="r0.125-b128-centred"
if [ -f benchmarks/device_assets/qwen-mlp1-b128.safetensors ]; then
    cp benchmarks/device_assets/qwen-mlp1-b128.safetensors "$HW/qwen-mlp1-b128.safetensors"
    NEW="$NEW r0.125-b128-mlp1"
fi
{
    echo "[device_long_tasks] $(date -u '+%F %T') UTC, device $DEVICE, parts $PARTS, lengths $LENGTHS, depths $DEPTHS, limit ${LIMIT}s"
    "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
} 2>&1 | tee "$LOG"
# the new codes' kernels on this device vs the CPU first: a config whose codes disagree or whose op
# fails is left out with the reason in the log, instead of ending the whole run at its first prompt
# shellcheck disable=SC2086
KEEP=$("$PY" -m gsa.eval.codes_check --model qwen --device "$DEVICE" $NEW 2>>"$LOG") || KEEP=""
grep "codes_check" "$LOG" || true
CONFIGS="r0.125-b128 $KEEP quest-r0.125"
echo "[device_long_tasks] configs: dense $CONFIGS" | tee -a "$LOG"
t0=$(date +%s)
set +e
# shellcheck disable=SC2086
timeout "$LIMIT" "$PY" -m gsa.eval.cli --model qwen --device "$DEVICE" --parts $PARTS \
    --lengths $LENGTHS --depths $DEPTHS --block-size 128 \
    --passkey-configs $CONFIGS --task-configs $CONFIGS --tag "$TAG" --out "$WORK" 2>&1 \
    | grep --line-buffered -v "Loading weights" | tee -a "$LOG"
rc=${PIPESTATUS[0]}
set -e
echo "[device_long_tasks] eval exit $rc after $(( $(date +%s) - t0 )) s (124: stopped at the ${LIMIT}s limit; the files hold every prompt finished)" | tee -a "$LOG"
for ext in json md; do
    [ -f "$WORK/accuracy_$TAG.$ext" ] && cp "$WORK/accuracy_$TAG.$ext" "$OUT/"
done
if [ -f "$OUT/accuracy_$TAG.json" ]; then
    "$PY" - "$OUT/accuracy_$TAG.json" "$OUT/accuracy_${TAG}_summary.png" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
from gsa.eval.report import _retrieval_summary_rows, plot_retrieval_summary
res = json.load(open(sys.argv[1]))
print("\n".join(_retrieval_summary_rows(res)))
print("plot:", plot_retrieval_summary(res, sys.argv[2]))
EOF
fi
ls -la "$OUT"
