"""Launch sweeps of ``kernel_sweep.py`` beyond the GQA engine-step shapes (``--parts mla,hashdec,hash16``):
the group bit-plane score kernel at DeepSeek-V2-Lite's MLA codes, a decode step's hashing
(few rows: MLA keys and query, GQA keys and query), and ``hash.prec16`` (one fp16 product) against
the bf16 split at 64K tokens. Same rules as the main sweep: CUDA-graph
replay medians, every variant's output compared with the default launch, a differing variant
reported and never chosen; ``kernel_sweep.choose`` turns the rows into tuning knobs.
"""
from __future__ import annotations

import itertools

import torch

from kernel_sweep import BS, B, CONTEXTS, D, HKV, HQ, R, graph_ms, progress


# the group bit-plane score kernel (score_planes.py). Sixth session: 1 and 8 warps were slower than 2 and 4;
# 2-8 blocks per program slower than one (larger tiles spill); `pow2` (G a power of two) is new.
MLA_GRID = dict(num_warps=(2, 4), blocks=(1,), pow2=(False, True))


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
        for nw, j, p2 in itertools.product(*MLA_GRID.values()):
            keys.fill_(-7)
            ms = graph_ms(lambda: scoring.block_score_keys(q, cache, table, seq, "max", 8, 1.0, keys=keys,
                                                           path="group_planes", num_warps=nw, blocks=j, pow2=p2))
            out.append(dict(num_warps=nw, blocks=j, pow2=p2, ms=ms, tbs=nbytes / ms / 1e9,
                            same=bool(torch.equal(keys, ref))))
        progress(f"mla score {ctx}: " + ", ".join(f"{r['num_warps']}w/{r['blocks']}b/p{int(r['pow2'])} {r['ms'] * 1e3:.1f}us "
                                                  f"({r['tbs']:.2f} TB/s)" + ("" if r["same"] else " DIFFERENT")
                                                  for r in out))
        del cache


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

    t = 65536
    k = torch.randn(t, HKV, D, device="cuda", generator=gen).to(torch.bfloat16)
    w = torch.linalg.qr(torch.randn(HKV, D, R, device="cuda", generator=gen))[0].contiguous()
    hc = torch.zeros(t // BS, HKV, BS, R // 8, dtype=torch.uint8, device="cuda")
    slots = torch.arange(t, device="cuda")  # in order: the cache rows are the tokens' codes
    nbytes = k.numel() * 2 + hc.numel() + slots.numel() * 8
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
