#!/bin/bash
# Issue 12/13, one device call (after the payload: device.sh stash c1, stash c2, setup c3):
# GSA 1/8 in PIECEWISE, Qwen3-4B: 128K x 5 first, then 32K x 16, then 128K x 5 twice, the last
# one under cProfile (host-time breakdown). Two earlier engines ran 128K x 5 at a median 12.8-19.8
# ms per step when it came first and 28.9-29.7 ms after a 32K x 16 run: this asks whether the
# order is the cause, and where the host time goes. <= ~5 min; rows in $OUT/vllm_e2e.jsonl.
#   bash benchmarks/vllm_device/piecewise_order.sh
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export E2E_TIMEOUT=${E2E_TIMEOUT:-330}
bash "$here/device.sh" e2e \
  '{"model":"qwen3-4b","gsa":"1/8","mode":"PIECEWISE","runs":[[131072,5],[32768,16],[131072,5],[131072,5]],"cprofile_runs":[3],"variant":"order"}'
