#!/usr/bin/env bash
# GSA offload on one H200 in ONE device call (issue 18): the capture diagnostic, the GPU offload
# tests, then benchmarks/offload_bench.py (eager and CUDA-graph rows, dense / GSA-in-HBM baselines in
# the same run). Needs torch + triton + pytest (no network, no C++ CPU extension: the CPU top-k row
# is skipped, its selection would run on the reference backend). Writes 4 files under $OUT:
#   offload_h200.json, offload_h200.md, offload_h200.png  (the benchmark; json/md after every batch)
#   offload_device.log                                     (versions, the check, the tests, the benchmark)
# Budget: ~150 s. Each part has its own timeout so the script always ends in time and the
# benchmark keeps the batches it finished: capture check <= 75 s (expected 20-40 s, mostly Triton
# compiles, which the later parts then find in the cache), tests <= 60 s (last run 25 s), the
# benchmark whatever is left of 150 s (last run: ~20 s for B = 6, ~30 s for B = 24 with its 24 GiB
# of pinned host KV; now more rows: offload_score eager + graph and the prefetch graph row).
#
# 1. benchmarks/offload_capture_check.py: the graph step with prefetch captured at a small shape in
#    variants (the fix; the old code that failed on the H200, to show the cause); each prints
#    [ok]/[UNEXPECTED] ([INFO] for the informational torch-map variant) and the last line is
#    "CAPTURE CHECK: PASS" when every required variant did as expected.
#    Cause (docs/offload.md "Graph capture with prefetch"): ResidencyMap.mark_predicted wrote a Python
#    number by item assignment (a pageable host->device copy, rejected in capture); the exception left
#    the copy stream forked, so capture_end reported "unjoined work" instead.
# 2. the GPU tests: "previous" prefetch in graph form (failed on the H200 before the fix), and an
#    error inside a captured layer surfacing as itself.
# 3. the benchmark: batches 6 (dense's largest: the baselines and the per-request ratio) and 24 (4x,
#    the 1/8 pool: the concurrency target); BATCHES="6 24 18 12" adds the others when time allows.
#    Rows: offload_ondemand, offload_prefetch ("previous": its graph rows should now capture, with
#    on-demand's hits and fetches), offload_score (score-aware eviction, eager and graph: its GPU cost).
#    A failed row prints the error and the one it replaced.
# Host memory: B = 24 with 2 timed layers pins 24 GiB of host KV (of 128 GiB).
#
#   bash benchmarks/offload_device.sh
set -uo pipefail
: "${OUT:?run on the device machine (needs \$OUT)}"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
LOG="$OUT/offload_device.log"
t0=$(date +%s)
{
    echo "== $(date -u) $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null)"
    python3 -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
    free -g | head -2
    echo "== capture check"
    timeout 75 python3 benchmarks/offload_capture_check.py
    echo "capture check rc=$? after $(( $(date +%s) - t0 )) s (0: PASS, 1: a variant did not do as expected, 124: timeout)"
    echo "== GPU offload tests"
    timeout 60 python3 -m pytest -q -ra -p no:cacheprovider tests/test_offload_gpu.py tests/test_offload_residency.py \
        tests/test_offload.py -k "gpu or cuda or fused or lanes or residency or graph or hot_path"
    echo "tests rc=$? after $(( $(date +%s) - t0 )) s"
    echo "== benchmark"
    left=$(( 150 - ($(date +%s) - t0) )); [ "$left" -lt 40 ] && left=40
    timeout "$left" python3 benchmarks/offload_bench.py --out "$OUT" \
        --batches ${BATCHES:-6 24} --skip-rows cpu_topk_lag1 offload_lookahead --steps 6 --warmup 3
    echo "benchmark rc=$? after $(( $(date +%s) - t0 )) s (124: cut by the timeout; the json keeps finished batches)"
} > "$LOG" 2>&1
grep -E "^\[(ok|INFO|UNEXPECTED)\]|CAPTURE CHECK|rc=" "$LOG"
tail -40 "$LOG"
