"""Triton hashing kernels: spec sections 1, 2, 3, 9 and 12 (docs/spec.md).

One kernel serves ``hash_encode``, ``hash_encode_and_cache`` and both MLA
variants: it projects a tile of rows of one head with ``W[head // G]`` and packs
the signs LSB-first, then either stores the codes or scatters them into the
paged hash cache by slot. The MLA ops call it twice (kv_lora part, then rope
part at a byte offset), so both parts land in one code.

Packing: after one matrix product ``[BLOCK_M, 8*BLOCK_C]``, a reshape to
``[BLOCK_M, BLOCK_C, 8]`` puts the 8 bits of byte ``c`` (projection columns
``8c .. 8c+7``) on the last axis, where a weighted sum packs them (bit ``i``
has weight ``2**i``). The weight tile is loaded in its natural, coalesced order.

Centred codes (spec 13): with a threshold ``t [Hw, R]`` the kernel subtracts
``t[head // G]`` from the fp32 projection before packing (``HAS_THR``; loaded once
per program), so bit ``r`` is ``x @ W[:, r] - t[r] > 0``; without one it is spec 2.

Precision (spec 2: fp32 accumulation, no TF32): fp32 and fp16 inputs use an
fp32 product with ``input_precision="ieee"``. bf16 inputs are exact in bf16, so
they use the tensor cores on a two-term split of the weight,
``W = W_hi + W_lo`` (both bf16, fp32 accumulation): the split leaves a relative
error of about ``2**-17`` per weight, far inside the spec's ``1e-3`` band, and
is 10-20x faster than the FMA path that ``ieee`` compiles to.

Launch choice ``hash.prec16`` (one tensor-core product instead of two; default off): a
code bit is only a sign, so each row of ``x`` and each column of ``W`` may be scaled by
any power of two. The kernel scales each row's largest magnitude into ``[2**14, 2**15)``
(bf16 values there are exact in fp16) and each weight column likewise, rounds the weight
to fp16 (relative error at most ``2**-11`` per weight) and runs one fp16 product with
fp32 accumulation. The projection error is then at most ``2**-11 * ||x|| * ||W[:, r]||``,
half of spec 2's band (the two-term split: ``2**-17``), so more bits near zero may differ
from other backends, all inside the band. Spec 13 thresholds are scaled by the same powers
of two. Only where one weight tile covers ``D`` (GQA, ``D <= 128``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreting
from .hash_tiles import _hash_t_kernel
from .launch import cdiv, launch, next_pow2, sm_count
from .tuning import knob

INTERPRET = interpreting()
PACK_DOT_DEFAULT = False  # pack bits by a matrix product (see _pack_dot) instead of a reshape
PREFETCH_DEFAULT = True  # load the next row tile before projecting this one (when a program has several)
HOIST_DEFAULT = True  # split the bf16 weight into hi/lo once per program, not per row tile
BIG_ROWS = 4096  # from this many rows a launch reads the device's tuning file (tuning.py)
DECODE_BLOCK_C = 16  # code bytes per program below BIG_ROWS rows (tuning "hash.decode_block_c")
PREC16_DEFAULT = False  # one fp16 product per tile instead of the bf16 split (tuning "hash.prec16"; module doc)
TRANSPOSED_DEFAULT = False  # W^T @ x^T with the weight in registers (tuning "hash.transposed"; hash_tiles.py)

__all__ = [
    "sign_bits_pack",
    "hash_encode",
    "hash_encode_and_cache",
    "mla_hash_encode",
    "mla_hash_encode_and_cache",
]


@triton.jit
def _pack_cols(bits, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """``bits int32 [BLOCK_M, 8*BLOCK_C]`` (column ``8c + i`` = bit ``i`` of byte
    ``c``, 0 or 1) -> ``int32 [BLOCK_M, BLOCK_C]`` packed bytes."""
    bits3 = tl.reshape(bits, (BLOCK_M, BLOCK_C, 8))
    weight = 1 << tl.arange(0, 8)
    return tl.sum(bits3 * weight[None, None, :], axis=2)


@triton.jit
def _pack_dot(acc, BLOCK_C: tl.constexpr, UPCAST: tl.constexpr):
    """Same result as ``_pack_cols((acc > 0), ...)`` as a matrix product: the 0/1
    bits ``[BLOCK_M, 8*BLOCK_C]`` times ``P [8*BLOCK_C, BLOCK_C]`` with
    ``P[8c + i, c] = 2**i``. Exact (bits, powers of two and sums <= 255 are exact
    in bf16 operands with fp32 accumulation) and it stays in the tensor-core
    layout instead of reshaping through shared memory."""
    r = tl.arange(0, 8 * BLOCK_C)
    cc = tl.arange(0, BLOCK_C)
    p = tl.where((r // 8)[:, None] == cc[None, :], (1 << (r % 8))[:, None], 0)
    if UPCAST:
        out = tl.dot((acc > 0).to(tl.float32), p.to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot((acc > 0).to(tl.bfloat16), p.to(tl.bfloat16))
    return out.to(tl.int32)


@triton.jit
def _sign_pack_kernel(x_ptr, out_ptr, N, C, sx_n, so_n,
                      BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    j = tl.arange(0, 8 * BLOCK_C)
    mask = (rows[:, None] < N) & (j < 8 * C)[None, :]
    x = tl.load(x_ptr + rows[:, None].to(tl.int64) * sx_n + j[None, :], mask=mask, other=0.0)
    packed = _pack_cols((x.to(tl.float32) > 0).to(tl.int32), BLOCK_M, BLOCK_C)
    c = tl.arange(0, BLOCK_C)
    omask = (rows[:, None] < N) & (c < C)[None, :]
    tl.store(out_ptr + rows[:, None].to(tl.int64) * so_n + c[None, :], packed.to(tl.uint8), mask=omask)


@triton.jit
def _split_w(w):
    """fp32 weight tile -> ``(W_hi, W_lo)`` bf16 with ``W_hi + W_lo ~ W`` (see module doc)."""
    w_hi = w.to(tl.bfloat16)
    return w_hi, (w - w_hi.to(tl.float32)).to(tl.bfloat16)


@triton.jit
def _pow2_scale(a):
    """fp32 magnitudes ``a >= 0`` -> powers of two ``s`` with ``a * s`` in ``[2**14, 2**15)``
    (exact products; zero and subnormal ``a`` get ``2**127``, Inf / NaN a tiny scale: that row's
    or column's bits are unspecified by spec 2's amendment and nothing else is touched)."""
    e = (a.to(tl.int32, bitcast=True) >> 23) & 0xFF  # the biased exponent: a in [2**(e-127), 2**(e-126))
    se = tl.minimum(tl.maximum(14 - e + 254, 1), 254)  # biased exponent of 2**(14 - (e - 127))
    return (se << 23).to(tl.float32, bitcast=True)


@triton.jit
def _weight16(w):
    """fp32 weight tile ``[BD, 8*BC]`` -> (fp16 tile with each column scaled by a power of two,
    the column scales ``[8*BC]``) for :func:`_project16`."""
    cs = _pow2_scale(tl.max(tl.abs(w), axis=0))
    return (w * cs[None, :]).to(tl.float16), cs


@triton.jit
def _project16(x, w16, acc, UPCAST: tl.constexpr):
    """``acc += (x * rs) @ w16`` with ``rs [BM]`` each row's power-of-two scale (returned):
    one fp16 product, fp32 accumulation (``hash.prec16``, see module doc)."""
    xf = x.to(tl.float32)
    rs = _pow2_scale(tl.max(tl.abs(xf), axis=1))
    x16 = (xf * rs[:, None]).to(tl.float16)
    if UPCAST:  # the interpreter: the same fp16-rounded operands, fp32 products
        acc = tl.dot(x16.to(tl.float32), w16.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(x16, w16, acc)
    return acc, rs


@triton.jit
def _project_split(x, w_hi, w_lo, acc, UPCAST: tl.constexpr):
    """``acc += x @ (w_hi + w_lo)``, bf16 products with fp32 accumulation."""
    if UPCAST:  # the interpreter's bf16 dot is wrong: same products in fp32
        acc = tl.dot(x.to(tl.float32), w_hi.to(tl.float32), acc, input_precision="ieee")
        acc = tl.dot(x.to(tl.float32), w_lo.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(x, w_hi, acc)
        acc = tl.dot(x, w_lo, acc)
    return acc


@triton.jit
def _project_tile(x, w, acc, SPLIT_BF16: tl.constexpr, UPCAST: tl.constexpr):
    """``acc += x @ w`` in fp32: ``x [BM, BD]``, ``w fp32 [BD, 8*BC]`` (see module doc)."""
    if SPLIT_BF16:
        w_hi, w_lo = _split_w(w)
        acc = _project_split(x, w_hi, w_lo, acc, UPCAST)
    else:
        acc = tl.dot(x.to(tl.float32), w, acc, input_precision="ieee")
    return acc


@triton.jit
def _hash_kernel(
    x_ptr, w_ptr, out_ptr, slot_ptr, thr_ptr,
    L, D, C, G, NSLOTS, BS, BYTE_OFF,
    sx_l, sx_h, sw_h, sw_d, sw_r, st_h,
    so_l, so_h, sc_n, sc_h, sc_t,
    CACHE: tl.constexpr, HAS_THR: tl.constexpr, SPLIT_BF16: tl.constexpr, UPCAST: tl.constexpr, ONE_D: tl.constexpr,
    PACK_DOT: tl.constexpr, PREFETCH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
    HOIST: tl.constexpr = False, LAUNCH_DEPENDENTS: tl.constexpr = False, PREC16: tl.constexpr = False,
):
    """Row tiles ``x[l, h, :]`` of one head ``h`` (program axis 1) and code bytes
    ``[c0, c0 + BLOCK_C)`` (axis 2), persistent over row tiles along axis 0 so
    that the weight tile is loaded once per program.

    ``x [L, H, D]``; ``w [Hw, D, R]`` (head ``h`` uses ``w[h // G]``);
    codes mode: ``out uint8 [L, H, *]`` at byte ``BYTE_OFF``; cache mode:
    ``out`` is the cache ``uint8 [NB, H, BS, *]`` and ``slot [L]`` the slots
    (``< 0`` or ``>= NSLOTS``: not written). ``HAS_THR``: ``thr [Hw, R]`` (row
    stride ``st_h``, unit column stride) is subtracted from the projection (spec 13).
    """
    if LAUNCH_DEPENDENTS:  # CUDA PDL: the next kernel (the hot path's block scores) may start; it
        tl.extra.cuda.gdc_launch_dependents()  # waits (gdc_wait) before it reads these codes
    h = tl.program_id(1)
    c0 = tl.program_id(2) * BLOCK_C  # this program's first code byte (wide codes are split)
    j = c0 * 8 + tl.arange(0, 8 * BLOCK_C)
    cmask = j < 8 * C
    dd = tl.arange(0, BLOCK_D)
    c = c0 + tl.arange(0, BLOCK_C)
    w_base = w_ptr + (h // G).to(tl.int64) * sw_h + j[None, :] * sw_r
    if ONE_D:  # the whole projection fits one tile: load it once
        w_all = tl.load(w_base + dd[:, None] * sw_d, mask=(dd < D)[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        if PREC16:  # one fp16 product per tile; columns scaled by powers of two (module doc)
            w16_all, col_scale = _weight16(w_all)
        elif SPLIT_BF16 and HOIST:  # split once, not per row tile (the compiler does not hoist it)
            w_hi_all, w_lo_all = _split_w(w_all)
    if HAS_THR:
        thr = tl.load(thr_ptr + (h // G).to(tl.int64) * st_h + j, mask=cmask, other=0.0).to(tl.float32)
        if PREC16:
            thr = thr * col_scale  # the projection's columns carry these scales
    n_tiles = tl.cdiv(L, BLOCK_M)
    step = tl.num_programs(0)
    if ONE_D and PREFETCH:  # software pipelining by hand: the next tile's load is in flight
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        x_next = tl.load(x_ptr + rows[:, None].to(tl.int64) * sx_l + h * sx_h + dd[None, :],
                         mask=(rows < L)[:, None] & (dd < D)[None, :], other=0.0)
    for tile in range(tl.program_id(0), n_tiles, step):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rows < L
        x_base = x_ptr + rows[:, None].to(tl.int64) * sx_l + h * sx_h
        acc = tl.zeros((BLOCK_M, 8 * BLOCK_C), dtype=tl.float32)
        if ONE_D:
            if PREFETCH:
                x = x_next
                nrows = rows + step * BLOCK_M
                x_next = tl.load(x_ptr + nrows[:, None].to(tl.int64) * sx_l + h * sx_h + dd[None, :],
                                 mask=(nrows < L)[:, None] & (dd < D)[None, :], other=0.0)
            else:
                x = tl.load(x_base + dd[None, :], mask=rmask[:, None] & (dd < D)[None, :], other=0.0)
            if PREC16:
                acc, row_scale = _project16(x, w16_all, acc, UPCAST)
            elif SPLIT_BF16 and HOIST:
                acc = _project_split(x, w_hi_all, w_lo_all, acc, UPCAST)
            else:
                acc = _project_tile(x, w_all, acc, SPLIT_BF16, UPCAST)
        else:
            for d0 in range(0, D, BLOCK_D):
                d = d0 + dd
                dmask = d < D
                x = tl.load(x_base + d[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
                w = tl.load(w_base + d[:, None] * sw_d, mask=dmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
                acc = _project_tile(x, w, acc, SPLIT_BF16, UPCAST)
        if HAS_THR:
            if PREC16:
                acc = acc - row_scale[:, None] * thr[None, :]
            else:
                acc = acc - thr[None, :]
        if PACK_DOT:
            packed = _pack_dot(acc, BLOCK_C, UPCAST).to(tl.uint8)
        else:
            packed = _pack_cols((acc > 0).to(tl.int32), BLOCK_M, BLOCK_C).to(tl.uint8)
        if CACHE:
            slot = tl.load(slot_ptr + rows, mask=rmask, other=-1).to(tl.int64)
            keep = rmask & (slot >= 0) & (slot < NSLOTS)
            slot = tl.where(keep, slot, 0)
            dst = out_ptr + (slot // BS) * sc_n + h * sc_h + (slot % BS) * sc_t + BYTE_OFF
            tl.store(dst[:, None] + c[None, :], packed, mask=keep[:, None] & (c < C)[None, :])
        else:
            dst = out_ptr + rows.to(tl.int64) * so_l + h * so_h + BYTE_OFF
            tl.store(dst[:, None] + c[None, :], packed, mask=rmask[:, None] & (c < C)[None, :])


def _blocks(d: int, c: int, split: bool, block_c: int = 16):
    # at most 128 projection columns a program: the bf16 weight split of a wider
    # tile (MLA's R_lora = 512) would not fit in shared memory
    block_c = min(block_c, next_pow2(c))
    block_d = max(16, min(128, next_pow2(d)))
    # fp32 tile [BLOCK_M, 8*BLOCK_C] of about 64 KB (H100, R = 128, bf16: 128 rows,
    # 4 warps, 2 programs per SM and a prefetched next tile was the fastest launch)
    block_m = max(16, min(128, 16384 // (8 * block_c)))
    return block_m, block_d, block_c


def _launch(x3, w3, g, out, byte_off, slots=None, block_m=None, num_warps=None, num_stages=None, per_sm=None,
            pack_dot=None, prefetch=None, cache=None, hoist=None, threshold=None, launch_dependents=False,
            block_c=None, prec16=None, transposed=None):
    """``x3 [L, H, D]``, ``w3 [Hw, D, R]``; ``out`` codes ``[L, H, *]`` or, with
    ``slots``, the cache ``[NB, H, bs, *]``. ``cache``: a ``program.Recorder`` (the hot path records launches).
    ``threshold``: ``None`` or spec 13's ``[Hw, R]`` (any float dtype; read as fp32).
    ``launch_dependents`` (CUDA, sm_90+): let a PDL-launched next kernel start early (``scoring.use_pdl``).
    ``block_c``: code bytes per program (a power of two <= 16; default 16, or for a decode step's few
    rows the device's ``hash.decode_block_c``: narrower programs spread a wide projection's weight
    reads, e.g. MLA's 512 x 512, over more SMs). ``prec16``: one fp16 product per tile instead of the
    two-term bf16 split (bf16 input and ``D <= 128`` only; default the device's ``hash.prec16``,
    else off; see the module doc). ``transposed``: the same bf16 split as ``W^T @ x^T`` with the
    weight in registers (``hash_tiles.py``; bf16, ``D <= 128``, not with ``prec16``; default the
    device's ``hash.transposed`` from ``BIG_ROWS`` rows, else off; ``num_stages`` is then its
    pipeline depth, default 3)."""
    l, h, d = x3.shape
    c = w3.shape[-1] // 8
    if l == 0:
        return
    if x3.stride(-1) != 1:
        x3 = x3.contiguous()
    split = x3.dtype == torch.bfloat16
    dev = x3.device
    if split and l >= BIG_ROWS:  # a cache fill or prefill: the device's tuning file may set the launch
        block_m = knob(dev, "hash", "block_m", None) if block_m is None else block_m
        per_sm = knob(dev, "hash", "per_sm", None) if per_sm is None else per_sm
        num_warps = knob(dev, "hash", "num_warps", None) if num_warps is None else num_warps
        pack_dot = knob(dev, "hash", "pack_dot", None) if pack_dot is None else pack_dot
        # Triton's own pipelining of the row tiles instead of the hand prefetch (num_stages > 1, prefetch off)
        num_stages = knob(dev, "hash", "num_stages", None) if num_stages is None else num_stages
        prefetch = knob(dev, "hash", "prefetch", None) if prefetch is None else prefetch
        transposed = knob(dev, "hash", "transposed", TRANSPOSED_DEFAULT) if transposed is None else transposed
    hoist = knob(dev, "hash", "hoist", HOIST_DEFAULT) if hoist is None else hoist
    if block_c is None:
        block_c = knob(dev, "hash", "decode_block_c", DECODE_BLOCK_C) if l < BIG_ROWS else 16
    if block_c not in (1, 2, 4, 8, 16):
        raise ValueError(f"hash block_c must be a power of two <= 16, got {block_c}")
    bm, block_d, block_c = _blocks(d, c, split, block_c)
    if not split:  # the fp32 FMA product: small tiles keep it out of local memory
        bm = min(bm, 32)
    bm = min(bm, max(16, next_pow2(l)))  # a decode step hashes few rows
    per_sm = (2 if split else 8) if per_sm is None else per_sm
    block_m = bm if block_m is None else block_m
    n_tiles = cdiv(l, block_m)
    if x3.is_cuda:  # persistent: about 8 programs per SM over all heads
        sms = sm_count(x3.device)
        n_tiles = min(n_tiles, max(1, (per_sm * sms) // h))
    else:  # interpreter: two programs, so the tile loop runs in the CPU tests too
        n_tiles = min(n_tiles, 2)
    grid = (n_tiles, h, cdiv(c, block_c))
    one_d = d <= block_d
    if pack_dot is None:
        pack_dot = PACK_DOT_DEFAULT
    pack_dot = pack_dot and block_c >= 16 and block_m >= 16  # tensor-core minimum sizes
    # Many tiles a program (a prefill, a cache fill): prefetch the next tile, 4 warps.
    # One tile a program (a decode step's few rows): no prefetch, 8 warps (measured
    # on the H100: 8 us vs 16 us for 16 rows; 0.094 vs 0.099 ms for 64K rows).
    many = cdiv(l, block_m) > grid[0]
    prefetch = (PREFETCH_DEFAULT and many) if prefetch is None else prefetch
    t_stages = (1 if INTERPRET else 3) if num_stages is None else num_stages  # the transposed kernel's pipeline
    num_stages = 1 if num_stages is None else num_stages
    if num_warps is None:
        num_warps = 4 if (many or not split) else 8
    if threshold is not None and threshold.stride(-1) != 1:
        threshold = threshold.contiguous()
    thr, st_h = (threshold, threshold.stride(0)) if threshold is not None else (w3, 0)
    if prec16 is None:
        prec16 = knob(dev, "hash", "prec16", PREC16_DEFAULT)
    prec16 = bool(prec16) and split and one_d
    if transposed and split and one_d and not prec16 and not launch_dependents:
        t_consts = dict(HAS_THR=threshold is not None, UPCAST=INTERPRET, BLOCK_M=block_m, BLOCK_D=block_d,
                        BLOCK_C=block_c, NUM_STAGES=t_stages,
                        num_warps=num_warps)
        _launch_args(_hash_t_kernel, grid, x3, w3, g, out, byte_off, slots, thr, st_h, l, d, c, t_consts, cache)
        return
    consts = dict(HAS_THR=threshold is not None, SPLIT_BF16=split, UPCAST=INTERPRET, ONE_D=one_d, PACK_DOT=pack_dot,
                  PREC16=prec16,
                  PREFETCH=prefetch, HOIST=bool(hoist), LAUNCH_DEPENDENTS=bool(launch_dependents),
                  BLOCK_M=block_m, BLOCK_D=block_d, BLOCK_C=block_c, num_warps=num_warps, num_stages=num_stages)
    _launch_args(_hash_kernel, grid, x3, w3, g, out, byte_off, slots, thr, st_h, l, d, c, consts, cache)


def _launch_args(fn, grid, x3, w3, g, out, byte_off, slots, thr, st_h, l, d, c, consts, cache):
    """Launch ``_hash_kernel`` or ``_hash_t_kernel`` (one argument list) in codes or cache mode."""
    if slots is None:
        args = (x3, w3, out, out, thr, l, d, c, g, 0, 1, byte_off,
                x3.stride(0), x3.stride(1), w3.stride(0), w3.stride(1), w3.stride(2), st_h,
                out.stride(0), out.stride(1), 0, 0, 0)
        launch(fn, grid, args, dict(CACHE=False, **consts), cache)
    else:
        nb, _, bs, _ = out.shape
        args = (x3, w3, out, slots, thr, l, d, c, g, nb * bs, bs, byte_off,
                x3.stride(0), x3.stride(1), w3.stride(0), w3.stride(1), w3.stride(2), st_h,
                0, 0, out.stride(0), out.stride(1), out.stride(2))
        launch(fn, grid, args, dict(CACHE=True, **consts), cache)


def _as_heads(x: torch.Tensor, weight: torch.Tensor):
    """``(x3 [L, H, D], w3 [Hw, D, R], G)`` with head ``h`` using ``w3[h // G]``."""
    if weight.dim() == 2:
        return x.reshape(-1, 1, x.shape[-1]), weight.unsqueeze(0), 1
    h = x.shape[-2]
    return x.reshape(-1, h, x.shape[-1]), weight, h // weight.shape[0]


def sign_bits_pack(x: torch.Tensor) -> torch.Tensor:
    """Spec 1. ``x [..., N]`` float -> ``uint8 [..., N/8]`` (bit ``i`` of byte ``j`` = ``x[8j+i] > 0``)."""
    n8 = x.shape[-1]
    x2 = x.reshape(-1, n8)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    c = n8 // 8
    out = torch.empty(x2.shape[0], c, dtype=torch.uint8, device=x.device)
    if x2.shape[0]:
        block_c = next_pow2(c)
        block_m = max(1, min(64, 4096 // (8 * block_c)))
        _sign_pack_kernel[(cdiv(x2.shape[0], block_m),)](
            x2, out, x2.shape[0], c, x2.stride(0), out.stride(0), BLOCK_M=block_m, BLOCK_C=block_c)
    return out.reshape(*x.shape[:-1], c)


def _thr3(threshold):
    """Spec 13 threshold ``[R]`` (shared weight) or ``[Hw, R]`` -> ``[Hw, R]`` (or ``None``)."""
    return None if threshold is None else threshold.reshape(-1, threshold.shape[-1])


def hash_encode(x: torch.Tensor, weight: torch.Tensor, threshold=None, **launch) -> torch.Tensor:
    """Spec 2 (+ 12). ``x [..., D]`` with ``weight [D, R]``, or ``x [..., H, D]`` with
    ``weight [Hw, D, R]`` -> ``uint8 [..., R/8]`` (``[..., H, R/8]``); ``threshold``
    ``[R]`` / ``[Hw, R]`` or ``None``. ``launch``: launch choices for tests and benchmarks
    (e.g. ``prec16``)."""
    x3, w3, g = _as_heads(x, weight)
    c = weight.shape[-1] // 8
    out = torch.empty(x3.shape[0], x3.shape[1], c, dtype=torch.uint8, device=x.device)
    _launch(x3, w3, g, out, 0, threshold=_thr3(threshold), **launch)
    return out.reshape(*x.shape[:-1], c)


def hash_encode_and_cache(k, weight, cache, slot_mapping, threshold=None, **launch) -> None:
    """Spec 3. ``k [T, Hkv, D]``, ``weight [Hkv, D, R]`` or ``[D, R]``, ``cache uint8
    [NB, Hkv, bs, R/8]`` written in place at ``slot_mapping [T]`` (``-1`` skips);
    ``threshold [Hkv, R]`` / ``[R]`` or ``None`` (spec 13).
    ``launch``: block_m / num_warps / num_stages / per_sm knobs for benchmarks."""
    if weight.dim() == 2:
        w3, g = weight.unsqueeze(0), k.shape[1]
    else:
        w3, g = weight, k.shape[1] // weight.shape[0]
    _launch(k, w3, g, cache, 0, slot_mapping, threshold=_thr3(threshold), **launch)


def mla_hash_encode(x_lora, x_rope, w_lora, w_rope) -> torch.Tensor:
    """Spec 9. ``x_lora [..., L]``, ``x_rope [..., P]`` -> ``uint8 [..., (R_lora+R_rope)/8]``
    (kv_lora bytes, then rope bytes)."""
    c_l, c_r = w_lora.shape[1] // 8, w_rope.shape[1] // 8
    lead = x_lora.shape[:-1]
    xl = x_lora.reshape(-1, 1, x_lora.shape[-1])
    xr = x_rope.reshape(-1, 1, x_rope.shape[-1])
    out = torch.empty(xl.shape[0], 1, c_l + c_r, dtype=torch.uint8, device=x_lora.device)
    _launch(xl, w_lora.unsqueeze(0), 1, out, 0)
    _launch(xr, w_rope.unsqueeze(0), 1, out, c_l)
    return out.reshape(*lead, c_l + c_r)


def mla_hash_encode_and_cache(c_kv, k_pe, w_lora, w_rope, cache, slot_mapping) -> None:
    """Spec 3 + 9. ``c_kv [T, L]``, ``k_pe [T, P]``, ``cache uint8 [NB, 1, bs,
    (R_lora+R_rope)/8]`` written in place at ``slot_mapping [T]``."""
    c_l = w_lora.shape[1] // 8
    _launch(c_kv.unsqueeze(1), w_lora.unsqueeze(0), 1, cache, 0, slot_mapping)
    _launch(k_pe.unsqueeze(1), w_rope.unsqueeze(0), 1, cache, c_l, slot_mapping)
