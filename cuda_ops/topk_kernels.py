"""Triton selection kernels of ``hamming_dist_top_k`` (spec 5), and ``kv_select``
(spec 6) fused into them; ``scoring.py`` holds the wrappers.

* ``_select_kernel``, grid ``(B,)``: one program per row over the block keys that
  a score kernel wrote (``score_kernels.py``).
* ``_score_select_kernel``, grid ``(M, B)``: the Harley-Seal score kernel with
  the selection fused into its last program per row ("last block done"). Every
  program stores its block key, then increments the row's counter
  (``atomic_add``, acquire-release at GPU scope, after a CTA barrier so the
  release covers the store whichever thread made it). The program that sees
  ``M - 1`` runs the row's selection over keys read past L1 (``.cg``: the L1 is
  not coherent with other SMs' stores) and resets the counter to 0 for the next
  launch (a CUDA-graph replay). Rows are laid out ``j``-fastest in the grid, so
  row ``b``'s selection runs while later rows are still scored: only the last
  row's selection is exposed, and one launch and one kernel boundary go away.

Both run the selection body once, :func:`_select_row`: the keys, forced blocks and the
search interval, one of three exact threshold searches (binary, ``FANOUT``-ary, or
the radix select of :func:`_radix_threshold` when ``RADIX`` > 0), then one shared
tail (tie-break, slots, gather). Every search returns the same threshold for every
input, so every launch choice selects the same blocks.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .score_kernels import _hs_score_program

__all__ = ["_select_kernel", "_score_select_kernel", "_select_row"]


@triton.jit
def _is_forced(cols, nblk, m):
    target = tl.where(m >= 0, m, nblk + m)
    return (cols == target) & (target >= 0) & (target < nblk)


# Radix-select count packing: a digit's count is at most MAX_BLOCKS = 2**16 (scoring.py), so the
# number of digits below the threshold digit (<= 2**8) and their element count (<= 2**16) share
# one int32 sum: (digits << 17) + count.
_PACK_SHIFT = tl.constexpr(17)
_PACK_ONE = tl.constexpr(1 << 17)
_PACK_MASK = tl.constexpr((1 << 17) - 1)


@triton.jit
def _radix_threshold(key, free, lo, hi, q, RADIX: tl.constexpr):
    """Threshold of the binary search, by radix select: the largest ``t`` in ``[lo, hi]``
    with ``#{key >= t} >= nsel``.

    ``key int32 [BLOCK_M]`` (forced: ``INT32_MAX``), ``free`` (valid and below ``INT32_MAX``:
    exactly the keys in ``[lo, hi]``), ``lo``/``hi`` int64 scalars (the smallest / largest free
    key, or ``lo > hi`` / ``lo == hi`` when the search has nothing to do), ``q = nblk - nsel + 1``.
    Why this is the same ``t``: every valid key that is not free is ``INT32_MAX > hi`` and
    counts for every ``t``, so ``t`` is the ``(nsel - (nblk - n_free))``-th largest free key,
    that is the ``q``-th smallest one; when that rank is < 1 (``q > n_free``: valid
    non-forced ``INT32_MAX`` keys already make ``nsel``) it is ``hi``. A radix select finds
    the ``q``-th smallest of ``u = key - lo`` (unsigned, < 2**32) from the top digit that
    ``hi - lo`` needs: a histogram of the candidates' digit, a prefix sum, the digit where the
    running count reaches ``q``; candidates narrow to that digit. With ``q > n_free`` the
    digit found is ``2**RADIX`` (none), which pushes the result past ``hi``: clamped to ``hi``.
    Rounds: 1-2 for a narrow key range instead of up to 32 binary steps, each a histogram,
    a prefix sum and one sum (three block-wide steps instead of one)."""
    BINS: tl.constexpr = 1 << RADIX
    span = hi - lo
    s = tl.full((), 0, tl.int32)  # shift of the top digit: (hi - lo) >> s < BINS
    while (span >> s) >= BINS:
        s += RADIX
    s = tl.where(lo < hi, s, -1)  # nothing to search: t = lo
    # unsigned offsets: the int32 difference wraps to the right value mod 2**32 (keys in [lo, hi])
    u = (key - lo.to(tl.int32)).to(tl.uint32, bitcast=True)
    cand = free
    pre = tl.zeros((), tl.int64)  # digits found so far, at their place: t = lo + pre
    while s >= 0:
        digit = ((u >> s.to(tl.uint32)) & (BINS - 1)).to(tl.int32, bitcast=True)  # logical shift
        hist = tl.histogram(digit, BINS, mask=cand)
        below = tl.cumsum(hist, axis=0) < q  # digits whose running count has not reached q
        packed = tl.sum(tl.where(below, hist + _PACK_ONE, 0), axis=0)
        d = packed >> _PACK_SHIFT
        q -= packed & _PACK_MASK
        pre += d.to(tl.int64) << s.to(tl.int64)
        cand = cand & (digit == d)
        s -= RADIX
    return tl.where(lo < hi, tl.minimum(lo + pre, hi), lo)


@triton.jit
def _count_min_max(c0, lo0, hi0, c1, lo1, hi1):
    """Combine of ``tl.reduce`` over (forced count, smallest free key, largest free key)."""
    return c0 + c1, tl.minimum(lo0, lo1), tl.maximum(hi0, hi1)


@triton.jit
def _row_keys(ptrs, mask, FRESH: tl.constexpr):
    """A row's block keys (``INT32_MIN`` where masked); ``FRESH``: past L1, which is not
    coherent with the other programs of the same launch that wrote them."""
    if FRESH:
        key = tl.load(ptrs, mask=mask, other=-2147483648, cache_modifier=".cg")
    else:
        key = tl.load(ptrs, mask=mask, other=-2147483648)
    return key


@triton.jit
def _select_row(b, seq, key_ptr, bud_ptr, bt_ptr, table_ptr, lens_ptr, idx_ptr, nsel_ptr,
                M, K, BS, PAD, sk_b, sbt_b, st_b, si_b, F0, F1, F2, F3, F4, F5, F6, F7,
                NF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, GATHER: tl.constexpr,
                WRITE_IDX: tl.constexpr, FANOUT: tl.constexpr, FRESH: tl.constexpr, RADIX: tl.constexpr,
                PREFETCH: tl.constexpr):
    """Selection of row ``b`` (see ``_select_kernel``). ``FRESH``: load the keys from L2
    (they were written by other programs of the same launch). ``RADIX`` > 0: the threshold
    by a radix select of ``RADIX``-bit digits instead of the binary / ``FANOUT``-ary search.
    ``PREFETCH``: the row's keys, budget and block-table entries are loaded first, all of
    them (``cols < M``: in bounds; entries past the row are masked afterwards): none waits
    on ``seq`` or behind the reductions' barriers, so their latencies overlap instead of
    adding up; and (not ``FRESH``) the forced count and the free keys' minimum and maximum
    come from one reduction instead of three. The same values reach the same outputs."""
    cols = tl.arange(0, BLOCK_M)
    if PREFETCH:
        key = _row_keys(key_ptr + b * sk_b + cols, cols < M, FRESH)
        bud = tl.load(bud_ptr + b)
        if GATHER:
            phys_row = tl.load(bt_ptr + b * sbt_b + cols, mask=cols < M, other=0)
    nblk = tl.minimum((tl.maximum(seq, 0) + BS - 1) // BS, M)
    valid = cols < nblk
    if not PREFETCH:
        key = _row_keys(key_ptr + b * sk_b + cols, valid, FRESH)
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
    fold: tl.constexpr = PREFETCH and not FRESH  # one prologue reduction (not in the fused kernel: its registers are
    # its score programs' occupancy)
    if not fold:
        n_forced = tl.sum(forced.to(tl.int32), axis=0)
    # keys stay int32 (registers: the fused kernel runs this in one score warp); the search
    # bounds are int64 scalars so that `hi - lo + 1` cannot overflow, and every threshold
    # compared with the keys lies in [lo, hi], inside the int32 range
    key = tl.where(forced, 2147483647, key)
    key = tl.where(valid, key, -2147483648)
    if not PREFETCH:
        bud = tl.load(bud_ptr + b)
    free = valid & (key < 2147483647)
    if fold:  # forced count, smallest and largest free key in one reduction: one round of shared
        # memory and barriers instead of three (one warp at M = 1024: 248 registers instead of 168)
        n_forced, lo, hi = tl.reduce((forced.to(tl.int32), tl.where(free, key, 2147483647),
                                      tl.where(free, key, -2147483648)), 0, _count_min_max)
        lo = lo.to(tl.int64)
        hi = hi.to(tl.int64)
    else:
        lo = tl.min(tl.where(free, key, 2147483647), axis=0).to(tl.int64)
        hi = tl.max(tl.where(free, key, -2147483648), axis=0).to(tl.int64)
    nsel = tl.where(bud >= nblk, nblk, tl.maximum(bud, n_forced))
    if nsel <= n_forced:
        lo = tl.full((), 2147483647, tl.int64)
        hi = lo
    if RADIX > 0:  # the same threshold in ceil(bit_length(hi - lo) / RADIX) histogram rounds
        lo = _radix_threshold(key, free, lo, hi, nblk - nsel + 1, RADIX)
    elif FANOUT == 1:
        while lo < hi:
            mid = lo + (hi - lo + 1) // 2
            enough = tl.sum((key >= mid.to(tl.int32)).to(tl.int32), axis=0) >= nsel
            lo = tl.where(enough, mid, lo)
            hi = tl.where(enough, hi, mid - 1)
    else:  # FANOUT thresholds a step: the interval shrinks FANOUT-fold per reduction round
        ii = tl.arange(0, FANOUT).to(tl.int64) + 1
        while lo < hi:
            cand = lo + ((hi - lo) * ii + FANOUT - 1) // FANOUT  # ceil steps in (lo, hi], the last = hi
            cnt = tl.sum((key[None, :] >= cand.to(tl.int32)[:, None]).to(tl.int32), axis=1)
            enough = cnt >= nsel
            lo = tl.max(tl.where(enough, cand, lo), axis=0)
            hi = tl.min(tl.where(enough, hi, cand - 1), axis=0)
    lo32 = lo.to(tl.int32)
    above = key > lo32
    tie = (key == lo32).to(tl.int32)
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
        if PREFETCH:
            tl.store(table_ptr + b * st_b + pos, phys_row, mask=keep)
        else:
            phys = tl.load(bt_ptr + b * sbt_b + cols, mask=keep, other=0)
            tl.store(table_ptr + b * st_b + pos, phys, mask=keep)
        length = tl.minimum(tl.maximum(seq - cols * BS, 0), BS)
        tl.store(lens_ptr + b, tl.sum(tl.where(keep, length, 0), axis=0))
        tl.store(table_ptr + b * st_b + kk, PAD, mask=tail)
    if WRITE_IDX:
        tl.store(idx_ptr + b * si_b + pos, cols, mask=keep)
        tl.store(idx_ptr + b * si_b + kk, -1, mask=tail)
        tl.store(nsel_ptr + b, nsel_c)


@triton.jit
def _select_kernel(
    key_ptr, sl_ptr, bud_ptr, bt_ptr, table_ptr, lens_ptr, idx_ptr, nsel_ptr,
    M, K, BS, PAD, sk_b, sbt_b, st_b, si_b,
    F0, F1, F2, F3, F4, F5, F6, F7,
    NF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, GATHER: tl.constexpr, WRITE_IDX: tl.constexpr,
    FANOUT: tl.constexpr = 1, RADIX: tl.constexpr = 0, PREFETCH: tl.constexpr = False,
):
    """Selection (spec 5), and with ``GATHER`` also ``kv_select`` (spec 6), one program per row.

    ``key int32 [B, M]`` (block order keys of ``scoring.block_score_keys``),
    ``sl int32 [B]``, ``bud int32 [B]``, ``bt int32 [B, M]`` -> ``table int32 [B, K]``
    (physical ids of the selected blocks ascending, ``PAD`` after) and ``lens int32 [B]``
    when ``GATHER``; ``idx int32 [B, K]`` / ``nsel int32 [B]`` as ``hamming_dist_top_k``
    returns them when ``WRITE_IDX``. Forced blocks get key ``INT32_MAX``; the
    ``n_sel``-th largest key is found by a binary search between the smallest and
    largest non-forced key (``FANOUT`` > 1: a ``FANOUT``-ary search, one reduction
    round per ``FANOUT``-fold shrink; ``RADIX`` > 0: the same key by a radix select of
    ``RADIX``-bit digits, ``_radix_threshold``; ``PREFETCH``: every load first, see
    ``_select_row``); ties go to the smaller block index (prefix sum) and a
    second prefix sum gives each chosen block its ascending slot; slots ``>= K``
    are dropped (``n_sel`` clamped to ``K``). A row with ``seq_len <= 0`` (an
    engine's padding row, hot path only; the op requires ``>= 1``) selects
    nothing: length 0, all ``PAD``.
    """
    b = tl.program_id(0)
    seq = tl.load(sl_ptr + b)
    _select_row(b, seq, key_ptr, bud_ptr, bt_ptr, table_ptr, lens_ptr, idx_ptr, nsel_ptr,
                M, K, BS, PAD, sk_b, sbt_b, st_b, si_b, F0, F1, F2, F3, F4, F5, F6, F7,
                NF, BLOCK_M, BLOCK_K, GATHER, WRITE_IDX, FANOUT, False, RADIX, PREFETCH)


@triton.jit
def _score_select_kernel(
    q_ptr, kc_ptr, bt_ptr, sl_ptr, key_ptr, cnt_ptr, bud_ptr, table_ptr, lens_ptr, idx_ptr, nsel_ptr,
    NB, M, K, PAD, sq_b, sq_h, skc_n, skc_h, skc_t, sbt_b, sk_b, st_b, si_b,
    F0, F1, F2, F3, F4, F5, F6, F7,
    BS: tl.constexpr, HKV: tl.constexpr, G: tl.constexpr, W: tl.constexpr, MEAN: tl.constexpr,
    BLOCK_T: tl.constexpr, HW_POPC: tl.constexpr, LOP3: tl.constexpr, WIDE: tl.constexpr,
    UNROLL: tl.constexpr, PLANES: tl.constexpr, HWP: tl.constexpr, PDL: tl.constexpr, HKV_P: tl.constexpr,
    NF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, GATHER: tl.constexpr, WRITE_IDX: tl.constexpr,
    FANOUT: tl.constexpr, RADIX: tl.constexpr = 0, PREFETCH: tl.constexpr = False,
):
    """``_block_score_hs_kernel`` then, in the last program of each row, ``_select_kernel``.

    Inputs and outputs of both (``key int32 [B, M]`` is scratch between them) plus
    ``cnt int32 [B]``: zero before the launch, zero again after it.
    """
    seq = _hs_score_program(q_ptr, kc_ptr, bt_ptr, sl_ptr, key_ptr, NB, sq_b, sq_h, skc_n, skc_h, skc_t, sbt_b, sk_b, M,
                            BS, HKV, G, W, MEAN, BLOCK_T, HW_POPC, LOP3, WIDE, UNROLL, PLANES, HWP, PDL, HKV_P)
    b = tl.program_id(1)
    tl.debug_barrier()  # the key store (any thread) comes before the release below
    done = tl.atomic_add(cnt_ptr + b, 1, sem="acq_rel", scope="gpu")
    if done == M - 1:  # every block of the row is scored
        _select_row(b, seq, key_ptr, bud_ptr, bt_ptr, table_ptr, lens_ptr, idx_ptr, nsel_ptr,
                    M, K, BS, PAD, sk_b, sbt_b, st_b, si_b, F0, F1, F2, F3, F4, F5, F6, F7,
                    NF, BLOCK_M, BLOCK_K, GATHER, WRITE_IDX, FANOUT, True, RADIX, PREFETCH)
        tl.store(cnt_ptr + b, 0)
