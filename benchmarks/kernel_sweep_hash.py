"""Hash-kernel sweeps of ``kernel_sweep.py`` (``--parts hash,hashdec,hash16``): ``hash_encode_and_cache``
at 64K tokens over the big-launch grid (rows, warps, programs per SM, pack_dot, and Triton's pipelining
of the row tiles vs the hand prefetch), a decode step's hashing (few rows: MLA keys and query, GQA keys
and query) by code bytes per program, and ``hash.prec16`` (one fp16 product) against the bf16 split.
Same rules as the main sweep: CUDA-graph replay medians, every variant's codes compared with the default
launch (``hash16``: with float64 and spec 2's band), a differing variant reported and never chosen;
``kernel_sweep.choose`` turns the rows into tuning knobs.
"""
from __future__ import annotations

import itertools

import torch

from kernel_sweep import B, BS, D, HKV, HQ, R, graph_ms, progress


# First run (06:24 UTC) also swept 8 warps and 1/3/4 programs per SM: within noise of these.
# The fifth session chose no hoist, 64 rows, 4 warps, 2 programs per SM, pack_dot: at 41% of copy, the
# split-bf16 products (2 x 17.2 GFLOP per 64K tokens) make it compute-heavy; more programs or warps
# per SM may overlap loads and products better.
# per_sm 1 and 8 were slower than 2-4 in every run (seventh session: 123 / 156 us vs 81 at 64 rows, 4 warps)
HASH_GRID = dict(hoist=(False,), block_m=(64, 128), num_warps=(4, 8), per_sm=(2, 3, 4))
# Seventh session (ad hoc, bit-equal codes): Triton's pipelining of the row tiles (hand prefetch off,
# num_stages 3) with 128 rows, 8 warps, 2 per SM: 76.3 us vs 79.8 for the shipped launch
HASH_PIPE = ((1, True), (3, False), (4, False))  # (num_stages, prefetch)


def _cache_fill_case(gen, shuffled=True):
    """A 64K-token cache fill (8 KV heads, D = R = 128, bf16 keys, orthonormal weights): ``(t, k, w,
    cache, slots, bytes moved)``; ``shuffled``: slots a random permutation, else in order (cache row =
    token)."""
    t = 65536
    k = torch.randn(t, HKV, D, device="cuda", generator=gen).to(torch.bfloat16)
    w = torch.linalg.qr(torch.randn(HKV, D, R, device="cuda", generator=gen))[0].contiguous()
    hc = torch.zeros(t // BS, HKV, BS, R // 8, dtype=torch.uint8, device="cuda")
    slots = torch.randperm(t, device="cuda", generator=gen) if shuffled else torch.arange(t, device="cuda")
    return t, k, w, hc, slots, k.numel() * 2 + hc.numel() + slots.numel() * 8


def sweep_hash(res, gen, copy):
    from cuda_ops import hashing

    t, k, w, hc, slots, nbytes = _cache_fill_case(gen)
    ref = torch.zeros_like(hc)
    hashing.hash_encode_and_cache(k, w, ref, slots, hoist=False)
    rows = res.setdefault("hash", [])
    for (hoist, bm, nw, ps), (ns, pf) in itertools.product(itertools.product(*HASH_GRID.values()), HASH_PIPE):
        for pd in (True,) if (bm, nw, ps, ns) != (128, 4, 2, 1) else (False, True):  # (128, 4, 2, False): the old launch
            row = dict(hoist=hoist, block_m=bm, num_warps=nw, per_sm=ps, pack_dot=pd, num_stages=ns, prefetch=pf)
            try:
                ms = graph_ms(lambda: hashing.hash_encode_and_cache(k, w, hc, slots, block_m=bm, num_warps=nw,
                                                                    per_sm=ps, pack_dot=pd, hoist=hoist,
                                                                    num_stages=ns, prefetch=pf))
                row.update(ms=ms, frac_copy=nbytes / ms / 1e9 / copy, same=bool(torch.equal(hc, ref)))
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {str(e)[:160]}"
            rows.append(row)
    ok = [r for r in rows if "error" not in r]
    progress(f"hash: best {max(r['frac_copy'] for r in ok):.3f} of copy")


HASHDEC_BLOCK_C = (16, 8, 4, 2)  # code bytes per program for a decode step's few rows


def sweep_hash_decode(res, gen):
    """A decode step's hashing (16 rows): MLA keys (latent 512 -> 512 bits, rope 64 -> 64), the
    MLA query (16 rows x 16 heads, one latent projection), GQA keys (8 heads) and query (32
    heads, R = 128), per ``block_c`` (narrower programs spread the weight reads over more SMs);
    codes compared with the default launch."""
    from cuda_ops import hashing

    cases = {
        "mla_keys": [(torch.randn(B, 1, 512, device="cuda", generator=gen).to(torch.bfloat16),
                      torch.randn(1, 512, 512, device="cuda", generator=gen), 0),
                     (torch.randn(B, 1, 64, device="cuda", generator=gen).to(torch.bfloat16),
                      torch.randn(1, 64, 64, device="cuda", generator=gen), 64)],
        "mla_query": [(torch.randn(B * 16, 1, 512, device="cuda", generator=gen).to(torch.bfloat16),
                       torch.randn(1, 512, 512, device="cuda", generator=gen), 0)],
        "gqa_keys": [(torch.randn(B, HKV, D, device="cuda", generator=gen).to(torch.bfloat16),
                      torch.randn(HKV, D, R, device="cuda", generator=gen), 0)],
        "gqa_query": [(torch.randn(B, HQ, D, device="cuda", generator=gen).to(torch.bfloat16),
                       torch.randn(HKV, D, R, device="cuda", generator=gen), 0)],
    }
    rows = res.setdefault("hash_decode", {})
    for name, parts in cases.items():
        width = sum(w.shape[-1] // 8 for _, w, _ in parts)
        outs = {}
        for bc in HASHDEC_BLOCK_C:
            out = torch.zeros(parts[0][0].shape[0], parts[0][0].shape[1], width, dtype=torch.uint8, device="cuda")

            def run():
                for x, w, off in parts:
                    hashing._launch(x, w, x.shape[1] // w.shape[0], out, off, block_c=bc)
            ms = graph_ms(run)
            outs[bc] = out.clone()
            rows.setdefault(name, []).append(dict(block_c=bc, us=ms * 1e3, same=bool(torch.equal(out, outs[16]))))
        progress(f"hash decode {name}: " + ", ".join(f"{r['block_c']}: {r['us']:.1f}us"
                                                     + ("" if r["same"] else " DIFFERENT") for r in rows[name]))


HASH16_GRID = dict(block_m=(64, 128), num_warps=(4, 8), per_sm=(1, 2, 4))


def _bits_vs_float64(k, w, codes):
    """(bits differing from the float64 projection, of them outside spec 2's band, total bits)
    for ``k [T, H, D]`` against ``w [H, D, R]`` (one weight per key head), on the GPU."""
    y = torch.einsum("thd,hdr->thr", k.double(), w.double())
    band = 1e-3 * k.double().norm(dim=-1, keepdim=True) * w.double().norm(dim=1)[None]
    shifts = torch.arange(8, device=codes.device)
    bits = ((codes.long()[..., None] >> shifts) & 1).flatten(-2).bool()
    diff = bits != (y > 0)
    return int(diff.sum()), int((diff & (y.abs() > band)).sum()), diff.numel()


def sweep_hash_prec16(res, gen, copy):
    """``hash_encode_and_cache`` at 64K tokens (8 KV heads, D = R = 128, bf16 keys): the bf16 split
    (two products, the default) against ``hash.prec16`` (one fp16 product on power-of-two scaled rows
    and columns) per launch; fraction of copy bandwidth, and each mode's bits against float64 (how
    many differ, how many of those lie outside spec 2's band: must be 0)."""
    from cuda_ops import hashing

    t, k, w, hc, slots, nbytes = _cache_fill_case(gen, shuffled=False)  # in order: cache rows = the tokens' codes
    rows = res.setdefault("hash16", [])
    for p16 in (False, True):
        for bm, nw, ps in itertools.product(*HASH16_GRID.values()):
            row = dict(prec16=p16, block_m=bm, num_warps=nw, per_sm=ps)
            try:
                hc.zero_()
                ms = graph_ms(lambda: hashing.hash_encode_and_cache(k, w, hc, slots, block_m=bm, num_warps=nw,
                                                                    per_sm=ps, pack_dot=True, hoist=False,
                                                                    prec16=p16))
                codes = hc.permute(0, 2, 1, 3).reshape(t, HKV, R // 8)
                n_diff, n_out, n_bits = _bits_vs_float64(k, w, codes)
                row.update(ms=ms, frac_copy=nbytes / ms / 1e9 / copy, bits_differ=n_diff, outside_band=n_out,
                           bits=n_bits)
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {str(e)[:160]}"
            rows.append(row)
    for p16 in (False, True):
        ok = [r for r in rows if r["prec16"] == p16 and "error" not in r]
        if ok:
            b = min(ok, key=lambda r: r["ms"])
            progress(f"hash prec16={p16}: best {b['ms'] * 1e3:.1f} us = {b['frac_copy']:.1%} of copy "
                     f"({b['block_m']} rows, {b['num_warps']} warps, {b['per_sm']}/SM); bits vs float64: "
                     f"{b['bits_differ']} of {b['bits']} differ, {b['outside_band']} outside the band")


# hash.transposed (cuda_ops/hash_tiles.py): W^T @ x^T with the split weight in registers and the key
# tiles pipelined into shared memory by Triton (num_stages); rows = the product's N
HASHT_GRID = dict(block_m=(64, 128, 256), num_warps=(4, 8), num_stages=(2, 3, 4), per_sm=(1, 2))


def sweep_hash_transposed(res, gen, copy):
    """``hash_encode_and_cache`` at 64K tokens: the shipped launch (the device's tuning file) against
    the transposed kernel over ``HASHT_GRID``. Rows go to ``res["hash"]`` (``transposed`` set), so the
    chooser takes the fastest row whose codes equal the shipped launch's; each transposed row also
    counts its bits against float64 (differing, and outside spec 2's band: must be 0)."""
    from cuda_ops import hashing

    t, k, w, hc, slots, nbytes = _cache_fill_case(gen)
    ref = torch.zeros_like(hc)
    hashing.hash_encode_and_cache(k, w, ref, slots, transposed=False)
    rows = res.setdefault("hash", [])
    ms = graph_ms(lambda: hashing.hash_encode_and_cache(k, w, hc, slots, transposed=False))
    from cuda_ops.tuning import knob

    h = {x: knob(k.device, "hash", x, d) for x, d in (("hoist", False), ("block_m", 64), ("num_warps", 4),
                                                         ("per_sm", 2), ("pack_dot", True), ("num_stages", 1),
                                                         ("prefetch", True))}
    rows.append(dict(h, transposed=False, shipped=True, ms=ms, frac_copy=nbytes / ms / 1e9 / copy,
                     same=bool(torch.equal(hc, ref))))
    for bm, nw, ns, ps in itertools.product(*HASHT_GRID.values()):
        row = dict(hoist=False, block_m=bm, num_warps=nw, per_sm=ps, pack_dot=True, num_stages=ns, prefetch=False,
                   transposed=True)
        try:
            hc.zero_()
            ms = graph_ms(lambda: hashing.hash_encode_and_cache(k, w, hc, slots, block_m=bm, num_warps=nw, per_sm=ps,
                                                                num_stages=ns, transposed=True))
            codes = hc.permute(0, 2, 1, 3).reshape(t, HKV, R // 8)[slots]  # token i's codes sit at slot i
            n_diff, n_out, n_bits = _bits_vs_float64(k, w, codes)
            row.update(ms=ms, frac_copy=nbytes / ms / 1e9 / copy, same=bool(torch.equal(hc, ref)),
                       bits_differ=n_diff, outside_band=n_out, bits=n_bits)
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e)[:160]}"
        rows.append(row)
    ok = [r for r in rows if r.get("transposed") and "error" not in r]
    if ok:
        b = min(ok, key=lambda r: r["ms"])
        progress(f"hash transposed: best {b['ms'] * 1e3:.1f} us = {b['frac_copy']:.1%} of copy ({b['block_m']} rows, "
                 f"{b['num_warps']} warps, {b['num_stages']} stages, {b['per_sm']}/SM; same codes {b['same']}; "
                 f"{b['outside_band']} bits outside the band) vs shipped {rows[0]['frac_copy']:.1%}")
    errs = [r for r in rows if "error" in r]
    if errs:
        progress(f"hash transposed: {len(errs)} launches failed, e.g. {errs[0]['error']}")
