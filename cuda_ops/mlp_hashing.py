"""Triton kernels of spec 12 (docs/spec.md): the MLP hash encoder, fused.

One program hashes a tile of ``BLOCK_T`` tokens of one head: the tile goes
through the head's 1-3 layer MLP as fp32 matrix products (``input_precision =
"ieee"``: spec 12 forbids TF32), SiLU between layers, then the signs are packed
LSB-first (spec 1, the packing helper of :mod:`cuda_ops.hashing`) and written
either as plain codes or straight into the paged hash cache by slot (spec 3), so
the ``[T, H, R]`` projection never reaches memory.

Widths are padded to powers of two (and at least 16, for ``tl.dot``); padded
weight rows/columns and biases load as 0, and ``SiLU(0) = 0``, so padding never
leaks into real outputs. Plain codes use the cache path on a ``[N, H, 1, C]``
view (row ``t`` -> slot ``t``). The query side of a decode step is one small
call of :func:`mlp_hash_encode`.
"""
from __future__ import annotations

from typing import List

import torch
import triton
import triton.language as tl

from .hashing import _pack_cols
from .launch import cdiv, launch, next_pow2

__all__ = ["mlp_hash_encode", "mlp_hash_encode_and_cache"]

Tensor = torch.Tensor


@triton.jit
def _layer(a, w_ptr, b_ptr, h, IN, OUT, BIN: tl.constexpr, BOUT: tl.constexpr, SILU: tl.constexpr):
    """``a fp32 [BT, BIN]`` -> ``a @ W[h] + b[h]`` (then SiLU) ``[BT, BOUT]``;
    ``W [H, IN, OUT]``, ``b [H, OUT]`` contiguous fp32."""
    i = tl.arange(0, BIN)
    o = tl.arange(0, BOUT)
    w = tl.load(w_ptr + h.to(tl.int64) * IN * OUT + i[:, None] * OUT + o[None, :],
                mask=(i < IN)[:, None] & (o < OUT)[None, :], other=0.0)
    b = tl.load(b_ptr + h.to(tl.int64) * OUT + o, mask=o < OUT, other=0.0)
    y = tl.dot(a, w, input_precision="ieee") + b[None, :]
    if SILU:
        y = y / (1.0 + tl.exp(-y))
    return y


@triton.jit
def _mlp_hash_kernel(
    x_ptr, w1, b1, w2, b2, w3, b3, out_ptr, slot_ptr,
    T, D, F, R, NSLOTS, BS,
    sx_t, sx_h, sx_d, sc_n, sc_h, sc_t,
    NUM_LAYERS: tl.constexpr, HAS_SLOTS: tl.constexpr,
    BLOCK_T: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr, BR: tl.constexpr,
):
    """Tokens ``[t0, t0 + BLOCK_T)`` (axis 0) of head ``h`` (axis 1). ``x [T, H, D]``
    (any strides); layer widths ``D -> F -> .. -> R``; ``out`` the cache ``uint8
    [NB, H, BS, R/8]`` (strides in bytes); slot ``< 0`` or ``>= NSLOTS``: not written."""
    h = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    rmask = rows < T
    dd = tl.arange(0, BD)
    a = tl.load(x_ptr + rows[:, None].to(tl.int64) * sx_t + h * sx_h + dd[None, :] * sx_d,
                mask=rmask[:, None] & (dd < D)[None, :], other=0.0).to(tl.float32)
    if NUM_LAYERS == 1:
        y = _layer(a, w1, b1, h, D, R, BD, BR, False)
    elif NUM_LAYERS == 2:
        a1 = _layer(a, w1, b1, h, D, F, BD, BF, True)
        y = _layer(a1, w2, b2, h, F, R, BF, BR, False)
    else:
        a1 = _layer(a, w1, b1, h, D, F, BD, BF, True)
        a2 = _layer(a1, w2, b2, h, F, F, BF, BF, True)
        y = _layer(a2, w3, b3, h, F, R, BF, BR, False)
    packed = _pack_cols((y > 0).to(tl.int32), BLOCK_T, BR // 8)  # NaN > 0 is false (spec 1)
    if HAS_SLOTS:
        slot = tl.load(slot_ptr + rows, mask=rmask, other=-1).to(tl.int64)
    else:
        slot = rows.to(tl.int64)
    ok = rmask & (slot >= 0) & (slot < NSLOTS)
    slot = tl.where(ok, slot, 0)
    c = tl.arange(0, BR // 8)
    base = out_ptr + (slot // BS) * sc_n + h * sc_h + (slot % BS) * sc_t
    tl.store(base[:, None] + c[None, :], packed.to(tl.uint8), mask=ok[:, None] & (c < R // 8)[None, :])


def _launch(x: Tensor, weights: List[Tensor], biases: List[Tensor], cache: Tensor, slots) -> None:
    t, h, d = x.shape
    if t == 0:
        return
    ws = [w.contiguous() for w in weights]
    bs_ = [b.contiguous() for b in biases]
    n_layers = len(ws)
    f = ws[0].shape[2] if n_layers > 1 else 16
    r = ws[-1].shape[2]
    while len(ws) < 3:  # unused layers: any valid pointer (never read; NUM_LAYERS is a constexpr)
        ws.append(ws[0])
        bs_.append(bs_[0])
    nb, _, bsz, _ = cache.shape
    block_t = 16 if t <= 16 else 32
    grid = (cdiv(t, block_t), h)
    launch(_mlp_hash_kernel, grid,
           (x, ws[0], bs_[0], ws[1], bs_[1], ws[2], bs_[2], cache, slots if slots is not None else cache,
            t, d, f, r, nb * bsz, bsz, x.stride(0), x.stride(1), x.stride(2),
            cache.stride(0), cache.stride(1), cache.stride(2)),
           dict(NUM_LAYERS=n_layers, HAS_SLOTS=slots is not None, BLOCK_T=block_t,
                BD=max(16, next_pow2(d)), BF=max(16, next_pow2(f)), BR=max(16, next_pow2(r))))


def mlp_hash_encode(x: Tensor, weights: List[Tensor], biases: List[Tensor]) -> Tensor:
    """Spec 12. ``x [N, H, D]`` fp16/bf16/fp32 -> ``uint8 [N, H, R/8]``."""
    n, h, _ = x.shape
    out = torch.empty((n, h, 1, weights[-1].shape[2] // 8), dtype=torch.uint8, device=x.device)
    _launch(x, weights, biases, out, None)
    return out.reshape(n, h, out.shape[-1])


def mlp_hash_encode_and_cache(k: Tensor, weights: List[Tensor], biases: List[Tensor], cache: Tensor,
                              slot_mapping: Tensor) -> None:
    """Spec 12 + 3, fused. ``k [T, Hkv, D]`` -> ``cache uint8 [NB, Hkv, bs, R/8]`` (last dim
    unit stride, checked by the op) at ``slot_mapping int32/int64 [T]`` (-1 skips)."""
    _launch(k, weights, biases, cache, slot_mapping)
