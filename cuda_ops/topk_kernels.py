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

Both run the selection body once, :func:`_select_row`.
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


@triton.jit
def _select_row(b, seq, key_ptr, bud_ptr, bt_ptr, table_ptr, lens_ptr, idx_ptr, nsel_ptr,
                M, K, BS, PAD, sk_b, sbt_b, st_b, si_b, F0, F1, F2, F3, F4, F5, F6, F7,
                NF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, GATHER: tl.constexpr,
                WRITE_IDX: tl.constexpr, FANOUT: tl.constexpr, FRESH: tl.constexpr):
    """Selection of row ``b`` (see ``_select_kernel``). ``FRESH``: load the keys from L2
    (they were written by other programs of the same launch)."""
    nblk = tl.minimum((tl.maximum(seq, 0) + BS - 1) // BS, M)
    cols = tl.arange(0, BLOCK_M)
    valid = cols < nblk
    if FRESH:
        key = tl.load(key_ptr + b * sk_b + cols, mask=valid, other=-2147483648, cache_modifier=".cg")
    else:
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
    # keys stay int32 (registers: the fused kernel runs this in one score warp); the search
    # bounds are int64 scalars so that `hi - lo + 1` cannot overflow, and every threshold
    # compared with the keys lies in [lo, hi], inside the int32 range
    key = tl.where(forced, 2147483647, key)
    key = tl.where(valid, key, -2147483648)
    bud = tl.load(bud_ptr + b)
    nsel = tl.where(bud >= nblk, nblk, tl.maximum(bud, n_forced))
    free = valid & (key < 2147483647)
    lo = tl.min(tl.where(free, key, 2147483647), axis=0).to(tl.int64)
    hi = tl.max(tl.where(free, key, -2147483648), axis=0).to(tl.int64)
    if nsel <= n_forced:
        lo = tl.full((), 2147483647, tl.int64)
        hi = lo
    if FANOUT == 1:
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
    _select_row(b, seq, key_ptr, bud_ptr, bt_ptr, table_ptr, lens_ptr, idx_ptr, nsel_ptr,
                M, K, BS, PAD, sk_b, sbt_b, st_b, si_b, F0, F1, F2, F3, F4, F5, F6, F7,
                NF, BLOCK_M, BLOCK_K, GATHER, WRITE_IDX, FANOUT, False)


@triton.jit
def _score_select_kernel(
    q_ptr, kc_ptr, bt_ptr, sl_ptr, key_ptr, cnt_ptr, bud_ptr, table_ptr, lens_ptr, idx_ptr, nsel_ptr,
    NB, M, K, PAD, sq_b, sq_h, skc_n, skc_h, skc_t, sbt_b, sk_b, st_b, si_b,
    F0, F1, F2, F3, F4, F5, F6, F7,
    BS: tl.constexpr, HKV: tl.constexpr, G: tl.constexpr, W: tl.constexpr, MEAN: tl.constexpr,
    BLOCK_T: tl.constexpr, HW_POPC: tl.constexpr, LOP3: tl.constexpr, WIDE: tl.constexpr,
    UNROLL: tl.constexpr, PLANES: tl.constexpr, HWP: tl.constexpr, PDL: tl.constexpr, HKV_P: tl.constexpr,
    NF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, GATHER: tl.constexpr, WRITE_IDX: tl.constexpr,
    FANOUT: tl.constexpr,
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
                    NF, BLOCK_M, BLOCK_K, GATHER, WRITE_IDX, FANOUT, True)
        tl.store(cnt_ptr + b, 0)
