"""Triton ``kv_select``: spec section 6 (docs/spec.md).

One program per row: gathers the physical ids of the selected logical blocks,
pads with ``pad_id`` and sums the selected blocks' token counts (``bs`` except
the sequence's last block). Logical indices are clamped into the table, so a
bad index never reads out of bounds.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import next_pow2

__all__ = ["kv_select"]


@triton.jit
def _kv_select_kernel(idx_ptr, nsel_ptr, bt_ptr, sl_ptr, table_ptr, lens_ptr,
                      K, M, BS, PAD, si_b, sbt_b, st_b, BLOCK_K: tl.constexpr):
    """``idx int32 [B, K]``, ``nsel [B]``, ``bt int32 [B, M]``, ``sl [B]`` ->
    ``table int32 [B, K]``, ``lens int32 [B]``."""
    b = tl.program_id(0)
    i = tl.arange(0, BLOCK_K)
    nsel = tl.load(nsel_ptr + b)
    seq = tl.load(sl_ptr + b)
    live = (i < nsel) & (i < K)
    logical = tl.load(idx_ptr + b * si_b + i, mask=live, other=0)
    logical = tl.minimum(tl.maximum(logical, 0), M - 1)
    phys = tl.load(bt_ptr + b * sbt_b + logical, mask=live, other=0)
    tl.store(table_ptr + b * st_b + i, tl.where(live, phys, PAD), mask=i < K)
    length = tl.minimum(tl.maximum(seq - logical * BS, 0), BS)
    tl.store(lens_ptr + b, tl.sum(tl.where(live, length, 0), axis=0))


def kv_select(indices, n_sel, block_table, seq_lens, block_size, pad_id):
    """Spec 6. ``indices int32 [B, K]``, ``n_sel int32 [B]``, ``block_table int32 [B, M]``,
    ``seq_lens int32 [B]`` -> ``(sparse_block_table int32 [B, K], sparse_seq_lens int32 [B])``."""
    b, k = indices.shape
    m = block_table.shape[1]
    table = torch.empty(b, k, dtype=torch.int32, device=indices.device)
    lens = torch.empty(b, dtype=torch.int32, device=indices.device)
    if b:
        block_k = next_pow2(max(k, 1))
        _kv_select_kernel[(b,)](
            indices, n_sel, block_table, seq_lens, table, lens, k, m, block_size, pad_id,
            indices.stride(0), block_table.stride(0), table.stride(0), BLOCK_K=block_k,
            num_warps=4 if block_k <= 2048 else 8,
        )
    return table, lens

