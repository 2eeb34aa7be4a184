"""Python side of the C++ CPU backend: torch CPU tensors -> raw buffers, zero-copy.

Each function has the exact signature of its ``torch.ops.gsa.<op>`` (inputs
already validated inside the custom op, :mod:`gsa.op_checks`); it makes inputs contiguous (a no-op for
the usual contiguous tensors), allocates outputs with torch and hands data
pointers and shapes to ``cpu_ops._gsa_cpu``, which runs without the GIL.
Shapes and dtypes are those of docs/spec.md; see each docstring.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from cpu_ops import extension

__all__ = [
    "KERNELS", "sign_bits_pack", "project", "hash_encode", "hash_encode_and_cache", "mla_hash_encode",
    "mla_hash_encode_and_cache", "hamming_dist_top_k", "kv_select",
]

Tensor = torch.Tensor

# dtype codes of gsa_cpu::DType (csrc/ops.h)
_DTYPE_CODE = {torch.float64: 0, torch.float32: 1, torch.float16: 2, torch.bfloat16: 3}
_SCORE_SCALE = 16  # spec 4 (v1.1): scores carried in 1/16 units


def _pack_into(y: Tensor, out: Tensor, offset: int, stride: int) -> None:
    """Pack ``y [..., N]`` (float) into ``out`` rows of ``stride`` bytes at byte ``offset``."""
    y = y.contiguous()
    n = y.shape[-1]
    rows = y.numel() // n if n else 0
    if rows == 0 or n == 0:
        return
    extension().sign_bits_pack(y.data_ptr(), _DTYPE_CODE[y.dtype], rows, n, out.data_ptr() + offset, stride)


def sign_bits_pack(x: Tensor) -> Tensor:
    """Spec 1. ``x [..., N]`` fp16/bf16/fp32/fp64 -> ``uint8 [..., N/8]``, bit i of byte j = ``x[..., 8j+i] > 0``.

    The C++ code tests the raw bits (0 < bits <= +inf), so 0, -0 and NaN give 0 in every dtype.
    """
    n = x.shape[-1]
    out = torch.empty((*x.shape[:-1], n // 8), dtype=torch.uint8)
    _pack_into(x, out, 0, n // 8)
    return out


def project(x: Tensor, weight: Tensor) -> Tensor:
    """Spec 2 projection in float64 (a torch matmul; spec 2 allows fp32-or-wider accumulation).

    ``x [..., D]`` with ``weight [D, R]`` -> ``[..., R]``; ``x [..., H, D]`` with per-head
    ``weight [Hw, D, R]`` (head h uses ``weight[h // (H // Hw)]``) -> ``[..., H, R]``.
    """
    xf, wf = x.to(torch.float64), weight.to(torch.float64)
    if weight.dim() == 2:
        return torch.matmul(xf, wf)
    hw, _, r = weight.shape
    *lead, h, d = x.shape
    # einsum, not a broadcast matmul: torch.matmul expands wf over the batch dims
    # (a [T, Hw, D, R] copy; ~34x slower and ~20x the memory at [4096, 8, 128] @ [8, 128, 128])
    y = torch.einsum("...kgd,kdr->...kgr", xf.reshape(*lead, hw, h // hw, d), wf)
    return y.reshape(*lead, h, r)


def hash_encode(x: Tensor, weight: Tensor, threshold: Optional[Tensor] = None) -> Tensor:
    """Spec 2 (+ 12). ``x [..., (H,) D]``, ``weight [D, R]`` or ``[Hw, D, R]`` -> ``uint8 [..., (H,) R/8]``.

    ``threshold`` ``[R]`` / ``[Hw, R]`` (spec 13): bit = float64 projection ``> float64(t)``,
    compared in C++ (``threshold_pack``); ``None``: the plain sign pack."""
    y = project(x, weight)
    if threshold is None:
        return sign_bits_pack(y)
    r = weight.shape[-1]
    heads = y.shape[-2] if weight.dim() == 3 else 1
    group = heads // weight.shape[0] if weight.dim() == 3 else 1
    y = y.contiguous()
    thr = threshold.to(torch.float32).contiguous()
    out = torch.empty((*y.shape[:-1], r // 8), dtype=torch.uint8)
    rows = y.numel() // r
    if rows:
        extension().threshold_pack(y.data_ptr(), rows, r, thr.data_ptr(), heads, group, out.data_ptr(), r // 8)
    return out


def _scatter(codes: Tensor, cache: Tensor, slot_mapping: Tensor) -> None:
    """Spec 3. ``codes uint8 [T, H, C]`` -> ``cache uint8 [NB, H, bs, C]`` in place at
    ``slot_mapping int32/int64 [T]``; slots < 0 (padding) and >= NB*bs are never written."""
    nb, h, bs, c = cache.shape
    t = codes.shape[0]
    if t == 0 or nb == 0:
        return
    slots = slot_mapping.contiguous()
    if cache.is_contiguous():
        codes = codes.contiguous()
        extension().scatter_codes(codes.data_ptr(), t, h, c, cache.data_ptr(), nb, bs, slots.data_ptr(),
                                  slots.dtype == torch.int64)
        return
    # a strided cache view: same rule through torch indexing (rare; keeps the write in place)
    s = slots.to(torch.int64)
    keep = (s >= 0) & (s < nb * bs)
    s = s[keep]
    cache[s // bs, :, s % bs, :] = codes[keep]


def hash_encode_and_cache(k: Tensor, weight: Tensor, cache: Tensor, slot_mapping: Tensor,
                          threshold: Optional[Tensor] = None) -> None:
    """Spec 3, GQA. ``k [T, Hkv, D]``, ``weight [Hkv, D, R]`` or ``[D, R]``,
    ``cache uint8 [NB, Hkv, bs, R/8]`` (in place), ``slot_mapping int32/int64 [T]``,
    ``threshold [Hkv, R]`` / ``[R]`` or ``None`` (spec 13)."""
    _scatter(hash_encode(k, weight, threshold), cache, slot_mapping)


def mla_hash_encode(x_lora: Tensor, x_rope: Tensor, w_lora: Tensor, w_rope: Tensor) -> Tensor:
    """Spec 9. ``x_lora [..., L]``, ``x_rope [..., P]``, ``w_lora [L, Rl]``, ``w_rope [P, Rr]``
    -> ``uint8 [..., (Rl + Rr)/8]``: lora code bytes, then rope code bytes (packed in place)."""
    cl, cr = w_lora.shape[-1] // 8, w_rope.shape[-1] // 8
    out = torch.empty((*x_lora.shape[:-1], cl + cr), dtype=torch.uint8)
    _pack_into(project(x_lora, w_lora), out, 0, cl + cr)
    _pack_into(project(x_rope, w_rope), out, cl, cl + cr)
    return out


def mla_hash_encode_and_cache(
    c_kv: Tensor, k_pe: Tensor, w_lora: Tensor, w_rope: Tensor, cache: Tensor, slot_mapping: Tensor
) -> None:
    """Spec 3 + 9. ``c_kv [T, L]``, ``k_pe [T, P]``, ``cache uint8 [NB, 1, bs, (Rl+Rr)/8]`` (in place)."""
    _scatter(mla_hash_encode(c_kv, k_pe, w_lora, w_rope).unsqueeze(1), cache, slot_mapping)


def hamming_dist_top_k(
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
    """Spec 4 + 5, fused in C++. ``q_codes uint8 [B, Hq, C]``, ``key_cache uint8 [NB, Hkv, bs, C]``,
    ``block_table int32 [B, M]``, ``seq_lens int32 [B]``, ``budgets int32 [B]`` ->
    ``(indices int32 [B, k], n_sel int32 [B])``."""
    q, kc = q_codes.contiguous(), key_cache.contiguous()
    bt, sl, bud = block_table.contiguous(), seq_lens.contiguous(), budgets.contiguous()
    b, hq, c = q.shape
    nb, hkv, bs, _ = kc.shape
    idx = torch.empty((b, k), dtype=torch.int32)
    n_sel = torch.empty((b,), dtype=torch.int32)
    if b == 0:
        return idx, n_sel
    w16 = int(round(float(rope_score_weight) * _SCORE_SCALE))
    extension().hamming_dist_top_k(
        q.data_ptr(), kc.data_ptr(), bt.data_ptr(), sl.data_ptr(), bud.data_ptr(),
        b, hq, hkv, c, nb, bs, bt.shape[1], k, [int(m) for m in must_select_blocks],
        chunk_repre_method == "mean", int(rope_bytes), w16, idx.data_ptr(), n_sel.data_ptr(),
    )
    return idx, n_sel


def kv_select(
    indices: Tensor, n_sel: Tensor, block_table: Tensor, seq_lens: Tensor, block_size: int, pad_id: int
) -> Tuple[Tensor, Tensor]:
    """Spec 6. ``indices int32 [B, K]``, ``n_sel int32 [B]``, ``block_table int32 [B, M]``,
    ``seq_lens int32 [B]`` -> ``(sparse_block_table int32 [B, K], sparse_seq_lens int32 [B])``."""
    idx, ns = indices.contiguous(), n_sel.contiguous()
    bt, sl = block_table.contiguous(), seq_lens.contiguous()
    b, kk = idx.shape
    table = torch.empty((b, kk), dtype=torch.int32)
    lens = torch.empty((b,), dtype=torch.int32)
    if b == 0:
        return table, lens
    if bt.shape[1] == 0:  # nothing to gather from: every entry is padding
        return table.fill_(pad_id), lens.zero_()
    extension().kv_select(idx.data_ptr(), ns.data_ptr(), bt.data_ptr(), sl.data_ptr(), b, kk, bt.shape[1],
                          block_size, int(pad_id), table.data_ptr(), lens.data_ptr())
    return table, lens


# op name -> kernel; paged_decode_attention is absent on purpose (dispatch uses the reference)
KERNELS = {
    "sign_bits_pack": sign_bits_pack,
    "hash_encode": hash_encode,
    "hash_encode_and_cache": hash_encode_and_cache,
    "mla_hash_encode": mla_hash_encode,
    "mla_hash_encode_and_cache": mla_hash_encode_and_cache,
    "hamming_dist_top_k": hamming_dist_top_k,
    "kv_select": kv_select,
}
