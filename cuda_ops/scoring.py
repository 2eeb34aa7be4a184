"""Triton selection: spec sections 4 and 5 (``hamming_dist_top_k``); the wrappers.

Kernel sources: ``score_kernels.py`` (block scores: the Harley-Seal GQA path and
the SWAR reference path), ``score_planes.py`` (block scores for every other shape,
MLA included: query bit planes) and ``topk_kernels.py`` (selection, and the fused
score + selection kernel). No host sync, CUDA-graph
capturable. Two launches by default:

1. block scores, grid ``(M, B)``: one program per (row, logical block). It reads
   the block's key codes once through the block table (int32 words), XORs them
   with every query head of the matching KV head, counts bits, sums the token
   score ``S16`` over heads and group in registers and reduces it to the block
   score (``max`` of ``S16``, or ``div_rn(float32(sum), float32(count))``).
   Per-token scores never leave registers; the block score goes to HBM as an
   int32 key whose signed order is the score's order (float bits made monotone).
2. selection, grid ``(B,)``: one program per row loads the row's keys, marks
   forced blocks (+inf) and blocks past the sequence (-inf), finds the
   ``n_sel``-th largest key by a binary search between the smallest and largest
   non-forced key (at most 32 steps; about 17 for ``max`` scores), breaks ties at
   the threshold to the smaller index with a prefix sum, and writes the chosen
   indices ascending by a second prefix sum; ``-1`` after ``n_sel``. Launch choices of the
   same result: the threshold by a radix select (``select.radix``, ``select_radix``) and the
   row's loads first (``select.prefetch``); see ``topk_kernels.py``.

With the ``select.fuse`` launch choice (Harley-Seal path, ``next_pow2(M) <=
1024 * num_warps``) both run as one launch: the last score program of each row
selects (``topk_kernels._score_select_kernel``); it needs an ``int32 [B]`` zero
counter (the hot path owns a persistent one; the op allocates it).
"""
from __future__ import annotations

import torch

from gsa.reference.scoring import SCORE_SCALE

from . import interpreting
from .launch import cdiv, launch, next_pow2
from .score_kernels import _block_score_hs_kernel, _block_score_kernel
from .score_planes import MAX_PLANES, _block_score_planes_kernel
from .topk_kernels import _score_select_kernel, _select_kernel
from .tuning import knob

__all__ = ["hamming_dist_top_k", "block_score_keys", "select_blocks", "fused_select_ok", "use_pdl", "select_radix",
           "MAX_FORCED", "MAX_BLOCKS"]

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
PLANES_NUM_WARPS = 4  # warps of the bit-plane score kernel (MLA and other non-Harley-Seal shapes)
PLANES_POW2 = True  # G a power of two: the two's-complement plane counts (score_planes._diff_bits_pow2)
PLANES_BLOCKS = 1  # logical blocks per bit-plane score program (the query planes built once for all)
PLANES_ONCE = False  # bit-plane kernel: per-word counts summed over the words once per program (score_planes.py)
SCORE_BLOCKS = 1  # logical blocks per Harley-Seal score program (query words loaded once for all)
SCORE_PLANES = False  # G == 4, R = 128: fold the 4 query heads into bit planes first (score_kernels.py)
SELECT_FANOUT = 1  # thresholds tested per search step (1: binary search)
SELECT_RADIX = False  # the threshold by a radix select (topk_kernels._radix_threshold) instead
SELECT_RADIX_BITS = 8  # digit width of the radix select (5-8: histograms of 32-256 bins)
SELECT_PREFETCH = False  # the selection loads its row's keys, budget and table entries first (topk_kernels.py)
SELECT_NUM_WARPS = 0  # warps of a selection program (0: by row width, see select_num_warps)
SELECT_FUSE = False  # selection in the score kernel's last program per row (topk_kernels.py)
SELECT_FUSE_MAXNREG = None  # register cap of the fused kernel (its selection part needs more than scoring)
SCORE_PDL = False  # hot path: the score kernel as a programmatic dependent launch of the query hash
SCORE_NUM_STAGES = None  # Harley-Seal score launch's num_stages (None: Triton's default; tuning "score.num_stages")
# Register cap of the Harley-Seal score launch (None/0: the compiler's choice). Why: its programs are
# small (one block, 2 warps), so how many fit on a multiprocessor sets the launch's waves: at 39
# registers 24 fit (3,168 on an H200), and 32K x 16 rows (4,096 programs) run 1.29 waves, the
# second mostly idle (Nsight Compute, 2026-11-29, eighth session); at <= 32 registers 32 fit, one wave.
# Swept the same day (kernel_sweep --parts occupancy): a cap of 32 spilled and was slower everywhere,
# so it stays off; the knob remains for other GPUs and kernels.
SCORE_MAXNREG = None
FUSE_ROW_PER_WARP = 1024  # widest row (next_pow2(M)) a fused selection holds per score warp


def _words(t: torch.Tensor) -> torch.Tensor:
    """uint8 codes ``[..., C]`` (C % 4 == 0) viewed as int32 ``[..., C/4]`` (no copy if contiguous)."""
    if not t.is_contiguous():
        t = t.contiguous()
    return t.view(torch.int32)


def use_pdl(device: torch.device, pdl: bool | None = None) -> bool:
    """Whether the hot path launches the score kernel as a programmatic dependent of the
    query hash (``pdl``, default the device's ``score.pdl`` tuning): CUDA sm_90+ only, never
    in the interpreter."""
    want = knob(device, "score", "pdl", SCORE_PDL) if pdl is None else pdl
    if not want or device.type != "cuda" or interpreting():
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


def _score_launch(q_codes, key_cache, chunk_repre_method, rope_bytes, rope_score_weight, num_warps, path,
                  hw_popc, wide, lop3, unroll, planes, pdl=False, blocks=None, pow2=None, num_stages=None,
                  once=None, maxnreg=None):
    """The score kernel, its per-launch integers and constexprs for these codes:
    ``(kernel, q32, kc32, ints, consts)`` (``path``: ``"hs"``, ``"group_planes"`` or ``"swar"``;
    a PDL launch applies to the Harley-Seal kernel only, the others wait as usual). Launch with
    :func:`_launch_scores` (the Harley-Seal kernel takes ``M`` and may score ``BLOCKS``
    blocks per program)."""
    b, hq, c = q_codes.shape
    nb, hkv, bs, _ = key_cache.shape
    q32, kc32 = _words(q_codes), _words(key_cache)
    w = c // 4
    g = hq // hkv
    if hw_popc is None:
        hw_popc = not interpreting()
    dev = q_codes.device
    lop3 = (knob(dev, "score", "lop3", SCORE_LOP3) and hw_popc) if lop3 is None else lop3
    wide = knob(dev, "score", "wide", SCORE_WIDE) if wide is None else wide
    unroll = knob(dev, "score", "unroll", SCORE_UNROLL) if unroll is None else unroll
    ints = (nb, q32.stride(0), q32.stride(1), kc32.stride(0), kc32.stride(1), kc32.stride(2))
    hs_ok = rope_bytes == 0 and ((w == 4 and g % 2 == 0) or w == 8)
    if path is None:
        path = "hs" if hs_ok else ("group_planes" if g < (1 << MAX_PLANES) else "swar")
    if path == "hs" and not hs_ok:
        raise ValueError(f"the Harley-Seal path needs rope_bytes == 0 and (W == 4, G even) or W == 8; "
                         f"got rope_bytes={rope_bytes}, W={w}, G={g}")
    if planes and not (path == "hs" and g == 4 and w == 4):
        raise ValueError(f"the bit-plane score path needs the Harley-Seal path with G == 4 and R == 128; "
                         f"got path={path!r}, G={g}, R={8 * c}")
    if path == "group_planes":
        if g >= (1 << MAX_PLANES):
            raise ValueError(f"the bit-plane score path takes groups of at most {(1 << MAX_PLANES) - 1} query "
                             f"heads, got G={g}")
        w_main = (c - rope_bytes) // 4
        if num_warps is None:
            num_warps = knob(dev, "score_planes", "num_warps", PLANES_NUM_WARPS)
        if blocks is None:
            blocks = knob(dev, "score_planes", "blocks", PLANES_BLOCKS)
        if blocks < 1 or blocks & (blocks - 1) or (blocks > 1 and next_pow2(bs) != bs):
            raise ValueError(f"bit-plane score blocks per program must be a power of two >= 1 (1 unless the "
                             f"block size is a power of two), got {blocks} with block size {bs}")
        return _block_score_planes_kernel, q32, kc32, ints, dict(
            BS=bs, HKV=hkv, G=g, W=w, W_MAIN=w_main, W16=int(round(rope_score_weight * SCORE_SCALE)),
            MEAN=chunk_repre_method == "mean", NP=g.bit_length(), HW_POPC=bool(hw_popc), BLOCK_T=next_pow2(bs),
            BLOCK_WM=next_pow2(w_main), BLOCK_WR=next_pow2(max(1, w - w_main)), BLOCKS=int(blocks),
            POW2=bool(knob(dev, "score_planes", "pow2", PLANES_POW2) if pow2 is None else pow2) and g >= 2 and
            g & (g - 1) == 0, ONCE=bool(knob(dev, "score_planes", "reduce_once", PLANES_ONCE) if once is None
                                        else once), num_warps=num_warps)
    if path not in ("hs", "swar"):
        raise ValueError(f"score path must be 'hs', 'group_planes', 'swar' or None, got {path!r}")
    if num_warps is None:
        num_warps = knob(dev, "score", "num_warps", SCORE_NUM_WARPS)
    planes_ok = path == "hs" and g == 4 and w == 4
    if planes is None:
        planes = knob(dev, "score", "planes", SCORE_PLANES) and planes_ok
    if path == "hs":
        if blocks is None:
            blocks = knob(dev, "score", "blocks", SCORE_BLOCKS) if not pdl else 1
        if blocks < 1 or blocks & (blocks - 1) or (blocks > 1 and pdl):
            raise ValueError(f"score blocks per program must be a power of two >= 1 (1 under PDL), got {blocks}"
                             f" with pdl={pdl}")
        consts = dict(
            BS=bs, HKV=hkv, G=g, W=w, MEAN=chunk_repre_method == "mean", BLOCK_T=next_pow2(bs),
            HW_POPC=bool(hw_popc), LOP3=bool(lop3), WIDE=bool(wide) and w == 4, UNROLL=bool(unroll),
            PLANES=bool(planes), HWP=next_pow2(hkv * w), PDL=bool(pdl), HKV_P=next_pow2(hkv), BLOCKS=int(blocks),
            num_warps=num_warps)
        if blocks > 1:  # the 16-byte load path is written for one block's token vector
            consts["WIDE"] = False
        # software-pipelining depth Triton compiles the head loop with (None: Triton's default, 3 on CUDA)
        stages = knob(dev, "score", "num_stages", SCORE_NUM_STAGES) if num_stages is None else num_stages
        if stages:
            consts["num_stages"] = int(stages)
        cap = knob(dev, "score", "maxnreg", SCORE_MAXNREG) if maxnreg is None else maxnreg
        if cap and not interpreting():  # a register cap means nothing to the interpreter
            consts["maxnreg"] = int(cap)
        if pdl:
            consts["launch_pdl"] = True
        return _block_score_hs_kernel, q32, kc32, ints, consts
    block_w = next_pow2(w)
    block_g = max(1, min(next_pow2(g), 16 // block_w))
    return _block_score_kernel, q32, kc32, ints, dict(
        BS=bs, HKV=hkv, G=g, W=w, W_MAIN=(c - rope_bytes) // 4,
        W16=int(round(rope_score_weight * SCORE_SCALE)), MEAN=chunk_repre_method == "mean",
        DEFER=block_g * w <= 31, BLOCK_T=next_pow2(bs), BLOCK_G=block_g, BLOCK_W=block_w, num_warps=num_warps)


def _launch_scores(fn, q32, kc32, ints, consts, block_table, seq_lens, keys, cache):
    """The score launch of ``_score_launch``'s result into ``keys int32 [B, M]``."""
    b, m = block_table.shape
    if fn is _block_score_hs_kernel or fn is _block_score_planes_kernel:
        j = consts["BLOCKS"]
        launch(fn, (cdiv(m, j), b, 1), (q32, kc32, block_table, seq_lens, keys, *ints, block_table.stride(0),
                                         keys.stride(0), m), consts, cache)
    else:
        launch(fn, (m, b, 1), (q32, kc32, block_table, seq_lens, keys, *ints, block_table.stride(0), keys.stride(0)),
               consts, cache)


def block_score_keys(q_codes, key_cache, block_table, seq_lens, chunk_repre_method="max",
                     rope_bytes=0, rope_score_weight=1.0, num_warps=None, path=None, keys=None, cache=None,
                     hw_popc=None, wide=None, lop3=None, unroll=None, planes=None, blocks=None, pow2=None,
                     num_stages=None, once=None, maxnreg=None):
    """Kernel 1 alone: ``int32 [B, M]`` block order keys (entries past a row's
    blocks are left unwritten). ``path``: ``"hs"`` (Harley-Seal: no rope bytes,
    R = 128 with even G, or R = 256), ``"group_planes"`` (query bit planes: any width, rope
    bytes, groups up to 255 heads; ``score_planes.py``), ``"swar"`` (any shape; software popcounts)
    or ``None`` (the first that applies). ``keys``: an ``int32 [B, M]`` output to reuse; ``cache``: a
    ``launch.LaunchCache`` (hot path); ``hw_popc``: the ``popc`` instruction in the
    Harley-Seal path (default: on CUDA, not in the interpreter). Exposed for
    benchmarks and tests. ``wide``: load a token's 16 code bytes at once (R = 128);
    ``lop3``: carry-save adders as ``lop3`` instructions (CUDA only; default with
    ``hw_popc``); ``unroll``: the loop over KV heads unrolled; ``planes``: the
    bit-plane query folding (G == 4, R = 128; ``score_kernels.py``); ``blocks``: logical
    blocks per Harley-Seal program (a power of two); ``num_stages``: the Harley-Seal launch's
    software-pipelining depth; ``once``: the bit-plane kernel sums its per-word counts once per program;
    ``maxnreg``: the Harley-Seal launch's register cap (more programs per multiprocessor).
    Defaults: the device's tuning file
    (``tuning.py``), else ``SCORE_*`` above."""
    b = q_codes.shape[0]
    m = block_table.shape[1]
    fn, q32, kc32, ints, consts = _score_launch(q_codes, key_cache, chunk_repre_method, rope_bytes,
                                                rope_score_weight, num_warps, path, hw_popc, wide, lop3, unroll,
                                                planes, blocks=blocks, pow2=pow2, num_stages=num_stages,
                                                once=once, maxnreg=maxnreg)
    if keys is None:
        keys = torch.empty(b, m, dtype=torch.int32, device=q_codes.device)
    if b and m:
        _launch_scores(fn, q32, kc32, ints, consts, block_table, seq_lens, keys, cache)
    return keys
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


def select_radix(radix=None, device: torch.device | None = None) -> int:
    """Digit width of the radix-select threshold search (0: the binary / fan-out search).
    ``radix``: ``False``/``0`` off, ``True`` on with the device's ``select.radix_bits`` (else
    ``SELECT_RADIX_BITS``), or a width; ``None``: the device's ``select.radix`` tuning (a bool
    or a width), else ``SELECT_RADIX``. Widths 5-8: the histogram has at least one bin per
    lane of a warp (Triton pads fewer bins to 32) and at most 8 per lane (its cost per key)."""
    want = radix if radix is not None else (
        knob(device, "select", "radix", SELECT_RADIX) if device is not None else SELECT_RADIX)
    if want is False or want is None or want == 0:
        return 0
    if want is True:
        want = knob(device, "select", "radix_bits", SELECT_RADIX_BITS) if device is not None else SELECT_RADIX_BITS
    if want not in (5, 6, 7, 8):
        raise ValueError(f"select radix must be a bool or a digit width of 5 to 8 bits, got {want!r}")
    return int(want)


def select_num_warps(block_m: int, device: torch.device | None = None, num_warps: int | None = None) -> int:
    """Warps of one ``_select_kernel`` program for a ``BLOCK_M``-wide row: ``num_warps``,
    else the device's ``select.num_warps`` tuning (0: automatic), else 4 up to 2048 blocks,
    8 up to 8192, 16 beyond. Fewer warps make each search step's reduction cheaper (one
    warp needs no shared memory or barrier) at the cost of more keys per thread."""
    want = num_warps if num_warps is not None else (
        knob(device, "select", "num_warps", SELECT_NUM_WARPS) if device is not None else SELECT_NUM_WARPS)
    if want:
        if want not in (1, 2, 4, 8, 16):
            raise ValueError(f"select num_warps must be one of 1, 2, 4, 8, 16, got {want}")
        return int(want)
    return 4 if block_m <= 2048 else (8 if block_m <= 8192 else 16)


def _forced_args(must_select_blocks):
    forced = list(dict.fromkeys(int(x) for x in must_select_blocks))  # exact duplicates merge
    if len(forced) > MAX_FORCED:
        raise ValueError(f"triton hamming_dist_top_k: at most {MAX_FORCED} distinct must_select_blocks, got {forced}")
    return forced, forced + [0] * (MAX_FORCED - len(forced))


def fused_select_ok(m: int, num_warps: int) -> bool:
    """Whether a fused selection fits a score program of ``num_warps`` warps for an ``M``-wide row."""
    return next_pow2(max(m, 1)) <= FUSE_ROW_PER_WARP * num_warps


def _select_consts(block_table, k, forced, fanout, gather, write_idx, device, radix=None, prefetch=None):
    block_m = next_pow2(max(block_table.shape[1], 1))
    bits = select_radix(radix, device)
    if prefetch is None:
        prefetch = knob(device, "select", "prefetch", SELECT_PREFETCH) if device is not None else SELECT_PREFETCH
    # the radix search ignores FANOUT: 1 then, so that no second copy of the kernel compiles
    return dict(NF=len(forced), BLOCK_M=block_m, BLOCK_K=next_pow2(k), GATHER=gather, WRITE_IDX=write_idx,
                FANOUT=1 if bits else select_fanout(block_m, fanout, device), RADIX=bits, PREFETCH=bool(prefetch))


def _select_outs(table, lens, idx, nsel):
    """Pointer arguments for (table, lens, idx, nsel); an unused pair aliases the used one."""
    t_, l_ = (table, lens) if table is not None else (idx, nsel)
    i_, n_ = (idx, nsel) if idx is not None else (t_, l_)
    return t_, l_, i_, n_


def _launch_select(keys, seq_lens, budgets, block_table, k, bs, forced, fs, table, lens, idx, nsel, pad_id, cache,
                   fanout=None, num_warps=None, radix=None, prefetch=None):
    """``_select_kernel`` over ``keys int32 [B, M]`` (see ``select_blocks`` for the outputs);
    ``fanout``, ``num_warps``, ``radix``, ``prefetch`` (``select.prefetch``: the row's loads
    first): launch choices (None: the device's tuning)."""
    b, m = block_table.shape
    t_, l_, i_, n_ = _select_outs(table, lens, idx, nsel)
    consts = _select_consts(block_table, k, forced, fanout, table is not None, idx is not None, keys.device, radix,
                            prefetch)
    launch(_select_kernel, (b, 1, 1), (
        keys, seq_lens, budgets, block_table, t_, l_, i_, n_, m, k, bs, pad_id,
        keys.stride(0), block_table.stride(0), t_.stride(0), i_.stride(0), *fs),
        dict(consts, num_warps=select_num_warps(consts["BLOCK_M"], keys.device, num_warps)), cache)


def _select(q_codes, key_cache, block_table, seq_lens, budgets, k, forced, fs, chunk_repre_method, rope_bytes,
            rope_score_weight, keys, counter, table, lens, idx, nsel, pad_id, cache, fanout, fuse, score_opts,
            pdl=False, maxnreg=None, radix=None):
    """Scores then selection: one fused launch when ``fuse`` (None: the device's
    tuning) and it applies, else two. ``counter``: ``int32 [B]`` zeros for the fused
    kernel (None: allocated here when it runs). ``pdl``: the score kernel is a
    programmatic dependent launch (the caller's previous kernel triggers it; hot path
    only, see ``use_pdl``). ``maxnreg``: register cap of the fused kernel (None: the
    device's ``select.fuse_maxnreg``). ``radix``: the radix-select search (``select_radix``),
    in either form."""
    b, m = block_table.shape
    fn, q32, kc32, ints, consts = _score_launch(q_codes, key_cache, chunk_repre_method, rope_bytes,
                                                rope_score_weight, score_opts.get("num_warps"),
                                                score_opts.get("path"), score_opts.get("hw_popc"),
                                                score_opts.get("wide"), score_opts.get("lop3"),
                                                score_opts.get("unroll"), score_opts.get("planes"), pdl,
                                                score_opts.get("blocks"), score_opts.get("pow2"),
                                                score_opts.get("num_stages"), score_opts.get("once"),
                                                score_opts.get("maxnreg"))
    dev = q_codes.device
    want = knob(dev, "select", "fuse", SELECT_FUSE) if fuse is None else fuse
    ok = fn is _block_score_hs_kernel and fused_select_ok(m, consts["num_warps"]) and consts.get("BLOCKS", 1) == 1
    if fuse and not ok:
        raise ValueError(f"fused selection needs the Harley-Seal score path, one block per program and "
                         f"next_pow2(M) <= {FUSE_ROW_PER_WARP} * num_warps; got M={m}, "
                         f"num_warps={consts['num_warps']}, blocks={consts.get('BLOCKS', 1)}, kernel {fn.__name__}")
    if not (want and ok) or m == 0:
        if m:
            _launch_scores(fn, q32, kc32, ints, consts, block_table, seq_lens, keys, cache)
        _launch_select(keys, seq_lens, budgets, block_table, k, key_cache.shape[2], forced, fs, table, lens, idx,
                       nsel, pad_id, cache, fanout, radix=radix)
        return
    if counter is None:
        counter = torch.zeros(b, dtype=torch.int32, device=dev)
    t_, l_, i_, n_ = _select_outs(table, lens, idx, nsel)
    sel = _select_consts(block_table, k, forced, fanout, table is not None, idx is not None, dev, radix)
    maxnreg = knob(dev, "select", "fuse_maxnreg", SELECT_FUSE_MAXNREG) if maxnreg is None else maxnreg
    if maxnreg:
        sel["maxnreg"] = int(maxnreg)
    while sel["FANOUT"] > 1 and sel["FANOUT"] * sel["BLOCK_M"] > FUSE_ROW_PER_WARP * consts["num_warps"]:
        sel["FANOUT"] //= 2  # the [FANOUT, BLOCK_M] comparison within the score program's registers
    launch(_score_select_kernel, (m, b, 1), (
        q32, kc32, block_table, seq_lens, keys, counter, budgets, t_, l_, i_, n_,
        ints[0], m, k, pad_id, *ints[1:], block_table.stride(0), keys.stride(0), t_.stride(0), i_.stride(0), *fs),
        # the score launch's register cap is not the fused kernel's (its selection needs more)
        dict({c: v for c, v in consts.items() if c not in ("BLOCKS", "maxnreg")}, **sel), cache)


def hamming_dist_top_k(q_codes, key_cache, block_table, seq_lens, budgets, k, must_select_blocks,
                       chunk_repre_method, rope_bytes, rope_score_weight, fanout=None, fuse=None, radix=None,
                       **score_opts):
    """Spec 4 + 5. ``q_codes uint8 [B, Hq, C]``, ``key_cache uint8 [NB, Hkv, bs, C]``,
    ``block_table int32 [B, M]``, ``seq_lens int32 [B]``, ``budgets int32 [B]`` ->
    ``(indices int32 [B, k], n_sel int32 [B])``, indices ascending, ``-1`` after.
    ``fanout``, ``fuse``, ``radix`` (``select_radix``) and ``score_opts`` (``block_score_keys``'
    launch choices): default to the device's tuning."""
    b = q_codes.shape[0]
    m = block_table.shape[1]
    forced, fs = _forced_args(must_select_blocks)
    if m > MAX_BLOCKS:
        raise ValueError(f"triton hamming_dist_top_k: block_table width M <= {MAX_BLOCKS}, got {m}")
    idx = torch.empty(b, k, dtype=torch.int32, device=q_codes.device)
    nsel = torch.empty(b, dtype=torch.int32, device=q_codes.device)
    if b:
        keys = torch.empty(b, m, dtype=torch.int32, device=q_codes.device)
        _select(q_codes, key_cache, block_table, seq_lens, budgets, k, forced, fs, chunk_repre_method, rope_bytes,
                rope_score_weight, keys, None, None, None, idx, nsel, 0, None, fanout, fuse, score_opts,
                radix=radix)
    return idx, nsel


def select_blocks(q_codes, key_cache, block_table, seq_lens, budgets, k, must_select_blocks, chunk_repre_method,
                  rope_bytes, rope_score_weight, pad_id, keys, table, lens, cache=None, counter=None, fanout=None,
                  fuse=None, pdl=False, maxnreg=None, radix=None, **score_opts):
    """Hot path: ``hamming_dist_top_k`` then ``kv_select`` (block scores; selection with
    the table gather fused; or both in one launch, see ``_select``), into caller-owned
    buffers ``keys int32 [B, M]``, ``table int32 [B, k]``, ``lens int32 [B]``, and
    ``counter int32 [B]`` (zeros, kept zero between calls) for the one-launch variant.
    ``pdl``: launch the score kernel as a programmatic dependent of the previous kernel,
    which must write nothing but ``q_codes`` that this reads (the hot path's query hash,
    launched with ``launch_dependents``); callers decide with ``use_pdl``. ``radix``: the
    selection's threshold by radix select (``select_radix``; None: the device's tuning).
    Rows with ``seq_len <= 0`` (an engine's padding) come back empty (length 0, all ``pad_id``)."""
    b, m = block_table.shape
    forced, fs = _forced_args(must_select_blocks)
    if m > MAX_BLOCKS:
        raise ValueError(f"triton hamming_dist_top_k: block_table width M <= {MAX_BLOCKS}, got {m}")
    if b == 0:
        return table, lens
    _select(q_codes, key_cache, block_table, seq_lens, budgets, k, forced, fs, chunk_repre_method, rope_bytes,
            rope_score_weight, keys, counter, table, lens, None, None, pad_id, cache, fanout, fuse, score_opts,
            pdl, maxnreg, radix)
    return table, lens
