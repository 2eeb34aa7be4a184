"""Public GSA ops: validated Python API over ``torch.ops.gsa.*`` custom ops.

Every op is a ``torch.library`` custom op with a fake (meta) implementation, so
it traces under ``torch.compile`` and runs inside CUDA / ACL graph capture
(no op reads device data on the host unless range checks are on, see
:mod:`gsa.validate`). The custom op's body asks :mod:`gsa.dispatch` for the
backend kernel for the tensors' device and calls it.

Shapes (docs/spec.md): ``B`` rows, ``Hq`` query heads, ``Hkv`` KV heads,
``D`` head dim, ``R`` hash bits, ``C = R/8`` code bytes, ``bs`` block size,
``NB`` physical blocks, ``M`` block-table width, ``T`` tokens.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from gsa import dispatch
from gsa import validate as V
from gsa.reference.scoring import SCORE_SCALE

__all__ = [
    "sign_bits_pack",
    "hash_encode",
    "hash_encode_and_cache",
    "mla_hash_encode",
    "mla_hash_encode_and_cache",
    "hamming_dist_top_k",
    "kv_select",
    "paged_decode_attention",
]

Tensor = torch.Tensor


def _run(op: str, device: torch.device, *args):
    return dispatch.kernel(op, device.type)(*args)


# ----------------------------------------------------------------------------
# custom ops (schema + dispatch) and their fake implementations
# ----------------------------------------------------------------------------

@torch.library.custom_op("gsa::sign_bits_pack", mutates_args=())
def _sign_bits_pack(x: Tensor) -> Tensor:
    return _run("sign_bits_pack", x.device, x)


@_sign_bits_pack.register_fake
def _(x):
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 8), dtype=torch.uint8)


@torch.library.custom_op("gsa::hash_encode", mutates_args=())
def _hash_encode(x: Tensor, weight: Tensor) -> Tensor:
    return _run("hash_encode", x.device, x, weight)


@_hash_encode.register_fake
def _(x, weight):
    return x.new_empty((*x.shape[:-1], weight.shape[-1] // 8), dtype=torch.uint8)


@torch.library.custom_op("gsa::hash_encode_and_cache", mutates_args=("cache",))
def _hash_encode_and_cache(k: Tensor, weight: Tensor, cache: Tensor, slot_mapping: Tensor) -> None:
    _run("hash_encode_and_cache", k.device, k, weight, cache, slot_mapping)


@_hash_encode_and_cache.register_fake
def _(k, weight, cache, slot_mapping):
    return None


@torch.library.custom_op("gsa::mla_hash_encode", mutates_args=())
def _mla_hash_encode(x_lora: Tensor, x_rope: Tensor, w_lora: Tensor, w_rope: Tensor) -> Tensor:
    return _run("mla_hash_encode", x_lora.device, x_lora, x_rope, w_lora, w_rope)


@_mla_hash_encode.register_fake
def _(x_lora, x_rope, w_lora, w_rope):
    c = (w_lora.shape[-1] + w_rope.shape[-1]) // 8
    return x_lora.new_empty((*x_lora.shape[:-1], c), dtype=torch.uint8)


@torch.library.custom_op("gsa::mla_hash_encode_and_cache", mutates_args=("cache",))
def _mla_hash_encode_and_cache(
    c_kv: Tensor, k_pe: Tensor, w_lora: Tensor, w_rope: Tensor, cache: Tensor, slot_mapping: Tensor
) -> None:
    _run("mla_hash_encode_and_cache", c_kv.device, c_kv, k_pe, w_lora, w_rope, cache, slot_mapping)


@_mla_hash_encode_and_cache.register_fake
def _(c_kv, k_pe, w_lora, w_rope, cache, slot_mapping):
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
    return _run(
        "hamming_dist_top_k", q_codes.device, q_codes, key_cache, block_table, seq_lens, budgets,
        k, list(must_select_blocks), chunk_repre_method, rope_bytes, rope_score_weight,
    )


@_hamming_dist_top_k.register_fake
def _(q_codes, key_cache, block_table, seq_lens, budgets, k, must_select_blocks,
      chunk_repre_method, rope_bytes, rope_score_weight):
    b = q_codes.shape[0]
    return (q_codes.new_empty((b, k), dtype=torch.int32), q_codes.new_empty((b,), dtype=torch.int32))


@torch.library.custom_op("gsa::kv_select", mutates_args=())
def _kv_select(
    indices: Tensor, n_sel: Tensor, block_table: Tensor, seq_lens: Tensor, block_size: int, pad_id: int
) -> Tuple[Tensor, Tensor]:
    return _run("kv_select", indices.device, indices, n_sel, block_table, seq_lens, block_size, pad_id)


@_kv_select.register_fake
def _(indices, n_sel, block_table, seq_lens, block_size, pad_id):
    return torch.empty_like(indices, dtype=torch.int32), torch.empty_like(n_sel, dtype=torch.int32)


@torch.library.custom_op("gsa::paged_decode_attention", mutates_args=())
def _paged_decode_attention(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor, seq_lens: Tensor, scale: Optional[float]
) -> Tensor:
    return _run("paged_decode_attention", q.device, q, k_cache, v_cache, block_table, seq_lens, scale)


@_paged_decode_attention.register_fake
def _(q, k_cache, v_cache, block_table, seq_lens, scale):
    return torch.empty_like(q)


# ----------------------------------------------------------------------------
# public, validated API
# ----------------------------------------------------------------------------

def sign_bits_pack(x: Tensor) -> Tensor:
    """Spec 1. ``x [..., N]`` (fp16/bf16/fp32, ``N % 8 == 0``) -> ``uint8 [..., N/8]``;
    bit ``i`` (LSB first) of byte ``j`` is ``x[..., 8j+i] > 0``."""
    op = "sign_bits_pack"
    V.tensor(op, "x", x, V.FLOAT_DTYPES, min_dim=1)
    if x.shape[-1] % 8:
        V.fail(op, "x", "last dim a multiple of 8", f"shape {tuple(x.shape)}")
    return torch.ops.gsa.sign_bits_pack(x)


def _check_weight(op: str, arg: str, weight: Tensor, d: int, heads: Optional[int]) -> None:
    V.tensor(op, arg, weight, V.FLOAT_DTYPES)
    if weight.dim() not in (2, 3):
        V.fail(op, arg, "[D, R] or per-head [Hkv, D, R]", f"shape {tuple(weight.shape)}")
    V.size(op, arg, weight, -2, d, "head dim D of the input")
    V.hash_bits(op, arg, weight.shape[-1])
    if weight.dim() == 3:
        if heads is None:
            V.fail(op, arg, "a 2-D [D, R] projection for an input without a head axis", f"shape {tuple(weight.shape)}")
        if heads % weight.shape[0]:
            V.fail(op, arg, f"a head count dividing the input's {heads} heads", f"shape {tuple(weight.shape)}")


def hash_encode(x: Tensor, weight: Tensor) -> Tensor:
    """Spec 2. Hash vectors to bit codes.

    ``x [..., D]`` with ``weight [D, R]``, or ``x [..., H, D]`` with per-head
    ``weight [Hw, D, R]`` (head ``h`` uses ``weight[h // (H // Hw)]``: a query
    head uses its KV head's projection). ``x``: fp16/bf16/fp32; ``R % 32 == 0``.
    Returns ``uint8 [..., R/8]`` (or ``[..., H, R/8]``).
    """
    op = "hash_encode"
    V.tensor(op, "x", x, V.FLOAT_DTYPES, min_dim=1)
    _check_weight(op, "weight", weight, x.shape[-1], x.shape[-2] if x.dim() >= 2 else None)
    V.same_device(op, x=x, weight=weight)
    return torch.ops.gsa.hash_encode(x, weight)


def _check_slots(op: str, slot_mapping: Tensor, t: int, cache: Tensor) -> None:
    V.tensor(op, "slot_mapping", slot_mapping, V.SLOT_DTYPES, dim=1)
    V.size(op, "slot_mapping", slot_mapping, 0, t, "one slot per token")
    if V.range_checks_on(slot_mapping):
        n_slots = cache.shape[0] * cache.shape[2]
        slots = V.host_values(slot_mapping)
        V.all_in(op, "slot_mapping", slots[slots >= 0], 0, n_slots,
                 f"slots (or -1 for padding) of the cache's NB*bs = {n_slots} slots:")


def hash_encode_and_cache(k: Tensor, weight: Tensor, cache: Tensor, slot_mapping: Tensor) -> None:
    """Spec 3. Hash keys and write the codes into the paged hash cache, in place.

    ``k [T, Hkv, D]`` fp16/bf16/fp32; ``weight [Hkv, D, R]`` (or shared ``[D, R]``);
    ``cache uint8 [NB, Hkv, bs, R/8]``; ``slot_mapping int32/int64 [T]``: token
    ``t`` goes to block ``slot // bs`` offset ``slot % bs``; ``-1`` skips the token.
    """
    op = "hash_encode_and_cache"
    V.tensor(op, "k", k, V.FLOAT_DTYPES, dim=3)
    _check_weight(op, "weight", weight, k.shape[2], k.shape[1])
    if weight.dim() == 3:
        V.size(op, "weight", weight, 0, k.shape[1], "one projection per KV head")
    V.tensor(op, "cache", cache, (torch.uint8,), dim=4)
    V.size(op, "cache", cache, 1, k.shape[1], "Hkv of k")
    V.size(op, "cache", cache, 3, weight.shape[-1] // 8, "R/8 code bytes")
    V.same_device(op, k=k, weight=weight, cache=cache, slot_mapping=slot_mapping)
    _check_slots(op, slot_mapping, k.shape[0], cache)
    torch.ops.gsa.hash_encode_and_cache(k, weight, cache, slot_mapping)


def _check_mla(op: str, x_lora: Tensor, x_rope: Tensor, w_lora: Tensor, w_rope: Tensor) -> None:
    V.tensor(op, "x_lora", x_lora, V.FLOAT_DTYPES, min_dim=1)
    V.tensor(op, "x_rope", x_rope, V.FLOAT_DTYPES, min_dim=1)
    if x_lora.shape[:-1] != x_rope.shape[:-1]:
        V.fail(op, "x_rope", f"leading dims {tuple(x_lora.shape[:-1])} (as x_lora)", f"shape {tuple(x_rope.shape)}")
    for arg, w, x in (("w_lora", w_lora, x_lora), ("w_rope", w_rope, x_rope)):
        V.tensor(op, arg, w, V.FLOAT_DTYPES, dim=2)
        V.size(op, arg, w, 0, x.shape[-1], "the input's feature dim")
        V.hash_bits(op, arg, w.shape[1])
    V.same_device(op, x_lora=x_lora, x_rope=x_rope, w_lora=w_lora, w_rope=w_rope)


def mla_hash_encode(x_lora: Tensor, x_rope: Tensor, w_lora: Tensor, w_rope: Tensor) -> Tensor:
    """Spec 9. MLA split hash: ``x_lora [..., L]``, ``x_rope [..., P]``,
    ``w_lora [L, R_lora]``, ``w_rope [P, R_rope]`` -> ``uint8 [..., (R_lora+R_rope)/8]``
    (kv_lora bytes, then rope bytes). Keys: ``(c_kv [T, L], k_pe [T, P])``;
    queries: ``(q_nope @ W_UK^T [T, N, L], q_pe [T, N, P])``."""
    _check_mla("mla_hash_encode", x_lora, x_rope, w_lora, w_rope)
    return torch.ops.gsa.mla_hash_encode(x_lora, x_rope, w_lora, w_rope)


def mla_hash_encode_and_cache(
    c_kv: Tensor, k_pe: Tensor, w_lora: Tensor, w_rope: Tensor, cache: Tensor, slot_mapping: Tensor
) -> None:
    """Spec 3 + 9. ``c_kv [T, L]``, ``k_pe [T, P]``; ``cache uint8 [NB, 1, bs,
    (R_lora+R_rope)/8]`` written in place at ``slot_mapping int32/int64 [T]`` (-1 skips)."""
    op = "mla_hash_encode_and_cache"
    _check_mla(op, c_kv, k_pe, w_lora, w_rope)
    V.tensor(op, "c_kv", c_kv, dim=2)
    V.tensor(op, "k_pe", k_pe, dim=2)
    V.tensor(op, "cache", cache, (torch.uint8,), dim=4)
    V.size(op, "cache", cache, 1, 1, "one latent head (MLA)")
    V.size(op, "cache", cache, 3, (w_lora.shape[1] + w_rope.shape[1]) // 8, "(R_lora + R_rope)/8 code bytes")
    V.same_device(op, c_kv=c_kv, cache=cache, slot_mapping=slot_mapping)
    _check_slots(op, slot_mapping, c_kv.shape[0], cache)
    torch.ops.gsa.mla_hash_encode_and_cache(c_kv, k_pe, w_lora, w_rope, cache, slot_mapping)


def _check_rows(op: str, block_table: Tensor, seq_lens: Tensor, b: int) -> None:
    V.tensor(op, "block_table", block_table, V.INDEX_DTYPES, dim=2)
    V.size(op, "block_table", block_table, 0, b, "one row per request")
    V.tensor(op, "seq_lens", seq_lens, V.INDEX_DTYPES, dim=1)
    V.size(op, "seq_lens", seq_lens, 0, b, "one length per request")


def _check_row_values(op: str, block_table: Tensor, seq_lens: Tensor, bs: int, nb: int):
    """seq_len in [1, M*bs] and every block id a row uses in [0, NB).
    Returns the rows' ``n_blocks`` (numpy int64) for further checks."""
    table, lens = V.host_values(block_table), V.host_values(seq_lens).astype(np.int64)
    m = table.shape[1]
    V.all_in(op, "seq_lens", lens, 1, m * bs + 1, f"lengths >= 1 that fit the block table (M*bs = {m * bs}):")
    n_blocks = (lens + bs - 1) // bs
    used = np.arange(m)[None, :] < n_blocks[:, None]
    V.all_in(op, "block_table", table[used], 0, nb, f"physical block ids of the cache's {nb} blocks:")
    return n_blocks


def _largest_n_sel(n_blocks: np.ndarray, budgets: np.ndarray, forced: Sequence[int]) -> int:
    """Spec 5's n_sel from host data: all blocks if budget >= n_blocks, else
    max(budget, number of distinct in-range forced blocks)."""
    n_forced = np.array([len({m if m >= 0 else int(n) + m for m in forced} & set(range(int(n))))
                         for n in n_blocks], dtype=np.int64)
    n_sel = np.where(budgets >= n_blocks, n_blocks, np.maximum(budgets, n_forced))
    return int(n_sel.max()) if n_sel.size else 0


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
    least the largest ``n_sel``; ``must_select_blocks`` forced blocks (negative
    counts from the end); ``chunk_repre_method`` ``"max"`` or ``"mean"``; the last
    ``rope_bytes`` code bytes are the MLA rope part, weighted by
    ``rope_score_weight`` (a multiple of 1/16 in [0, 16]).

    Returns ``(indices int32 [B, k], n_sel int32 [B])``: selected logical block
    indices ascending, ``-1`` after ``n_sel``.
    """
    op = "hamming_dist_top_k"
    V.tensor(op, "q_codes", q_codes, (torch.uint8,), dim=3)
    V.tensor(op, "key_cache", key_cache, (torch.uint8,), dim=4)
    b, hq, c = q_codes.shape
    nb, hkv, bs, _ = key_cache.shape
    V.code_bytes(op, "q_codes", c)
    V.size(op, "key_cache", key_cache, 3, c, "code bytes C of q_codes")
    if hq % hkv:
        V.fail(op, "key_cache", f"a KV head count dividing Hq = {hq}", f"Hkv = {hkv}")
    _check_rows(op, block_table, seq_lens, b)
    V.tensor(op, "budgets", budgets, V.INDEX_DTYPES, dim=1)
    V.size(op, "budgets", budgets, 0, b, "one budget per request")
    V.same_device(op, q_codes=q_codes, key_cache=key_cache, block_table=block_table, seq_lens=seq_lens, budgets=budgets)
    if not isinstance(k, int) or k < 1:
        V.fail(op, "k", "an int >= 1", k)
    if chunk_repre_method not in ("max", "mean"):
        V.fail(op, "chunk_repre_method", "'max' or 'mean'", repr(chunk_repre_method))
    if not isinstance(rope_bytes, int) or rope_bytes < 0 or rope_bytes >= c or rope_bytes % 4:
        V.fail(op, "rope_bytes", f"a multiple of 4 in [0, {c})", rope_bytes)
    w16 = float(rope_score_weight) * SCORE_SCALE
    if not (0 <= w16 <= 16 * SCORE_SCALE) or w16 != int(w16):
        V.fail(op, "rope_score_weight", "a multiple of 1/16 in [0, 16]", rope_score_weight)
    forced = [int(m) for m in must_select_blocks]
    if V.range_checks_on(block_table, seq_lens, budgets):
        n_blocks = _check_row_values(op, block_table, seq_lens, bs, nb)
        bud = V.host_values(budgets).astype(np.int64)
        V.all_in(op, "budgets", bud, 1, 2**31 - 1, "budgets >= 1 block:")
        need = _largest_n_sel(n_blocks, bud, forced)
        if k < need:
            V.fail(op, "k", f"at least the largest n_sel ({need})", k)
    return torch.ops.gsa.hamming_dist_top_k(
        q_codes, key_cache, block_table, seq_lens, budgets, k, forced,
        chunk_repre_method, rope_bytes, float(rope_score_weight),
    )


def kv_select(
    indices: Tensor, n_sel: Tensor, block_table: Tensor, seq_lens: Tensor, block_size: int, pad_id: int = 0
) -> Tuple[Tensor, Tensor]:
    """Spec 6. Selected blocks -> ``(sparse_block_table int32 [B, K], sparse_seq_lens int32 [B])``.

    ``indices int32 [B, K]``, ``n_sel int32 [B]`` (from :func:`hamming_dist_top_k`),
    ``block_table int32 [B, M]``, ``seq_lens int32 [B]``. The result is a valid
    paged sequence for an unmodified paged-attention kernel; unused entries hold ``pad_id``.
    """
    op = "kv_select"
    V.tensor(op, "indices", indices, V.INDEX_DTYPES, dim=2)
    b, kk = indices.shape
    V.tensor(op, "n_sel", n_sel, V.INDEX_DTYPES, dim=1)
    V.size(op, "n_sel", n_sel, 0, b, "one count per row of indices")
    _check_rows(op, block_table, seq_lens, b)
    V.same_device(op, indices=indices, n_sel=n_sel, block_table=block_table, seq_lens=seq_lens)
    if not isinstance(block_size, int) or block_size < 1:
        V.fail(op, "block_size", "an int >= 1", block_size)
    if V.range_checks_on(indices, n_sel, seq_lens):
        m = block_table.shape[1]
        lens = V.host_values(seq_lens).astype(np.int64)
        idx, cnt = V.host_values(indices).astype(np.int64), V.host_values(n_sel).astype(np.int64)
        V.all_in(op, "seq_lens", lens, 1, m * block_size + 1, f"lengths >= 1 that fit the block table (M*bs = {m * block_size}):")
        V.all_in(op, "n_sel", cnt, 0, kk + 1, f"counts that fit indices' width K = {kk}:")
        n_blocks = (lens + block_size - 1) // block_size
        live = np.arange(kk)[None, :] < cnt[:, None]
        bad_rows = (live & ((idx >= n_blocks[:, None]) | (idx < 0))).any(axis=1)
        if bad_rows.any():
            r = int(np.argmax(bad_rows))
            V.fail(op, "indices", f"logical blocks in [0, n_blocks = {int(n_blocks[r])}) for row {r}",
                   idx[r, : cnt[r]].tolist())
    return torch.ops.gsa.kv_select(indices, n_sel, block_table, seq_lens, block_size, pad_id)


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
    V.tensor(op, "q", q, V.FLOAT_DTYPES, dim=3)
    b, hq, d = q.shape
    for arg, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        V.tensor(op, arg, cache, (q.dtype,), dim=4)
        V.size(op, arg, cache, 3, d, "head dim D of q")
    if k_cache.shape != v_cache.shape:
        V.fail(op, "v_cache", f"shape {tuple(k_cache.shape)} (as k_cache)", f"shape {tuple(v_cache.shape)}")
    nb, bs, hkv, _ = k_cache.shape
    if hq % hkv:
        V.fail(op, "k_cache", f"a KV head count dividing Hq = {hq}", f"Hkv = {hkv}")
    _check_rows(op, block_table, seq_lens, b)
    V.same_device(op, q=q, k_cache=k_cache, v_cache=v_cache, block_table=block_table, seq_lens=seq_lens)
    if V.range_checks_on(block_table, seq_lens):
        _check_row_values(op, block_table, seq_lens, bs, nb)
    return torch.ops.gsa.paged_decode_attention(q, k_cache, v_cache, block_table, seq_lens, scale)
