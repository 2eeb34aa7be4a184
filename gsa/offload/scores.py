"""Score-aware eviction for the offload pool: every step's block scores, kept per host block
as an exponentially decayed z-score, become the pool's eviction order (``eviction="score"``).

Why: the selection scores every block of every row at every step; a block that scores high
now but just missed the budget is likely selected soon, and one that has scored low for a
while is not. On real Qwen2.5-0.5B decode traces (ratio 1/8, pool 1/4 of the KV) evicting the
lowest decayed score hits 0.882 of the selected blocks at 16K (least-recent: 0.861) and
fetches less (benchmarks/offload_policy_replay.py, docs/offload_policies.md "Score-aware eviction").

Pieces (all fixed-shape tensor ops on the pool's device: no host sync, capturable):

* :func:`block_scores`: ``float32 [B, M]`` block scores of the layer's selection this step
  (``-inf`` for blocks past a row's length). Where the device's hot path writes its block
  order keys into the layer's buffers (the Triton backend: ``fills_block_keys``; the keys are
  the scores in 1/16 units for ``max``, a monotone int32 image of the float for ``mean``),
  they are read there at no extra cost; elsewhere (CPU, the generic hot path, MLP codes)
  they are recomputed with the pure-torch reference scoring (:mod:`gsa.reference.scoring`:
  exact, but it reads and unpacks the codes again; fine for CPU and tests, slow at 128K).
* :func:`update_priority`: ``prio [NB + 1]`` (NaN: never scored) <- per row z-score of the
  block scores (rows become comparable in a pool they share), decayed:
  ``prio = decay * prio + (1 - decay) * z`` (the first score of a block is taken as is).
* :meth:`gsa.offload.ResidencyMap.set_priority` writes the priority of each resident block
  into the map's eviction key (``last_used``), so the map (torch ops or the fused kernel,
  unchanged) evicts the lowest priority first.

Where the hot path has them (CUDA: ``cuda_ops/offload_residency.py``), the update from the keys
(``priority_update``) and the keys of the slots (``priority_keys``) are one launch each
(:func:`step_scores` / :func:`fold_step_scores` pick the path); the torch ops here are the
reference and every other device's path.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from gsa import hash_codes
from gsa.hotpath import hot_path_for
from gsa.reference import scoring as ref_scoring

__all__ = ["block_scores", "update_priority", "new_priority", "fast_block_scores_available", "step_scores",
           "fold_step_scores"]

Tensor = torch.Tensor
_INT32_MIN = -(2 ** 31)


def new_priority(num_host_blocks: int, device) -> Tensor:
    """``float32 [NB + 1]`` of NaN (never scored); entry ``NB`` is the padding dummy."""
    return torch.full((num_host_blocks + 1,), math.nan, dtype=torch.float32, device=device)


def _hot_keys(gsa, layer: int, batch: int, width: int) -> Optional[Tensor]:
    """The layer's hot-path block keys ``int32 [B, M]`` of its last selection, if the
    device's hot path wrote them (else ``None``)."""
    hot = getattr(gsa, "_hot", {}).get(layer)
    bufs = getattr(hot, "cur", None) if hot is not None else None
    if bufs is None or not bufs.direct or bufs.program is None:
        return None
    keys = bufs.keys
    if keys is None or tuple(keys.shape) != (batch, width):
        return None
    if not getattr(hot_path_for(keys.device), "fills_block_keys", False):
        return None
    return keys


def step_scores(gsa, layer: int, q: Tensor, hash_cache: Tensor, block_table: Tensor, seq_lens: Tensor):
    """What :func:`fold_step_scores` needs of ``layer``'s selection this step (call right after
    it): ``("keys", keys int32 [B, M])`` where the device's hot path wrote its block keys and
    fuses the update (``priority_update``: one launch instead of ~40 ops), else
    ``("scores", float32 [B, M])`` from :func:`block_scores`."""
    b, m = block_table.shape
    keys = _hot_keys(gsa, layer, b, m)
    if keys is not None and hasattr(hot_path_for(keys.device), "priority_update"):
        return ("keys", keys)
    return ("scores", block_scores(gsa, layer, q, hash_cache, block_table, seq_lens))


def fold_step_scores(gsa, got, prio: Tensor, block_table: Tensor, seq_lens: Tensor, decay: float) -> None:
    """Fold :func:`step_scores`' result into ``prio`` (:func:`update_priority`, or the backend's
    fused ``priority_update`` on the keys; same formulas, float32 rounding apart)."""
    kind, t = got
    if kind == "keys":
        hot_path_for(t.device).priority_update(t, block_table, seq_lens, prio, decay, gsa.config.chunk_size,
                                              gsa.config.chunk_repre_method == "mean")
    else:
        update_priority(prio, block_table, t, decay)


def fast_block_scores_available(gsa, layer: int, batch: int, width: int) -> bool:
    """Whether :func:`block_scores` reads the hot path's keys (no recomputation)."""
    return _hot_keys(gsa, layer, batch, width) is not None


def block_scores(gsa, layer: int, q: Tensor, hash_cache: Tensor, block_table: Tensor, seq_lens: Tensor) -> Tensor:
    """Block scores of ``layer``'s selection this step (call right after the layer selected):
    ``q [B, Hq, D]``, ``hash_cache uint8 [NB, Hkv, bs, C]``, ``block_table int32 [B, M]``,
    ``seq_lens int32 [B]`` -> ``float32 [B, M]``, ``-inf`` where a block has no token of the
    row. Higher = nearer; the order (and ties) of the selection's own scores."""
    c = gsa.config
    b, m = block_table.shape
    keys = _hot_keys(gsa, layer, b, m)
    if keys is not None:
        if c.chunk_repre_method == "mean":  # undo the monotone int32 image of the float32 mean
            bits = keys ^ ((keys >> 31) & 0x7FFFFFFF)
            vals = bits.view(torch.float32)
        else:
            vals = keys.to(torch.float32)
        # keys past a row's last block are not written (stale): mask by the row's length
        bs = hash_cache.shape[2]
        live = torch.arange(m, device=keys.device)[None, :] < ((seq_lens.long() + bs - 1) // bs)[:, None]
        return torch.where(live & (keys != _INT32_MIN), vals, -math.inf)
    if q.is_cuda and torch.cuda.is_current_stream_capturing():
        raise ValueError(f"GSA offload: eviction 'score' under CUDA-graph capture needs the hot path's block keys "
                         f"(the Triton backend, linear codes); layer {layer} has none (its scores would be "
                         f"recomputed with host-built tensors)")
    q_codes = hash_codes.query_codes(c, layer, q)
    tok, valid = ref_scoring.token_scores(q_codes, hash_cache, block_table, seq_lens.clamp(min=0))
    return ref_scoring.block_scores(tok, valid, hash_cache.shape[2], c.chunk_repre_method).to(torch.float32)


def update_priority(prio: Tensor, block_table: Tensor, scores: Tensor, decay: float) -> None:
    """Fold one step's block scores into ``prio float32 [NB + 1]`` (in place).

    ``block_table int [B, M]`` host block ids, ``scores float32 [B, M]`` (``-inf``: not a
    block of the row; never read). Per row the finite scores become z-scores (mean 0, std
    1 over the row's blocks), then ``prio[block] = decay * prio[block] + (1 - decay) * z``,
    or ``z`` for a block never scored. A block in several rows (shared prefix) takes one
    of its rows' values."""
    # written in few ops: each is a kernel launch on an accelerator (benchmarks/offload_op_count.py)
    nb = prio.shape[0] - 1
    inv = scores == -math.inf  # scores are finite or -inf (never +inf / NaN)
    cnt = (~inv).sum(dim=1, keepdim=True).clamp_(min=1)
    s = scores.masked_fill(inv, 0.0)
    dev = (s - s.sum(dim=1, keepdim=True) / cnt).masked_fill_(inv, 0.0)
    z = dev * (dev.square().sum(dim=1, keepdim=True) / cnt).clamp_(min=1e-12).rsqrt_()
    ids = block_table.long().masked_fill(inv, nb).view(-1)
    old = prio[ids]
    z = z.view(-1)
    prio.index_put_((ids,), torch.where(old.isnan(), z, torch.lerp(z, old, decay)))
    prio[nb:].fill_(math.nan)
