"""Per-op argument checks, run inside every ``torch.ops.gsa.*`` custom op.

Each ``check_<op>`` runs in the op's body (so ``gsa.ops``, raw ``torch.ops.gsa``,
``torch.compile`` and graph replay all get them) and in its fake implementation
(so tracing fails early with the same message). Two levels, as in
:mod:`gsa.validate`:

* always: dtype, rank, shapes, devices, strides of written tensors, scalar
  arguments. Attribute reads only: no device data, graph-capture safe.
* ``V.range_checks_on(...)``: values (lengths, block ids, slots, ``k``); free on
  CPU tensors, on an accelerator only in debug mode and never while capturing.

Every failure is a :class:`gsa.validate.GSAInputError` naming the argument,
expected vs got. Shapes and names are those of docs/spec.md.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from gsa import validate as V
from gsa.reference.scoring import SCORE_SCALE

Tensor = torch.Tensor


def check_sign_bits_pack(x: Tensor) -> None:
    op = "sign_bits_pack"
    V.tensor(op, "x", x, V.FLOAT_DTYPES, min_dim=1)
    if x.shape[-1] % 8:
        V.fail(op, "x", "last dim a multiple of 8", f"shape {tuple(x.shape)}")


def _check_weight(op: str, arg: str, weight: Tensor, d: int, heads: Optional[int]) -> None:
    V.tensor(op, arg, weight, V.FLOAT_DTYPES)
    if weight.dim() not in (2, 3):
        V.fail(op, arg, "[D, R] or per-head [Hkv, D, R]", f"shape {tuple(weight.shape)}")
    V.size(op, arg, weight, -2, d, "head dim D of the input")
    V.hash_bits(op, arg, weight.shape[-1])
    if weight.dim() == 3:
        if heads is None:
            V.fail(op, arg, "a 2-D [D, R] projection for an input without a head axis", f"shape {tuple(weight.shape)}")
        V.nonempty(op, arg, weight, (0,), "at least one head")
        if heads % weight.shape[0]:
            V.fail(op, arg, f"a head count dividing the input's {heads} heads", f"shape {tuple(weight.shape)}")


def _check_threshold(op: str, threshold: Optional[Tensor], weight: Tensor) -> None:
    """Spec 13: ``threshold`` is ``None`` or a float tensor shaped like the weight
    without its D axis (``[R]`` for ``[D, R]``, ``[Hw, R]`` for ``[Hw, D, R]``), on its device."""
    if threshold is None:
        return
    want = (*weight.shape[:-2], weight.shape[-1])
    V.tensor(op, "threshold", threshold, V.FLOAT_DTYPES)
    if tuple(threshold.shape) != want:
        names = "[R]" if weight.dim() == 2 else "[Hw, R]"
        V.fail(op, "threshold", f"shape {want} {names}: one threshold per hash bit (and head) of weight "
               f"{tuple(weight.shape)}", f"shape {tuple(threshold.shape)}")
    V.same_device(op, weight=weight, threshold=threshold)


def check_hash_encode(x: Tensor, weight: Tensor, threshold: Optional[Tensor] = None) -> None:
    op = "hash_encode"
    V.tensor(op, "x", x, V.FLOAT_DTYPES, min_dim=1)
    _check_weight(op, "weight", weight, x.shape[-1], x.shape[-2] if x.dim() >= 2 else None)
    V.same_device(op, x=x, weight=weight)
    _check_threshold(op, threshold, weight)


def _check_cache(op: str, cache: Tensor, heads: int, code_bytes: int, heads_what: str) -> None:
    V.tensor(op, "cache", cache, (torch.uint8,), dim=4)
    V.size(op, "cache", cache, 1, heads, heads_what)
    V.size(op, "cache", cache, 3, code_bytes, "code bytes")
    V.nonempty(op, "cache", cache, (0, 2), "at least one block of at least one slot")
    V.writable(op, "cache", cache)


def _check_slots(op: str, slot_mapping: Tensor, t: int, cache: Tensor) -> None:
    V.tensor(op, "slot_mapping", slot_mapping, V.SLOT_DTYPES, dim=1)
    V.size(op, "slot_mapping", slot_mapping, 0, t, "one slot per token")
    if V.range_checks_on(slot_mapping):
        n_slots = cache.shape[0] * cache.shape[2]
        slots = V.host_values(slot_mapping).astype(np.int64)
        V.all_in(op, "slot_mapping", slots[slots >= 0], 0, n_slots,
                 f"slots (or -1 for padding) of the cache's NB*bs = {n_slots} slots:")
        V.distinct_slots(op, "slot_mapping", slots)


def check_hash_encode_and_cache(k: Tensor, weight: Tensor, cache: Tensor, slot_mapping: Tensor,
                                threshold: Optional[Tensor] = None) -> None:
    op = "hash_encode_and_cache"
    V.tensor(op, "k", k, V.FLOAT_DTYPES, dim=3)
    _check_weight(op, "weight", weight, k.shape[2], k.shape[1])
    if weight.dim() == 3:
        V.size(op, "weight", weight, 0, k.shape[1], "one projection per KV head")
    _check_cache(op, cache, k.shape[1], weight.shape[-1] // 8, "Hkv of k")
    V.tensor(op, "slot_mapping", slot_mapping)
    V.same_device(op, k=k, weight=weight, cache=cache, slot_mapping=slot_mapping)
    _check_threshold(op, threshold, weight)
    _check_slots(op, slot_mapping, k.shape[0], cache)


def check_mla_hash_encode(x_lora: Tensor, x_rope: Tensor, w_lora: Tensor, w_rope: Tensor,
                          op: str = "mla_hash_encode") -> None:
    V.tensor(op, "x_lora", x_lora, V.FLOAT_DTYPES, min_dim=1)
    V.tensor(op, "x_rope", x_rope, V.FLOAT_DTYPES, min_dim=1)
    if x_lora.shape[:-1] != x_rope.shape[:-1]:
        V.fail(op, "x_rope", f"leading dims {tuple(x_lora.shape[:-1])} (as x_lora)", f"shape {tuple(x_rope.shape)}")
    for arg, w, x in (("w_lora", w_lora, x_lora), ("w_rope", w_rope, x_rope)):
        V.tensor(op, arg, w, V.FLOAT_DTYPES, dim=2)
        V.size(op, arg, w, 0, x.shape[-1], "the input's feature dim")
        V.hash_bits(op, arg, w.shape[1])
    V.same_device(op, x_lora=x_lora, x_rope=x_rope, w_lora=w_lora, w_rope=w_rope)


def check_mla_hash_encode_and_cache(c_kv: Tensor, k_pe: Tensor, w_lora: Tensor, w_rope: Tensor, cache: Tensor,
                                    slot_mapping: Tensor) -> None:
    op = "mla_hash_encode_and_cache"
    check_mla_hash_encode(c_kv, k_pe, w_lora, w_rope, op=op)
    V.tensor(op, "c_kv", c_kv, dim=2)
    V.tensor(op, "k_pe", k_pe, dim=2)
    _check_cache(op, cache, 1, (w_lora.shape[1] + w_rope.shape[1]) // 8, "one latent head (MLA)")
    V.tensor(op, "slot_mapping", slot_mapping)
    V.same_device(op, c_kv=c_kv, cache=cache, slot_mapping=slot_mapping)
    _check_slots(op, slot_mapping, c_kv.shape[0], cache)


def _check_rows(op: str, block_table: Tensor, seq_lens: Tensor, b: int) -> None:
    V.tensor(op, "block_table", block_table, V.INDEX_DTYPES, dim=2)
    V.size(op, "block_table", block_table, 0, b, "one row per request")
    if b:
        V.nonempty(op, "block_table", block_table, (1,), "a row holds at least one block")
    V.tensor(op, "seq_lens", seq_lens, V.INDEX_DTYPES, dim=1)
    V.size(op, "seq_lens", seq_lens, 0, b, "one length per request")


def _check_row_values(op: str, block_table: Tensor, seq_lens: Tensor, bs: int, nb: int) -> np.ndarray:
    """seq_len in [1, M*bs] and every block id a row uses in [0, NB).
    Returns the rows' ``n_blocks`` (numpy int64) for further checks."""
    table, lens = V.host_values(block_table), V.host_values(seq_lens).astype(np.int64)
    m = table.shape[1]
    V.all_in(op, "seq_lens", lens, 1, min(m * bs, V.INT32_MAX - bs) + 1,
             f"lengths >= 1 that fit the block table (M*bs = {m * bs}; at most 2**31-1-bs):")
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


def check_score_args(op: str, hq: int, c: int, rope_bytes: int, rope_score_weight: float) -> None:
    """Spec 4's MLA score arguments for ``hq`` query heads and ``c`` code bytes."""
    if isinstance(rope_bytes, bool) or not isinstance(rope_bytes, int) or not 0 <= rope_bytes < c or rope_bytes % 4:
        V.fail(op, "rope_bytes", f"a multiple of 4 in [0, {c})", rope_bytes)
    w16 = float(rope_score_weight) * SCORE_SCALE
    if not (0 <= w16 <= 16 * SCORE_SCALE) or w16 != int(w16):
        V.fail(op, "rope_score_weight", "a multiple of 1/16 in [0, 16]", rope_score_weight)
    V.score_bound(op, hq, c, rope_bytes, int(w16))


def check_hamming_dist_top_k(q_codes: Tensor, key_cache: Tensor, block_table: Tensor, seq_lens: Tensor,
                             budgets: Tensor, k: int, must_select_blocks: Sequence[int], chunk_repre_method: str,
                             rope_bytes: int, rope_score_weight: float) -> None:
    op = "hamming_dist_top_k"
    V.tensor(op, "q_codes", q_codes, (torch.uint8,), dim=3)
    V.tensor(op, "key_cache", key_cache, (torch.uint8,), dim=4)
    b, hq, c = q_codes.shape
    nb, hkv, bs, _ = key_cache.shape
    V.code_bytes(op, "q_codes", c)
    V.size(op, "key_cache", key_cache, 3, c, "code bytes C of q_codes")
    V.nonempty(op, "key_cache", key_cache, (0, 1, 2), "at least one block, head and slot")
    if hq % hkv:
        V.fail(op, "key_cache", f"a KV head count dividing Hq = {hq}", f"Hkv = {hkv}")
    _check_rows(op, block_table, seq_lens, b)
    V.tensor(op, "budgets", budgets, V.INDEX_DTYPES, dim=1)
    V.size(op, "budgets", budgets, 0, b, "one budget per request")
    V.same_device(op, q_codes=q_codes, key_cache=key_cache, block_table=block_table, seq_lens=seq_lens,
                  budgets=budgets)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= V.INT32_MAX:
        V.fail(op, "k", "an int >= 1 (int32)", k)
    V.check_forced(op, "must_select_blocks", must_select_blocks)
    if chunk_repre_method not in ("max", "mean"):
        V.fail(op, "chunk_repre_method", "'max' or 'mean'", repr(chunk_repre_method))
    check_score_args(op, hq, c, rope_bytes, rope_score_weight)
    if V.range_checks_on(block_table, seq_lens, budgets):
        n_blocks = _check_row_values(op, block_table, seq_lens, bs, nb)
        bud = V.host_values(budgets).astype(np.int64)
        V.all_in(op, "budgets", bud, 1, V.INT32_MAX, "budgets >= 1 block:")
        need = _largest_n_sel(n_blocks, bud, must_select_blocks)
        if k < need:
            V.fail(op, "k", f"at least the largest n_sel ({need})", k)


def check_kv_select(indices: Tensor, n_sel: Tensor, block_table: Tensor, seq_lens: Tensor, block_size: int,
                    pad_id: int) -> None:
    op = "kv_select"
    V.tensor(op, "indices", indices, V.INDEX_DTYPES, dim=2)
    b, kk = indices.shape
    V.tensor(op, "n_sel", n_sel, V.INDEX_DTYPES, dim=1)
    V.size(op, "n_sel", n_sel, 0, b, "one count per row of indices")
    _check_rows(op, block_table, seq_lens, b)
    V.same_device(op, indices=indices, n_sel=n_sel, block_table=block_table, seq_lens=seq_lens)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or not 1 <= block_size <= V.INT32_MAX:
        V.fail(op, "block_size", "an int >= 1 (int32)", block_size)
    if isinstance(pad_id, bool) or not isinstance(pad_id, int) or not -V.INT32_MAX - 1 <= pad_id <= V.INT32_MAX:
        V.fail(op, "pad_id", "an int in the int32 range [-2**31, 2**31-1] (a block table entry)", pad_id)
    if V.range_checks_on(indices, n_sel, seq_lens):
        m = block_table.shape[1]
        lens = V.host_values(seq_lens).astype(np.int64)
        idx, cnt = V.host_values(indices).astype(np.int64), V.host_values(n_sel).astype(np.int64)
        V.all_in(op, "seq_lens", lens, 1, min(m * block_size, V.INT32_MAX - block_size) + 1,
                 f"lengths >= 1 that fit the block table (M*bs = {m * block_size}; at most 2**31-1-bs):")
        V.all_in(op, "n_sel", cnt, 0, kk + 1, f"counts that fit indices' width K = {kk}:")
        n_blocks = (lens + block_size - 1) // block_size
        live = np.arange(kk)[None, :] < cnt[:, None]
        bad_rows = (live & ((idx >= n_blocks[:, None]) | (idx < 0))).any(axis=1)
        if bad_rows.any():
            r = int(np.argmax(bad_rows))
            V.fail(op, "indices", f"logical blocks in [0, n_blocks = {int(n_blocks[r])}) for row {r}",
                   idx[r, : cnt[r]].tolist())


def check_paged_decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor,
                                 seq_lens: Tensor, scale: Optional[float]) -> None:
    op = "paged_decode_attention"
    V.tensor(op, "q", q, V.FLOAT_DTYPES, dim=3)
    b, hq, d = q.shape
    for arg, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        V.tensor(op, arg, cache, (q.dtype,), dim=4)
        V.size(op, arg, cache, 3, d, "head dim D of q")
    if k_cache.shape != v_cache.shape:
        V.fail(op, "v_cache", f"shape {tuple(k_cache.shape)} (as k_cache)", f"shape {tuple(v_cache.shape)}")
    V.nonempty(op, "k_cache", k_cache, (0, 1, 2), "at least one block, slot and head")
    nb, bs, hkv, _ = k_cache.shape
    if hq % hkv:
        V.fail(op, "k_cache", f"a KV head count dividing Hq = {hq}", f"Hkv = {hkv}")
    _check_rows(op, block_table, seq_lens, b)
    V.same_device(op, q=q, k_cache=k_cache, v_cache=v_cache, block_table=block_table, seq_lens=seq_lens)
    if V.range_checks_on(block_table, seq_lens):
        _check_row_values(op, block_table, seq_lens, bs, nb)
