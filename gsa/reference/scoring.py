"""Reference scoring and selection: spec sections 4 and 5 (docs/spec.md).

Scores are carried in units of 1/16 (``SCORE_SCALE``) so that the MLA rope
weight ``w`` (a multiple of 1/16, see spec 4) keeps every token score an exact
integer. For GQA, and for MLA with ``w = 1``, that is ``16 * S`` exactly, and
scaling by a power of two changes neither the order nor the ties of ``max`` or
of the float32 ``mean``: the selection is the spec's, bit for bit.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

__all__ = [
    "SCORE_SCALE",
    "popcount_u8",
    "token_scores",
    "block_scores",
    "forced_block_mask",
    "selection_counts",
    "hamming_dist_top_k",
]

SCORE_SCALE = 16
_TOKEN_CHUNK = 8192  # tokens per pass over the XOR tensor: bounds peak memory


def popcount_u8(x: torch.Tensor) -> torch.Tensor:
    """Number of set bits of each byte of a uint8 tensor, as int32."""
    lut = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int32, device=x.device)
    return lut[x.to(torch.int64)]


def _gather_key_codes(key_cache: torch.Tensor, block_table: torch.Tensor) -> torch.Tensor:
    """``[NB, Hkv, bs, C]`` through ``block_table [B, M]`` -> ``[B, M*bs, Hkv, C]``."""
    nb, hkv, bs, c = key_cache.shape
    b, m = block_table.shape
    ids = block_table.to(torch.int64).clamp(0, nb - 1)  # out-of-range ids: masked later
    kc = key_cache[ids]  # [B, M, Hkv, bs, C]
    return kc.permute(0, 1, 3, 2, 4).reshape(b, m * bs, hkv, c)


def token_scores(
    q_codes: torch.Tensor,
    key_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    rope_bytes: int = 0,
    rope_score_weight: float = 1.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Spec 4 token scores, in units of 1/16.

    ``q_codes uint8 [B, Hq, C]``; ``key_cache uint8 [NB, Hkv, bs, C]``
    (MLA: ``Hkv = 1``, ``Hq = N``); ``block_table int [B, M]``; ``seq_lens [B]``.
    The last ``rope_bytes`` bytes of a code are the rope part (MLA), weighted by
    ``rope_score_weight``; the rest is the main part (all of it for GQA).

    Returns ``(scores int64 [B, M*bs], valid bool [B, M*bs])``:
    ``scores[b, t] = 16 * sum_h sum_g sim_main + 16w * sum_h sum_g sim_rope`` with
    ``sim(a, b) = R - 2 * popcount(a XOR b)``; ``valid`` marks ``t < seq_len[b]``.
    """
    b, hq, c = q_codes.shape
    _, hkv, bs, _ = key_cache.shape
    g = hq // hkv
    m = block_table.shape[1]
    w16 = int(round(rope_score_weight * SCORE_SCALE))
    main_bytes = c - rope_bytes
    keys = _gather_key_codes(key_cache, block_table)  # [B, T, Hkv, C]
    q = q_codes.reshape(b, 1, hkv, g, c)
    parts = []
    for start in range(0, m * bs, _TOKEN_CHUNK):
        k = keys[:, start:start + _TOKEN_CHUNK].unsqueeze(3)  # [B, t, Hkv, 1, C]
        pc = popcount_u8(torch.bitwise_xor(q, k))  # [B, t, Hkv, G, C]
        # sum over heads and group of (R_part - 2 * popcount_part), per part
        n_pairs = hkv * g
        pc_main = pc[..., :main_bytes].sum(dim=(2, 3, 4)).to(torch.int64)
        pc_rope = pc[..., main_bytes:].sum(dim=(2, 3, 4)).to(torch.int64)
        sim_main = n_pairs * 8 * main_bytes - 2 * pc_main
        sim_rope = n_pairs * 8 * rope_bytes - 2 * pc_rope
        parts.append(SCORE_SCALE * sim_main + w16 * sim_rope)
    scores = torch.cat(parts, dim=1)
    t = torch.arange(m * bs, device=q_codes.device)
    valid = t.unsqueeze(0) < seq_lens.to(torch.int64).unsqueeze(1)
    return scores, valid


def block_scores(
    scores: torch.Tensor, valid: torch.Tensor, block_size: int, method: str
) -> torch.Tensor:
    """Spec 4 block score from token scores ``[B, M*bs]`` -> ``float64 [B, M]``.

    ``max``: the largest valid token score (exact). ``mean``:
    ``float32(sum) / float32(count)`` over valid tokens, then widened exactly to
    float64. Blocks with no valid token get ``-inf``.
    """
    b, m = scores.shape[0], scores.shape[1] // block_size  # explicit: B = 0 has no -1 to infer
    s = scores.reshape(b, m, block_size)
    v = valid.reshape(b, m, block_size)
    count = v.sum(dim=-1)
    if method == "max":
        floor = torch.iinfo(torch.int64).min
        best = torch.where(v, s, torch.full_like(s, floor)).amax(dim=-1)
        out = best.to(torch.float64)
    elif method == "mean":
        total = torch.where(v, s, torch.zeros_like(s)).sum(dim=-1)
        mean32 = total.to(torch.float32) / count.clamp(min=1).to(torch.float32)
        out = mean32.to(torch.float64)
    else:
        raise ValueError(f"chunk_repre_method: expected 'max' or 'mean', got {method!r}")
    return torch.where(count > 0, out, torch.full_like(out, float("-inf")))


def forced_block_mask(n_blocks: torch.Tensor, width: int, must_select_blocks: Sequence[int]) -> torch.Tensor:
    """Spec 5 forced blocks as ``bool [B, width]``: entry ``m`` names block ``m``
    if ``m >= 0`` else ``n_blocks + m``; names outside ``[0, n_blocks)`` are dropped;
    duplicates merge."""
    cols = torch.arange(width, device=n_blocks.device).unsqueeze(0)
    nbk = n_blocks.to(torch.int64).unsqueeze(1)
    mask = torch.zeros(n_blocks.shape[0], width, dtype=torch.bool, device=n_blocks.device)
    for m in must_select_blocks:
        target = torch.full_like(nbk, m) if m >= 0 else nbk + m
        mask |= (cols == target) & (target >= 0) & (target < nbk)
    return mask


def selection_counts(n_blocks: torch.Tensor, budgets: torch.Tensor, n_forced: torch.Tensor) -> torch.Tensor:
    """Spec 5 ``n_sel``: all blocks if ``budget >= n_blocks``, else ``max(budget, n_forced)``."""
    nbk = n_blocks.to(torch.int64)
    bud = budgets.to(torch.int64)
    return torch.where(bud >= nbk, nbk, torch.maximum(bud, n_forced.to(torch.int64)))


def hamming_dist_top_k(
    q_codes: torch.Tensor,
    key_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    budgets: torch.Tensor,
    k: int,
    must_select_blocks: Sequence[int] = (),
    chunk_repre_method: str = "max",
    rope_bytes: int = 0,
    rope_score_weight: float = 1.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Spec 5. Select KV blocks per row by Hamming similarity.

    Shapes: ``q_codes uint8 [B, Hq, C]``, ``key_cache uint8 [NB, Hkv, bs, C]``,
    ``block_table int32 [B, M]``, ``seq_lens int32 [B]`` (>= 1),
    ``budgets int32 [B]`` (blocks), ``k`` the static output width (must be at
    least the largest ``n_sel``). Returns ``(indices int32 [B, k], n_sel int32 [B])``:
    the selected logical block indices ascending, ``-1`` after ``n_sel``.
    """
    bs = key_cache.shape[2]
    b, m = block_table.shape
    dev = q_codes.device
    scores, valid = token_scores(q_codes, key_cache, block_table, seq_lens, rope_bytes, rope_score_weight)
    blk = block_scores(scores, valid, bs, chunk_repre_method)  # [B, M], -inf past the sequence
    n_blocks = torch.clamp((seq_lens.to(torch.int64) + bs - 1) // bs, max=m)
    forced = forced_block_mask(n_blocks, m, must_select_blocks)
    n_sel = selection_counts(n_blocks, budgets, forced.sum(dim=1))
    ranked = torch.where(forced, torch.full_like(blk, float("inf")), blk)
    # stable descending sort: equal scores keep index order, so ties go to the smaller index
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(m, device=dev).expand(b, m).contiguous())
    chosen = rank < n_sel.unsqueeze(1)
    cols = torch.arange(m, device=dev).expand(b, m)
    asc = torch.sort(torch.where(chosen, cols, torch.full_like(cols, m)), dim=1).values
    width = min(k, m)
    idx = asc[:, :width]
    idx = torch.where(idx < m, idx, torch.full_like(idx, -1))
    if k > m:
        idx = torch.cat([idx, idx.new_full((b, k - m), -1)], dim=1)
    return idx.to(torch.int32), torch.clamp(n_sel, max=k).to(torch.int32)
