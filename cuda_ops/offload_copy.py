"""Block copies between pinned host memory and a device pool, read or written by
the GPU itself through unified addressing (``gsa.offload``'s ``uva`` mover).

The ``(src, dst)`` lists and the miss count stay on the device (the residency
map computes them there), so a fetch needs no host sync and can be captured in a
CUDA graph; the copy runs at PCIe speed with many programs reading in parallel
instead of a host-side gather into a staging buffer.

Layouts: ``host_k, host_v [NB, bs, Hkv, D]`` (pinned host memory, contiguous),
``pool_k, pool_v [S, bs, Hkv, D]`` (device, contiguous): one block is
``bs * Hkv * D`` contiguous elements on both sides.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreting
from .launch import cdiv, sm_count

__all__ = ["gather_blocks", "scatter_rows"]

CHUNK = 4096  # elements a program copies per tensor and block (8 KB of bf16)
PROGRAMS_PER_SM = 8  # gather programs per multiprocessor (each streams blocks over PCIe)


class _HostPtr:
    """A pinned host tensor passed to a kernel as its unified (device-usable) address."""

    def __init__(self, t: torch.Tensor):
        self.t, self.dtype = t, t.dtype

    def data_ptr(self) -> int:
        return self.t.data_ptr()


def _arg(t: torch.Tensor):
    return t if (t.is_cuda or interpreting()) else _HostPtr(t)


@triton.jit
def _gather_kernel(hk, hv, pk, pv, src_ptr, dst_ptr, n_ptr, NB, S, ELEMS, P, CHUNK_: tl.constexpr):
    # program (p, c) copies chunk c of the entries p, p + P, p + 2P, ... below n_miss: the grid is
    # sized by the device, the loop by the miss count (device data), so no program starts idle
    p = tl.program_id(0)
    c = tl.program_id(1)
    n = tl.load(n_ptr)
    offs = c * CHUNK_ + tl.arange(0, CHUNK_)
    m = offs < ELEMS
    for i in range(p, n, P):
        s = tl.minimum(tl.maximum(tl.load(src_ptr + i), 0), NB - 1).to(tl.int64)
        d = tl.minimum(tl.maximum(tl.load(dst_ptr + i), 0), S - 1).to(tl.int64)
        tl.store(pk + d * ELEMS + offs, tl.load(hk + s * ELEMS + offs, mask=m), mask=m)
        tl.store(pv + d * ELEMS + offs, tl.load(hv + s * ELEMS + offs, mask=m), mask=m)


@triton.jit
def _scatter_kernel(hk, hv, k_ptr, v_ptr, slot_ptr, NSLOTS, ROW, BLOCK: tl.constexpr):
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if (slot >= 0) & (slot < NSLOTS):
        offs = tl.arange(0, BLOCK)
        m = offs < ROW
        tl.store(hk + slot * ROW + offs, tl.load(k_ptr + t * ROW + offs, mask=m).to(hk.dtype.element_ty), mask=m)
        tl.store(hv + slot * ROW + offs, tl.load(v_ptr + t * ROW + offs, mask=m).to(hv.dtype.element_ty), mask=m)


def gather_blocks(host_k, host_v, pool_k, pool_v, src, dst, n_miss) -> None:
    """``pool[dst[i]] = host[src[i]]`` for ``i < n_miss`` (K and V). ``src, dst int64
    [N]`` and ``n_miss`` (a one-element integer tensor, at most ``N``) on the pool's
    device; ids are clamped into range (never an out-of-bounds access).

    Grid: ``chunks`` programs per block (``CHUNK`` elements each) times ``P`` block
    lanes, ``P = min(N, ~8 programs per SM / chunks)``: enough loads in flight to
    fill PCIe, and not ``N x chunks`` programs of which all but ``n_miss`` would exit."""
    n = src.shape[0]
    elems = host_k[0].numel()
    if n == 0:
        return
    chunks = cdiv(elems, CHUNK)
    lanes = max(1, min(n, cdiv(PROGRAMS_PER_SM * sm_count(pool_k.device), chunks)))
    _gather_kernel[(lanes, chunks)](
        _arg(host_k), _arg(host_v), pool_k, pool_v, src, dst, n_miss.reshape(1), host_k.shape[0], pool_k.shape[0],
        elems, lanes, CHUNK_=CHUNK)


def scatter_rows(host_k, host_v, slots, k, v) -> None:
    """Token rows ``k, v [T, Hkv, D]`` (device) into the host KV at flat slots
    ``slots [T]`` (``block * bs + offset``); slots outside ``[0, NB * bs)`` are skipped."""
    t = slots.shape[0]
    if t == 0:
        return
    row = k[0].numel()
    nb, bs = host_k.shape[:2]
    _scatter_kernel[(t,)](_arg(host_k), _arg(host_v), k.contiguous(), v.contiguous(), slots, nb * bs, row,
                          BLOCK=triton.next_power_of_2(row))
