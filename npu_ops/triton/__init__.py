"""Ascend-shaped Triton launchers (triton-ascend 3.2; upstream Triton too).

Each function has the name and the exact positional arguments of the
``torch.ops.gsa.<op>`` schema (inputs already validated inside the custom op, ``gsa.op_checks``), so it
is a backend kernel as is. Launch shape: a 1-D grid of ``num_programs()``
programs (one per AI vector core on Ascend), each striding over work items.

Importing this module imports ``triton``; callers import it lazily (the npu
backend's probe). Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors,
which is how they are tested on machines without an NPU (tests/test_npu_triton.py,
ci/triton_ascend.sh).

No launcher reads device data on the host (no ``.item()``/``.tolist()``), so a
decode step stays capturable; the must-select list is turned into a device
tensor once per (list, device) and cached, because building it is a host-to-device
copy that must not happen inside graph capture.
"""
from __future__ import annotations

import functools
import os
from typing import Dict, List, Sequence, Tuple

import torch

from . import kernels as K

__all__ = [
    "num_programs",
    "hash_encode",
    "hash_encode_and_cache",
    "mla_hash_encode",
    "mla_hash_encode_and_cache",
    "hamming_dist_top_k",
    "kv_select",
    "OPS",
]

#: ops this module implements (sign_bits_pack and attention come from elsewhere)
OPS = ("hash_encode", "hash_encode_and_cache", "mla_hash_encode", "mla_hash_encode_and_cache",
       "hamming_dist_top_k", "kv_select")

_DEFAULT_PROGRAMS = 8  # interpreter / unknown device: small, still exercises the stride loop


def _p2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@functools.lru_cache(maxsize=None)
def _cores(device_type: str, index: int) -> int:
    env = os.environ.get("GSA_NPU_NPROG")
    if env:
        return max(1, int(env))
    if device_type == "npu":
        try:  # triton-ascend's driver knows the vector-core count (2 per AI core on 910B/93)
            from triton.runtime import driver

            return int(driver.active.utils.get_device_properties(index)["num_vectorcore"])
        except Exception:
            return 40
    if device_type == "cuda":
        return 4 * torch.cuda.get_device_properties(index).multi_processor_count
    return _DEFAULT_PROGRAMS


def num_programs(device: torch.device, n_items: int) -> int:
    """Grid size: the core count, never more programs than work items (>= 1)."""
    return max(1, min(int(n_items), _cores(device.type, device.index or 0)))


_FORCED: Dict[Tuple[Tuple[int, ...], str], torch.Tensor] = {}


def _forced_tensor(forced: Sequence[int], device: torch.device) -> Tuple[torch.Tensor, int]:
    key = (tuple(int(m) for m in forced), str(device))
    t = _FORCED.get(key)
    if t is None:
        t = torch.tensor(list(key[0]) or [0], dtype=torch.int32, device=device)
        _FORCED[key] = t
    return t, len(key[0])


def _launch_hash(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, slots, heads: int,
                 out_heads: int, out_bs: int, out_c: int, col_off: int, threshold=None) -> None:
    """x ``[T, heads, D]`` contiguous; weight ``[D, R]`` or ``[Hw, D, R]``; out uint8 contiguous;
    ``threshold`` (spec 13): ``None``, or ``[R]`` / ``[Hw, R]`` like the weight."""
    t, d = x.shape[0], x.shape[-1]
    w = weight.contiguous()
    r = w.shape[-1]
    c = r // 8
    if w.dim() == 2:
        w_head, g_w = 0, 1
    else:
        w_head, g_w = d * r, heads // w.shape[0]
    n_items = t * heads
    if n_items == 0:
        return
    nprog = num_programs(x.device, n_items)
    use_slots = slots is not None
    n_slots = out.shape[0] * out_bs if use_slots else t
    thr = None if threshold is None else threshold.to(torch.float32).contiguous()
    K.hash_encode_kernel[(nprog,)](
        x, w, out, slots if use_slots else x, x if thr is None else thr,
        n_items, heads, d, c, heads * d, w_head, g_w, 0 if w.dim() == 2 else r,
        n_slots, out_heads, out_bs, out_c, col_off,
        USE_SLOTS=use_slots, HAS_THR=thr is not None, NPROG=nprog, C_P2=_p2(c), DT=min(16, _p2(d)),
    )


def hash_encode(x: torch.Tensor, weight: torch.Tensor, threshold=None) -> torch.Tensor:
    """Spec 2 (+ 12). ``x [..., D]`` with ``weight [D, R]``, or ``x [..., H, D]`` with
    ``weight [Hw, D, R]`` -> ``uint8 [..., R/8]`` (``[..., H, R/8]``); ``threshold``
    ``[R]`` / ``[Hw, R]`` or ``None``."""
    r = weight.shape[-1]
    if weight.dim() == 2:
        xs = x.reshape(-1, 1, x.shape[-1]).contiguous()
        heads = 1
    else:
        heads = x.shape[-2]
        xs = x.reshape(-1, heads, x.shape[-1]).contiguous()
    out = torch.empty(xs.shape[0], heads, r // 8, dtype=torch.uint8, device=x.device)
    _launch_hash(xs, weight, out, None, heads, heads, 1, r // 8, 0, threshold)
    return out.reshape(*x.shape[:-1], r // 8)


def _slots(slot_mapping: torch.Tensor) -> torch.Tensor:
    return slot_mapping.contiguous()


def hash_encode_and_cache(k: torch.Tensor, weight: torch.Tensor, cache: torch.Tensor,
                          slot_mapping: torch.Tensor, threshold=None) -> None:
    """Spec 3. ``k [T, Hkv, D]``, ``weight [Hkv, D, R]`` or ``[D, R]``,
    ``cache uint8 [NB, Hkv, bs, R/8]`` written in place at ``slot_mapping [T]``;
    ``threshold [Hkv, R]`` / ``[R]`` or ``None`` (spec 13)."""
    if not cache.is_contiguous():  # in-place writes need the real layout
        from gsa.reference.hashing import _scatter_codes

        _scatter_codes(hash_encode(k, weight, threshold), cache, slot_mapping)
        return
    nb, hkv, bs, c = cache.shape
    _launch_hash(k.contiguous(), weight, cache, _slots(slot_mapping), hkv, hkv, bs, c, 0, threshold)


def mla_hash_encode(x_lora: torch.Tensor, x_rope: torch.Tensor, w_lora: torch.Tensor,
                    w_rope: torch.Tensor) -> torch.Tensor:
    """Spec 9. ``x_lora [..., L]``, ``x_rope [..., P]`` -> ``uint8 [..., (R_lora+R_rope)/8]``."""
    cl, cr = w_lora.shape[1] // 8, w_rope.shape[1] // 8
    xl = x_lora.reshape(-1, 1, x_lora.shape[-1]).contiguous()
    xr = x_rope.reshape(-1, 1, x_rope.shape[-1]).contiguous()
    out = torch.empty(xl.shape[0], 1, cl + cr, dtype=torch.uint8, device=x_lora.device)
    _launch_hash(xl, w_lora, out, None, 1, 1, 1, cl + cr, 0)
    _launch_hash(xr, w_rope, out, None, 1, 1, 1, cl + cr, cl)
    return out.reshape(*x_lora.shape[:-1], cl + cr)


def mla_hash_encode_and_cache(c_kv: torch.Tensor, k_pe: torch.Tensor, w_lora: torch.Tensor,
                              w_rope: torch.Tensor, cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Spec 3 + 9. ``c_kv [T, L]``, ``k_pe [T, P]``, ``cache uint8 [NB, 1, bs, C]`` in place."""
    if not cache.is_contiguous():
        from gsa.reference.hashing import _scatter_codes

        _scatter_codes(mla_hash_encode(c_kv, k_pe, w_lora, w_rope).unsqueeze(1), cache, slot_mapping)
        return
    nb, _, bs, c = cache.shape
    slots = _slots(slot_mapping)
    cl = w_lora.shape[1] // 8
    _launch_hash(c_kv.reshape(-1, 1, c_kv.shape[-1]).contiguous(), w_lora, cache, slots, 1, 1, bs, c, 0)
    _launch_hash(k_pe.reshape(-1, 1, k_pe.shape[-1]).contiguous(), w_rope, cache, slots, 1, 1, bs, c, cl)


def _words(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes ``[..., C]`` (``C % 4 == 0``) as int32 words ``[..., C/4]``, no copy if possible."""
    if not codes.is_contiguous() or codes.storage_offset() % 4:
        codes = codes.contiguous()
    return codes.view(torch.int32)


def block_scores(q_codes, key_cache, block_table, seq_lens, chunk_repre_method: str,
                 rope_bytes: int, rope_score_weight: float) -> torch.Tensor:
    """Spec 4 block scores ``[B, M]`` in 1/16 units: int32 (``max``; empty block
    ``INT32_MIN``) or float32 (``mean``; empty ``-inf``)."""
    b, hq, c = q_codes.shape
    nb, hkv, bs, _ = key_cache.shape
    m = block_table.shape[1]
    is_mean = chunk_repre_method == "mean"
    out = torch.empty(b, m, dtype=torch.float32 if is_mean else torch.int32, device=q_codes.device)
    n_items = b * m
    nprog = num_programs(q_codes.device, n_items)
    cw = c // 4
    K.block_scores_kernel[(nprog,)](
        _words(q_codes), _words(key_cache), block_table.contiguous(), seq_lens.contiguous(), out,
        n_items, m, nb, hkv, hq // hkv, cw, cw - rope_bytes // 4, int(round(rope_score_weight * 16)),
        BS=bs, IS_MEAN=is_mean, NPROG=nprog, BS_P2=_p2(bs), CW_P2=_p2(cw),
    )
    return out


def hamming_dist_top_k(q_codes, key_cache, block_table, seq_lens, budgets, k: int,
                       must_select_blocks: List[int], chunk_repre_method: str, rope_bytes: int,
                       rope_score_weight: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Spec 4 + 5. ``q_codes uint8 [B, Hq, C]``, ``key_cache uint8 [NB, Hkv, bs, C]``,
    ``block_table``/``seq_lens``/``budgets`` int32 -> ``(indices int32 [B, k], n_sel int32 [B])``."""
    scores = block_scores(q_codes, key_cache, block_table, seq_lens, chunk_repre_method,
                          rope_bytes, rope_score_weight)
    b, m = scores.shape
    bs = key_cache.shape[2]
    dev = q_codes.device
    forced, n_f = _forced_tensor(must_select_blocks, dev)
    idx = torch.empty(b, k, dtype=torch.int32, device=dev)
    nsel = torch.empty(b, dtype=torch.int32, device=dev)
    nprog = num_programs(dev, b)
    tile = min(64, _p2(m))
    K.select_kernel[(nprog,)](
        scores, seq_lens.contiguous(), budgets.contiguous(), forced, idx, nsel,
        b, m, k, n_f,
        BS=bs, IS_MEAN=chunk_repre_method == "mean", NPROG=nprog, TJ=tile, TI=tile, TK=min(128, _p2(k)),
    )
    return idx, nsel


def kv_select(indices, n_sel, block_table, seq_lens, block_size: int, pad_id: int
              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Spec 6. ``indices int32 [B, K]``, ``n_sel int32 [B]``, ``block_table int32 [B, M]``,
    ``seq_lens int32 [B]`` -> ``(table int32 [B, K], lens int32 [B])``."""
    b, kk = indices.shape
    m = block_table.shape[1]
    table = torch.empty(b, kk, dtype=torch.int32, device=indices.device)
    lens = torch.empty(b, dtype=torch.int32, device=indices.device)
    nprog = num_programs(indices.device, b)
    K.kv_select_kernel[(nprog,)](
        indices.contiguous(), n_sel.contiguous(), block_table.contiguous(), seq_lens.contiguous(), table, lens,
        b, kk, m, block_size, pad_id,
        NPROG=nprog, TK=min(128, _p2(kk)),
    )
    return table, lens
