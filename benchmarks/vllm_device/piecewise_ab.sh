#!/bin/bash
# Issue 12/13, one device call (after the payload: device.sh stash c1, stash c2, setup c3):
# GSA 1/8 in PIECEWISE at 128K x 5 and 32K x 16, with the plan's sparse max_seq_len for FA3
# (the default since 2026-11-29) and with the dense bound (the A/B switch), per-step timing in
# both; then a torch-profiler run of the 128K case. <= ~9 min; rows in $OUT/vllm_e2e.jsonl.
#   bash benchmarks/vllm_device/piecewise_ab.sh
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export E2E_TIMEOUT=${E2E_TIMEOUT:-270}
bash "$here/device.sh" e2e \
  '{"model":"qwen3-4b","gsa":"1/8","mode":"PIECEWISE","runs":[[131072,5],[32768,16],[131072,5]],"torch_profile_runs":[2]}' \
  '{"model":"qwen3-4b","gsa":"1/8","mode":"PIECEWISE","runs":[[131072,5],[32768,16]],"dense_max_seq_len":true}'
