"""Reference paged decode attention: spec section 7 (docs/spec.md)."""
from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["paged_decode_attention"]


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Spec 7. One query token per row over a paged KV cache, fp32 softmax.

    ``q [B, Hq, D]``; ``k_cache, v_cache [NB, bs, Hkv, D]``; ``block_table int32 [B, M]``;
    ``seq_lens int32 [B]`` (>= 1). Query head ``h`` reads KV head ``h // (Hq // Hkv)``.
    Returns ``[B, Hq, D]`` in ``q.dtype``. ``scale`` defaults to ``1 / sqrt(D)``.
    The sparse path is the same call on ``(sparse_block_table, sparse_seq_lens)``.
    """
    b, hq, d = q.shape
    nb, bs, hkv, _ = k_cache.shape
    g = hq // hkv
    m = block_table.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    ids = block_table.to(torch.int64).clamp(0, nb - 1)
    t = torch.arange(m * bs, device=q.device)
    out = torch.empty(b, hq, d, dtype=torch.float32, device=q.device)
    for row in range(b):  # one row at a time keeps the gathered K/V small
        keys = k_cache[ids[row]].reshape(m * bs, hkv, d).float()
        vals = v_cache[ids[row]].reshape(m * bs, hkv, d).float()
        qr = q[row].float().reshape(hkv, g, d)
        logits = torch.einsum("kgd,tkd->kgt", qr, keys) * scale
        logits = logits.masked_fill(t >= seq_lens[row].to(torch.int64), float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        out[row] = torch.einsum("kgt,tkd->kgd", probs, vals).reshape(hq, d)
    return out.to(q.dtype)
