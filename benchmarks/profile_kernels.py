"""One sparse decode layer's kernels, launched once each for a hardware-counter profiler (issue 12).

Under Nsight Compute (``ncu``) this says what bounds each kernel of the hot path (DRAM
throughput against peak, stall reasons, occupancy) where timings alone only give totals:

    ncu --profile-from-start off --clock-control none --csv --page details \\
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \\
        --section LaunchStats --section WarpStateStats \\
        python benchmarks/profile_kernels.py > ncu.csv

It compiles and warms every launch first, then opens the profiler window
(``cudaProfilerStart``) around one engine_step layer (new-key hash, query hash, scores,
selection, sparse attention) at 32K and 128K (ratio 1/8, B=16) and one
``hash_encode_and_cache`` of 64K tokens, each inside an NVTX range naming the case.
Shapes are engine_step.py's.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from engine_step import B, BS, D, HKV, HQ, R, hash_cache_case, make_kv, sparse_layer  # noqa: E402


def layer_case(ctx, ratio, dev):
    """A callable running one sparse layer (engine_step's ``sparse_layer``) at ``ctx`` tokens."""
    gen = torch.Generator(device=dev).manual_seed(ctx)
    kc, vc, table, m, nb = make_kv(B, ctx, dev, gen)
    seq_host = [ctx] * B
    seq = torch.tensor(seq_host, dtype=torch.int32, device=dev)
    q = torch.randn(B, HQ, D, device=dev, dtype=torch.bfloat16, generator=gen)
    hcache = torch.randint(0, 256, (nb, HKV, BS, R // 8), dtype=torch.uint8, device=dev, generator=gen)
    new_k = torch.randn(B, HKV, D, device=dev, dtype=torch.bfloat16, generator=gen)
    new_slots = table[:, -1].long() * BS + BS - 1
    return sparse_layer(ratio, dev, seq_host, q, kc, vc, table, seq, hcache, new_k, new_slots)[3]


def main():
    import gsa

    dev = torch.device("cuda")
    with gsa.use_backend("triton"):
        cases = {"layer_32k_1/8": layer_case(32768, 0.125, dev), "layer_128k_1/8": layer_case(131072, 0.125, dev),
                 "hash_cache_64k": hash_cache_case(dev)[0]}
        for fn in cases.values():  # compile every launch shape outside the profiler window
            for _ in range(3):
                fn()
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
        for name, fn in cases.items():
            torch.cuda.nvtx.range_push(name)
            fn()
            torch.cuda.synchronize()
            torch.cuda.nvtx.range_pop()
        torch.cuda.cudart().cudaProfilerStop()
    print("profiled:", ", ".join(cases))


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("profile_kernels.py needs a CUDA GPU")
    main()
