"""Reference kv_select: spec section 6 (docs/spec.md)."""
from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["kv_select", "block_lengths"]


def block_lengths(seq_lens: torch.Tensor, block_size: int, width: int) -> torch.Tensor:
    """Tokens held by each logical block ``[B, width]``: ``bs`` for full blocks,
    ``seq_len - (n_blocks - 1) * bs`` for the last one, 0 past the sequence."""
    cols = torch.arange(width, device=seq_lens.device).unsqueeze(0)
    rest = seq_lens.to(torch.int64).unsqueeze(1) - cols * block_size
    return rest.clamp(min=0, max=block_size)


def kv_select(
    indices: torch.Tensor,
    n_sel: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    block_size: int,
    pad_id: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Spec 6. Selected logical blocks -> a sparse paged sequence.

    ``indices int32 [B, K]`` and ``n_sel int32 [B]`` from ``hamming_dist_top_k``;
    ``block_table int32 [B, M]``; ``seq_lens int32 [B]``.
    Returns ``(sparse_block_table int32 [B, K], sparse_seq_lens int32 [B])``:
    ``sparse_block_table[b, i] = block_table[b, indices[b, i]]`` for ``i < n_sel[b]``,
    else ``pad_id``; ``sparse_seq_lens[b]`` = total tokens of the selected blocks.
    """
    b, k = indices.shape
    m = block_table.shape[1]
    live = torch.arange(k, device=indices.device).unsqueeze(0) < n_sel.to(torch.int64).unsqueeze(1)
    logical = torch.where(live, indices.to(torch.int64), torch.zeros_like(indices, dtype=torch.int64))
    logical = logical.clamp(0, m - 1)
    physical = torch.gather(block_table.to(torch.int64), 1, logical)
    table = torch.where(live, physical, torch.full_like(physical, pad_id)).to(torch.int32)
    lens = torch.gather(block_lengths(seq_lens, block_size, m), 1, logical)
    sparse_lens = torch.where(live, lens, torch.zeros_like(lens)).sum(dim=1).to(torch.int32)
    return table, sparse_lens
