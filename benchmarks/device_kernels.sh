#!/usr/bin/env bash
# Issue 12 on one GPU in ONE device call (<= ~9 min): the Triton GPU tests of the selection
# variants, the launch-choice sweep of the selection kernels (fused score+selection, bit planes,
# PDL; `benchmarks/kernel_sweep.py --parts score`), then the engine step with the tuning file the
# sweep wrote, so the step's speedups are measured with the new choices in the same call.
#
#   bash benchmarks/device_kernels.sh            # on the device machine ($OUT set)
#
# Every part has its own timeout, so the call always ends in time and keeps what finished. The
# device tool returns at most 8 files: the results travel as one tarball plus the log.
#   $OUT/device_kernels.log       versions, test summary, each part's tail
#   $OUT/device_kernels.tar.gz    kernel_sweep.{json,md}, nvidia_h200.json (the tuning file to commit
#                                 to cuda_ops/tuning/ if the sweep picked new choices), engine_step.{json,md,png} (commit as benchmarks/results/engine_step_h200.*)
# Here: tar xzf device_kernels.tar.gz -C /tmp/k, then copy into benchmarks/results/ and cuda_ops/tuning/.
set -uo pipefail
: "${OUT:?run on the device machine (needs \$OUT)}"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
LOG="$OUT/device_kernels.log"
WORK="$(mktemp -d)"
t0=$(date +%s)
left() { echo $(( ${1} - ($(date +%s) - t0) )); }
{
    echo "== $(date -u) $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null)"
    python3 -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
    echo "== GPU tests of the selection variants (cap 120 s)"
    timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_triton_gpu.py -k "fuse or planes or pdl or launch or select" 2>&1 | tail -6
    echo "tests rc=${PIPESTATUS[0]} after $(( $(date +%s) - t0 )) s"
    echo "== kernel sweep, selection kernels (cap 240 s)"
    timeout 240 python3 benchmarks/kernel_sweep.py --out "$WORK" --parts score 2>&1 | tail -30
    echo "sweep rc=${PIPESTATUS[0]} after $(( $(date +%s) - t0 )) s"
    tuning=""
    [ -f "$WORK/nvidia_h200.json" ] && tuning="$WORK/nvidia_h200.json"
    echo "== engine step with ${tuning:-the committed tuning} (cap: what is left of 540 s)"
    GSA_TRITON_TUNING="$tuning" timeout "$(left 540)" python3 benchmarks/engine_step.py --out "$WORK" 2>&1 | tail -30
    echo "engine_step rc=${PIPESTATUS[0]} after $(( $(date +%s) - t0 )) s"
} > "$LOG" 2>&1
(cd "$WORK" && tar czf "$OUT/device_kernels.tar.gz" .) 2>>"$LOG"
tail -40 "$LOG"
