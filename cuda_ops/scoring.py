"""Triton selection: spec sections 4 and 5 (``hamming_dist_top_k``).

Two kernels, no host sync, CUDA-graph capturable:

1. ``_block_score_kernel``, grid ``(M, B)``: one program per (row, logical
   block). It reads the block's key codes once through the block table (int32
   words), XORs them with every query head of the matching KV head, counts bits
   with a portable SWAR popcount (shifts, masks, adds: no CUDA intrinsic, no
   inline asm, so the source also suits triton-ascend), sums the token score
   ``S16`` over heads and group in registers and reduces it to the block score
   (``max`` of ``S16``, or ``div_rn(float32(sum), float32(count))``). Per-token
   scores never leave registers; the block score goes to HBM as an int32 key
   whose signed order is the score's order (float bits are made monotone).
2. ``_select_kernel``, grid ``(B,)``: one program per row loads the row's keys,
   marks forced blocks (+inf) and blocks past the sequence (-inf), finds the
   ``n_sel``-th largest key by a binary search between the smallest and largest
   non-forced key (at most 32 steps; about 12 for ``max`` scores), breaks
   ties at the threshold to the smaller index with a prefix sum, and writes the
   chosen indices ascending by a second prefix sum; ``-1`` after ``n_sel``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from gsa.reference.scoring import SCORE_SCALE

from . import interpreting
from .launch import launch, next_pow2
from .tuning import knob

__all__ = ["hamming_dist_top_k", "block_score_keys", "select_blocks", "MAX_FORCED", "MAX_BLOCKS"]

MAX_FORCED = 8  # forced-block entries passed as scalar arguments (graph-safe)
MAX_BLOCKS = 65536  # block-table width one select program holds in registers
INT32_MIN = -2147483648
INT32_MAX = 2147483647
# Launch choices of the Harley-Seal score kernel and the selection when the device
# has no tuning file (cuda_ops/tuning.py; benchmarks/kernel_sweep.py writes them).
SCORE_LOP3 = True  # CUDA: carry-save adders as lop3 instructions
SCORE_WIDE = False  # one 16-byte load per token instead of four 4-byte loads
SCORE_NUM_WARPS = 4
SCORE_UNROLL = False  # unroll the loop over KV heads (all code loads of a block in flight)
SELECT_FANOUT = 1  # thresholds tested per search step (1: binary search)


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
        if MEAN:
            total = tl.sum(tl.where(valid, s16, 0).to(tl.int64), axis=0)  # int64: bs * S16 can pass int32
            count = tl.sum(valid.to(tl.int32), axis=0)
            mean = tl.div_rn(total.to(tl.float32), count.to(tl.float32))
            bits = mean.to(tl.int32, bitcast=True)
            key = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # monotone in the float's value
        else:
            key = tl.max(tl.where(valid, s16, -2147483648), axis=0)
        tl.store(out_ptr + b * so_b + j, key)


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
def _block_score_hs_kernel(
    q_ptr, kc_ptr, bt_ptr, sl_ptr, out_ptr,
    NB, sq_b, sq_h, skc_n, skc_h, skc_t, sbt_b, so_b,
    BS: tl.constexpr, HKV: tl.constexpr, G: tl.constexpr, W: tl.constexpr, MEAN: tl.constexpr,
    BLOCK_T: tl.constexpr, HW_POPC: tl.constexpr, LOP3: tl.constexpr = False, WIDE: tl.constexpr = False,
    UNROLL: tl.constexpr = False,
):
    """GQA fast path of ``_block_score_kernel``: codes without a rope part, and
    ``W == 4`` with even ``G`` or ``W == 8`` (R = 128 or 256 bits).

    Same inputs and output. Instead of a popcount per XOR word, the XOR words of
    a token (every head and group) are summed in a bit-sliced counter with
    carry-save adders (Harley-Seal): 8 words cost 7 CSAs (two three-input logic
    ops each) and one popcount, about a third of the integer work. Each key word
    is loaded once as its own ``[T]`` vector (4-byte loads; the block's 16 KB
    stay in L1), so the 8 words of a step are plain registers. ``HW_POPC``: count
    the carry words with the ``popc`` instruction (CUDA) instead of SWAR.
    """
    j = tl.program_id(0)
    b = tl.program_id(1)
    seq = tl.load(sl_ptr + b)
    if j * BS < seq:
        phys = tl.load(bt_ptr + b * sbt_b + j)
        phys = tl.minimum(tl.maximum(phys, 0), NB - 1).to(tl.int64)
        t = tl.arange(0, BLOCK_T)
        tmask = t < BS
        ones = tl.zeros((BLOCK_T,), dtype=tl.uint32)
        twos = tl.zeros((BLOCK_T,), dtype=tl.uint32)
        fours = tl.zeros((BLOCK_T,), dtype=tl.uint32)
        eights = tl.zeros((BLOCK_T,), dtype=tl.int32)
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
        if MEAN:
            total = tl.sum(tl.where(valid, s16, 0).to(tl.int64), axis=0)  # int64: bs * S16 can pass int32
            count = tl.sum(valid.to(tl.int32), axis=0)
            mean = tl.div_rn(total.to(tl.float32), count.to(tl.float32))
            bits = mean.to(tl.int32, bitcast=True)
            key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
        else:
            key = tl.max(tl.where(valid, s16, -2147483648), axis=0)
        tl.store(out_ptr + b * so_b + j, key)


@triton.jit
def _is_forced(cols, nblk, m):
    target = tl.where(m >= 0, m, nblk + m)
    return (cols == target) & (target >= 0) & (target < nblk)


@triton.jit
def _select_kernel(
    key_ptr, sl_ptr, bud_ptr, bt_ptr, table_ptr, lens_ptr, idx_ptr, nsel_ptr,
    M, K, BS, PAD, sk_b, sbt_b, st_b, si_b,
    F0, F1, F2, F3, F4, F5, F6, F7,
    NF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, GATHER: tl.constexpr, WRITE_IDX: tl.constexpr,
    FANOUT: tl.constexpr = 1,
):
    """Selection (spec 5), and with ``GATHER`` also ``kv_select`` (spec 6), one program per row.

    ``key int32 [B, M]`` (block order keys of ``scoring.block_score_keys``),
    ``sl int32 [B]``, ``bud int32 [B]``, ``bt int32 [B, M]`` -> ``table int32 [B, K]``
    (physical ids of the selected blocks ascending, ``PAD`` after) and ``lens int32 [B]``
    when ``GATHER``; ``idx int32 [B, K]`` / ``nsel int32 [B]`` as ``hamming_dist_top_k``
    returns them when ``WRITE_IDX``. Forced blocks get key ``INT32_MAX``; the
    ``n_sel``-th largest key is found by a binary search between the smallest and
    largest non-forced key (``FANOUT`` > 1: a ``FANOUT``-ary search, one reduction
    round per ``FANOUT``-fold shrink); ties go to the smaller block index (prefix sum) and a
    second prefix sum gives each chosen block its ascending slot; slots ``>= K``
    are dropped (``n_sel`` clamped to ``K``). A row with ``seq_len <= 0`` (an
    engine's padding row, hot path only; the op requires ``>= 1``) selects
    nothing: length 0, all ``PAD``.
    """
    b = tl.program_id(0)
    seq = tl.load(sl_ptr + b)
    nblk = tl.minimum((tl.maximum(seq, 0) + BS - 1) // BS, M)
    cols = tl.arange(0, BLOCK_M)
    valid = cols < nblk
    key = tl.load(key_ptr + b * sk_b + cols, mask=valid, other=-2147483648)
    forced = cols < 0
    if NF > 0:
        forced = forced | _is_forced(cols, nblk, F0)
    if NF > 1:
        forced = forced | _is_forced(cols, nblk, F1)
    if NF > 2:
        forced = forced | _is_forced(cols, nblk, F2)
    if NF > 3:
        forced = forced | _is_forced(cols, nblk, F3)
    if NF > 4:
        forced = forced | _is_forced(cols, nblk, F4)
    if NF > 5:
        forced = forced | _is_forced(cols, nblk, F5)
    if NF > 6:
        forced = forced | _is_forced(cols, nblk, F6)
    if NF > 7:
        forced = forced | _is_forced(cols, nblk, F7)
    n_forced = tl.sum(forced.to(tl.int32), axis=0)
    key = tl.where(forced, 2147483647, key).to(tl.int64)
    key = tl.where(valid, key, -2147483648)
    bud = tl.load(bud_ptr + b)
    nsel = tl.where(bud >= nblk, nblk, tl.maximum(bud, n_forced))
    free = valid & (key < 2147483647)
    lo = tl.min(tl.where(free, key, 2147483647), axis=0)
    hi = tl.max(tl.where(free, key, -2147483648), axis=0)
    if nsel <= n_forced:
        lo = tl.full((), 2147483647, tl.int64)
        hi = lo
    if FANOUT == 1:
        while lo < hi:
            mid = lo + (hi - lo + 1) // 2
            enough = tl.sum((key >= mid).to(tl.int32), axis=0) >= nsel
            lo = tl.where(enough, mid, lo)
            hi = tl.where(enough, hi, mid - 1)
    else:  # FANOUT thresholds a step: the interval shrinks FANOUT-fold per reduction round
        key32 = key.to(tl.int32)  # every key (and sentinel) is in the int32 range
        ii = tl.arange(0, FANOUT).to(tl.int64) + 1
        while lo < hi:
            cand = lo + ((hi - lo) * ii + FANOUT - 1) // FANOUT  # ceil steps in (lo, hi], the last = hi
            cnt = tl.sum((key32[None, :] >= cand.to(tl.int32)[:, None]).to(tl.int32), axis=1)
            enough = cnt >= nsel
            lo = tl.max(tl.where(enough, cand, lo), axis=0)
            hi = tl.min(tl.where(enough, hi, cand - 1), axis=0)
    above = key > lo
    tie = (key == lo).to(tl.int32)
    need = nsel - tl.sum(above.to(tl.int32), axis=0)
    tie_rank = tl.cumsum(tie, axis=0) - tie
    chosen = valid & (above | ((tie > 0) & (tie_rank < need)))
    ch = chosen.to(tl.int32)
    pos = tl.cumsum(ch, axis=0) - ch
    keep = chosen & (pos < K)
    nsel_c = tl.minimum(nsel, K)
    kk = tl.arange(0, BLOCK_K)
    tail = (kk >= nsel_c) & (kk < K)
    if GATHER:
        phys = tl.load(bt_ptr + b * sbt_b + cols, mask=keep, other=0)
        tl.store(table_ptr + b * st_b + pos, phys, mask=keep)
        length = tl.minimum(tl.maximum(seq - cols * BS, 0), BS)
        tl.store(lens_ptr + b, tl.sum(tl.where(keep, length, 0), axis=0))
        tl.store(table_ptr + b * st_b + kk, PAD, mask=tail)
    if WRITE_IDX:
        tl.store(idx_ptr + b * si_b + pos, cols, mask=keep)
        tl.store(idx_ptr + b * si_b + kk, -1, mask=tail)
        tl.store(nsel_ptr + b, nsel_c)


def select_fanout(block_m: int, fanout: int | None = None, device: torch.device | None = None) -> int:
    """Search fan-out for a ``BLOCK_M``-wide row: ``fanout`` (default: the device's
    tuning, else ``SELECT_FANOUT``), reduced so the ``[FANOUT, BLOCK_M]`` comparison
    stays within 16K elements (registers)."""
    f = fanout if fanout is not None else (
        knob(device, "select", "fanout", SELECT_FANOUT) if device is not None else SELECT_FANOUT)
    if f < 1 or f & (f - 1):
        raise ValueError(f"select fan-out must be a power of two >= 1, got {f}")
    while f > 1 and f * block_m > 16384:
        f //= 2
    return f


def select_num_warps(block_m: int) -> int:
    """Warps of one ``_select_kernel`` program for a ``BLOCK_M``-wide row."""
    return 4 if block_m <= 2048 else (8 if block_m <= 8192 else 16)


def _words(t: torch.Tensor) -> torch.Tensor:
    """uint8 codes ``[..., C]`` (C % 4 == 0) viewed as int32 ``[..., C/4]`` (no copy if contiguous)."""
    if not t.is_contiguous():
        t = t.contiguous()
    return t.view(torch.int32)


def block_score_keys(q_codes, key_cache, block_table, seq_lens, chunk_repre_method="max",
                     rope_bytes=0, rope_score_weight=1.0, num_warps=None, path=None, keys=None, cache=None,
                     hw_popc=None, wide=None, lop3=None, unroll=None):
    """Kernel 1 alone: ``int32 [B, M]`` block order keys (entries past a row's
    blocks are left unwritten). ``path``: ``"hs"`` (Harley-Seal: no rope bytes,
    R = 128 with even G, or R = 256), ``"swar"`` (any shape) or ``None`` (the first
    that applies). ``keys``: an ``int32 [B, M]`` output to reuse; ``cache``: a
    ``launch.LaunchCache`` (hot path); ``hw_popc``: the ``popc`` instruction in the
    Harley-Seal path (default: on CUDA, not in the interpreter). Exposed for
    benchmarks and tests. ``wide``: load a token's 16 code bytes at once (R = 128);
    ``lop3``: carry-save adders as ``lop3`` instructions (CUDA only; default with
    ``hw_popc``); ``unroll``: the loop over KV heads unrolled. Defaults: the device's
    tuning file (``tuning.py``), else ``SCORE_*`` above."""
    b, hq, c = q_codes.shape
    nb, hkv, bs, _ = key_cache.shape
    m = block_table.shape[1]
    q32, kc32 = _words(q_codes), _words(key_cache)
    w = c // 4
    g = hq // hkv
    block_w = next_pow2(w)
    block_g = max(1, min(next_pow2(g), 16 // block_w))
    if keys is None:
        keys = torch.empty(b, m, dtype=torch.int32, device=q_codes.device)
    if hw_popc is None:
        hw_popc = not interpreting()
    dev = q_codes.device
    lop3 = (knob(dev, "score", "lop3", SCORE_LOP3) and hw_popc) if lop3 is None else lop3
    wide = knob(dev, "score", "wide", SCORE_WIDE) if wide is None else wide
    unroll = knob(dev, "score", "unroll", SCORE_UNROLL) if unroll is None else unroll
    if num_warps is None:
        num_warps = knob(dev, "score", "num_warps", SCORE_NUM_WARPS)
    hs_ok = rope_bytes == 0 and ((w == 4 and g % 2 == 0) or w == 8)
    if path is None:
        path = "hs" if hs_ok else "swar"
    if path == "hs" and not hs_ok:
        raise ValueError(f"the Harley-Seal path needs rope_bytes == 0 and (W == 4, G even) or W == 8; "
                         f"got rope_bytes={rope_bytes}, W={w}, G={g}")
    if b and m and path == "hs":
        launch(_block_score_hs_kernel, (m, b, 1), (
            q32, kc32, block_table, seq_lens, keys,
            nb, q32.stride(0), q32.stride(1), kc32.stride(0), kc32.stride(1), kc32.stride(2),
            block_table.stride(0), keys.stride(0)),
            dict(BS=bs, HKV=hkv, G=g, W=w, MEAN=chunk_repre_method == "mean",
                 BLOCK_T=next_pow2(bs), HW_POPC=bool(hw_popc), LOP3=bool(lop3), WIDE=bool(wide) and w == 4,
                 UNROLL=bool(unroll),
                 num_warps=num_warps), cache)
    elif b and m:
        launch(_block_score_kernel, (m, b, 1), (
            q32, kc32, block_table, seq_lens, keys,
            nb, q32.stride(0), q32.stride(1), kc32.stride(0), kc32.stride(1), kc32.stride(2),
            block_table.stride(0), keys.stride(0)),
            dict(BS=bs, HKV=hkv, G=g, W=w, W_MAIN=(c - rope_bytes) // 4,
                 W16=int(round(rope_score_weight * SCORE_SCALE)), MEAN=chunk_repre_method == "mean",
                 DEFER=block_g * w <= 31, BLOCK_T=next_pow2(bs), BLOCK_G=block_g, BLOCK_W=block_w,
                 num_warps=num_warps), cache)
    return keys


def _forced_args(must_select_blocks):
    forced = list(dict.fromkeys(int(x) for x in must_select_blocks))  # exact duplicates merge
    if len(forced) > MAX_FORCED:
        raise ValueError(f"triton hamming_dist_top_k: at most {MAX_FORCED} distinct must_select_blocks, got {forced}")
    return forced, forced + [0] * (MAX_FORCED - len(forced))


def _launch_select(keys, seq_lens, budgets, block_table, k, bs, forced, fs, table, lens, idx, nsel, pad_id, cache,
                   fanout=None):
    b, m = block_table.shape
    block_m = next_pow2(max(m, 1))
    gather = table is not None
    write_idx = idx is not None
    t_, l_ = (table, lens) if gather else (idx, nsel)
    i_, n_ = (idx, nsel) if write_idx else (t_, l_)
    launch(_select_kernel, (b, 1, 1), (
        keys, seq_lens, budgets, block_table, t_, l_, i_, n_, m, k, bs, pad_id,
        keys.stride(0), block_table.stride(0), t_.stride(0), i_.stride(0), *fs),
        dict(NF=len(forced), BLOCK_M=block_m, BLOCK_K=next_pow2(k), GATHER=gather,
             WRITE_IDX=write_idx, FANOUT=select_fanout(block_m, fanout, keys.device), num_warps=select_num_warps(block_m)), cache)


def hamming_dist_top_k(q_codes, key_cache, block_table, seq_lens, budgets, k, must_select_blocks,
                       chunk_repre_method, rope_bytes, rope_score_weight, fanout=None):
    """Spec 4 + 5. ``q_codes uint8 [B, Hq, C]``, ``key_cache uint8 [NB, Hkv, bs, C]``,
    ``block_table int32 [B, M]``, ``seq_lens int32 [B]``, ``budgets int32 [B]`` ->
    ``(indices int32 [B, k], n_sel int32 [B])``, indices ascending, ``-1`` after."""
    b = q_codes.shape[0]
    m = block_table.shape[1]
    forced, fs = _forced_args(must_select_blocks)
    if m > MAX_BLOCKS:
        raise ValueError(f"triton hamming_dist_top_k: block_table width M <= {MAX_BLOCKS}, got {m}")
    keys = block_score_keys(q_codes, key_cache, block_table, seq_lens, chunk_repre_method,
                            rope_bytes, rope_score_weight)
    idx = torch.empty(b, k, dtype=torch.int32, device=q_codes.device)
    nsel = torch.empty(b, dtype=torch.int32, device=q_codes.device)
    if b:
        _launch_select(keys, seq_lens, budgets, block_table, k, key_cache.shape[2], forced, fs,
                       None, None, idx, nsel, 0, None, fanout)
    return idx, nsel


def select_blocks(q_codes, key_cache, block_table, seq_lens, budgets, k, must_select_blocks, chunk_repre_method,
                  rope_bytes, rope_score_weight, pad_id, keys, table, lens, cache=None):
    """Hot path: ``hamming_dist_top_k`` then ``kv_select`` in two launches (block
    scores; selection with the table gather fused), into caller-owned buffers
    ``keys int32 [B, M]``, ``table int32 [B, k]``, ``lens int32 [B]``. Rows with
    ``seq_len <= 0`` (an engine's padding) come back empty (length 0, all ``pad_id``)."""
    b, m = block_table.shape
    forced, fs = _forced_args(must_select_blocks)
    if m > MAX_BLOCKS:
        raise ValueError(f"triton hamming_dist_top_k: block_table width M <= {MAX_BLOCKS}, got {m}")
    if b == 0:
        return table, lens
    block_score_keys(q_codes, key_cache, block_table, seq_lens, chunk_repre_method, rope_bytes,
                     rope_score_weight, keys=keys, cache=cache)
    _launch_select(keys, seq_lens, budgets, block_table, k, key_cache.shape[2], forced, fs,
                   table, lens, None, None, pad_id, cache)
    return table, lens
