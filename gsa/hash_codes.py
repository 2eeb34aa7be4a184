"""Hash codes of queries and keys for any config, whatever its encoder.

``hash_weight_type`` ``random`` / ``file``: the linear hash of spec 2 (``gsa.ops.hash_encode``
with the layer's ``[Hkv, D, R]`` projection, shared by a KV head's query heads; keys take
the config's spec 13 threshold, ``hash_centre``, when it has one);
``mlp``: spec 12 (``gsa.ops.mlp_hash_encode``: the key MLP per KV head, the query MLP
per query head). Callers that only need codes (the eval harness, ``GSASparse``'s
non-hot path) use these three functions and never branch on the encoder.
"""
from __future__ import annotations

from typing import Union

import torch

from gsa import ops
from gsa.config import GSAConfig
from gsa.weights import load_hash_threshold, load_hash_weights, load_mlp_hash_weights

__all__ = ["is_mlp", "query_codes", "key_codes", "cache_key_codes"]

Device = Union[str, torch.device, None]


def is_mlp(cfg: GSAConfig) -> bool:
    return cfg.hash_weight_type == "mlp"


def query_codes(cfg: GSAConfig, layer: int, q: torch.Tensor) -> torch.Tensor:
    """``q [N, Hq, D]`` (post-RoPE) -> ``uint8 [N, Hq, R/8]`` for ``cfg``'s layer ``layer``."""
    if is_mlp(cfg):
        m = load_mlp_hash_weights(cfg, layer, q.device)
        return ops.mlp_hash_encode(q, m.query_weights, m.query_biases)
    return ops.hash_encode(q, load_hash_weights(cfg, layer, q.device))


def key_codes(cfg: GSAConfig, layer: int, k: torch.Tensor) -> torch.Tensor:
    """``k [T, Hkv, D]`` (post-RoPE) -> ``uint8 [T, Hkv, R/8]``."""
    if is_mlp(cfg):
        m = load_mlp_hash_weights(cfg, layer, k.device)
        return ops.mlp_hash_encode(k, m.key_weights, m.key_biases)
    return ops.hash_encode(k, load_hash_weights(cfg, layer, k.device), load_hash_threshold(cfg, layer, k.device))


def cache_key_codes(cfg: GSAConfig, layer: int, k: torch.Tensor, cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Spec 3: ``k [T, Hkv, D]`` hashed into ``cache uint8 [NB, Hkv, bs, R/8]`` at ``slot_mapping [T]``."""
    if is_mlp(cfg):
        m = load_mlp_hash_weights(cfg, layer, k.device)
        ops.mlp_hash_encode_and_cache(k, m.key_weights, m.key_biases, cache, slot_mapping)
    else:
        ops.hash_encode_and_cache(k, load_hash_weights(cfg, layer, k.device), cache, slot_mapping,
                                  load_hash_threshold(cfg, layer, k.device))
