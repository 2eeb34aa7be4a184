"""The pure-torch reference: every op of docs/spec.md, literally, on any device.

Each op has the same name here, in ``cuda_ops``, ``npu_ops``, ``cpu_ops`` and
``tests``; backends must reproduce these functions (bit-exactly where the spec
says so).
"""
from .attention import paged_decode_attention
from .hashing import (
    hash_encode,
    hash_encode_and_cache,
    mla_hash_encode,
    mla_hash_encode_and_cache,
    project,
    sign_bits_pack,
)
from .scoring import (
    SCORE_SCALE,
    block_scores,
    forced_block_mask,
    hamming_dist_top_k,
    popcount_u8,
    selection_counts,
    token_scores,
)
from .mlp_hashing import BAND, mlp_band, mlp_hash_encode, mlp_hash_encode_and_cache, mlp_project
from .select import block_lengths, kv_select

__all__ = [
    "sign_bits_pack", "project", "hash_encode", "hash_encode_and_cache",
    "mla_hash_encode", "mla_hash_encode_and_cache", "SCORE_SCALE", "popcount_u8",
    "token_scores", "block_scores", "forced_block_mask", "selection_counts",
    "hamming_dist_top_k", "block_lengths", "kv_select", "paged_decode_attention",
    "BAND", "mlp_project", "mlp_band", "mlp_hash_encode", "mlp_hash_encode_and_cache",
]
