"""Seeded cross-check cases and the spec's comparison rules (used by ``gsa.crosscheck``).

A :class:`Case` is one call of one public op (``gsa.ops.<op>(*args)``) on CPU
inputs, with its expected outputs (the CPU reference, float64 projections) and
the rule that compares a backend's outputs with them:

* ``exact``: every element equal (sign_bits_pack, hamming_dist_top_k's indices
  and n_sel, kv_select's table and lengths);
* ``codes``: hash codes, exact outside the projection band of spec 2
  (``|x.W_r| <= 1e-3 ||x|| ||W_r||``); the band is recomputed from the inputs;
* ``attention``: ``torch.testing.assert_close`` tolerances by dtype (spec 7).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

import numpy as np
import torch

from gsa import reference as R

__all__ = ["Case", "build_cases", "compare", "tolerance_mask", "ATTN_TOL"]

#: (atol, rtol) for attention outputs by dtype
ATTN_TOL = {torch.float16: (1e-2, 1e-2), torch.bfloat16: (3e-2, 3e-2), torch.float32: (1e-4, 1e-4)}


@dataclass
class Case:
    """One op call. ``args`` are tensors (CPU) or plain values, in schema order.
    ``mutated``: index of the in-place output argument (cache ops), else None.
    ``tol``: how to build the code tolerance mask (``hash``, ``mla``, ``hash_cache``,
    ``mla_cache``) for rule ``codes``."""

    name: str
    op: str
    args: List[Any]
    rule: str = "exact"
    mutated: Optional[int] = None
    tol: Optional[str] = None
    expected: List[torch.Tensor] = field(default_factory=list)


# ----------------------------------------------------------------------------- tolerance (spec 2 band)

def _band(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """bool ``[..., R]``: projections inside the band, where a backend's bit may differ."""
    y = R.project(x.cpu(), w.cpu()).double()
    xn = x.cpu().double().norm(dim=-1, keepdim=True)
    wn = w.cpu().double().norm(dim=-2)  # [R] or [Hw, R]
    if w.dim() == 3:
        wn = wn.repeat_interleave(x.shape[-2] // w.shape[0], dim=0)
    return y.abs() <= 1e-3 * xn * wn


def _pack(mask: torch.Tensor) -> torch.Tensor:
    return R.sign_bits_pack(mask.to(torch.float32))


def tolerance_mask(case: Case, args: List[Any]) -> torch.Tensor:
    """uint8 mask shaped like the expected codes/cache: 1-bits may differ (band)."""
    if case.tol == "hash":
        return _pack(_band(args[0], args[1]))
    if case.tol == "mla":
        return torch.cat([_pack(_band(args[0], args[2])), _pack(_band(args[1], args[3]))], dim=-1)
    if case.tol == "hash_cache":
        k, w, cache, slots = args
        out = torch.zeros_like(cache.cpu())
        R.hashing._scatter_codes(_pack(_band(k, w)), out, slots.cpu())
        return out
    if case.tol == "mla_cache":
        c_kv, k_pe, wl, wr, cache, slots = args
        codes = torch.cat([_pack(_band(c_kv, wl)), _pack(_band(k_pe, wr))], dim=-1).unsqueeze(1)
        out = torch.zeros_like(cache.cpu())
        R.hashing._scatter_codes(codes, out, slots.cpu())
        return out
    if case.tol in ("mlp", "mlp_cache"):  # spec 12's band: |y| <= BAND * (|a_{L-1}| @ |W_L| + |b_L|)
        x, ws, bs = args[0], [w.cpu() for w in args[1]], [b.cpu() for b in args[2]]
        x = x.cpu()
        band = _pack(R.mlp_project(x, ws, bs).abs() <= R.BAND * R.mlp_band(x, ws, bs))
        if case.tol == "mlp":
            return band
        out = torch.zeros_like(args[3].cpu())
        R.hashing._scatter_codes(band, out, args[4].cpu())
        return out
    raise ValueError(f"unknown tolerance kind {case.tol!r}")


def compare(case: Case, got: List[torch.Tensor], expected: List[torch.Tensor], args: List[Any]) -> Tuple[bool, str]:
    """Apply the case's rule; ``(ok, detail)``."""
    if len(got) != len(expected):
        return False, f"{len(got)} outputs, expected {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected)):
        g = g.detach().cpu()
        if g.shape != e.shape or g.dtype != e.dtype:
            return False, f"output {i}: {g.dtype}{tuple(g.shape)}, expected {e.dtype}{tuple(e.shape)}"
        if case.rule == "exact":
            if not torch.equal(g, e):
                n = int((g != e).sum())
                pos = tuple(int(v) for v in (g != e).nonzero()[0])
                return False, f"output {i}: {n} elements differ, first at {pos}: {g[pos].item()} vs {e[pos].item()}"
        elif case.rule == "codes":
            tol = tolerance_mask(case, args)
            bad = (g ^ e) & ~tol
            if bool(bad.any()):
                nbits = int(np.unpackbits(bad.numpy().reshape(-1)).sum())
                same = int(np.unpackbits((g ^ e).numpy().reshape(-1)).sum())
                spec = "spec-12" if str(case.tol).startswith("mlp") else "spec-2"
                return False, f"output {i}: {nbits} code bits differ outside the {spec} band ({same} in all)"
        elif case.rule == "attention":
            atol, rtol = ATTN_TOL[e.dtype]
            try:
                torch.testing.assert_close(g.float(), e.float(), atol=atol, rtol=rtol)
            except AssertionError as exc:
                return False, f"output {i}: " + " ".join(str(exc).split())[:200]
        else:
            raise ValueError(case.rule)
    return True, "ok"


# ----------------------------------------------------------------------------- case grid

def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _n_sel_max(seq, budgets, bs, m, forced) -> int:
    n_blocks = (seq.to(torch.int64) + bs - 1) // bs
    n_forced = R.forced_block_mask(n_blocks, m, forced).sum(dim=1)
    return int(R.selection_counts(n_blocks, budgets, n_forced).max())


def _selection_inputs(seed: int, b: int, hq: int, hkv: int, c: int, bs: int, m: int, ties: bool):
    """Ragged rows: a full row, a 1-token row, partial last blocks; budgets below and above n_blocks."""
    g = _g(seed)
    nb = b * m + 3
    q = torch.randint(0, 256, (b, hq, c), dtype=torch.uint8, generator=g)
    kc = torch.randint(0, 256, (nb, hkv, bs, c), dtype=torch.uint8, generator=g)
    if ties:  # two distinct key codes per byte: many equal token and block scores
        kc = (kc & 1) * 0xFF
        q = q & 0
    bt = torch.randperm(nb, generator=g)[: b * m].reshape(b, m).to(torch.int32)
    seq = torch.randint(bs + 1, m * bs, (b,), dtype=torch.int32, generator=g)
    seq[0] = m * bs
    if b > 1:
        seq[1] = 1
    if b > 2:
        seq[2] = 2 * bs + 1
    budgets = torch.randint(1, m, (b,), dtype=torch.int32, generator=g)
    if b > 3:
        budgets[3] = m + 5  # above the block count: every block
    return q, kc, bt, seq, budgets


def build_cases(seed: int = 0, size: str = "full") -> List[Case]:
    """The grid (GQA and MLA, ragged lengths, partial last blocks, ties, budgets
    above/below the block count), with reference outputs. ``size``: ``full`` or ``small``."""
    full = size == "full"
    cases: List[Case] = []
    g = _g(seed)

    # spec 1
    x = torch.randn(6, 64, generator=g)
    x[0, :8] = torch.tensor([0.0, -0.0, float("nan"), float("inf"), float("-inf"), 1e-45, -1e-45, 1.0])
    cases.append(Case("sign_bits_pack/f32_edges", "sign_bits_pack", [x]))
    cases.append(Case("sign_bits_pack/bf16", "sign_bits_pack", [torch.randn(3, 5, 32, generator=g).to(torch.bfloat16)]))

    # spec 2, 3, 9
    d, r = 64, 128
    w = torch.randn(2, d, r, generator=g)
    cases.append(Case("hash_encode/query_gqa_bf16", "hash_encode",
                      [torch.randn(4, 8, d, generator=g).to(torch.bfloat16), w], rule="codes", tol="hash"))
    cases.append(Case("hash_encode/key_f16", "hash_encode",
                      [torch.randn(7, 2, d, generator=g).to(torch.float16), w], rule="codes", tol="hash"))
    if full:
        cases.append(Case("hash_encode/shared_w_f32", "hash_encode",
                          [torch.randn(9, d, generator=g), torch.randn(d, 96, generator=g)], rule="codes", tol="hash"))
    cache = torch.randint(0, 256, (6, 2, 16, r // 8), dtype=torch.uint8, generator=g)
    slots = torch.tensor([0, 17, -1, 95, 40, 41, 3, -1, 64, 80, 15, 16], dtype=torch.int64)
    cases.append(Case("hash_encode_and_cache/gqa_bf16", "hash_encode_and_cache",
                      [torch.randn(12, 2, d, generator=g).to(torch.bfloat16), w, cache, slots],
                      rule="codes", mutated=2, tol="hash_cache"))
    lora, rope, rl, rr = 128, 32, 128, 32
    wl, wr = torch.randn(lora, rl, generator=g), torch.randn(rope, rr, generator=g)
    cases.append(Case("mla_hash_encode/query", "mla_hash_encode",
                      [torch.randn(5, 4, lora, generator=g).to(torch.bfloat16),
                       torch.randn(5, 4, rope, generator=g).to(torch.bfloat16), wl, wr], rule="codes", tol="mla"))
    mcache = torch.zeros(4, 1, 16, (rl + rr) // 8, dtype=torch.uint8)
    mslots = torch.tensor([63, 0, -1, 5, 16, 33, 34, 2, -1, 48], dtype=torch.int32)
    cases.append(Case("mla_hash_encode_and_cache/bf16", "mla_hash_encode_and_cache",
                      [torch.randn(10, lora, generator=g).to(torch.bfloat16),
                       torch.randn(10, rope, generator=g).to(torch.bfloat16), wl, wr, mcache, mslots],
                      rule="codes", mutated=4, tol="mla_cache"))

    # spec 12 (MLP encoder): full grid only (the committed small golden bundle predates it)
    if full:
        for depth in (1, 3):
            widths = [48] + [32] * (depth - 1) + [64]
            mw = [torch.randn(2, widths[i], widths[i + 1], generator=g) / widths[i] ** 0.5 for i in range(depth)]
            mb = [0.3 * torch.randn(2, widths[i + 1], generator=g) for i in range(depth)]
            cases.append(Case(f"mlp_hash_encode/l{depth}_bf16", "mlp_hash_encode",
                              [torch.randn(6, 2, 48, generator=g).to(torch.bfloat16), mw, mb], rule="codes", tol="mlp"))
            mcache_ = torch.randint(0, 256, (3, 2, 8, 8), dtype=torch.uint8, generator=g)
            cases.append(Case(f"mlp_hash_encode_and_cache/l{depth}_f32", "mlp_hash_encode_and_cache",
                              [torch.randn(9, 2, 48, generator=g), mw, mb, mcache_,
                               torch.tensor([5, -1, 23, 0, 8, 9, 16, -1, 2], dtype=torch.int64)],
                              rule="codes", mutated=3, tol="mlp_cache"))

    # spec 4, 5, 6
    bs, m = 16, 8
    variants = [("gqa", 8, 2, 16, 0, 1.0), ("mla", 4, 1, 20, 4, 1.0), ("mla_w0.5", 4, 1, 20, 4, 0.5)]
    if full:
        variants.append(("mla_w0", 4, 1, 20, 4, 0.0))
    sel_seed = seed * 1000
    for tag, hq, hkv, c, rope_bytes, rw in variants:
        for ties in ((False, True) if full or tag == "gqa" else (False,)):
            sel_seed += 1
            q, kc, bt, seq, budgets = _selection_inputs(sel_seed, 5, hq, hkv, c, bs, m, ties)
            for method in ("max", "mean"):
                for forced in (([0, -1], []) if full else ([0, -1],)):
                    k = _n_sel_max(seq, budgets, bs, m, forced)
                    name = f"hamming_dist_top_k/{tag}{'_ties' if ties else ''}_{method}_f{len(forced)}"
                    cases.append(Case(name, "hamming_dist_top_k",
                                      [q, kc, bt, seq, budgets, k, forced, method, rope_bytes, rw]))
            idx, n_sel = R.hamming_dist_top_k(q, kc, bt, seq, budgets, m + 2, [0, -1], "max", rope_bytes, rw)
            for pad in ((0, -1) if full else (0,)):
                cases.append(Case(f"kv_select/{tag}{'_ties' if ties else ''}_pad{pad}", "kv_select",
                                  [idx, n_sel, bt, seq, bs, pad]))

    # spec 7
    for dtype in ((torch.float16, torch.bfloat16, torch.float32) if full else (torch.bfloat16,)):
        b, hq, hkv, dh, nb, mm = 3, 8, 2, 64, 24, 6
        q = torch.randn(b, hq, dh, generator=g).to(dtype)
        kc = torch.randn(nb, bs, hkv, dh, generator=g).to(dtype)
        vc = torch.randn(nb, bs, hkv, dh, generator=g).to(dtype)
        bt = torch.randperm(nb, generator=g)[: b * mm].reshape(b, mm).to(torch.int32)
        seq = torch.tensor([mm * bs, 1, 37], dtype=torch.int32)
        tag = str(dtype).replace("torch.", "")
        cases.append(Case(f"paged_decode_attention/dense_{tag}", "paged_decode_attention",
                          [q, kc, vc, bt, seq, None], rule="attention"))
        qc = torch.randint(0, 256, (b, hq, 16), dtype=torch.uint8, generator=g)
        kcc = torch.randint(0, 256, (nb, hkv, bs, 16), dtype=torch.uint8, generator=g)
        budgets = torch.tensor([2, 1, 2], dtype=torch.int32)
        idx, n_sel = R.hamming_dist_top_k(qc, kcc, bt, seq, budgets, mm, [0, -1])
        st, sl = R.kv_select(idx, n_sel, bt, seq, bs, 0)
        cases.append(Case(f"paged_decode_attention/sparse_{tag}", "paged_decode_attention",
                          [q, kc, vc, st, sl, 0.125], rule="attention"))

    for case in cases:
        case.expected = expected_outputs(case)
    return cases


def call(case: Case, args: List[Any]) -> List[torch.Tensor]:
    """Run ``gsa.ops.<op>`` on ``args`` (already on the target device); the outputs as a list."""
    from gsa import ops

    out = getattr(ops, case.op)(*args)
    if case.mutated is not None:
        return [args[case.mutated]]
    return list(out) if isinstance(out, tuple) else [out]


def clone_args(case: Case, device: torch.device) -> List[Any]:
    """Inputs on ``device``; the in-place argument is a fresh copy."""
    out = []
    for i, a in enumerate(case.args):
        if isinstance(a, torch.Tensor):
            a = a.to(device)
            if i == case.mutated:
                a = a.clone()
        elif isinstance(a, list):  # a list of tensors (spec 12's weights) travels element-wise
            a = [t.to(device) if isinstance(t, torch.Tensor) else t for t in a]
        out.append(list(a) if isinstance(a, list) else a)
    return out


def expected_outputs(case: Case) -> List[torch.Tensor]:
    """The pure-torch reference on CPU (float64 projections)."""
    from gsa import use_backend

    with use_backend("reference"):
        return [t.detach().cpu().clone() for t in call(case, clone_args(case, torch.device("cpu")))]
