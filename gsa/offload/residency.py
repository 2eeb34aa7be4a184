"""Residency map of one layer's device pool: which host KV block sits in which pool slot.

All bookkeeping is fixed-shape tensor ops on the pool's device (no host sync,
no data-dependent shapes), so a decode step that uses it stays graph
capturable; the only data-dependent work is the block copy itself
(:mod:`gsa.offload.mover`).

Names: ``NB`` host blocks (physical block ids of the paged host KV), ``S`` pool
slots, ``N`` entries of a request list (block ids, ``-1`` = padding). The
arrays carry one extra "dummy" entry (host block ``NB``, slot ``S``) so that
padded entries can be written unconditionally: a padded request reads host
block 0 into the scratch slot ``S``, which no table ever points at.

Eviction: a miss takes the slot with the smallest key ``(last_used, uses)``:
free slots first (``last_used = -1``), then least recently selected, ties by
fewest selections, then the lowest slot. Slots holding blocks of the current
request are never victims. Score-aware eviction (:meth:`ResidencyMap.set_priority`,
:mod:`gsa.offload.scores`) writes a per-block priority into ``last_used`` before
each request, so the same key then orders by priority.

Counters (int64 tensors on the device, read only when the caller asks):
``wanted`` distinct requested blocks, ``hits`` of them already resident,
``predicted_hits`` of them inside the last prediction (:meth:`ResidencyMap.predict`),
``fetched`` blocks copied by on-demand misses, ``prefetched`` by predictions.

A request list's width ``N`` (padding and duplicates included) must not exceed
``S``: the number of distinct blocks is device data, so the host checks the
width (``OffloadedGSA`` sizes the pool for ``B * k``).

The step number ``now`` may be a host int or a device tensor; it is kept in a
device tensor (``now_t``) either way, so a CUDA graph captured around a request
reads the value current at replay (write it with :meth:`ResidencyMap.set_now`
or pass a device tensor that the caller updates).

Two implementations with identical decisions (every tensor and counter equal,
tests/test_offload_residency.py): the torch ops below (the reference, and the
CPU path: ~70-90 small ops per call) and a backend's fused kernel
(``residency_admit`` of the device's hot path, e.g. ``cuda_ops/offload_residency.py``:
four launches), found through :func:`gsa.hotpath.hot_path_for` as the mover
finds its copy kernels. ``backend=None`` picks the kernel on CUDA where the
backend has it, ``False`` forces the torch ops, an object with
``residency_admit`` forces it (the interpreter tests).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

import torch

from gsa.hotpath import hot_path_for

__all__ = ["ResidencyMap", "PoolTooSmallError"]

Tensor = torch.Tensor

# key = last_used * _USES_RANGE + min(uses, _USES_RANGE - 1): recency first, then score
_USES_RANGE = 1 << 20
_NEVER = torch.iinfo(torch.int64).max


def residency_kernel(device: torch.device) -> Optional[Any]:
    """The backend object with ``residency_admit`` for maps on ``device``, or ``None``
    (not CUDA, or the backend serving it has no such kernel): then the torch ops run."""
    if device.type != "cuda":
        return None
    hp = hot_path_for(device)
    return hp if hasattr(hp, "residency_admit") else None


class PoolTooSmallError(ValueError):
    """The pool cannot hold the blocks one step attends to (names the minimum)."""


class ResidencyMap:
    """Block -> slot map of one pool (see the module docstring).

    ``num_host_blocks`` (NB) host blocks, ``num_slots`` (S) pool slots, on ``device``.
    Tensors (all int64): ``slot_of [NB + 1]`` (-1: not resident), ``block_of
    [S + 1]`` (-1: free), ``last_used [S + 1]``, ``uses [S + 1]``.
    """

    COUNTERS = ("wanted", "hits", "predicted_hits", "fetched", "prefetched")

    def __init__(self, num_host_blocks: int, num_slots: int, device="cpu", backend: Union[None, bool, Any] = None):
        for name, v in (("num_host_blocks", num_host_blocks), ("num_slots", num_slots)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"ResidencyMap: '{name}' must be an int >= 1, got {v!r}")
        self.nb, self.s = num_host_blocks, num_slots
        self.device = torch.device(device)
        i64 = dict(dtype=torch.int64, device=self.device)
        self.slot_of = torch.full((self.nb + 1,), -1, **i64)
        self.block_of = torch.full((self.s + 1,), -1, **i64)
        self.last_used = torch.full((self.s + 1,), -1, **i64)
        self.uses = torch.zeros(self.s + 1, **i64)
        self._predicted = torch.zeros(self.nb + 1, dtype=torch.bool, device=self.device)
        self._counts = torch.zeros(len(self.COUNTERS), **i64)  # one tensor: the kernel adds in place
        self.counters: Dict[str, Tensor] = {c: self._counts[i] for i, c in enumerate(self.COUNTERS)}
        self.now_t = torch.zeros(1, **i64)
        if backend is None:
            backend = residency_kernel(self.device)
        elif backend is not False and not hasattr(backend, "residency_admit"):
            raise ValueError(f"ResidencyMap: 'backend' must be None, False or an object with residency_admit, "
                             f"got {type(backend).__name__}")
        self.backend = backend or None
        self._work: Dict[Any, Any] = {}  # the kernel's scratch and recorded launches
        self._out: Dict[Any, Tuple] = {}  # kernel outputs, one set per call kind (and their views per width)

    def set_now(self, now: Union[int, Tensor]) -> None:
        """Write the step number into ``now_t`` (an op on the device; no host sync)."""
        if isinstance(now, Tensor):
            if now.data_ptr() != self.now_t.data_ptr():
                self.now_t.copy_(now.reshape(1))
        else:
            self.now_t.fill_(int(now))

    # ------------------------------------------------------------------ helpers
    def _mark(self, blocks: Tensor) -> Tensor:
        """``bool [NB]``: which host blocks appear in ``blocks`` (``-1`` ignored)."""
        ids = torch.where(blocks >= 0, blocks, self.nb)
        mark = torch.zeros(self.nb + 1, dtype=torch.bool, device=self.device)
        mark.index_fill_(0, ids, True)
        return mark[: self.nb]

    def check_capacity(self, n_blocks: int, what: str = "one step's selection") -> None:
        """Host-side check that ``n_blocks`` distinct blocks fit the pool."""
        if n_blocks > self.s:
            raise PoolTooSmallError(
                f"GSA offload: the device pool has {self.s} slots per layer but {what} can need {n_blocks} "
                f"blocks; make the pool at least {n_blocks} slots")

    def table(self, blocks: Tensor) -> Tensor:
        """Remap host block ids ``int [..]`` to pool slots (``int32``); non-resident or
        padding entries map to slot 0 (callers only read entries they made resident)."""
        s = self.slot_of[torch.where(blocks >= 0, blocks.long(), self.nb)]
        return s.clamp(min=0).to(torch.int32)

    def slots(self, blocks: Tensor) -> Tensor:
        """:meth:`table` for a list whose padding is ``-1``: ``blocks int64 [..]`` in ``[-1, NB)``
        -> pool slots ``int32``, padding and non-resident entries slot 0. Three ops instead of six:
        ``-1`` indexes the dummy entry ``slot_of[NB]``, which is always ``-1``."""
        return self.slot_of[blocks].clamp_(min=0).to(torch.int32)

    def resident(self) -> Tensor:
        """``bool [NB]``: blocks currently in the pool."""
        return self.slot_of[: self.nb] >= 0

    # ------------------------------------------------------------------ the step
    def _admit(self, blocks: Tensor, now: Tensor, counter: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Make the distinct blocks of ``blocks int64 [N]`` resident (``N <= S``).

        Returns ``(want bool [NB], src int64 [N], dst int64 [N], n_miss int64 [])``:
        copy host block ``src[i]`` into slot ``dst[i]`` for every ``i`` (padding
        entries copy host block 0 into the scratch slot ``S``)."""
        n = blocks.shape[0]
        self.check_capacity(n, "this request")
        want = self._mark(blocks)
        missing = want & (self.slot_of[: self.nb] < 0)
        n_miss = missing.sum()
        # missing block ids first (ascending), fixed width N
        order = torch.argsort((~missing).to(torch.int8), stable=True)
        if order.shape[0] < n:
            order = torch.cat([order, order.new_zeros(n - order.shape[0])])
        live = torch.arange(n, device=self.device) < n_miss
        miss_blocks = torch.where(live, order[:n], -1)
        # victims: never a slot whose block this request keeps
        held = self.block_of[: self.s]
        kept = want[held.clamp(min=0)] & (held >= 0)
        key = self.last_used[: self.s] * _USES_RANGE + self.uses[: self.s].clamp(max=_USES_RANGE - 1)
        key = torch.where(kept, _NEVER, key)
        victims = torch.argsort(key, stable=True)[:n]
        dst = torch.where(live, victims, self.s)
        src = torch.where(live, miss_blocks, 0)
        # unmap evicted blocks, map the new ones (padding writes go to the dummy entries)
        old = self.block_of[dst]
        self.slot_of.index_fill_(0, torch.where(live & (old >= 0), old, self.nb), -1)
        self.slot_of.index_copy_(0, torch.where(live, miss_blocks, self.nb), torch.where(live, dst, -1))
        self.block_of.index_copy_(0, dst, torch.where(live, miss_blocks, -1))
        # (slice fills, not `t[i] = -1`: item assignment of a Python number copies a pageable host
        # scalar to the device, which a CUDA graph capture rejects; see mark_predicted)
        self.slot_of[self.nb:].fill_(-1)
        self.block_of[self.s:].fill_(-1)
        # recency and score of every requested block
        held = self.block_of[: self.s]
        hit_slot = want[held.clamp(min=0)] & (held >= 0)
        self.last_used[: self.s] = torch.where(hit_slot, now, self.last_used[: self.s])
        self.counters[counter] += n_miss
        return want, src, dst, n_miss

    def _fused(self, blocks: Tensor, request: bool) -> Tuple[Tensor, Tensor, Tensor]:
        """The backend kernel's ``request`` / ``predict``; outputs live in persistent
        buffers per kind (a prefetch's lists are still being read by the copy stream
        when the same step's request is computed)."""
        n = blocks.shape[0]
        self.check_capacity(n, "this request")
        out = self._out.get((request, n))
        if out is None:  # views and the state dict made once per width (no per-call torch ops)
            full = self._out.get(request)
            if full is None:
                i64 = dict(dtype=torch.int64, device=self.device)
                full = self._out[request] = (torch.zeros(self.s, **i64), torch.zeros(self.s, **i64),
                                             torch.zeros((), **i64))
            state = dict(slot_of=self.slot_of, block_of=self.block_of, last_used=self.last_used, uses=self.uses,
                         predicted=self._predicted.view(torch.uint8), counters=self._counts, now=self.now_t)
            out = self._out[(request, n)] = (full[0][:n], full[1][:n], full[2], state)
        src, dst, n_miss, state = out
        self.backend.residency_admit(state, self._work, blocks, src, dst, n_miss, request)
        return src, dst, n_miss

    def request(self, blocks: Tensor, now: Union[int, Tensor, None] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """The blocks one attention call needs: ``blocks int [N]`` host block ids
        (``-1`` padding, duplicates allowed), ``now`` the step number (increasing;
        a host int or a device tensor, written into ``now_t``; ``None``: ``now_t``
        as it is). Counts hits and prediction hits, picks victims, updates the map.

        Returns ``(src int64 [N], dst int64 [N], n_miss int64 [])`` for the mover."""
        blocks = blocks.reshape(-1).long()
        if now is not None:
            self.set_now(now)
        if self.backend is not None:
            return self._fused(blocks, True)
        want, src, dst, n_miss = self._admit(blocks, self.now_t[0], "fetched")
        n_want = want.sum()
        self.counters["wanted"] += n_want
        self.counters["hits"] += n_want - n_miss
        self.counters["predicted_hits"] += (want & self._predicted[: self.nb]).sum()
        held = self.block_of[: self.s]
        self.uses[: self.s] += (want[held.clamp(min=0)] & (held >= 0)).long()
        return src, dst, n_miss

    def predict(self, blocks: Tensor, now: Union[int, Tensor, None] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """Prefetch: make ``blocks int [N]`` (a prediction of the next request)
        resident ahead of time and remember it for the ``predicted_hits`` counter.
        Returns ``(src, dst, n_miss)`` like :meth:`request`."""
        blocks = blocks.reshape(-1).long()
        if now is not None:
            self.set_now(now)
        if self.backend is not None:
            return self._fused(blocks, False)
        want, src, dst, n_miss = self._admit(blocks, self.now_t[0], "prefetched")
        self._predicted[: self.nb] = want
        return src, dst, n_miss

    def mark_predicted(self, blocks: Tensor) -> None:
        """Remember ``blocks int [N]`` (``-1`` padding) as the prediction of the next request
        for the ``predicted_hits`` counter, without admitting them: for a prediction that is
        resident already (a per-layer pool's own last request: :class:`OffloadedGSA`'s
        ``"previous"``), where :meth:`predict` would fetch nothing and only relabel recency.
        In place (two ops, capturable; the fused kernel reads the same buffer).

        Padding marks the dummy entry ``NB``, which nothing reads (the torch path reads
        ``[:NB]``, the fused kernel entries below ``NB``). It used to be cleared with
        ``self._predicted[self.nb] = False``: item assignment of a Python number, which on CUDA
        copies a pageable host scalar to the device. Eager that is a (synchronous) copy; under
        CUDA-graph capture torch rejects it ("Cannot copy between CPU and CUDA tensors during
        CUDA graph capture ..."), and the exception left the copy stream forked (the layer's
        fetch, joined only by ``BlockMover.wait`` after this call), so ``capture_end`` reported
        "capturing stream has unjoined work" instead: the H200 failure of the "previous" graph
        rows (docs/offload_h200.md, "Graph capture with prefetch")."""
        ids = torch.where(blocks.reshape(-1) >= 0, blocks.reshape(-1).long(), self.nb)
        self._predicted.zero_()
        self._predicted.index_fill_(0, ids, True)

    def set_priority(self, prio: Tensor) -> None:
        """Score-aware eviction (``OffloadedGSA(eviction="score")``, :mod:`gsa.offload.scores`):
        write each resident block's priority ``prio float [NB + 1]`` (higher = keep; NaN = never
        scored, kept least) into its slot's ``last_used``, so the next request (torch ops or the
        fused kernel, unchanged: key ``last_used * 2^20 + uses``) evicts the lowest priority first,
        ties by fewest uses, then the lowest slot. Free slots keep ``-1`` (taken first). Priorities
        are clamped to ``[-64, 64]`` and quantised to 2^-24 (``floor((p + 64) * 2^24 + 0.5)``, ``0 .. 2^31``:
        the key stays far inside int64); the backend's fused ``priority_keys`` (CUDA) writes the same. Call before every request: a request stamps its blocks with ``now`` (small), which
        only the next ``set_priority`` overwrites. In place, no host sync."""
        if self.backend is not None and hasattr(self.backend, "priority_keys"):
            self.backend.priority_keys(self.block_of, prio, self.last_used)  # one launch, same keys
            return
        held = self.block_of[: self.s]
        free = held < 0
        p = prio[held.masked_fill(free, self.nb)].nan_to_num_(nan=-64.0).clamp_(-64.0, 64.0)
        q = p.add_(64.0).mul_(float(1 << 24)).add_(0.5).floor_().to(torch.int64).masked_fill_(free, -1)
        self.last_used[: self.s] = q  # (free slots: -1, as before)

    def stats(self) -> Dict[str, int]:
        """Counters as host ints (a host sync: call outside the decode step)."""
        return dict(zip(self.COUNTERS, (int(v) for v in self._counts.tolist())))

    def reset_counters(self) -> None:
        self._counts.zero_()
