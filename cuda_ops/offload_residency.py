"""Fused residency map update for ``gsa.offload`` (the GPU path of ``ResidencyMap.request`` / ``predict``).

The torch :class:`gsa.offload.residency.ResidencyMap` is the reference: ~70-90
small torch ops per call (mark arrays, stable argsorts, index fills). Here the
same decisions take four Triton launches (replayed from a recorded
:class:`~cuda_ops.program.Program`, a few microseconds each in eager mode, and
capturable in a CUDA graph: no host sync, no data-dependent shapes):

1. ``_mark``  (grid over the ``N`` request entries): ``want[b] = 1``;
2. ``_count`` (grid over ``NB`` in chunks, then over ``S``): per chunk the
   missing / wanted / predicted counts; per slot the eviction key
   ``last_used * 2^20 + min(uses, 2^20 - 1)``, or "never" for a slot whose
   block the request keeps; ``predict`` also writes ``predicted = want``;
3. ``_rank``  (same grid): the ascending list of missing blocks (an exclusive
   prefix over the chunk counts plus a cumsum inside the chunk; ``want`` is
   cleared after it is read, so it is all zeros between calls), and each
   slot's rank in the stable order of its key (pairwise comparisons over all
   ``S`` slots, skipped when nothing misses); slots of rank ``< n_miss`` are the
   victims; every slot that holds a wanted block after the update gets
   ``last_used = now`` (and ``uses += 1`` on ``request``);
4. ``_apply`` (grid over ``N``): victim ``i`` gets missing block ``i``
   (``slot_of`` / ``block_of`` updated, the evicted block unmapped), the mover's
   ``src / dst`` lists and ``n_miss`` are written, program 0 adds the counters.

The ranks are those of ``torch.argsort(key, stable=True)`` and the missing list
that of the torch path's stable argsort, so the map, the lists and the counters
are identical to the reference (tests/test_offload_residency.py checks every
tensor). All arrays are int64 as in the reference; ``predicted`` is the
reference's bool array viewed as uint8.
"""
from __future__ import annotations

from typing import Dict

import torch
import triton
import triton.language as tl

from .launch import cdiv, launch, next_pow2
from .program import Program, ProgramError, Recorder

__all__ = ["residency_admit", "USES_RANGE", "priority_update", "priority_keys"]

USES_RANGE = 1 << 20  # the reference's key: recency first, then min(uses, 2^20 - 1)
NEVER = torch.iinfo(torch.int64).max
BLK = 1024  # request entries / host blocks per program
BI, BJ = 64, 128  # slots ranked per program, slots compared per inner step


@triton.jit
def _mark(blocks_ptr, want_ptr, N, NB, BLK_: tl.constexpr):
    offs = tl.program_id(0) * BLK_ + tl.arange(0, BLK_)
    m = offs < N
    b = tl.load(blocks_ptr + offs, mask=m, other=-1).to(tl.int64)
    ok = m & (b >= 0) & (b < NB)
    tl.store(want_ptr + tl.where(ok, b, 0), tl.full([BLK_], 1, tl.int8), mask=ok)


@triton.jit
def _count(want_ptr, slot_of_ptr, pred_ptr, block_of_ptr, last_used_ptr, uses_ptr, key_ptr, part_ptr,
           NB, S, NCH, PREDICT: tl.constexpr, BLK_: tl.constexpr, RANGE: tl.constexpr, NEVER_: tl.constexpr):
    pid = tl.program_id(0)
    if pid < NCH:  # host blocks: counts per chunk
        offs = pid * BLK_ + tl.arange(0, BLK_)
        m = offs < NB
        w = tl.load(want_ptr + offs, mask=m, other=0) != 0
        miss = w & (tl.load(slot_of_ptr + offs, mask=m, other=0) < 0)
        p = tl.load(pred_ptr + offs, mask=m, other=0) != 0
        tl.store(part_ptr + pid, tl.sum(miss.to(tl.int64), 0))
        tl.store(part_ptr + NCH + pid, tl.sum(w.to(tl.int64), 0))
        tl.store(part_ptr + 2 * NCH + pid, tl.sum((w & p).to(tl.int64), 0))
        if PREDICT:
            tl.store(pred_ptr + offs, w.to(tl.int8), mask=m)
    else:  # slots: eviction keys (a slot whose block the request keeps is never a victim)
        sl = (pid - NCH) * BLK_ + tl.arange(0, BLK_)  # (names differ per branch: Triton types them)
        ms = sl < S
        held = tl.load(block_of_ptr + sl, mask=ms, other=-1)
        kept = (held >= 0) & (tl.load(want_ptr + tl.maximum(held, 0), mask=ms & (held >= 0), other=0) != 0)
        lu = tl.load(last_used_ptr + sl, mask=ms, other=0)
        us = tl.minimum(tl.load(uses_ptr + sl, mask=ms, other=0), RANGE - 1)
        key = tl.where(kept, NEVER_, lu * RANGE + us)
        tl.store(key_ptr + sl, key, mask=ms)


@triton.jit
def _rank(want_ptr, slot_of_ptr, key_ptr, part_ptr, miss_ptr, victim_ptr, last_used_ptr, uses_ptr, now_ptr,
          NB, S, NCH, REQUEST: tl.constexpr, BLK_: tl.constexpr, NCH_P2: tl.constexpr, BI_: tl.constexpr,
          BJ_: tl.constexpr, NEVER_: tl.constexpr):
    pid = tl.program_id(0)
    c = tl.arange(0, NCH_P2)
    counts = tl.load(part_ptr + c, mask=c < NCH, other=0)
    n_miss = tl.sum(counts, 0)
    if pid < NCH:  # the missing blocks in ascending order; then clear want
        before = tl.sum(tl.where(c < pid, counts, 0), 0)
        offs = pid * BLK_ + tl.arange(0, BLK_)
        m = offs < NB
        w = tl.load(want_ptr + offs, mask=m, other=0) != 0
        miss = w & (tl.load(slot_of_ptr + offs, mask=m, other=0) < 0)
        pos = before + tl.cumsum(miss.to(tl.int64), 0) - 1  # (names differ per branch: Triton types them)
        tl.store(miss_ptr + tl.where(miss, pos, 0), offs.to(tl.int64), mask=miss)
        tl.store(want_ptr + offs, tl.zeros([BLK_], tl.int8), mask=m)
    else:  # slots: stable rank of the key, victims, recency and score
        i = (pid - NCH) * BI_ + tl.arange(0, BI_)
        mi = i < S
        ki = tl.load(key_ptr + i, mask=mi, other=NEVER_)
        rank = tl.zeros([BI_], tl.int64)
        if n_miss > 0:
            for j0 in range(0, S, BJ_):
                j = j0 + tl.arange(0, BJ_)
                kj = tl.load(key_ptr + j, mask=j < S, other=NEVER_)
                first = (kj[None, :] < ki[:, None]) | ((kj[None, :] == ki[:, None]) & (j[None, :] < i[:, None]))
                rank += tl.sum((first & (j[None, :] < S)).to(tl.int64), 1)
        victim = mi & (rank < n_miss) & (ki != NEVER_)
        tl.store(victim_ptr + tl.where(victim, rank, 0), i.to(tl.int64), mask=victim)
        holds_wanted = mi & ((ki == NEVER_) | victim)  # after the update: kept slots and victims
        now = tl.load(now_ptr)
        lu = tl.load(last_used_ptr + i, mask=mi, other=0)
        tl.store(last_used_ptr + i, tl.where(holds_wanted, now, lu), mask=mi)
        if REQUEST:
            us = tl.load(uses_ptr + i, mask=mi, other=0)
            tl.store(uses_ptr + i, us + holds_wanted.to(tl.int64), mask=mi)


@triton.jit
def _apply(part_ptr, miss_ptr, victim_ptr, slot_of_ptr, block_of_ptr, src_ptr, dst_ptr, nmiss_ptr, counters_ptr,
           N, S, NCH, COUNTER: tl.constexpr, REQUEST: tl.constexpr, BLK_: tl.constexpr, NCH_P2: tl.constexpr):
    pid = tl.program_id(0)
    c = tl.arange(0, NCH_P2)
    n_miss = tl.sum(tl.load(part_ptr + c, mask=c < NCH, other=0), 0)
    i = pid * BLK_ + tl.arange(0, BLK_)
    m = i < N
    live = m & (i < n_miss)
    b = tl.load(miss_ptr + i, mask=live, other=0)
    d = tl.load(victim_ptr + i, mask=live, other=0)
    # the evicted blocks are resident, the new ones are not: the two slot_of writes never meet
    old = tl.load(block_of_ptr + d, mask=live, other=-1)
    tl.store(slot_of_ptr + tl.where(live & (old >= 0), old, 0), tl.full([BLK_], -1, tl.int64),
             mask=live & (old >= 0))
    tl.store(slot_of_ptr + b, d, mask=live)
    tl.store(block_of_ptr + d, b, mask=live)
    tl.store(src_ptr + i, tl.where(live, b, 0), mask=m)
    tl.store(dst_ptr + i, tl.where(live, d, S), mask=m)
    if pid == 0:
        tl.store(nmiss_ptr, n_miss)
        tl.store(counters_ptr + COUNTER, tl.load(counters_ptr + COUNTER) + n_miss)
        if REQUEST:
            n_want = tl.sum(tl.load(part_ptr + NCH + c, mask=c < NCH, other=0), 0)
            n_pred = tl.sum(tl.load(part_ptr + 2 * NCH + c, mask=c < NCH, other=0), 0)
            tl.store(counters_ptr + 0, tl.load(counters_ptr + 0) + n_want)
            tl.store(counters_ptr + 1, tl.load(counters_ptr + 1) + n_want - n_miss)
            tl.store(counters_ptr + 2, tl.load(counters_ptr + 2) + n_pred)


def _record(rec, st: Dict[str, torch.Tensor], work: Dict, blocks, src, dst, n_miss, request: bool) -> None:
    nb, s, n = st["slot_of"].shape[0] - 1, st["block_of"].shape[0] - 1, blocks.shape[0]
    nch = cdiv(nb, BLK)
    p2 = max(32, next_pow2(nch))  # one compiled variant for pools of up to 32K host blocks
    nsc = cdiv(s, BLK)
    launch(_mark, (max(cdiv(n, BLK), 1),), (blocks, work["want"], n, nb), dict(BLK_=BLK), rec)
    launch(_count, (nch + nsc,), (work["want"], st["slot_of"], st["predicted"], st["block_of"], st["last_used"],
                                 st["uses"], work["key"], work["part"], nb, s, nch),
           dict(PREDICT=not request, BLK_=BLK, RANGE=USES_RANGE, NEVER_=NEVER), rec)
    launch(_rank, (nch + cdiv(s, BI),), (work["want"], st["slot_of"], work["key"], work["part"], work["miss"],
                                        work["victim"], st["last_used"], st["uses"], st["now"], nb, s, nch),
           dict(REQUEST=request, BLK_=BLK, NCH_P2=p2, BI_=BI, BJ_=BJ, NEVER_=NEVER), rec)
    launch(_apply, (max(cdiv(n, BLK), 1),), (work["part"], work["miss"], work["victim"], st["slot_of"],
                                            st["block_of"], src, dst, n_miss, st["counters"], n, s, nch),
           dict(COUNTER=3 if request else 4, REQUEST=request, BLK_=BLK, NCH_P2=p2), rec)


def residency_admit(state: Dict[str, torch.Tensor], work: Dict, blocks: torch.Tensor, src: torch.Tensor,
                    dst: torch.Tensor, n_miss: torch.Tensor, request: bool) -> None:
    """One ``ResidencyMap.request`` (``request=True``) or ``predict`` on the device.

    ``state``: the map's tensors, all on one device: ``slot_of int64 [NB + 1]``,
    ``block_of, last_used, uses int64 [S + 1]``, ``predicted uint8 [NB + 1]``,
    ``counters int64 [5]`` (wanted, hits, predicted_hits, fetched, prefetched),
    ``now int64 [1]``. ``blocks int64 [N]`` (``N <= S``; ``-1`` padding,
    duplicates allowed; ids outside ``[0, NB)`` are ignored). Writes ``src, dst
    int64 [N]`` and ``n_miss int64 []``. ``work``: a dict owned by the caller
    (one per map) where the scratch arrays and the recorded launch programs live;
    call once outside a CUDA graph capture before capturing (it allocates)."""
    nb, s = state["slot_of"].shape[0] - 1, state["block_of"].shape[0] - 1
    dev = blocks.device
    if "want" not in work:
        work["want"] = torch.zeros(nb + 1, dtype=torch.int8, device=dev)  # all zeros between calls
        work["key"] = torch.empty(s, dtype=torch.int64, device=dev)
        work["part"] = torch.zeros(3 * cdiv(nb, BLK), dtype=torch.int64, device=dev)
        work["miss"] = torch.zeros(s, dtype=torch.int64, device=dev)
        work["victim"] = torch.zeros(s, dtype=torch.int64, device=dev)
    key = (blocks.shape[0], request)
    prog = work.get(key)
    if prog is None:
        rec = Recorder()
        _record(rec, state, work, blocks, src, dst, n_miss, request)
        try:
            prog = Program(rec, [("blocks", blocks), ("src", src), ("dst", dst), ("n_miss", n_miss)],
                           list(state.values()) + [work[k] for k in ("want", "key", "part", "miss", "victim")], dev)
        except ProgramError:
            prog = False  # e.g. inputs sharing storage: plain launches every call
        work[key] = prog
    if prog:
        prog(blocks, src, dst, n_miss)
    else:
        _record(None, state, work, blocks, src, dst, n_miss, request)


# ---------------------------------------------------------------------------------------------
# Score-aware eviction (gsa.offload.scores; OffloadedGSA(eviction="score")): the torch ops there
# (~40 small ops per layer and step) in two launches. Same formulas; the z-score's sums run in a
# different order than torch's, so priorities agree to float32 rounding (tested with a tolerance),
# and the eviction keys computed from equal priorities are bit-identical.

@triton.jit
def _prio_update(keys_ptr, bt_ptr, seq_ptr, prio_ptr, M, NB, sk_b, sbt_b, decay,
                 BS: tl.constexpr, MEAN: tl.constexpr, BLOCK_M: tl.constexpr):
    """One program per row: the row's block keys (live: inside the row's length and scored)
    -> z-scores over the row -> ``prio[block] = z`` (never scored) or ``decay * prio + (1 - decay) * z``."""
    b = tl.program_id(0)
    cols = tl.arange(0, BLOCK_M)
    seq = tl.load(seq_ptr + b).to(tl.int32)
    m = cols < M
    key = tl.load(keys_ptr + b * sk_b + cols, mask=m, other=-2147483648)
    live = m & (cols < (seq + BS - 1) // BS) & (key != -2147483648)
    if MEAN:  # undo the monotone int32 image of the float32 mean
        val = (key ^ ((key >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)
    else:
        val = key.to(tl.float32)
    val = tl.where(live, val, 0.0)
    cnt = tl.maximum(tl.sum(live.to(tl.float32), axis=0), 1.0)
    dev = tl.where(live, val - tl.sum(val, axis=0) / cnt, 0.0)
    var = tl.maximum(tl.sum(dev * dev, axis=0) / cnt, 1e-12)
    z = dev / tl.sqrt(var)
    blk = tl.load(bt_ptr + b * sbt_b + cols, mask=live, other=0).to(tl.int64)
    blk = tl.where(live & (blk >= 0) & (blk < NB), blk, NB)
    old = tl.load(prio_ptr + blk, mask=live, other=0.0)
    new = tl.where(old != old, z, z + decay * (old - z))  # old != old: NaN, never scored
    tl.store(prio_ptr + blk, new, mask=live & (blk < NB))


@triton.jit
def _prio_keys(block_of_ptr, prio_ptr, last_used_ptr, S, NB, BLK_: tl.constexpr):
    """Per slot: ``last_used = floor((clamp(prio[block], -64, 64) + 64) * 2^24 + 0.5)`` (NaN -> -64),
    ``-1`` for a free slot: the eviction key of ``ResidencyMap.set_priority``."""
    offs = tl.program_id(0) * BLK_ + tl.arange(0, BLK_)
    m = offs < S
    held = tl.load(block_of_ptr + offs, mask=m, other=-1)
    free = held < 0
    p = tl.load(prio_ptr + tl.where(free, NB, held), mask=m, other=0.0)
    p = tl.where(p != p, -64.0, p)
    p = tl.minimum(tl.maximum(p, -64.0), 64.0)
    q = ((p + 64.0) * 16777216.0 + 0.5).to(tl.int64)  # >= 0.5: truncation is the floor
    tl.store(last_used_ptr + offs, tl.where(free, -1, q), mask=m)


def priority_update(keys: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor, prio: torch.Tensor,
                    decay: float, block_size: int, mean: bool) -> None:
    """``gsa.offload.scores.update_priority`` from the select program's block keys: ``keys int32
    [B, M]``, ``block_table int32 [B, M]``, ``seq_lens int32 [B]``, ``prio float32 [NB + 1]`` (in
    place; entry ``NB`` stays as it is). A block in several rows takes one row's value."""
    b, m = keys.shape
    if b == 0 or m == 0:
        return
    launch(_prio_update, (b,), (keys, block_table, seq_lens, prio, m, prio.shape[0] - 1, keys.stride(0),
                                block_table.stride(0), float(decay)),
           dict(BS=int(block_size), MEAN=bool(mean), BLOCK_M=max(16, next_pow2(m))))


def priority_keys(block_of: torch.Tensor, prio: torch.Tensor, last_used: torch.Tensor) -> None:
    """``ResidencyMap.set_priority``: ``block_of, last_used int64 [S + 1]`` (the first ``S`` entries
    written), ``prio float32 [NB + 1]``."""
    s = block_of.shape[0] - 1
    launch(_prio_keys, (cdiv(s, BLK),), (block_of, prio, last_used, s, prio.shape[0] - 1), dict(BLK_=BLK))
