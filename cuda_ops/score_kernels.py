"""Triton block-score kernels of ``hamming_dist_top_k`` (spec 4): the block order keys.

``scoring.py`` holds the wrappers and says which kernel runs when; this file holds
the kernel sources (one definition each; the fused score + selection kernel in
``topk_kernels.py`` calls :func:`_hs_block_key`).

* ``_block_score_kernel``: any group size, code width and MLA rope bytes (SWAR
  popcounts on a ``[T, G, W]`` XOR tile).
* ``_block_score_hs_kernel``: the GQA fast path (Harley-Seal carry-save adders).
  With ``PLANES`` (``G == 4``, R = 128) the query side is folded first: for each code word
  the 4 query heads' bits are summed into bit planes (``c = c0 + 2 c1 + 4 c2``
  per bit position), so a key word's XOR count over the 4 heads,
  ``sum_g popcount(k ^ q_g)``, is ``popcount(c0) + 2 popcount(s1) + 4 popcount(s2)``
  with ``s1 = c1 ^ (k & c0)`` and ``s2 = c2 ^ (k & ~(c0 | c1))`` (per bit the
  count is ``c`` where ``k`` is 0 and ``4 - c`` where it is 1; ``4 - c`` has the
  parity of ``c``, so ``c0`` does not depend on ``k``). Two words per key word
  enter the adders instead of four XOR words: about half the integer work per
  token, which on the H200 is close to the memory time at 128K.
"""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["_block_score_kernel", "_block_score_hs_kernel", "_hs_block_key"]


@triton.jit
def _popcount_bytes(x):
    """uint32 -> the bit count of each of its 4 bytes, in place (each 0..8)."""
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    return (x + (x >> 4)) & 0x0F0F0F0F


@triton.jit
def _sum_bytes(x):
    """uint32 holding 4 byte fields -> their sum (exact while each field <= 255)."""
    x = (x & 0x00FF00FF) + ((x >> 8) & 0x00FF00FF)
    return (x & 0xFFFF) + (x >> 16)


@triton.jit
def _bit_counts(k, q, gmask, wsel, MASK_G: tl.constexpr, MASK_W: tl.constexpr, DEFER: tl.constexpr):
    """``k uint32 [T, W]`` XOR ``q uint32 [G, W]`` -> bit count per token ``[T]``
    over the word lanes where ``wsel`` (``[W]`` bool) is set and the valid ``g``.
    Padded word lanes hold 0 in both operands (count 0), so they need no mask."""
    cnt = _popcount_bytes(k[:, None, :] ^ q[None, :, :])
    if MASK_G:
        cnt = tl.where(gmask[None, :, None], cnt, 0)
    if MASK_W:
        cnt = tl.where(wsel[None, None, :], cnt, 0)
    if DEFER:  # at most 31 words summed per byte field: no overflow
        return _sum_bytes(tl.sum(tl.sum(cnt, axis=2), axis=1)).to(tl.int32)
    else:
        return tl.sum(tl.sum(_sum_bytes(cnt), axis=2), axis=1).to(tl.int32)


@triton.jit
def _block_score_kernel(
    q_ptr, kc_ptr, bt_ptr, sl_ptr, out_ptr,
    NB, sq_b, sq_h, skc_n, skc_h, skc_t, sbt_b, so_b,
    BS: tl.constexpr, HKV: tl.constexpr, G: tl.constexpr, W: tl.constexpr, W_MAIN: tl.constexpr,
    W16: tl.constexpr, MEAN: tl.constexpr, DEFER: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """Block ``j = program_id(0)`` of row ``b = program_id(1)``.

    ``q int32 [B, Hq, W]`` and ``kc int32 [NB, Hkv, BS, W]`` are the uint8 codes
    viewed as words; ``bt int32 [B, M]``; ``sl int32 [B]``; ``out int32 [B, M]``
    (the block's order key; blocks past the sequence are not written).
    """
    j = tl.program_id(0)
    b = tl.program_id(1)
    seq = tl.load(sl_ptr + b)
    if j * BS < seq:
        phys = tl.load(bt_ptr + b * sbt_b + j)
        phys = tl.minimum(tl.maximum(phys, 0), NB - 1).to(tl.int64)  # never read out of bounds
        t = tl.arange(0, BLOCK_T)
        w = tl.arange(0, BLOCK_W)
        g = tl.arange(0, BLOCK_G)
        wmask = w < W
        is_main = w < W_MAIN
        is_rope = wmask & (w >= W_MAIN)
        pc_main = tl.zeros((BLOCK_T,), dtype=tl.int32)
        pc_rope = tl.zeros((BLOCK_T,), dtype=tl.int32)
        k_base = kc_ptr + phys * skc_n + t[:, None] * skc_t + w[None, :]
        kmask = (t < BS)[:, None] & wmask[None, :]
        for h in range(HKV):
            k = tl.load(k_base + h * skc_h, mask=kmask, other=0).to(tl.uint32, bitcast=True)
            for g0 in range(0, G, BLOCK_G):
                gmask = (g0 + g) < G
                q_off = b * sq_b + (h * G + g0 + g)[:, None] * sq_h + w[None, :]
                q = tl.load(q_ptr + q_off, mask=gmask[:, None] & wmask[None, :], other=0).to(tl.uint32, bitcast=True)
                pc_main += _bit_counts(k, q, gmask, is_main, G % BLOCK_G != 0, W_MAIN < W, DEFER)
                if W_MAIN < W:
                    pc_rope += _bit_counts(k, q, gmask, is_rope, G % BLOCK_G != 0, True, DEFER)
        # S16 = 16 * sum sim_main + w16 * sum sim_rope, sim = bits - 2 * popcount
        s16 = 16 * (HKV * G * W_MAIN * 32 - 2 * pc_main)
        if W_MAIN < W:
            s16 += W16 * (HKV * G * (W - W_MAIN) * 32 - 2 * pc_rope)
        valid = (t < BS) & (j * BS + t < seq)
        key = _block_key(s16, valid, MEAN)
        tl.store(out_ptr + b * so_b + j, key)


@triton.jit
def _block_key(s16, valid, MEAN: tl.constexpr, AXIS: tl.constexpr = 0):
    """A block's sortable int32 key from its tokens' ``S16`` scores (``valid``: tokens inside
    the row): the mean (spec 4; a float's bits made monotone) or the max. ``AXIS``: the
    token axis (1 when ``s16`` is ``[blocks, tokens]``)."""
    if MEAN:
        total = tl.sum(tl.where(valid, s16, 0).to(tl.int64), axis=AXIS)  # int64: bs * S16 can pass int32
        count = tl.sum(valid.to(tl.int32), axis=AXIS)
        mean = tl.div_rn(total.to(tl.float32), count.to(tl.float32))
        bits = mean.to(tl.int32, bitcast=True)
        key = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # monotone in the float's value
    else:
        key = tl.max(tl.where(valid, s16, -2147483648), axis=AXIS)
    return key


@triton.jit
def _popcount32(x):
    """uint32 -> its bit count (SWAR; no intrinsic)."""
    return _sum_bytes(_popcount_bytes(x))


@triton.jit
def _popc(x, HW: tl.constexpr):
    """uint32 -> bit count: the ``popc`` instruction on CUDA (``HW``), else SWAR
    (the interpreter and triton-ascend have no inline PTX)."""
    if HW:
        return tl.inline_asm_elementwise("popc.b32 $0, $1;", "=r,r", [x], dtype=tl.int32, is_pure=True, pack=1)
    else:
        return _popcount32(x).to(tl.int32)


@triton.jit
def _lop3(a, b, c, LUT: tl.constexpr):
    """One ``lop3.b32`` (any three-input logic function, truth table ``LUT``)."""
    return tl.inline_asm_elementwise("lop3.b32 $0, $1, $2, $3, " + LUT + ";", "=r,r,r,r", [a, b, c],
                                     dtype=tl.uint32, is_pure=True, pack=1)


@triton.jit
def _csa(a, b, c, LOP3: tl.constexpr = False):
    """Carry-save adder on bit vectors: ``a + b + c = 2 * carry + sum`` per bit.
    ``LOP3`` (CUDA): one ``lop3`` instruction each for the carry (majority,
    table 0xE8) and the sum (three-way XOR, 0x96); otherwise five plain logic
    ops (on the H200 ptxas fused them to the same speed: kernel_sweep_h200.md)."""
    if LOP3:
        return _lop3(a, b, c, "0xE8"), _lop3(a, b, c, "0x96")
    else:
        u = a ^ b
        return (a & b) | (u & c), u ^ c


@triton.jit
def _add8(ones, twos, fours, x0, x1, x2, x3, x4, x5, x6, x7, LOP3: tl.constexpr = False):
    """Harley-Seal step: add 8 words to the bit-sliced counter ``(ones, twos, fours)``;
    returns the new counter and the carry word of weight 8."""
    t2a, ones = _csa(ones, x0, x1, LOP3)
    t2b, ones = _csa(ones, x2, x3, LOP3)
    f4a, twos = _csa(twos, t2a, t2b, LOP3)
    t2a, ones = _csa(ones, x4, x5, LOP3)
    t2b, ones = _csa(ones, x6, x7, LOP3)
    f4b, twos = _csa(twos, t2a, t2b, LOP3)
    e8, fours = _csa(fours, f4a, f4b, LOP3)
    return ones, twos, fours, e8


@triton.jit
def _qw(q_head, g: tl.constexpr, w: tl.constexpr, sq_h):
    """Word ``w`` of query head ``g`` of the current KV head (a uniform scalar)."""
    return tl.load(q_head + g * sq_h + w).to(tl.uint32, bitcast=True)


@triton.jit
def _hs_head(kc_ptr, q_ptr, phys, h, b, t, tmask, ones, twos, fours, eights, sq_b, sq_h, skc_n, skc_h, skc_t,
             G: tl.constexpr, W: tl.constexpr, BLOCK_T: tl.constexpr, HW_POPC: tl.constexpr,
             LOP3: tl.constexpr, WIDE: tl.constexpr):
    """One KV head's code words of a block added to the bit-sliced counters (see
    ``_block_score_hs_kernel``)."""
    row = kc_ptr + phys * skc_n + h * skc_h + t * skc_t
    q_head = q_ptr + b * sq_b + h * G * sq_h
    if WIDE and W == 4:  # one 16-byte load per token, split into its 4 words in registers
        kw = tl.load(row[:, None] + tl.arange(0, 4)[None, :], mask=tmask[:, None], other=0)
        k02, k13 = tl.split(tl.reshape(kw, (BLOCK_T, 2, 2)))
        k0, k2 = tl.split(k02)
        k1, k3 = tl.split(k13)
        k0 = k0.to(tl.uint32, bitcast=True)
        k1 = k1.to(tl.uint32, bitcast=True)
        k2 = k2.to(tl.uint32, bitcast=True)
        k3 = k3.to(tl.uint32, bitcast=True)
    else:
        k0 = tl.load(row + 0, mask=tmask, other=0).to(tl.uint32, bitcast=True)
        k1 = tl.load(row + 1, mask=tmask, other=0).to(tl.uint32, bitcast=True)
        k2 = tl.load(row + 2, mask=tmask, other=0).to(tl.uint32, bitcast=True)
        k3 = tl.load(row + 3, mask=tmask, other=0).to(tl.uint32, bitcast=True)
    if W == 4:  # two query heads a step
        for g in tl.static_range(0, G, 2):
            ones, twos, fours, e8 = _add8(
                ones, twos, fours,
                k0 ^ _qw(q_head, g, 0, sq_h), k1 ^ _qw(q_head, g, 1, sq_h),
                k2 ^ _qw(q_head, g, 2, sq_h), k3 ^ _qw(q_head, g, 3, sq_h),
                k0 ^ _qw(q_head, g + 1, 0, sq_h), k1 ^ _qw(q_head, g + 1, 1, sq_h),
                k2 ^ _qw(q_head, g + 1, 2, sq_h), k3 ^ _qw(q_head, g + 1, 3, sq_h),
                LOP3,
            )
            eights += _popc(e8, HW_POPC)
    else:  # W == 8: one query head a step
        k4 = tl.load(row + 4, mask=tmask, other=0).to(tl.uint32, bitcast=True)
        k5 = tl.load(row + 5, mask=tmask, other=0).to(tl.uint32, bitcast=True)
        k6 = tl.load(row + 6, mask=tmask, other=0).to(tl.uint32, bitcast=True)
        k7 = tl.load(row + 7, mask=tmask, other=0).to(tl.uint32, bitcast=True)
        for g in tl.static_range(G):
            ones, twos, fours, e8 = _add8(
                ones, twos, fours,
                k0 ^ _qw(q_head, g, 0, sq_h), k1 ^ _qw(q_head, g, 1, sq_h),
                k2 ^ _qw(q_head, g, 2, sq_h), k3 ^ _qw(q_head, g, 3, sq_h),
                k4 ^ _qw(q_head, g, 4, sq_h), k5 ^ _qw(q_head, g, 5, sq_h),
                k6 ^ _qw(q_head, g, 6, sq_h), k7 ^ _qw(q_head, g, 7, sq_h),
                LOP3,
            )
            eights += _popc(e8, HW_POPC)
    return ones, twos, fours, eights


@triton.jit
def _plane_words(k, q_head, w: tl.constexpr, sq_h):
    """Key word ``k uint32 [T]`` against word ``w`` of the 4 query heads of its KV
    head -> ``(s1, s2)``: ``sum_g popcount(k ^ q_g) = popcount(c0) + 2 popcount(s1)
    + 4 popcount(s2)`` per token (``c0``, the XOR of the 4 query words, is summed
    once per program by ``_plane_base``). The query side costs a few uniform logic
    ops per word and program; ptxas fuses each line into one ``lop3``."""
    a = _qw(q_head, 0, w, sq_h)
    b = _qw(q_head, 1, w, sq_h)
    c = _qw(q_head, 2, w, sq_h)
    d = _qw(q_head, 3, w, sq_h)
    u = a ^ b
    ts = u ^ c  # a + b + c = 2 tc + ts per bit
    tc = (a & b) | (u & c)
    c0 = ts ^ d  # a + b + c + d = c0 + 2 c1 + 4 c2
    v = ts & d
    c1 = tc ^ v
    c2 = tc & v
    m = c0 | c1
    return c1 ^ (k & c0), c2 ^ ((k | m) ^ m)  # (k | m) ^ m = k & ~m: no 32-bit constant (triton-ascend)


@triton.jit
def _plane_head(kc_ptr, q_ptr, phys, h, b, t, tmask, sq_b, sq_h, skc_n, skc_h, skc_t, G: tl.constexpr):
    """The 4 code words of KV head ``h`` (R = 128) -> their 4 weight-2 and 4 weight-4 plane words."""
    row = kc_ptr + phys * skc_n + h * skc_h + t * skc_t
    q_head = q_ptr + b * sq_b + h * G * sq_h
    a0, b0 = _plane_words(tl.load(row + 0, mask=tmask, other=0).to(tl.uint32, bitcast=True), q_head, 0, sq_h)
    a1, b1 = _plane_words(tl.load(row + 1, mask=tmask, other=0).to(tl.uint32, bitcast=True), q_head, 1, sq_h)
    a2, b2 = _plane_words(tl.load(row + 2, mask=tmask, other=0).to(tl.uint32, bitcast=True), q_head, 2, sq_h)
    a3, b3 = _plane_words(tl.load(row + 3, mask=tmask, other=0).to(tl.uint32, bitcast=True), q_head, 3, sq_h)
    return a0, a1, a2, a3, b0, b1, b2, b3


@triton.jit
def _plane_base(q_ptr, b, sq_b, sq_h, HKV: tl.constexpr, G: tl.constexpr, W: tl.constexpr, HWP: tl.constexpr):
    """``sum over (KV head, word) of popcount(c0)``, ``c0`` the XOR of the group's 4
    query words: the part of every token's count that does not depend on the key."""
    r = tl.arange(0, HWP)
    rm = r < HKV * W
    qr = q_ptr + b * sq_b + (r // W) * G * sq_h + r % W
    x = tl.load(qr, mask=rm, other=0) ^ tl.load(qr + sq_h, mask=rm, other=0)
    x = x ^ tl.load(qr + 2 * sq_h, mask=rm, other=0) ^ tl.load(qr + 3 * sq_h, mask=rm, other=0)
    return tl.sum(_popcount32(x.to(tl.uint32, bitcast=True)).to(tl.int32), axis=0)


@triton.jit
def _plane_counts(kc_ptr, q_ptr, phys, b, t, tmask, sq_b, sq_h, skc_n, skc_h, skc_t,
                  HKV: tl.constexpr, G: tl.constexpr, W: tl.constexpr, BLOCK_T: tl.constexpr,
                  HW_POPC: tl.constexpr, LOP3: tl.constexpr, HWP: tl.constexpr, J: tl.constexpr = 1):
    """``PLANES`` path of ``_hs_block_key`` (``G == 4``, ``W == 4``): per token the bit count
    of ``k ^ q`` over every head, group and word, ``int32 [T]`` (``[J, T]`` for ``J`` blocks).
    Plane words of two KV heads (8 a level) go through one Harley-Seal step per level."""
    o1 = _counter(J, BLOCK_T, tl.uint32)
    t1 = _counter(J, BLOCK_T, tl.uint32)
    f1 = _counter(J, BLOCK_T, tl.uint32)
    e1 = _counter(J, BLOCK_T, tl.int32)
    o2 = _counter(J, BLOCK_T, tl.uint32)
    t2 = _counter(J, BLOCK_T, tl.uint32)
    f2 = _counter(J, BLOCK_T, tl.uint32)
    e2 = _counter(J, BLOCK_T, tl.int32)
    zero = _counter(J, BLOCK_T, tl.uint32)
    for h in tl.static_range(0, HKV, 2):
        a0, a1, a2, a3, b0, b1, b2, b3 = _plane_head(kc_ptr, q_ptr, phys, h, b, t, tmask,
                                                     sq_b, sq_h, skc_n, skc_h, skc_t, G)
        if h + 1 < HKV:
            a4, a5, a6, a7, b4, b5, b6, b7 = _plane_head(kc_ptr, q_ptr, phys, h + 1, b, t, tmask,
                                                         sq_b, sq_h, skc_n, skc_h, skc_t, G)
        else:  # odd HKV: the last head pairs with zero words (count 0)
            a4, a5, a6, a7, b4, b5, b6, b7 = zero, zero, zero, zero, zero, zero, zero, zero
        o1, t1, f1, x1 = _add8(o1, t1, f1, a0, a1, a2, a3, a4, a5, a6, a7, LOP3)
        e1 += _popc(x1, HW_POPC)
        o2, t2, f2, x2 = _add8(o2, t2, f2, b0, b1, b2, b3, b4, b5, b6, b7, LOP3)
        e2 += _popc(x2, HW_POPC)
    pc1 = 8 * e1 + 4 * _popc(f1, HW_POPC) + 2 * _popc(t1, HW_POPC) + _popc(o1, HW_POPC)
    pc2 = 8 * e2 + 4 * _popc(f2, HW_POPC) + 2 * _popc(t2, HW_POPC) + _popc(o2, HW_POPC)
    return _plane_base(q_ptr, b, sq_b, sq_h, HKV, G, W, HWP) + 2 * pc1 + 4 * pc2


@triton.jit
def _counter(J: tl.constexpr, BLOCK_T: tl.constexpr, dtype: tl.constexpr):
    """Zeros, one per token: ``[BLOCK_T]`` for one block, ``[J, BLOCK_T]`` for ``J`` blocks."""
    if J == 1:
        return tl.zeros((BLOCK_T,), dtype=dtype)
    else:
        return tl.zeros((J, BLOCK_T), dtype=dtype)


@triton.jit
def _prefetch_block(kc_ptr, phys, skc_n, skc_h, skc_t, HKV: tl.constexpr, HKV_P: tl.constexpr,
                    BLOCK_T: tl.constexpr):
    """Ask L2 for the block's code lines (``prefetch.global.L2``, one per 8 tokens of each KV
    head: 128 bytes of R = 128 codes): used before ``gdc_wait`` under PDL, while the
    previous kernel still runs. A hint only; the real loads come after the wait.
    ``HKV_P``: ``HKV`` rounded up to a power of two (extra lanes repeat the last head)."""
    hh = tl.minimum(tl.arange(0, HKV_P), HKV - 1)
    if BLOCK_T >= 8:
        tt = tl.arange(0, BLOCK_T // 8) * 8
    else:
        tt = tl.arange(0, 1)
    ptrs = kc_ptr + phys * skc_n + hh[:, None] * skc_h + tt[None, :] * skc_t
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs.to(tl.int64)],
                              dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _hs_block_key(q_ptr, kc_ptr, phys, j, b, seq, NB, sq_b, sq_h, skc_n, skc_h, skc_t,
                  BS: tl.constexpr, HKV: tl.constexpr, G: tl.constexpr, W: tl.constexpr, MEAN: tl.constexpr,
                  BLOCK_T: tl.constexpr, HW_POPC: tl.constexpr, LOP3: tl.constexpr, WIDE: tl.constexpr,
                  UNROLL: tl.constexpr, PLANES: tl.constexpr, HWP: tl.constexpr, PDL: tl.constexpr,
                  HKV_P: tl.constexpr, J: tl.constexpr = 1):
    """The int32 order key of logical block ``j`` of row ``b`` (``j * BS < seq``), whose
    block-table entry is ``phys``; see ``_block_score_hs_kernel``. ``PDL``: launched as a
    programmatic dependent of the kernel that writes ``q`` (the hot path's query hash):
    prefetch this block's codes, then wait for that kernel (``gdc_wait``) before any ``q`` load.
    ``J > 1``: ``j`` and ``phys`` are ``[J, 1]`` (``J`` blocks at once, every query word loaded
    once for all of them) and the keys come back as ``[J]``."""
    phys = tl.minimum(tl.maximum(phys, 0), NB - 1).to(tl.int64)  # never read out of bounds
    if PDL:
        _prefetch_block(kc_ptr, phys, skc_n, skc_h, skc_t, HKV, HKV_P, BLOCK_T)
        tl.extra.cuda.gdc_wait()
    if J == 1:
        t = tl.arange(0, BLOCK_T)
    else:
        t = tl.arange(0, BLOCK_T)[None, :]
    tmask = t < BS
    if PLANES:
        pc = _plane_counts(kc_ptr, q_ptr, phys, b, t, tmask, sq_b, sq_h, skc_n, skc_h, skc_t,
                           HKV, G, W, BLOCK_T, HW_POPC, LOP3, HWP, J)
    else:
        ones = _counter(J, BLOCK_T, tl.uint32)
        twos = _counter(J, BLOCK_T, tl.uint32)
        fours = _counter(J, BLOCK_T, tl.uint32)
        eights = _counter(J, BLOCK_T, tl.int32)
        if UNROLL:  # every head's loads can issue at once
            for h in tl.static_range(HKV):
                ones, twos, fours, eights = _hs_head(kc_ptr, q_ptr, phys, h, b, t, tmask, ones, twos, fours, eights,
                                                     sq_b, sq_h, skc_n, skc_h, skc_t, G, W, BLOCK_T, HW_POPC, LOP3, WIDE)
        else:
            for h in range(HKV):
                ones, twos, fours, eights = _hs_head(kc_ptr, q_ptr, phys, h, b, t, tmask, ones, twos, fours, eights,
                                                     sq_b, sq_h, skc_n, skc_h, skc_t, G, W, BLOCK_T, HW_POPC, LOP3, WIDE)
        pc = 8 * eights + 4 * _popc(fours, HW_POPC) + 2 * _popc(twos, HW_POPC) + _popc(ones, HW_POPC)
    s16 = 16 * (HKV * G * W * 32 - 2 * pc)
    valid = tmask & (j * BS + t < seq)
    return _block_key(s16, valid, MEAN, 0 if J == 1 else 1)


@triton.jit
def _hs_score_program(q_ptr, kc_ptr, bt_ptr, sl_ptr, out_ptr, NB, sq_b, sq_h, skc_n, skc_h, skc_t, sbt_b, so_b, M,
                      BS: tl.constexpr, HKV: tl.constexpr, G: tl.constexpr, W: tl.constexpr, MEAN: tl.constexpr,
                      BLOCK_T: tl.constexpr, HW_POPC: tl.constexpr, LOP3: tl.constexpr, WIDE: tl.constexpr,
                      UNROLL: tl.constexpr, PLANES: tl.constexpr, HWP: tl.constexpr, PDL: tl.constexpr,
                      HKV_P: tl.constexpr, J: tl.constexpr = 1):
    """One program of the Harley-Seal score launch (plain or fused with the selection): the key
    of block ``program_id(0)`` of row ``program_id(1)`` into ``out[b, j]`` (blocks past the row's
    length are left alone). Returns the row's length. ``J > 1``: blocks ``J * program_id(0)``
    to ``J * program_id(0) + J - 1`` (those below ``M``)."""
    jp = tl.program_id(0)
    b = tl.program_id(1)
    seq = tl.load(sl_ptr + b)
    if J == 1:
        phys = tl.load(bt_ptr + b * sbt_b + jp)  # in bounds for any j < M; issued with seq, not after it
        if jp * BS < seq:
            key = _hs_block_key(q_ptr, kc_ptr, phys, jp, b, seq, NB, sq_b, sq_h, skc_n, skc_h, skc_t,
                                BS, HKV, G, W, MEAN, BLOCK_T, HW_POPC, LOP3, WIDE, UNROLL, PLANES, HWP, PDL, HKV_P)
            tl.store(out_ptr + b * so_b + jp, key)
    else:
        jj = jp * J + tl.arange(0, J)
        jm = jj < M
        phys = tl.load(bt_ptr + b * sbt_b + jj, mask=jm, other=0)
        if jp * J * BS < seq:
            key = _hs_block_key(q_ptr, kc_ptr, phys[:, None], jj[:, None], b, seq, NB, sq_b, sq_h, skc_n, skc_h,
                                skc_t, BS, HKV, G, W, MEAN, BLOCK_T, HW_POPC, LOP3, WIDE, UNROLL, PLANES, HWP, PDL,
                                HKV_P, J)
            tl.store(out_ptr + b * so_b + jj, key, mask=jm & (jj * BS < seq))
    return seq


@triton.jit
def _block_score_hs_kernel(
    q_ptr, kc_ptr, bt_ptr, sl_ptr, out_ptr,
    NB, sq_b, sq_h, skc_n, skc_h, skc_t, sbt_b, so_b, M,
    BS: tl.constexpr, HKV: tl.constexpr, G: tl.constexpr, W: tl.constexpr, MEAN: tl.constexpr,
    BLOCK_T: tl.constexpr, HW_POPC: tl.constexpr, LOP3: tl.constexpr = False, WIDE: tl.constexpr = False,
    UNROLL: tl.constexpr = False, PLANES: tl.constexpr = False, HWP: tl.constexpr = 1, PDL: tl.constexpr = False,
    HKV_P: tl.constexpr = 1, BLOCKS: tl.constexpr = 1,
):
    """GQA fast path of ``_block_score_kernel``: codes without a rope part, and
    ``W == 4`` with even ``G`` or ``W == 8`` (R = 128 or 256 bits); ``PLANES``:
    ``G == 4`` and ``W == 4`` (``HWP``: ``HKV * W`` rounded up to a power of two).

    Same inputs and output. Instead of a popcount per XOR word, the XOR words of
    a token (every head and group) are summed in a bit-sliced counter with
    carry-save adders (Harley-Seal): 8 words cost 7 CSAs (two three-input logic
    ops each) and one popcount, about a third of the integer work. Each key word
    is loaded once as its own ``[T]`` vector (4-byte loads; the block's 16 KB
    stay in L1), so the 8 words of a step are plain registers. ``HW_POPC``: count
    the carry words with the ``popc`` instruction (CUDA) instead of SWAR.
    ``BLOCKS``: logical blocks per program (grid ``(cdiv(M, BLOCKS), B)``): each query
    word is loaded once for all of them, and a program has more code loads in flight.
    """
    _hs_score_program(q_ptr, kc_ptr, bt_ptr, sl_ptr, out_ptr, NB, sq_b, sq_h, skc_n, skc_h, skc_t, sbt_b, so_b, M,
                      BS, HKV, G, W, MEAN, BLOCK_T, HW_POPC, LOP3, WIDE, UNROLL, PLANES, HWP, PDL, HKV_P, BLOCKS)
