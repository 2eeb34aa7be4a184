"""Paged decode attention on Ascend through ``torch_npu.npu_fused_infer_attention_score``.

The fused op (FIA) takes paged K/V with a ``block_table`` and per-row lengths
``actual_seq_lengths_kv``; sparse attention (spec 7) is the same call on
``kv_select``'s ``(sparse_block_table, sparse_seq_lens)``: the table lists only
the chosen physical blocks in ascending logical order, so the only partial
block (the sequence's last) is the last entry and FIA needs nothing else.

Layout used (documented torch_npu API, CANN 8.x): ``input_layout="BSH"``,
query ``[B, 1, Hq*D]``, key/value caches viewed as ``[NB, bs, Hkv*D]`` (a free
view of the spec's ``[NB, bs, Hkv, D]``), ``block_table`` int32 ``[B, M]``,
``block_size = bs``, ``num_heads = Hq``, ``num_key_value_heads = Hkv``.

``actual_seq_lengths_kv`` is a host ``int[]`` in eager torch_npu. Reading a
device tensor for it is a host sync, so integrators should pass host lengths:
:func:`sparse_seq_lens_host` computes the sparse lengths on the host, exactly,
whenever the sequence's last block is forced (``-1`` in ``must_select_blocks``,
the shipped configs) or every block is selected; the op-level kernel
(:func:`paged_decode_attention`) falls back to ``seq_lens.tolist()`` (eager only).

``torch_npu`` is looked up at call time (``sys.modules`` / import), never at
import time, so this module imports on any machine and tests can inject a fake.
"""
from __future__ import annotations

import importlib
import math
from typing import Dict, List, Optional, Sequence

import torch

__all__ = [
    "FIA_DTYPES",
    "fia_arguments",
    "fia_paged_attention",
    "paged_decode_attention",
    "sparse_seq_lens_host",
]

#: dtypes FIA accepts for q/k/v (fp32 goes to the reference instead)
FIA_DTYPES = (torch.float16, torch.bfloat16)


def _torch_npu():
    return importlib.import_module("torch_npu")


def fia_arguments(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens_host: Sequence[int],
    scale: Optional[float],
) -> Dict[str, object]:
    """Keyword arguments of ``npu_fused_infer_attention_score`` for one decode step.

    ``q [B, Hq, D]``; ``k_cache, v_cache [NB, bs, Hkv, D]`` (fp16/bf16, contiguous);
    ``block_table int32 [B, M]``; ``seq_lens_host``: ``B`` host ints (>= 1).
    The result's first output is ``[B, 1, Hq*D]``.
    """
    b, hq, d = q.shape
    nb, bs, hkv, _ = k_cache.shape
    lens = [int(x) for x in seq_lens_host]
    if len(lens) != b:
        raise ValueError(f"seq_lens_host: expected {b} lengths (one per row), got {len(lens)}")
    return dict(
        query=q.reshape(b, 1, hq * d).contiguous(),
        key=k_cache.reshape(nb, bs, hkv * d),
        value=v_cache.reshape(nb, bs, hkv * d),
        block_table=block_table.to(torch.int32).contiguous(),
        actual_seq_lengths_kv=lens,
        block_size=bs,
        num_heads=hq,
        num_key_value_heads=hkv,
        input_layout="BSH",
        scale=(1.0 / math.sqrt(d)) if scale is None else float(scale),
        sparse_mode=0,  # no mask: one query token sees its whole (sparse) row
    )


def fia_paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens_host: Sequence[int],
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Spec 7 with host lengths: ``[B, Hq, D]`` in ``q.dtype`` (no host sync)."""
    b, hq, d = q.shape
    out = _torch_npu().npu_fused_infer_attention_score(**fia_arguments(q, k_cache, v_cache, block_table, seq_lens_host, scale))
    return out[0].reshape(b, hq, d)


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: Optional[float],
) -> torch.Tensor:
    """Backend kernel for ``gsa.ops.paged_decode_attention`` on NPU tensors.

    Shapes as :func:`fia_arguments`, ``seq_lens int32 [B]`` on the device. fp32
    inputs go to the reference (FIA has no fp32 path). The device lengths are
    read back once (``tolist``): eager mode only; a captured step must call
    :func:`fia_paged_attention` with host lengths instead.
    """
    if q.dtype not in FIA_DTYPES:
        from gsa.reference import paged_decode_attention as ref

        return ref(q, k_cache, v_cache, block_table, seq_lens, scale)
    return fia_paged_attention(q, k_cache, v_cache, block_table, seq_lens.tolist(), scale)


def sparse_seq_lens_host(
    seq_lens: Sequence[int],
    budgets: Sequence[int],
    block_size: int,
    must_select_blocks: Sequence[int],
    k: Optional[int] = None,
) -> Optional[List[int]]:
    """Spec 6 ``sparse_seq_len`` per row from host data only, or ``None``.

    Exact when it does not depend on the scores: a row selects all its blocks
    (``budget >= n_blocks``), or its last block is forced (then the chosen
    blocks are ``n_sel - 1`` full ones plus the last). Returns ``None`` if any
    row's length depends on which blocks win (the caller must then read the
    device lengths). ``k`` clamps ``n_sel`` as the kernels do.
    """
    out = []
    for seq, bud in zip(seq_lens, budgets):
        seq, bud = int(seq), int(bud)
        n_blocks = -(-seq // block_size)
        last_len = seq - (n_blocks - 1) * block_size
        forced = set()
        for m in must_select_blocks:
            j = m if m >= 0 else n_blocks + m
            if 0 <= j < n_blocks:
                forced.add(j)
        n_sel = n_blocks if bud >= n_blocks else max(bud, len(forced))
        if k is not None and n_sel > int(k):
            # clamped (spec 5 amendment): the first k chosen blocks ascending; the
            # last block, if chosen, is the largest index, so every kept block is full
            out.append(int(k) * block_size)
        elif n_sel == n_blocks:
            out.append(seq)
        elif n_blocks - 1 in forced:
            out.append((n_sel - 1) * block_size + last_len)
        else:
            return None
    return out
