"""Triton block scores for any group size and code width (spec 4), by query bit planes.

``_block_score_planes_kernel`` serves what the Harley-Seal kernel (``score_kernels.py``)
does not: MLA codes (one cache head, ``N`` query heads, a rope part scored with its own
weight), and GQA codes of other widths or odd groups. Same inputs, output and
arithmetic as ``_block_score_kernel`` (the SWAR kernel, kept as the reference path);
only the counting differs.

For one KV head and one code word, the ``G`` query heads' bits are summed per bit
position into bit planes, ``c = sum_j 2**j p_j`` (``NP`` planes, ``c <= G``), once per
program. A key word ``k`` then differs from the ``G`` query words in

    sum_g popcount(k ^ q_g) = C + G * popcount(k) - 2 * sum_j 2**j * popcount(k & p_j)

bits (per bit the count is ``c`` where ``k`` is 0 and ``G - c`` where it is 1;
``C = sum_j 2**j popcount(p_j)`` does not depend on ``k``): ``NP + 1`` popcounts per
key word instead of ``G`` (MLA with 16 heads: 6 instead of 16), with the ``popc``
instruction on CUDA. On the H200 the SWAR kernel read DeepSeek-V2-Lite's MLA codes at
150-175 GB/s (``benchmarks/mla_step.py``, 2026-11-29): it was compute-bound on
software popcounts of every head.

Words are loaded as two tiles, the main (latent) part ``[BLOCK_T, BLOCK_WM]`` and the
rope part ``[BLOCK_T, BLOCK_WR]``, so that DeepSeek's 16 + 2 words need no padding.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .score_kernels import _block_key, _popc

__all__ = ["_block_score_planes_kernel", "MAX_PLANES"]

MAX_PLANES = 8  # bit planes of the per-position head count: groups of up to 255 query heads


@triton.jit
def _add_bit(p, carry):
    """One plane of a bit-sliced ripple-carry add: ``(sum, carry)``."""
    return p ^ carry, p & carry


@triton.jit
def _query_planes(q_ptr, b, h, sq_b, sq_h, w0, NWX, G: tl.constexpr, NP: tl.constexpr, BWX: tl.constexpr):
    """Bit planes ``p0 .. p7`` (``uint32 [BWX]``; those past ``NP`` stay 0) of the per-bit
    count of ones over the ``G`` query heads of KV head ``h``, words ``w0 .. w0 + NWX - 1``
    (lanes past ``NWX`` are 0 in every plane)."""
    w = tl.arange(0, BWX)
    wm = w < NWX
    base = q_ptr + b * sq_b + h * G * sq_h + w0 + w
    z = tl.zeros((BWX,), dtype=tl.uint32)
    p0, p1, p2, p3, p4, p5, p6, p7 = z, z, z, z, z, z, z, z
    for g in range(G):
        c = tl.load(base + g * sq_h, mask=wm, other=0).to(tl.uint32, bitcast=True)
        p0, c = _add_bit(p0, c)
        if NP > 1:
            p1, c = _add_bit(p1, c)
        if NP > 2:
            p2, c = _add_bit(p2, c)
        if NP > 3:
            p3, c = _add_bit(p3, c)
        if NP > 4:
            p4, c = _add_bit(p4, c)
        if NP > 5:
            p5, c = _add_bit(p5, c)
        if NP > 6:
            p6, c = _add_bit(p6, c)
        if NP > 7:
            p7, c = _add_bit(p7, c)
    return p0, p1, p2, p3, p4, p5, p6, p7


@triton.jit
def _wsum(x, ELEM: tl.constexpr):
    """``x [T, BW]`` summed over the word axis, or kept per word (``ELEM``: the caller sums once
    for the whole program, ``score_planes.reduce_once``)."""
    if ELEM:
        return x
    else:
        return tl.sum(x, axis=1)


@triton.jit
def _plane_sum(k, p, j: tl.constexpr, HW: tl.constexpr, ELEM: tl.constexpr = False):
    """``2**j * sum_w popcount(k & p)`` per token (``k [T, BW]``, ``p [BW]``)."""
    return _wsum(_popc(k & p[None, :], HW) << j, ELEM)


@triton.jit
def _plane_total(p, j: tl.constexpr, HW: tl.constexpr):
    """``2**j * sum_w popcount(p)`` (the key-independent part ``C``)."""
    return tl.sum(_popc(p, HW), axis=0) << j


@triton.jit
def _diff_bits(k, p0, p1, p2, p3, p4, p5, p6, p7, G: tl.constexpr, NP: tl.constexpr, HW: tl.constexpr,
               ELEM: tl.constexpr = False):
    """Per token ``sum_w sum_g popcount(k ^ q_g)`` for key words ``k uint32 [T, BW]`` and the
    query planes of those words (see the module doc), as ``(per-token part, key-independent
    constant)``; ``ELEM``: the per-token part per word ``[T, BW]`` (not yet summed over words)."""
    s = _plane_sum(k, p0, 0, HW, ELEM)
    c = _plane_total(p0, 0, HW)
    if NP > 1:
        s += _plane_sum(k, p1, 1, HW, ELEM)
        c += _plane_total(p1, 1, HW)
    if NP > 2:
        s += _plane_sum(k, p2, 2, HW, ELEM)
        c += _plane_total(p2, 2, HW)
    if NP > 3:
        s += _plane_sum(k, p3, 3, HW, ELEM)
        c += _plane_total(p3, 3, HW)
    if NP > 4:
        s += _plane_sum(k, p4, 4, HW, ELEM)
        c += _plane_total(p4, 4, HW)
    if NP > 5:
        s += _plane_sum(k, p5, 5, HW, ELEM)
        c += _plane_total(p5, 5, HW)
    if NP > 6:
        s += _plane_sum(k, p6, 6, HW, ELEM)
        c += _plane_total(p6, 6, HW)
    if NP > 7:
        s += _plane_sum(k, p7, 7, HW, ELEM)
        c += _plane_total(p7, 7, HW)
    ones = _wsum(_popc(k, HW), ELEM)
    return G * ones - 2 * s, c


@triton.jit
def _neg_sum(k, c, low, j: tl.constexpr, LAST: tl.constexpr, HW: tl.constexpr, ELEM: tl.constexpr = False):
    """``2**j * sum_w popcount(d_j)`` per token, ``d_j`` bit ``j`` of ``k ? G - c : c`` (``G = 2**m``,
    see ``_diff_bits_pow2``): ``c_j ^ (k & low)``, or ``c_m ^ (k & ~low)`` for the top plane;
    ``low`` the OR of the planes below ``j`` (``[BW]``)."""
    if LAST:
        d = c[None, :] ^ ((k | low[None, :]) ^ low[None, :])  # k & ~low without a 32-bit constant
    else:
        d = c[None, :] ^ (k & low[None, :])
    return _wsum(_popc(d, HW) << j, ELEM)


@triton.jit
def _diff_bits_pow2(k, p0, p1, p2, p3, p4, p5, p6, p7, NP: tl.constexpr, HW: tl.constexpr, ELEM: tl.constexpr = False):
    """``_diff_bits`` for ``G = 2**m`` query heads (``NP = m + 1``, ``m >= 1``), with ``m``
    popcounts per key word instead of ``m + 2``. Per bit the count of differing heads is
    ``d = k ? G - c : c``; for ``c`` in ``[0, G]`` and ``k = 1``, ``G - c`` is ``c``'s two's
    complement negation in ``m`` bits plus ``G`` when ``c = 0``, so its bit ``j < m`` is
    ``c_j ^ (lower bits of c not all 0)`` and its bit ``m`` is ``c_m ^ (all bits below m are 0)``.
    Bit 0 never depends on ``k`` (``sum popcount(c_0)`` is a per-program constant).
    Returns ``(per-token part, constant)`` as ``_diff_bits`` does."""
    s = _neg_sum(k, p1, p0, 1, NP == 2, HW, ELEM)
    low = p0
    if NP > 2:  # one plane more per line: OR the previous into `low`, the last plane is the top one
        low = low | p1
        s += _neg_sum(k, p2, low, 2, NP == 3, HW, ELEM)
    if NP > 3:
        low = low | p2
        s += _neg_sum(k, p3, low, 3, NP == 4, HW, ELEM)
    if NP > 4:
        low = low | p3
        s += _neg_sum(k, p4, low, 4, NP == 5, HW, ELEM)
    if NP > 5:
        low = low | p4
        s += _neg_sum(k, p5, low, 5, NP == 6, HW, ELEM)
    if NP > 6:
        low = low | p5
        s += _neg_sum(k, p6, low, 6, NP == 7, HW, ELEM)
    if NP > 7:
        low = low | p6
        s += _neg_sum(k, p7, low, 7, True, HW, ELEM)
    return s, tl.sum(_popc(p0, HW), axis=0)


@triton.jit
def _count(k, p0, p1, p2, p3, p4, p5, p6, p7, G: tl.constexpr, NP: tl.constexpr, HW: tl.constexpr,
           POW2: tl.constexpr, ELEM: tl.constexpr = False):
    """Per token ``sum_w sum_g popcount(k ^ q_g)`` (``POW2``: ``G`` a power of two >= 2) as
    ``(per-token part, key-independent constant)``; ``ELEM``: the per-token part per word."""
    if POW2:
        return _diff_bits_pow2(k, p0, p1, p2, p3, p4, p5, p6, p7, NP, HW, ELEM)
    else:
        return _diff_bits(k, p0, p1, p2, p3, p4, p5, p6, p7, G, NP, HW, ELEM)


@triton.jit
def _block_score_planes_kernel(
    q_ptr, kc_ptr, bt_ptr, sl_ptr, out_ptr,
    NB, sq_b, sq_h, skc_n, skc_h, skc_t, sbt_b, so_b, M,
    BS: tl.constexpr, HKV: tl.constexpr, G: tl.constexpr, W: tl.constexpr, W_MAIN: tl.constexpr,
    W16: tl.constexpr, MEAN: tl.constexpr, NP: tl.constexpr, HW_POPC: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_WM: tl.constexpr, BLOCK_WR: tl.constexpr, BLOCKS: tl.constexpr = 1,
    POW2: tl.constexpr = False, ONCE: tl.constexpr = False,
):
    """Blocks ``BLOCKS * program_id(0)`` .. ``+ BLOCKS - 1`` (those below ``M``) of row ``b = program_id(1)``;
    the arguments and the output of ``_block_score_kernel`` (``q int32 [B, Hq, W]``,
    ``kc int32 [NB, Hkv, BS, W]`` word views, ``out int32 [B, M]`` order keys; blocks past the
    sequence are not written) plus the table width ``M``. ``NP``: planes for counts up to ``G``;
    ``HW_POPC``: the ``popc`` instruction (CUDA); ``BLOCKS``: blocks per program (the query planes
    are built once for all of them; ``BLOCK_T`` must equal ``BS`` when ``BLOCKS > 1``); ``POW2``: ``G``
    is a power of two >= 2 (``_diff_bits_pow2``: two popcounts fewer per key word); ``ONCE``: the
    per-word counts of every plane and head are added elementwise into ``[T, W]`` accumulators and
    summed over the words once per program (one cross-lane reduction per part instead of one per
    plane and head; ``score_planes.reduce_once``)."""
    jp = tl.program_id(0)
    b = tl.program_id(1)
    seq = tl.load(sl_ptr + b)
    if jp * BLOCKS * BS < seq:
        t = tl.arange(0, BLOCKS * BLOCK_T)
        jj = jp * BLOCKS + t // BLOCK_T  # each token's logical block
        tb = t % BLOCK_T
        tm = (tb < BS) & (jj < M)
        phys = tl.load(bt_ptr + b * sbt_b + jj, mask=tm, other=0)
        blk = tl.minimum(tl.maximum(phys, 0), NB - 1).to(tl.int64)  # never read out of bounds
        wm = tl.arange(0, BLOCK_WM)
        wr = tl.arange(0, BLOCK_WR)
        if ONCE:
            pc_main = tl.zeros((BLOCKS * BLOCK_T, BLOCK_WM), dtype=tl.int32)
            pc_rope = tl.zeros((BLOCKS * BLOCK_T, BLOCK_WR), dtype=tl.int32)
        else:
            pc_main = tl.zeros((BLOCKS * BLOCK_T,), dtype=tl.int32)
            pc_rope = tl.zeros((BLOCKS * BLOCK_T,), dtype=tl.int32)
        c_main = tl.full((), 0, tl.int32)  # the key-independent parts (per program)
        c_rope = tl.full((), 0, tl.int32)
        row = kc_ptr + blk[:, None] * skc_n + tb[:, None] * skc_t
        for h in range(HKV):
            k = tl.load(row + h * skc_h + wm[None, :], mask=tm[:, None] & (wm < W_MAIN)[None, :],
                        other=0).to(tl.uint32, bitcast=True)
            p0, p1, p2, p3, p4, p5, p6, p7 = _query_planes(q_ptr, b, h, sq_b, sq_h, 0, W_MAIN, G, NP, BLOCK_WM)
            d, c = _count(k, p0, p1, p2, p3, p4, p5, p6, p7, G, NP, HW_POPC, POW2, ONCE)
            pc_main += d
            c_main += c
            if W_MAIN < W:
                kr = tl.load(row + h * skc_h + W_MAIN + wr[None, :], mask=tm[:, None] & (wr < W - W_MAIN)[None, :],
                             other=0).to(tl.uint32, bitcast=True)
                p0, p1, p2, p3, p4, p5, p6, p7 = _query_planes(q_ptr, b, h, sq_b, sq_h, W_MAIN, W - W_MAIN, G, NP,
                                                               BLOCK_WR)
                d, c = _count(kr, p0, p1, p2, p3, p4, p5, p6, p7, G, NP, HW_POPC, POW2, ONCE)
                pc_rope += d
                c_rope += c
        if ONCE:
            pc_main = tl.sum(pc_main, axis=1)
            pc_rope = tl.sum(pc_rope, axis=1)
        pc_main += c_main
        pc_rope += c_rope
        # token lanes past BS or M loaded zeros (their count is C); `valid` leaves them out
        s16 = 16 * (HKV * G * W_MAIN * 32 - 2 * pc_main)
        if W_MAIN < W:
            s16 += W16 * (HKV * G * (W - W_MAIN) * 32 - 2 * pc_rope)
        valid = tm & (jj * BS + tb < seq)
        if BLOCKS == 1:
            key = _block_key(s16, valid, MEAN)
            tl.store(out_ptr + b * so_b + jp, key)
        else:
            key = _block_key(tl.reshape(s16, (BLOCKS, BLOCK_T)), tl.reshape(valid, (BLOCKS, BLOCK_T)), MEAN, 1)
            jo = jp * BLOCKS + tl.arange(0, BLOCKS)
            tl.store(out_ptr + b * so_b + jo, key, mask=(jo < M) & (jo * BS < seq))
