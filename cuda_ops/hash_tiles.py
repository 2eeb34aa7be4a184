"""The transposed hash kernel for long fills (launch choice ``hash.transposed``): spec 2, 3, 13.

``hashing._hash_kernel`` computes a row tile's projection as ``x [BM, D] @ W [D, R]``. On
Hopper's tensor cores (wgmma) the right operand must sit in shared memory, so the weight
tile (loop-invariant, but split into ``W_hi + W_lo`` bf16) is written to shared memory
again for every row tile, and the key tile travels global -> registers -> shared memory.
This kernel computes the transpose, ``acc [R, BM] = W^T [R, D] @ x^T [D, BM]``: the
weight is the *left* operand, which wgmma reads from registers, so it is split once per
program and stays there; the key tile is the right operand, loaded K-major straight into
shared memory by Triton's software pipeline (``NUM_STAGES`` tiles in flight). Same
arithmetic as the bf16 split of ``_hash_kernel`` (each output is the same two sums of
exact bf16 products with fp32 accumulation), so codes agree with it except where the
accumulation order of a near-zero projection differs, all inside spec 2's band.

Bits are packed along the projection axis: ``acc`` viewed as ``[BC, 8, BM]`` (bit ``i``
of byte ``c`` is projection column ``8c + i``) is weighted by ``2**i`` and summed, and
the ``[BC, BM]`` bytes are stored transposed to the codes (or scattered into the paged
hash cache by slot). bf16 keys, ``D <= 128`` (one weight tile) only; ``hashing._launch``
decides when it applies.
"""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["_hash_t_kernel"]


@triton.jit
def _hash_t_kernel(
    x_ptr, w_ptr, out_ptr, slot_ptr, thr_ptr,
    L, D, C, G, NSLOTS, BS, BYTE_OFF,
    sx_l, sx_h, sw_h, sw_d, sw_r, st_h,
    so_l, so_h, sc_n, sc_h, sc_t,
    CACHE: tl.constexpr, HAS_THR: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    """Rows ``x[l, h, :]`` of head ``h`` (axis 1), code bytes ``[c0, c0 + BLOCK_C)`` (axis 2),
    persistent over row tiles along axis 0. Arguments as ``hashing._hash_kernel``'s:
    ``x bf16 [L, H, D]``, ``w [Hw, D, R]`` (head ``h`` uses ``w[h // G]``), codes ``out uint8
    [L, H, *]`` at byte ``BYTE_OFF`` or (``CACHE``) the cache ``uint8 [NB, H, BS, *]`` written
    at ``slot [L]`` (``< 0`` or ``>= NSLOTS``: skipped); ``thr [Hw, R]`` with ``HAS_THR``."""
    h = tl.program_id(1)
    c0 = tl.program_id(2) * BLOCK_C
    j = c0 * 8 + tl.arange(0, 8 * BLOCK_C)  # projection columns of this program
    jmask = j < 8 * C
    dd = tl.arange(0, BLOCK_D)
    dmask = dd < D
    wt = tl.load(w_ptr + (h // G).to(tl.int64) * sw_h + j[:, None] * sw_r + dd[None, :] * sw_d,
                 mask=jmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)  # W^T [8*BC, BD]
    wt_hi = wt.to(tl.bfloat16)
    wt_lo = (wt - wt_hi.to(tl.float32)).to(tl.bfloat16)
    if HAS_THR:
        thr = tl.load(thr_ptr + (h // G).to(tl.int64) * st_h + j, mask=jmask, other=0.0).to(tl.float32)
    c = c0 + tl.arange(0, BLOCK_C)
    cmask = c < C
    weight = 1 << tl.arange(0, 8)
    n_tiles = tl.cdiv(L, BLOCK_M)
    for tile in tl.range(tl.program_id(0), n_tiles, tl.num_programs(0), num_stages=NUM_STAGES):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rows < L
        # x^T [BD, BM], loaded K-major: the dot's right operand, straight into shared memory
        xt = tl.load(x_ptr + rows[None, :].to(tl.int64) * sx_l + h * sx_h + dd[:, None],
                     mask=dmask[:, None] & rmask[None, :], other=0.0)
        if UPCAST:  # the interpreter's bf16 dot is wrong: the same exact products in fp32
            acc = tl.dot(wt_hi.to(tl.float32), xt.to(tl.float32), input_precision="ieee")
            acc = tl.dot(wt_lo.to(tl.float32), xt.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(wt_hi, xt)
            acc = tl.dot(wt_lo, xt, acc)
        if HAS_THR:
            acc = acc - thr[:, None]
        bits = tl.reshape((acc > 0).to(tl.int32), (BLOCK_C, 8, BLOCK_M))
        packed = tl.sum(bits * weight[None, :, None], axis=1).to(tl.uint8)  # [BC, BM]
        if CACHE:
            slot = tl.load(slot_ptr + rows, mask=rmask, other=-1).to(tl.int64)
            keep = rmask & (slot >= 0) & (slot < NSLOTS)
            slot = tl.where(keep, slot, 0)
            dst = out_ptr + (slot // BS) * sc_n + h * sc_h + (slot % BS) * sc_t + BYTE_OFF
            tl.store(dst[None, :] + c[:, None], packed, mask=keep[None, :] & cmask[:, None])
        else:
            dst = out_ptr + rows.to(tl.int64) * so_l + h * so_h + BYTE_OFF
            tl.store(dst[None, :] + c[:, None], packed, mask=rmask[None, :] & cmask[:, None])
