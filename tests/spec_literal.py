"""Slow, per-token, pure-Python transcription of docs/spec.md sections 1, 4, 5, 6.

Written independently of gsa/reference (loops and Python ints, no torch
vectorisation) so that property tests comparing the two catch a wrong
vectorisation in either.
"""
from __future__ import annotations

import math

import numpy as np


def sign_bits_pack(x: np.ndarray) -> np.ndarray:
    return np.packbits(x > 0, axis=-1, bitorder="little")


def sim(a: np.ndarray, b: np.ndarray) -> int:
    r = 8 * len(a)
    return r - 2 * sum(bin(int(x) ^ int(y)).count("1") for x, y in zip(a, b))


def token_score16(q, kc, bt, b, t, bs, rope_bytes, w16):
    """16 * (sum over heads/group of sim_main) + w16 * (sum of sim_rope)."""
    hq, c = q.shape[1], q.shape[2]
    hkv = kc.shape[1]
    g = hq // hkv
    blk, off = int(bt[b][t // bs]), t % bs
    main = rope = 0
    for h in range(hkv):
        for gg in range(g):
            qq, kk = q[b, h * g + gg], kc[blk, h, off]
            main += sim(qq[: c - rope_bytes], kk[: c - rope_bytes])
            if rope_bytes:
                rope += sim(qq[c - rope_bytes:], kk[c - rope_bytes:])
    return 16 * main + w16 * rope


def select(q, kc, bt, seq_lens, budgets, k, forced, method, rope_bytes=0, w=1.0):
    """Returns (indices [B][k] with -1 padding, n_sel [B])."""
    bs = kc.shape[2]
    w16 = int(round(w * 16))
    all_idx, all_n = [], []
    for b in range(q.shape[0]):
        n = int(seq_lens[b])
        nb = math.ceil(n / bs)
        scores = []
        for j in range(nb):
            toks = [token_score16(q, kc, bt, b, t, bs, rope_bytes, w16) for t in range(j * bs, min(n, (j + 1) * bs))]
            if method == "max":
                scores.append(float(max(toks)))
            else:
                scores.append(float(np.float32(sum(toks)) / np.float32(len(toks))))
        fb = sorted({(m if m >= 0 else nb + m) for m in forced} & set(range(nb)))
        budget = int(budgets[b])
        if budget >= nb:
            chosen = list(range(nb))
        else:
            take = max(budget, len(fb))
            rest = sorted((j for j in range(nb) if j not in fb), key=lambda j: (-scores[j], j))
            chosen = sorted(fb + rest[: take - len(fb)])
        all_n.append(min(len(chosen), k))
        row = chosen[:k] + [-1] * (k - min(len(chosen), k))
        all_idx.append(row)
    return all_idx, all_n


def kv_select(indices, n_sel, bt, seq_lens, bs, pad_id=0):
    tables, lens = [], []
    for b in range(len(indices)):
        n = int(seq_lens[b])
        nb = math.ceil(n / bs)
        row, total = [], 0
        for i, j in enumerate(indices[b]):
            if i < n_sel[b]:
                row.append(int(bt[b][j]))
                total += n - (nb - 1) * bs if j == nb - 1 else bs
            else:
                row.append(pad_id)
        tables.append(row)
        lens.append(total)
    return tables, lens


def band_violations(x, weight, codes, threshold=None) -> int:
    """Spec 2 band rule: count code bits that differ from a float64 projection
    although the projection lies outside ``|y| <= 1e-3 * ||x|| * ||W[:, r]||``.

    ``x [..., D]`` with ``weight [D, R]``, or ``x [..., H, D]`` with
    ``weight [Hw, D, R]``; ``codes uint8 [..., (H,) R/8]``. ``threshold`` (spec 13:
    ``[R]`` or ``[Hw, R]``): ``y`` is then ``x @ W - t`` (same band).
    """
    import torch

    x64 = x.double().cpu()
    w64 = weight.double().cpu()
    if w64.dim() == 2:
        y = x64 @ w64
        wn = w64.norm(dim=0)
    else:
        hw = w64.shape[0]
        h = x64.shape[-2]
        w_per_head = w64.repeat_interleave(h // hw, dim=0)  # [H, D, R]
        y = torch.einsum("...hd,hdr->...hr", x64, w_per_head)
        wn = w_per_head.norm(dim=1)  # [H, R]
    if threshold is not None:
        t64 = threshold.double().cpu()
        y = y - (t64 if w64.dim() == 2 else t64.repeat_interleave(x64.shape[-2] // w64.shape[0], dim=0))
    band = 1e-3 * x64.norm(dim=-1, keepdim=True) * wn
    want = np.packbits((y > 0).numpy(), axis=-1, bitorder="little")
    got_bits = np.unpackbits(codes.cpu().numpy(), axis=-1, bitorder="little").astype(bool)
    want_bits = np.unpackbits(want, axis=-1, bitorder="little").astype(bool)
    outside = (y.abs() > band).numpy()
    return int(((got_bits != want_bits) & outside).sum())
