"""Score-kernel sweeps of ``kernel_sweep.py`` beyond its main grid (``--parts mla,stages,occupancy``): the
group bit-plane score kernel at DeepSeek-V2-Lite's MLA codes (warps, blocks per program, power-of-two
counts), the Harley-Seal score launch's ``num_stages`` (its head loop's software-pipelining depth) with the
tuned launch's other knobs, and its register cap with warps, bit planes and blocks per program
(``occupancy``: how many programs fit on a multiprocessor, so how many waves a launch runs). Same rules as the main sweep: CUDA-graph replay medians, every variant's
keys compared with the SWAR path's, a differing variant reported and never chosen;
``kernel_sweep.choose`` turns the rows into tuning knobs. (Hash sweeps: ``kernel_sweep_hash.py``.)
"""
from __future__ import annotations

import itertools

import torch

from kernel_sweep import BS, B, CONTEXTS, _inputs, graph_ms, progress


# the group bit-plane score kernel (score_planes.py). Sixth session: 1 and 8 warps were slower than 2 and 4;
# 2-8 blocks per program slower than one (larger tiles spill); `pow2` (G a power of two) is new.
# Seventh session: `pow2` won (58 vs 65 us at 32K); `once` (per-word counts summed once per program) is new.
MLA_GRID = dict(num_warps=(2, 4), blocks=(1,), pow2=(True,), once=(False, True))


def sweep_mla(res, gen, copy):
    """The group bit-plane score kernel at DeepSeek-V2-Lite's MLA codes (16 heads, one cache
    head, 72 bytes with 8 rope bytes), 16 rows at 32K and 128K: warps and blocks per program;
    every variant's keys compared with the SWAR path's."""
    from cuda_ops import scoring

    rows = res.setdefault("mla", {})
    for ctx in CONTEXTS:
        m = ctx // BS
        nb = B * m
        cache = torch.randint(0, 256, (nb, 1, BS, 72), device="cuda", generator=gen, dtype=torch.int32).to(torch.uint8)
        table = torch.randperm(nb, device="cuda", generator=gen).reshape(B, m).to(torch.int32)
        seq = torch.full((B,), ctx, dtype=torch.int32, device="cuda")
        q = torch.randint(0, 256, (B, 16, 72), device="cuda", generator=gen, dtype=torch.int32).to(torch.uint8)
        keys = torch.empty(B, m, dtype=torch.int32, device="cuda")
        ref = scoring.block_score_keys(q, cache, table, seq, "max", 8, 1.0, path="swar").clone()
        nbytes = cache.numel()
        out = rows.setdefault(str(ctx), [])
        for nw, j, p2, once in itertools.product(*MLA_GRID.values()):
            keys.fill_(-7)
            ms = graph_ms(lambda: scoring.block_score_keys(q, cache, table, seq, "max", 8, 1.0, keys=keys,
                                                           path="group_planes", num_warps=nw, blocks=j, pow2=p2,
                                                           once=once))
            out.append(dict(num_warps=nw, blocks=j, pow2=p2, once=once, ms=ms, tbs=nbytes / ms / 1e9,
                            same=bool(torch.equal(keys, ref))))
        progress(f"mla score {ctx}: " + ", ".join(f"{r['num_warps']}w/{r['blocks']}b/p{int(r['pow2'])}/o{int(r['once'])} "
                                                  f"{r['ms'] * 1e3:.1f}us "
                                                  f"({r['tbs']:.2f} TB/s)" + ("" if r["same"] else " DIFFERENT")
                                                  for r in out))
        del cache


SCORE_STAGES = (1, 2, 3, 4)  # Triton's default on CUDA is 3 (what every earlier sweep measured)


def _hs_launch_rows(res, part, gen, variants, tolerate_errors=False):
    """The Harley-Seal score launch at 32K and 128K x 16 rows (the main sweep's GQA codes) with each
    options dict of ``variants`` (``block_score_keys`` keywords); keys compared with the SWAR path's.
    Rows ``dict(opts, ms, tbs, same)`` go to ``res[part][context]``, which is returned per context
    as it completes (a generator). ``tolerate_errors``: a variant that fails (e.g. a register cap
    too small to compile) becomes a row ``dict(opts, error=...)`` instead of ending the sweep."""
    from cuda_ops import scoring

    rows = res.setdefault(part, {})
    for ctx in CONTEXTS:
        m, cache, table, seq, q = _inputs(ctx, gen)
        keys = torch.empty(B, m, dtype=torch.int32, device="cuda")
        ref = scoring.block_score_keys(q, cache, table, seq, "max", path="swar").clone()
        out = rows.setdefault(str(ctx), [])
        for opts in variants:
            keys.fill_(-7)
            try:
                ms = graph_ms(lambda: scoring.block_score_keys(q, cache, table, seq, "max", keys=keys, path="hs",  # noqa: B023
                                                               **opts))
            except Exception as e:
                if not tolerate_errors:
                    raise
                out.append(dict(opts, error=f"{type(e).__name__}: {str(e)[:120]}"))
                continue
            out.append(dict(opts, ms=ms, tbs=cache.numel() / ms / 1e9, same=bool(torch.equal(keys, ref))))
        del cache
        yield ctx, out


def sweep_score_stages(res, gen):
    """The tuned Harley-Seal score launch (the device's tuning file) at 32K and 128K x 16 rows with
    ``num_stages`` 1-4; keys compared with the SWAR path's."""
    for ctx, out in _hs_launch_rows(res, "score_stages", gen, [dict(num_stages=st) for st in SCORE_STAGES]):
        progress(f"score stages {ctx}: " + ", ".join(f"{r['num_stages']}: {r['ms'] * 1e3:.1f}us ({r['tbs']:.2f} TB/s)"
                                                     + ("" if r["same"] else " DIFFERENT") for r in out))


# Nsight Compute, 2026-11-29 (eighth session): the tuned launch (2 warps, 39 registers) fits 24 programs per multiprocessor,
# so 32K x 16 rows (4,096 programs) run 1.29 waves at 59% of DRAM peak; a cap of 32 registers fits 32
# (one wave). Warps, planes and blocks change the register count and the program count, so they are
# swept with the cap.
OCCUPANCY_GRID = dict(num_warps=(1, 2, 4), maxnreg=(0, 32), planes=(False, True), blocks=(1, 2))


def sweep_score_occupancy(res, gen):
    """The Harley-Seal score launch at 32K and 128K x 16 rows over ``OCCUPANCY_GRID`` (register
    cap 0 = the compiler's choice); keys compared with the SWAR path's."""
    variants = [dict(num_warps=nw, maxnreg=cap, planes=planes, blocks=j, unroll=planes)
                for nw, cap, planes, j in itertools.product(*OCCUPANCY_GRID.values())]
    for ctx, out in _hs_launch_rows(res, "score_occupancy", gen, variants, tolerate_errors=True):
        ok = sorted((r for r in out if "ms" in r), key=lambda r: r["ms"])
        progress(f"score occupancy {ctx}: " + ", ".join(
            f"{r['num_warps']}w/r{r['maxnreg']}/p{int(r['planes'])}/b{r['blocks']} {r['ms'] * 1e3:.1f}us"
            + ("" if r["same"] else " DIFFERENT") for r in ok[:8]))
