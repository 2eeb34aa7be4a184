#!/usr/bin/env bash
# Issue 12 on one GPU, one device call per stage (each <= ~9 min):
#
#   bash benchmarks/device_kernels.sh sweep   # GPU tests of the launch choices, then the launch-choice
#                                             # sweep of every kernel (kernel_sweep.py, all parts)
#   bash benchmarks/device_kernels.sh step    # engine_step.py and mla_step.py with the committed tuning
#   bash benchmarks/device_kernels.sh mla     # GPU tests of the MLA score path and MLA graphs, mla_step.py
#   PARTS=hash,stages bash benchmarks/device_kernels.sh parts   # kernel_sweep.py --parts $PARTS (cap 130 s,
#                                             # SWEEP_CAP), then engine_step.py --quick with the tuning it wrote
#                                             # (also left in /tmp/gsa_last_tuning.json for later commands);
#                                             # PARTS with `select` (the selection kernel alone) runs the GPU
#                                             # tests of the radix selection first (cap 200 s, not counted
#                                             # in the caps after it)
#   bash benchmarks/device_kernels.sh flush   # engine_step.py --quick twice: L2 emptied by writing (triton
#                                             # do_bench) and by reading (benchmarks/timing.py "clean")
#   bash benchmarks/device_kernels.sh ncu     # Nsight Compute counters of one sparse layer's kernels
#                                             # (benchmarks/profile_kernels.py) -> ncu.csv
#   bash benchmarks/device_kernels.sh         # sweep + step in one call, the step with the tuning just swept
#                                             # (only if the sweep is short enough: caps below)
#
# Between `sweep` and `step`, commit the tuning file the sweep wrote (cuda_ops/tuning/nvidia_h200.json)
# so that the step call measures the new choices. Every part has its own timeout, so the call always
# ends in time and keeps what finished. The device tool returns at most 8 files: the results travel as
# one tarball plus the log.
#   $OUT/device_kernels_STAGE.log       versions, test summary, each part's tail
#   $OUT/device_kernels_STAGE.tar.gz    kernel_sweep.{json,md}, nvidia_h200.json (the tuning file to commit to
#                                 cuda_ops/tuning/), engine_step.{json,md,png} (commit as
#                                 benchmarks/results/engine_step_h200.*), mla_step.{json,md}
# (several stages can run in one call: each writes its own pair)
# Here: tar xzf device_kernels_STAGE.tar.gz -C /tmp/k, then copy into benchmarks/results/ and cuda_ops/tuning/.
set -uo pipefail
: "${OUT:?run on the device machine (needs \$OUT)}"
STAGE="${1:-all}"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
LOG="$OUT/device_kernels_$STAGE.log"
WORK="$(mktemp -d)"
t0=$(date +%s)
left() { echo $(( ${1} - ($(date +%s) - t0) )); }
{
    echo "== $(date -u) $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null) stage=$STAGE"
    python3 -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
    tuning=""
    if [ "$STAGE" = mla ]; then
        echo "== GPU tests of the MLA score path (cap 200 s)"
        timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_triton_launch_choices_gpu.py \
            tests/test_triton_gpu.py tests/test_sparse_gpu.py -k "group_planes or mla" 2>&1 | tail -6
        echo "tests rc=${PIPESTATUS[0]} after $(( $(date +%s) - t0 )) s"
        echo "== MLA step (cap: what is left of 560 s)"
        timeout "$(left 560)" python3 benchmarks/mla_step.py --out "$WORK" 2>&1 | tail -20
        echo "mla_step rc=${PIPESTATUS[0]} after $(( $(date +%s) - t0 )) s"
    fi
    if [ "$STAGE" = parts ] && [[ ",${PARTS:?set PARTS}," == *",select,"* ]]; then
        echo "== GPU tests of the radix selection (tests/test_select_radix.py, cap 200 s)"
        timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_select_radix.py -m gpu 2>&1 | tail -6
        echo "tests rc=${PIPESTATUS[0]} after $(( $(date +%s) - t0 )) s"
        t0=$(date +%s)  # the sweep and engine-step caps below count from here
    fi
    if [ "$STAGE" = parts ]; then
        echo "== kernel sweep, parts ${PARTS:?set PARTS} (cap ${SWEEP_CAP:-130} s)"
        timeout "${SWEEP_CAP:-130}" python3 benchmarks/kernel_sweep.py --out "$WORK" --parts "$PARTS" 2>&1 | tail -12
        echo "sweep rc=${PIPESTATUS[0]} after $(( $(date +%s) - t0 )) s"
        [ -f "$WORK/nvidia_h200.json" ] && tuning="$WORK/nvidia_h200.json" && cp "$tuning" /tmp/gsa_last_tuning.json
        echo "== engine step --quick with ${tuning:-the committed tuning} (cap: what is left of 200 s)"
        GSA_TRITON_TUNING="$tuning" timeout "$(left 200)" python3 benchmarks/engine_step.py --quick --out "$WORK" 2>&1 | tail -22
        echo "engine_step rc=${PIPESTATUS[0]} after $(( $(date +%s) - t0 )) s"
        if [[ ",$PARTS," == *",mla,"* ]]; then
            echo "== MLA step with ${tuning:-the committed tuning} (cap: what is left of 300 s)"
            GSA_TRITON_TUNING="$tuning" timeout "$(left 300)" python3 benchmarks/mla_step.py --out "$WORK" 2>&1 | tail -20
            echo "mla_step rc=${PIPESTATUS[0]} after $(( $(date +%s) - t0 )) s"
        fi
    fi
    if [ "$STAGE" = flush ]; then
        for mode in zero clean; do
            echo "== engine step --quick, L2 flush by $mode (cap 150 s)"
            GSA_BENCH_FLUSH=$mode timeout 150 python3 benchmarks/engine_step.py --quick --out "$WORK/$mode" 2>&1 | tail -20
            echo "engine_step ($mode) rc=${PIPESTATUS[0]} after $(( $(date +%s) - t0 )) s"
        done
    fi
    if [ "$STAGE" = ncu ]; then
        echo "== ncu over one sparse layer's kernels (cap 240 s)"
        timeout 240 ncu --profile-from-start off --clock-control none --csv --page details \
            --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
            --section WarpStateStats --section SchedulerStats \
            python3 benchmarks/profile_kernels.py > "$WORK/ncu.csv" 2> "$WORK/ncu.err"
        echo "ncu rc=$? after $(( $(date +%s) - t0 )) s; $(wc -l < "$WORK/ncu.csv") csv lines"
        tail -5 "$WORK/ncu.err"
    fi
    if [ "$STAGE" = sweep ] || [ "$STAGE" = all ]; then
        echo "== GPU tests of the launch choices (cap 150 s)"
        timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_triton_launch_choices_gpu.py \
            tests/test_triton_gpu.py -k "fuse or planes or pdl or launch or select or blocks or warps or paged" 2>&1 | tail -6
        echo "tests rc=${PIPESTATUS[0]} after $(( $(date +%s) - t0 )) s"
        echo "== kernel sweep, every kernel (cap: what is left of 520 s)"
        timeout "$(left 520)" python3 benchmarks/kernel_sweep.py --out "$WORK" 2>&1 | tail -30
        echo "sweep rc=${PIPESTATUS[0]} after $(( $(date +%s) - t0 )) s"
        [ -f "$WORK/nvidia_h200.json" ] && tuning="$WORK/nvidia_h200.json"
    fi
    if [ "$STAGE" = step ] || [ "$STAGE" = all ]; then
        echo "== engine step with ${tuning:-the committed tuning} (cap: what is left of 470 s)"
        GSA_TRITON_TUNING="$tuning" timeout "$(left 470)" python3 benchmarks/engine_step.py --out "$WORK" 2>&1 | tail -30
        echo "engine_step rc=${PIPESTATUS[0]} after $(( $(date +%s) - t0 )) s"
        echo "== MLA step (cap: what is left of 560 s)"
        GSA_TRITON_TUNING="$tuning" timeout "$(left 560)" python3 benchmarks/mla_step.py --out "$WORK" 2>&1 | tail -20
        echo "mla_step rc=${PIPESTATUS[0]} after $(( $(date +%s) - t0 )) s"
    fi
} > "$LOG" 2>&1
(cd "$WORK" && tar czf "$OUT/device_kernels_$STAGE.tar.gz" .) 2>>"$LOG"
tail -60 "$LOG"
