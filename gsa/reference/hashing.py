"""Reference hashing: spec sections 1, 2, 3, 9 and 12 (docs/spec.md).

Pure torch, any device. Inputs are validated by the custom op (:mod:`gsa.op_checks`).
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = [
    "sign_bits_pack",
    "project",
    "head_thresholds",
    "hash_encode",
    "hash_encode_and_cache",
    "mla_hash_encode",
    "mla_hash_encode_and_cache",
]

# bit i of a byte has weight 2**i: LSB-first, like numpy.packbits(bitorder="little")
_BIT_WEIGHTS = [1 << i for i in range(8)]


def sign_bits_pack(x: torch.Tensor) -> torch.Tensor:
    """Spec 1. ``x [..., N]`` float, ``N % 8 == 0`` -> ``uint8 [..., N/8]``.

    Bit ``i`` of byte ``j`` is 1 iff ``x[..., 8j+i] > 0`` (0, -0 and NaN give 0).
    """
    bits = (x > 0).reshape(*x.shape[:-1], x.shape[-1] // 8, 8).to(torch.int32)
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.int32, device=x.device)
    return (bits * weights).sum(dim=-1).to(torch.uint8)


def _accum_dtype(device: torch.device) -> torch.dtype:
    # The spec's yardstick is a float64 projection; use it wherever the device
    # has float64 matmul. (NPUs do not: fp32 there, which the spec also allows.)
    return torch.float64 if device.type in ("cpu", "cuda") else torch.float32


def project(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The projection ``x @ W`` of spec 2 in float64 (float32 on devices without it).

    ``weight [D, R]`` is shared by every head. ``weight [Hw, D, R]`` is per head:
    ``x [..., H, D]`` with ``H % Hw == 0``; head ``h`` uses ``weight[h // (H // Hw)]``
    (a query head uses its KV head's projection). Returns ``[..., (H,) R]``.
    """
    dt = _accum_dtype(x.device)
    xf, wf = x.to(dt), weight.to(dt)
    if weight.dim() == 2:
        return xf @ wf
    hw = weight.shape[0]
    *lead, h, d = x.shape
    g = h // hw
    y = torch.einsum("...kgd,kdr->...kgr", xf.reshape(*lead, hw, g, d), wf)
    return y.reshape(*lead, h, weight.shape[-1])


def head_thresholds(threshold: torch.Tensor, weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Spec 13: the per-bit threshold of every input head. ``threshold [R]`` (with
    ``weight [D, R]``) or ``[Hw, R]`` (with ``weight [Hw, D, R]``) -> ``[R]`` or
    ``[heads, R]``: head ``h`` uses ``threshold[h // (heads // Hw)]``, like its projection."""
    if weight.dim() == 2:
        return threshold
    return threshold.repeat_interleave(heads // weight.shape[0], dim=0)


def hash_encode(x: torch.Tensor, weight: torch.Tensor, threshold: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Spec 2 (+ 12). ``x [..., D]`` (or ``[..., H, D]`` with per-head ``weight [Hw, D, R]``)
    -> ``uint8 [..., R/8]`` (or ``[..., H, R/8]``) = ``sign_bits_pack(x @ W - t)``.

    ``threshold`` (spec 13, centred codes): ``[R]`` for ``weight [D, R]``, ``[Hw, R]``
    for per-head weights; bit ``r`` is ``x @ W[:, r] > t[r]``. ``None`` means no
    threshold (spec 2 exactly; a zero threshold gives the same bits)."""
    y = project(x, weight)
    if threshold is not None:
        heads = x.shape[-2] if weight.dim() == 3 else 1
        y = y - head_thresholds(threshold, weight, heads).to(y.dtype)
    return sign_bits_pack(y)


def _scatter_codes(codes: torch.Tensor, cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Spec 3: token ``t`` -> block ``slot // bs``, offset ``slot % bs``.

    ``codes [T, H, C]``, ``cache [NB, H, bs, C]``. Slots < 0 are padding and slots
    past the cache are never written (gsa.ops rejects them before we get here
    whenever it can check without a device sync).
    """
    nb, _, bs, _ = cache.shape
    slots = slot_mapping.to(torch.int64)
    keep = (slots >= 0) & (slots < nb * bs)
    slots = slots[keep]
    cache[slots // bs, :, slots % bs, :] = codes[keep].to(cache.dtype)


def hash_encode_and_cache(
    k: torch.Tensor, weight: torch.Tensor, cache: torch.Tensor, slot_mapping: torch.Tensor,
    threshold: Optional[torch.Tensor] = None,
) -> None:
    """Spec 3, GQA. ``k [T, Hkv, D]``, ``weight [Hkv, D, R]`` or ``[D, R]``,
    ``cache uint8 [NB, Hkv, bs, R/8]`` (written in place), ``slot_mapping [T]``;
    ``threshold [Hkv, R]`` (or ``[R]``) or ``None``: spec 13's centred key codes."""
    _scatter_codes(hash_encode(k, weight, threshold), cache, slot_mapping)


def mla_hash_encode(
    x_lora: torch.Tensor, x_rope: torch.Tensor, w_lora: torch.Tensor, w_rope: torch.Tensor
) -> torch.Tensor:
    """Spec 9. ``x_lora [..., L]``, ``x_rope [..., P]``, ``w_lora [L, R_lora]``,
    ``w_rope [P, R_rope]`` -> ``uint8 [..., (R_lora + R_rope)/8]``: the kv_lora
    code bytes, then the rope code bytes. Keys: ``(c_kv [T, L], k_pe [T, P])``;
    queries: ``(q_nope @ W_UK^T [T, N, L], q_pe [T, N, P])``."""
    return torch.cat([hash_encode(x_lora, w_lora), hash_encode(x_rope, w_rope)], dim=-1)


def mla_hash_encode_and_cache(
    c_kv: torch.Tensor,
    k_pe: torch.Tensor,
    w_lora: torch.Tensor,
    w_rope: torch.Tensor,
    cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Spec 3 + 9, MLA. ``c_kv [T, L]``, ``k_pe [T, P]``,
    ``cache uint8 [NB, 1, bs, (R_lora + R_rope)/8]`` (written in place)."""
    codes = mla_hash_encode(c_kv, k_pe, w_lora, w_rope)
    _scatter_codes(codes.unsqueeze(1), cache, slot_mapping)
