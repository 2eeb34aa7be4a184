"""Public GSA ops: validated Python API over ``torch.ops.gsa.*`` custom ops.

Every op is a ``torch.library`` custom op with a fake (meta) implementation, so
it traces under ``torch.compile`` and runs inside CUDA / ACL graph capture
(no op reads device data on the host unless range checks are on, see
:mod:`gsa.validate`). The custom op's body checks its arguments
(:mod:`gsa.op_checks`: every entry point, raw ``torch.ops.gsa`` included, gets
the same checks), makes small index tensors with a non-unit inner stride
contiguous, then asks :mod:`gsa.dispatch` for the backend kernel for the
tensors' device and calls it. The public functions below only turn Python
arguments into the op's schema types (rejecting floats, strings, bools where an
integer is due) and call ``torch.ops.gsa.<name>``, so each check runs once.

Shapes (docs/spec.md): ``B`` rows, ``Hq`` query heads, ``Hkv`` KV heads,
``D`` head dim, ``R`` hash bits, ``C = R/8`` code bytes, ``bs`` block size,
``NB`` physical blocks, ``M`` block-table width, ``T`` tokens.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from gsa import dispatch
from gsa import op_checks as C
from gsa import validate as V

__all__ = [
    "sign_bits_pack",
    "hash_encode",
    "hash_encode_and_cache",
    "mla_hash_encode",
    "mla_hash_encode_and_cache",
    "hamming_dist_top_k",
    "kv_select",
    "paged_decode_attention",
    "mlp_hash_encode",
    "mlp_hash_encode_and_cache",
]

Tensor = torch.Tensor


def _run(op: str, device: torch.device, *args):
    return dispatch.kernel(op, device.type)(*args)


# ----------------------------------------------------------------------------
# custom ops (checks + dispatch) and their fake implementations (checks + shapes)
# ----------------------------------------------------------------------------

@torch.library.custom_op("gsa::sign_bits_pack", mutates_args=())
def _sign_bits_pack(x: Tensor) -> Tensor:
    C.check_sign_bits_pack(x)
    return _run("sign_bits_pack", x.device, x)


@_sign_bits_pack.register_fake
def _(x):
    C.check_sign_bits_pack(x)
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 8), dtype=torch.uint8)


# ``threshold`` (spec 13, centred codes) is an optional trailing argument: ``Tensor?
# threshold=None`` in the schema, so callers without it (and graphs traced before it
# existed) are unchanged. Kernels always receive it (``None`` or the tensor).
@torch.library.custom_op("gsa::hash_encode", mutates_args=())
def _hash_encode(x: Tensor, weight: Tensor, threshold: Optional[Tensor] = None) -> Tensor:
    C.check_hash_encode(x, weight, threshold)
    return _run("hash_encode", x.device, x, weight, threshold)


@_hash_encode.register_fake
def _(x, weight, threshold=None):
    C.check_hash_encode(x, weight, threshold)
    return x.new_empty((*x.shape[:-1], weight.shape[-1] // 8), dtype=torch.uint8)


@torch.library.custom_op("gsa::hash_encode_and_cache", mutates_args=("cache",))
def _hash_encode_and_cache(k: Tensor, weight: Tensor, cache: Tensor, slot_mapping: Tensor,
                           threshold: Optional[Tensor] = None) -> None:
    C.check_hash_encode_and_cache(k, weight, cache, slot_mapping, threshold)
    _run("hash_encode_and_cache", k.device, k, weight, cache, V.unit_inner(slot_mapping), threshold)


@_hash_encode_and_cache.register_fake
def _(k, weight, cache, slot_mapping, threshold=None):
    C.check_hash_encode_and_cache(k, weight, cache, slot_mapping, threshold)
    return None


@torch.library.custom_op("gsa::mla_hash_encode", mutates_args=())
def _mla_hash_encode(x_lora: Tensor, x_rope: Tensor, w_lora: Tensor, w_rope: Tensor) -> Tensor:
    C.check_mla_hash_encode(x_lora, x_rope, w_lora, w_rope)
    return _run("mla_hash_encode", x_lora.device, x_lora, x_rope, w_lora, w_rope)


@_mla_hash_encode.register_fake
def _(x_lora, x_rope, w_lora, w_rope):
    C.check_mla_hash_encode(x_lora, x_rope, w_lora, w_rope)
    c = (w_lora.shape[-1] + w_rope.shape[-1]) // 8
    return x_lora.new_empty((*x_lora.shape[:-1], c), dtype=torch.uint8)


@torch.library.custom_op("gsa::mla_hash_encode_and_cache", mutates_args=("cache",))
def _mla_hash_encode_and_cache(
    c_kv: Tensor, k_pe: Tensor, w_lora: Tensor, w_rope: Tensor, cache: Tensor, slot_mapping: Tensor
) -> None:
    C.check_mla_hash_encode_and_cache(c_kv, k_pe, w_lora, w_rope, cache, slot_mapping)
    _run("mla_hash_encode_and_cache", c_kv.device, c_kv, k_pe, w_lora, w_rope, cache, V.unit_inner(slot_mapping))


@_mla_hash_encode_and_cache.register_fake
def _(c_kv, k_pe, w_lora, w_rope, cache, slot_mapping):
    C.check_mla_hash_encode_and_cache(c_kv, k_pe, w_lora, w_rope, cache, slot_mapping)
    return None


@torch.library.custom_op("gsa::hamming_dist_top_k", mutates_args=())
def _hamming_dist_top_k(
    q_codes: Tensor,
    key_cache: Tensor,
    block_table: Tensor,
    seq_lens: Tensor,
    budgets: Tensor,
    k: int,
    must_select_blocks: List[int],
    chunk_repre_method: str,
    rope_bytes: int,
    rope_score_weight: float,
) -> Tuple[Tensor, Tensor]:
    C.check_hamming_dist_top_k(q_codes, key_cache, block_table, seq_lens, budgets, k, must_select_blocks,
                               chunk_repre_method, rope_bytes, rope_score_weight)
    return _run(
        "hamming_dist_top_k", q_codes.device, q_codes, key_cache, V.unit_inner(block_table),
        V.unit_inner(seq_lens), V.unit_inner(budgets),
        k, list(must_select_blocks), chunk_repre_method, rope_bytes, rope_score_weight,
    )


@_hamming_dist_top_k.register_fake
def _(q_codes, key_cache, block_table, seq_lens, budgets, k, must_select_blocks,
      chunk_repre_method, rope_bytes, rope_score_weight):
    C.check_hamming_dist_top_k(q_codes, key_cache, block_table, seq_lens, budgets, k, must_select_blocks,
                               chunk_repre_method, rope_bytes, rope_score_weight)
    b = q_codes.shape[0]
    return (q_codes.new_empty((b, k), dtype=torch.int32), q_codes.new_empty((b,), dtype=torch.int32))


@torch.library.custom_op("gsa::kv_select", mutates_args=())
def _kv_select(
    indices: Tensor, n_sel: Tensor, block_table: Tensor, seq_lens: Tensor, block_size: int, pad_id: int
) -> Tuple[Tensor, Tensor]:
    C.check_kv_select(indices, n_sel, block_table, seq_lens, block_size, pad_id)
    return _run("kv_select", indices.device, V.unit_inner(indices), V.unit_inner(n_sel),
                V.unit_inner(block_table), V.unit_inner(seq_lens), block_size, pad_id)


@_kv_select.register_fake
def _(indices, n_sel, block_table, seq_lens, block_size, pad_id):
    C.check_kv_select(indices, n_sel, block_table, seq_lens, block_size, pad_id)
    return torch.empty_like(indices, dtype=torch.int32), torch.empty_like(n_sel, dtype=torch.int32)


@torch.library.custom_op("gsa::paged_decode_attention", mutates_args=())
def _paged_decode_attention(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor, seq_lens: Tensor, scale: Optional[float]
) -> Tensor:
    C.check_paged_decode_attention(q, k_cache, v_cache, block_table, seq_lens, scale)
    # q (one token per row, small) gets a unit inner stride too: kernels allocate the
    # output like q and write it with a unit inner stride
    return _run("paged_decode_attention", q.device, V.unit_inner(q), k_cache, v_cache, V.unit_inner(block_table),
                V.unit_inner(seq_lens), scale)


@_paged_decode_attention.register_fake
def _(q, k_cache, v_cache, block_table, seq_lens, scale):
    C.check_paged_decode_attention(q, k_cache, v_cache, block_table, seq_lens, scale)
    return torch.empty_like(V.unit_inner(q))


# ----------------------------------------------------------------------------
# public API: Python arguments -> schema types; the op body checks the rest
# ----------------------------------------------------------------------------

def _tensors(op: str, **named) -> None:
    for arg, t in named.items():
        V.tensor(op, arg, t)


def sign_bits_pack(x: Tensor) -> Tensor:
    """Spec 1. ``x [..., N]`` (fp16/bf16/fp32, ``N % 8 == 0``) -> ``uint8 [..., N/8]``;
    bit ``i`` (LSB first) of byte ``j`` is ``x[..., 8j+i] > 0``."""
    _tensors("sign_bits_pack", x=x)
    return torch.ops.gsa.sign_bits_pack(x)


def _threshold(op: str, threshold: Optional[Tensor]) -> Optional[Tensor]:
    if threshold is not None:
        V.tensor(op, "threshold", threshold)
    return threshold


def hash_encode(x: Tensor, weight: Tensor, threshold: Optional[Tensor] = None) -> Tensor:
    """Spec 2 (+ 13). Hash vectors to bit codes.

    ``x [..., D]`` with ``weight [D, R]``, or ``x [..., H, D]`` with per-head
    ``weight [Hw, D, R]`` (head ``h`` uses ``weight[h // (H // Hw)]``: a query
    head uses its KV head's projection). ``x``: fp16/bf16/fp32; ``R % 32 == 0``.
    ``threshold`` (spec 13, centred key codes; default none): float ``[R]`` with
    ``weight [D, R]``, ``[Hw, R]`` with per-head weights; bit ``r`` is then
    ``x @ W[:, r] > threshold[r]`` (head ``h`` uses row ``h // (H // Hw)``).
    Queries take no threshold (spec 13 says why).
    Returns ``uint8 [..., R/8]`` (or ``[..., H, R/8]``). A vector holding NaN or
    Inf gets an unspecified code (spec 2); the other vectors are unaffected.
    """
    _tensors("hash_encode", x=x, weight=weight)
    return torch.ops.gsa.hash_encode(x, weight, _threshold("hash_encode", threshold))


def hash_encode_and_cache(k: Tensor, weight: Tensor, cache: Tensor, slot_mapping: Tensor,
                          threshold: Optional[Tensor] = None) -> None:
    """Spec 3. Hash keys and write the codes into the paged hash cache, in place.

    ``k [T, Hkv, D]`` fp16/bf16/fp32; ``weight [Hkv, D, R]`` (or shared ``[D, R]``);
    ``cache uint8 [NB, Hkv, bs, R/8]`` (last-dim stride 1, non-overlapping);
    ``slot_mapping int32/int64 [T]``: token ``t`` goes to block ``slot // bs``
    offset ``slot % bs``; ``-1`` skips the token; a slot appears at most once.
    ``threshold``: spec 13's per-bit key threshold ``[Hkv, R]`` (``[R]`` with a
    shared weight), or ``None`` (spec 2's codes).
    """
    _tensors("hash_encode_and_cache", k=k, weight=weight, cache=cache, slot_mapping=slot_mapping)
    torch.ops.gsa.hash_encode_and_cache(k, weight, cache, slot_mapping,
                                        _threshold("hash_encode_and_cache", threshold))


def mla_hash_encode(x_lora: Tensor, x_rope: Tensor, w_lora: Tensor, w_rope: Tensor) -> Tensor:
    """Spec 9. MLA split hash: ``x_lora [..., L]``, ``x_rope [..., P]``,
    ``w_lora [L, R_lora]``, ``w_rope [P, R_rope]`` -> ``uint8 [..., (R_lora+R_rope)/8]``
    (kv_lora bytes, then rope bytes). Keys: ``(c_kv [T, L], k_pe [T, P])``;
    queries: ``(q_nope @ W_UK^T [T, N, L], q_pe [T, N, P])``."""
    _tensors("mla_hash_encode", x_lora=x_lora, x_rope=x_rope, w_lora=w_lora, w_rope=w_rope)
    return torch.ops.gsa.mla_hash_encode(x_lora, x_rope, w_lora, w_rope)


def mla_hash_encode_and_cache(
    c_kv: Tensor, k_pe: Tensor, w_lora: Tensor, w_rope: Tensor, cache: Tensor, slot_mapping: Tensor
) -> None:
    """Spec 3 + 9. ``c_kv [T, L]``, ``k_pe [T, P]``; ``cache uint8 [NB, 1, bs,
    (R_lora+R_rope)/8]`` written in place at ``slot_mapping int32/int64 [T]`` (-1 skips)."""
    _tensors("mla_hash_encode_and_cache", c_kv=c_kv, k_pe=k_pe, w_lora=w_lora, w_rope=w_rope, cache=cache,
             slot_mapping=slot_mapping)
    torch.ops.gsa.mla_hash_encode_and_cache(c_kv, k_pe, w_lora, w_rope, cache, slot_mapping)


def hamming_dist_top_k(
    q_codes: Tensor,
    key_cache: Tensor,
    block_table: Tensor,
    seq_lens: Tensor,
    budgets: Tensor,
    k: int,
    must_select_blocks: Sequence[int] = (),
    chunk_repre_method: str = "max",
    rope_bytes: int = 0,
    rope_score_weight: float = 1.0,
) -> Tuple[Tensor, Tensor]:
    """Spec 4 + 5. Score KV blocks by Hamming similarity and select the top ones.

    ``q_codes uint8 [B, Hq, C]``; ``key_cache uint8 [NB, Hkv, bs, C]`` (MLA:
    ``Hkv = 1``); ``block_table int32 [B, M]``; ``seq_lens int32 [B]`` (>= 1);
    ``budgets int32 [B]`` blocks per row (>= 1); ``k`` static output width, at
    least the largest ``n_sel``; ``must_select_blocks`` forced blocks (integers,
    at most 8 distinct; negative counts from the end); ``chunk_repre_method``
    ``"max"`` or ``"mean"``; the last ``rope_bytes`` code bytes are the MLA rope
    part, weighted by ``rope_score_weight`` (a multiple of 1/16 in [0, 16]).

    Returns ``(indices int32 [B, k], n_sel int32 [B])``: selected logical block
    indices ascending, ``-1`` after ``n_sel``.
    """
    op = "hamming_dist_top_k"
    _tensors(op, q_codes=q_codes, key_cache=key_cache, block_table=block_table, seq_lens=seq_lens, budgets=budgets)
    return torch.ops.gsa.hamming_dist_top_k(
        q_codes, key_cache, block_table, seq_lens, budgets, V.int_arg(op, "k", k),
        V.forced_blocks(op, "must_select_blocks", must_select_blocks),
        V.str_arg(op, "chunk_repre_method", chunk_repre_method, ("max", "mean")),
        V.int_arg(op, "rope_bytes", rope_bytes), V.float_arg(op, "rope_score_weight", rope_score_weight),
    )


def kv_select(
    indices: Tensor, n_sel: Tensor, block_table: Tensor, seq_lens: Tensor, block_size: int, pad_id: int = 0
) -> Tuple[Tensor, Tensor]:
    """Spec 6. Selected blocks -> ``(sparse_block_table int32 [B, K], sparse_seq_lens int32 [B])``.

    ``indices int32 [B, K]``, ``n_sel int32 [B]`` (from :func:`hamming_dist_top_k`),
    ``block_table int32 [B, M]``, ``seq_lens int32 [B]``. The result is a valid
    paged sequence for an unmodified paged-attention kernel; unused entries hold
    ``pad_id`` (an int32 value).
    """
    op = "kv_select"
    _tensors(op, indices=indices, n_sel=n_sel, block_table=block_table, seq_lens=seq_lens)
    return torch.ops.gsa.kv_select(indices, n_sel, block_table, seq_lens, V.int_arg(op, "block_size", block_size),
                                   V.int_arg(op, "pad_id", pad_id))


def paged_decode_attention(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor, seq_lens: Tensor, scale: Optional[float] = None
) -> Tensor:
    """Spec 7. Decode attention over a paged KV cache, fp32 softmax.

    ``q [B, Hq, D]``; ``k_cache, v_cache [NB, bs, Hkv, D]`` (same dtype as ``q``:
    fp16/bf16/fp32); ``block_table int32 [B, M]``; ``seq_lens int32 [B]`` (>= 1).
    Returns ``[B, Hq, D]`` in ``q.dtype``; ``scale`` defaults to ``1/sqrt(D)``.
    Sparse attention: pass ``kv_select``'s table and lengths.
    """
    op = "paged_decode_attention"
    _tensors(op, q=q, k_cache=k_cache, v_cache=v_cache, block_table=block_table, seq_lens=seq_lens)
    if scale is not None:
        scale = V.float_arg(op, "scale", scale)
    return torch.ops.gsa.paged_decode_attention(q, k_cache, v_cache, block_table, seq_lens, scale)


# spec 12 (MLP hash encoder): its custom ops live in their own module
from gsa.ops_mlp import mlp_hash_encode, mlp_hash_encode_and_cache  # noqa: E402
