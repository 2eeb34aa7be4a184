#!/bin/bash
# Device side (the GPU machine, no network): bring vLLM 0.26.0 up from carried parts and
# run engines. Each subcommand is one device-tool call's work; issue them back to back
# (a machine is given back ~30 s after a call ends, and /tmp survives only while it is held).
#   bash benchmarks/vllm_device/device.sh stash .whl/vllm_c1      # a payload part -> /tmp/gsa_vllm_parts
#   bash benchmarks/vllm_device/device.sh setup .whl/vllm_c3      # last part: check sums, install to /tmp/site
#   bash benchmarks/vllm_device/device.sh e2e SPEC_JSON [SPEC_JSON ...]   # one engine process per spec
# The payload comes from build_payload.sh (run where PyPI is reachable).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
parts=/tmp/gsa_vllm_parts
site=/tmp/site
export GSA_VLLM_STUBS=${GSA_VLLM_STUBS:-xgrammar,llguidance,openai_harmony,fastapi,partial_json_parser,starlette}
cmd=${1:?usage: device.sh stash DIR | setup DIR | e2e SPEC...}; shift
case "$cmd" in
  stash)
    mkdir -p "$parts"; cp "$1"/* "$parts"/; ls -la "$parts" ;;
  setup)
    mkdir -p "$parts"; cp "$1"/* "$parts"/
    (cd "$parts" && sha256sum -c --quiet parts.sha256 wheels.sha256)
    cat "$parts"/vllm-trim.tar.xz.part-* > /tmp/vllm-trim.tar.xz
    (cd /tmp && sha256sum -c --quiet "$parts"/tar.sha256)
    rm -rf "$site"; mkdir -p "$site"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$parts"/*.whl
    tar xJf /tmp/vllm-trim.tar.xz -C "$site"
    cp "$here/stubs.py" "$site/gsa_vllm_stubs.py"; cp "$here/sitecustomize.py" "$site/"
    PYTHONPATH=$site python3 -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)" ;;
  e2e)
    export PYTHONPATH=$site:$(cd "$here/../.." && pwd)
    rc=0
    for spec in "$@"; do
      echo "=== engine: $spec"
      # GPU clocks, power and throttle reasons every 0.5 s while the engine runs: a run-to-run
      # spread of the step time (PIECEWISE) is either the GPU slowing down or the host
      nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
        --format=csv,noheader -lms 500 > /tmp/clocks.csv 2>/dev/null &
      smi=$!
      PYTHONUNBUFFERED=1 timeout "${E2E_TIMEOUT:-400}" python3 "$here/vllm_e2e.py" --spec "$spec" --out "${OUT:-/tmp/out}" \
        > /tmp/e2e.log 2>&1 || rc=$?
      kill "$smi" 2>/dev/null || true
      python3 "$here/clocks_summary.py" /tmp/clocks.csv >> /tmp/e2e.log 2>&1 || true
      tail -1 /tmp/e2e.log
      grep -E "^\[e2e\]|Error|error|cudagraph|CUDAGraph|GSA" /tmp/e2e.log | grep -v "^\s*$" | cut -c1-600 | tail -25
      cp /tmp/e2e.log "${OUT:-/tmp/out}/e2e_$(echo "$spec" | md5sum | cut -c1-6).log" 2>/dev/null || true
    done
    exit $rc ;;
  *) echo "unknown subcommand $cmd"; exit 2 ;;
esac
