"""The Triton backend's decode hot path (``gsa.hotpath`` calls it through ``gsa.dispatch``).

The same kernels as the ops, called without the op layer: the caller has
validated shapes, dtypes and devices once for the step (``gsa.hotpath``), owns
the output buffers, and launches go through a :class:`~cuda_ops.launch.LaunchCache`
(direct calls of the compiled kernels, see ``launch.py``). A sparse layer's
selection is three launches: query hash, block scores, selection with
``kv_select`` fused; new-key hashing one; attention two (split, reduce).
"""
from __future__ import annotations

import torch

from . import attention, hashing, scoring
from .launch import LaunchCache

__all__ = ["TritonHotPath"]


class TritonHotPath:
    """One per engine (or orchestrator): holds the bound launches."""

    name = "triton"

    def __init__(self) -> None:
        self.cache = LaunchCache()

    def hash_into(self, x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Spec 2 into ``out``: ``x [L, H, D]`` with ``weight [Hw, D, R]`` -> ``out uint8 [L, H, R/8]``."""
        hashing._launch(x, weight, x.shape[1] // weight.shape[0], out, 0, cache=self.cache)
        return out

    def hash_cache(self, k: torch.Tensor, weight: torch.Tensor, hash_cache: torch.Tensor, slots: torch.Tensor) -> None:
        """Spec 3: ``k [T, Hkv, D]``, ``weight [Hkv, D, R]``, ``hash_cache uint8 [NB, Hkv, bs, R/8]``."""
        hashing._launch(k, weight, k.shape[1] // weight.shape[0], hash_cache, 0, slots, cache=self.cache)

    def select_into(self, q_codes, hash_cache, block_table, seq_lens, budgets, k, must_select_blocks,
                    chunk_repre_method, rope_bytes, rope_score_weight, pad_id, keys, table, lens):
        """Spec 4-6 into ``table int32 [B, k]`` and ``lens int32 [B]`` (``keys int32 [B, M]`` scratch)."""
        return scoring.select_blocks(q_codes, hash_cache, block_table, seq_lens, budgets, k, must_select_blocks,
                                     chunk_repre_method, rope_bytes, rope_score_weight, pad_id, keys, table, lens,
                                     cache=self.cache)

    def attention_into(self, q, k_cache, v_cache, block_table, seq_lens, scale, out, work):
        """Spec 7 into ``out [B, Hq, D]``; ``work``: a dict keeping the partials between calls."""
        return attention.paged_decode_attention(q, k_cache, v_cache, block_table, seq_lens, scale,
                                                out=out, work=work, cache=self.cache)
