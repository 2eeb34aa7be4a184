"""Triton paged decode attention: spec section 7 (docs/spec.md).

Split-KV flash decoding. Kernel 1, grid ``(B, Hkv, S)``: the program for
(row, KV head, split) keeps the whole GQA group of that KV head (``G`` query
heads, padded to the 16-row minimum of a tensor-core product) in one tile,
streams the split's tokens through the block table in tiles of ``BLOCK_N``
tokens, and keeps an online softmax in fp32 (base-2 exponent). It writes the
unnormalised partial output and its running max and sum. Kernel 2, grid
``(B, Hq)``: rescales and sums the ``S`` partials (or, with the ``attention.fuse``
launch choice, the last split program of each (row, KV head) does it: one launch). The split count is a
function of the table width ``M`` (a shape), never of ``seq_lens`` (device
data), so the launch is the same on every step: CUDA-graph safe.

Dense and sparse attention are this same kernel on different tables:
``(block_table, seq_lens)`` or ``kv_select``'s ``(sparse_block_table, sparse_seq_lens)``.
Block ids are clamped to ``[0, NB)``: a bad id never reads out of bounds.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import interpreting
from .launch import launch, next_pow2, sm_count
from .tuning import knob

__all__ = ["paged_decode_attention", "split_plan"]

INTERPRET = interpreting()
FUSE_DEFAULT = False  # the reduction fused into the split kernel (tuning "attention.fuse"; see _attn_split_kernel)
_LOG2E = 1.4426950408889634


@triton.jit
def _attn_split_kernel(
    q_ptr, k_ptr, v_ptr, bt_ptr, sl_ptr, o_ptr, m_ptr, l_ptr,
    qk_scale, NB, TOK_PER_SPLIT,
    sq_b, sq_h, sk_n, sk_t, sk_h, sv_n, sv_t, sv_h, sbt_b,
    so_b, so_h, so_s, sm_b, sm_h,
    cnt_ptr, out_ptr, S, sout_b, sout_h,
    BS: tl.constexpr, G: tl.constexpr, D: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr, IEEE: tl.constexpr, FUSE: tl.constexpr = False, BLOCK_S: tl.constexpr = 1,
):
    """``q [B, Hq, D]``, ``k/v [NB, BS, Hkv, D]``, ``bt int32 [B, M]``, ``sl int32 [B]``
    -> ``o fp32 [B, Hq, S, D]`` (unnormalised), ``m, l fp32 [B, Hq, S]`` (base-2 max, sum).

    ``FUSE``: the reduction too, in the last of the ``S`` split programs of each
    (row, KV head) to finish: every program stores its partials, then counts itself in
    ``cnt int32 [B * Hkv]`` (``atomic_add``, acquire-release at GPU scope, after a CTA
    barrier so that the release covers every thread's stores); the program that sees
    ``S - 1`` reduces the group's ``G`` heads into ``out [B, Hq, D]`` reading the
    partials past L1 (``.cg``: L1 is not coherent with other SMs' stores) and resets
    its counter to 0 for the next launch (a CUDA-graph replay). One launch instead of
    two; only the last group's reduction is exposed at the tail."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.program_id(2)
    seq = tl.load(sl_ptr + b)
    start = s * TOK_PER_SPLIT
    end = tl.minimum(start + TOK_PER_SPLIT, seq)
    gg = tl.arange(0, BLOCK_G)
    dd = tl.arange(0, BLOCK_D)
    gmask = gg < G
    dmask = dd < D
    heads = h * G + gg
    q = tl.load(q_ptr + b * sq_b + heads[:, None] * sq_h + dd[None, :], mask=gmask[:, None] & dmask[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    m_i = tl.full((BLOCK_G,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_G,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)
    nn = tl.arange(0, BLOCK_N)
    for t0 in range(start, end, BLOCK_N):
        t = t0 + nn
        tmask = t < end
        blk = tl.load(bt_ptr + b * sbt_b + t // BS, mask=tmask, other=0)
        blk = tl.minimum(tl.maximum(blk, 0), NB - 1).to(tl.int64)
        off = t % BS
        lmask = tmask[:, None] & dmask[None, :]
        kt = tl.load(k_ptr + blk[:, None] * sk_n + off[:, None] * sk_t + h * sk_h + dd[None, :], mask=lmask, other=0.0)
        vt = tl.load(v_ptr + blk[:, None] * sv_n + off[:, None] * sv_t + h * sv_h + dd[None, :], mask=lmask, other=0.0)
        if UPCAST:
            kt = kt.to(tl.float32)
            vt = vt.to(tl.float32)
        if IEEE:
            logits = tl.dot(q, tl.trans(kt), input_precision="ieee")
        else:
            logits = tl.dot(q, tl.trans(kt))
        logits = tl.where(tmask[None, :], logits * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(logits, axis=1))
        p = tl.exp2(logits - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p, vt, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt)
        m_i = m_new
    o_off = b * so_b + heads[:, None] * so_h + s * so_s + dd[None, :]
    tl.store(o_ptr + o_off, acc, mask=gmask[:, None] & dmask[None, :])
    tl.store(m_ptr + b * sm_b + heads * sm_h + s, m_i, mask=gmask)
    tl.store(l_ptr + b * sm_b + heads * sm_h + s, l_i, mask=gmask)
    if FUSE:
        tl.debug_barrier()  # every thread's partial stores come before the release below
        done = tl.atomic_add(cnt_ptr + b * tl.num_programs(1) + h, 1, sem="acq_rel", scope="gpu")
        if done == S - 1:  # every split of (b, h) is stored
            for g in tl.static_range(G):
                _reduce_head(o_ptr, m_ptr, l_ptr, out_ptr, b, h * G + g, S, so_b, so_h, so_s, sm_b, sm_h,
                             sout_b, sout_h, D, BLOCK_S, BLOCK_D, True)
            tl.store(cnt_ptr + b * tl.num_programs(1) + h, 0)


@triton.jit
def _reduce_head(o_ptr, m_ptr, l_ptr, out_ptr, b, hq, S, so_b, so_h, so_s, sm_b, sm_h, sout_b, sout_h,
                 D: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, FRESH: tl.constexpr):
    """The ``S`` partials of query head ``hq`` of row ``b`` -> ``out[b, hq]`` in ``out``'s dtype.
    ``FRESH``: the partials were stored by other programs of this launch (load them from L2)."""
    ss = tl.arange(0, BLOCK_S)
    dd = tl.arange(0, BLOCK_D)
    smask = ss < S
    mo = m_ptr + b * sm_b + hq * sm_h + ss
    lo = l_ptr + b * sm_b + hq * sm_h + ss
    oo = o_ptr + b * so_b + hq * so_h + ss[:, None] * so_s + dd[None, :]
    omask = smask[:, None] & (dd < D)[None, :]
    if FRESH:
        m = tl.load(mo, mask=smask, other=float("-inf"), cache_modifier=".cg")
        l = tl.load(lo, mask=smask, other=0.0, cache_modifier=".cg")
        o = tl.load(oo, mask=omask, other=0.0, cache_modifier=".cg")
    else:
        m = tl.load(mo, mask=smask, other=float("-inf"))
        l = tl.load(lo, mask=smask, other=0.0)
        o = tl.load(oo, mask=omask, other=0.0)
    m_all = tl.max(m, axis=0)  # finite when split 0 holds token 0 (seq_len >= 1)
    wgt = tl.where(smask & (l > 0), tl.exp2(m - m_all), 0.0)
    den = tl.sum(l * wgt, axis=0)
    # a row without tokens (an engine's padding row, seq_len <= 0; the op requires >= 1) gets zeros
    out = tl.where(den > 0, tl.sum(o * wgt[:, None], axis=0) / tl.where(den > 0, den, 1.0), 0.0)
    tl.store(out_ptr + b * sout_b + hq * sout_h + dd, out.to(out_ptr.dtype.element_ty), mask=dd < D)


@triton.jit
def _attn_reduce_kernel(o_ptr, m_ptr, l_ptr, out_ptr, S,
                        so_b, so_h, so_s, sm_b, sm_h, sout_b, sout_h,
                        D: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """Partials of ``(b, q) = program_id`` -> ``out [B, Hq, D]`` in ``out``'s dtype."""
    _reduce_head(o_ptr, m_ptr, l_ptr, out_ptr, tl.program_id(0), tl.program_id(1), S, so_b, so_h, so_s, sm_b, sm_h,
                 sout_b, sout_h, D, BLOCK_S, BLOCK_D, False)


def split_plan(b: int, hkv: int, m: int, bs: int, device: torch.device, block_n: int, per_sm: int = 16,
               min_tokens: int = 256):
    """``(splits, tokens_per_split)`` from shapes only: about ``per_sm`` programs per SM,
    but no split shorter than ``min_tokens`` (short splits are latency-bound)."""
    max_tokens = m * bs
    want = max(1, math.ceil(per_sm * sm_count(device) / max(1, b * hkv)))
    if INTERPRET or device.type != "cuda":
        want = 2  # exercise the reduce step without slowing the interpreter
    per = max(block_n, math.ceil(max_tokens / want))
    if not (INTERPRET or device.type != "cuda"):
        per = max(per, min_tokens)
    per = math.ceil(per / block_n) * block_n
    return math.ceil(max_tokens / per), per


def paged_decode_attention(q, k_cache, v_cache, block_table, seq_lens, scale, block_n=None,
                           num_warps=None, num_stages=None, per_sm=None, min_tokens=None, out=None, work=None,
                           cache=None, fuse=None):
    """Spec 7. ``q [B, Hq, D]``; ``k_cache, v_cache [NB, bs, Hkv, D]``; ``block_table int32
    [B, M]``; ``seq_lens int32 [B]`` -> ``[B, Hq, D]`` in ``q.dtype`` (fp32 softmax).
    The keyword arguments are launch knobs for benchmarks and, for the hot path,
    ``out`` (the result buffer), ``work`` (a dict that keeps the fp32 partials
    between calls) and ``cache`` (a ``program.Recorder``); the op uses the defaults (the device's
    tuning file, see ``tuning.py``, else 4 warps, 4 stages, 16 programs per SM, 256-token splits).
    ``fuse``: the reduction in the split kernel's last program per (row, KV head), one launch
    (default: the device's ``attention.fuse`` tuning, else ``FUSE_DEFAULT``); it counts in an
    ``int32 [B * Hkv]`` zero buffer that ``work`` keeps (the op allocates one per call)."""
    b, hq, d = q.shape
    nb, bs, hkv, _ = k_cache.shape
    m = block_table.shape[1]
    g = hq // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if out is None:  # contiguous whatever q's strides (the reduce kernel writes a unit-stride last dim)
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if b == 0:
        return out
    q = q if q.stride(-1) == 1 else q.contiguous()
    k_cache = k_cache if k_cache.stride(-1) == 1 else k_cache.contiguous()
    v_cache = v_cache if v_cache.stride(-1) == 1 else v_cache.contiguous()
    block_d = max(16, next_pow2(d))
    block_g = max(16, next_pow2(g))
    ieee = q.dtype == torch.float32
    dev = q.device
    if block_n is None:
        block_n = 32 if (ieee or block_d > 128) else knob(dev, "attention", "block_n", 64)
    num_warps = knob(dev, "attention", "num_warps", 4) if num_warps is None else num_warps
    num_stages = knob(dev, "attention", "num_stages", 4) if num_stages is None else num_stages
    per_sm = knob(dev, "attention", "per_sm", 16) if per_sm is None else per_sm
    min_tokens = knob(dev, "attention", "min_tokens", 256) if min_tokens is None else min_tokens
    splits, per = split_plan(b, hkv, m, bs, q.device, block_n, per_sm, min_tokens)
    fuse = bool(knob(dev, "attention", "fuse", FUSE_DEFAULT) if fuse is None else fuse)
    key = (b, hq, splits, d, fuse)
    if work is not None and work.get("key") == key:
        o, ml, cnt = work["o"], work["ml"], work["cnt"]
    else:
        o = torch.empty(b, hq, splits, d, dtype=torch.float32, device=q.device)
        ml = torch.empty(2, b, hq, splits, dtype=torch.float32, device=q.device)
        # the fused kernel's counters (it leaves them zero); unfused, an unused pointer (no memset)
        cnt = torch.zeros(b * hkv, dtype=torch.int32, device=q.device) if fuse else ml
        if work is not None:
            work.update(key=key, o=o, ml=ml, cnt=cnt)
    mm, ll = ml[0], ml[1]
    launch(_attn_split_kernel, (b, hkv, splits), (
        q, k_cache, v_cache, block_table, seq_lens, o, mm, ll,
        scale * _LOG2E, nb, per,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_table.stride(0),
        o.stride(0), o.stride(1), o.stride(2), mm.stride(0), mm.stride(1),
        cnt, out, splits, out.stride(0), out.stride(1)),
        dict(BS=bs, G=g, D=d, BLOCK_G=block_g, BLOCK_D=block_d, BLOCK_N=block_n,
             UPCAST=INTERPRET, IEEE=ieee, FUSE=fuse, BLOCK_S=next_pow2(splits), num_warps=num_warps,
             num_stages=num_stages), cache)
    if not fuse:
        launch(_attn_reduce_kernel, (b, hq, 1), (
            o, mm, ll, out, splits, o.stride(0), o.stride(1), o.stride(2), mm.stride(0), mm.stride(1),
            out.stride(0), out.stride(1)),
            dict(D=d, BLOCK_S=next_pow2(splits), BLOCK_D=block_d), cache)
    return out
