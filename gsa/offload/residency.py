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
fewest selections (the "score"), then the lowest slot. Slots holding blocks of
the current request are never victims.

Counters (int64 tensors on the device, read only when the caller asks):
``wanted`` distinct requested blocks, ``hits`` of them already resident,
``predicted_hits`` of them inside the last prediction (:meth:`ResidencyMap.predict`),
``fetched`` blocks copied by on-demand misses, ``prefetched`` by predictions.

A request list's width ``N`` (padding and duplicates included) must not exceed
``S``: the number of distinct blocks is device data, so the host checks the
width (``OffloadedGSA`` sizes the pool for ``B * k``).
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

__all__ = ["ResidencyMap", "PoolTooSmallError"]

Tensor = torch.Tensor

# key = last_used * _USES_RANGE + min(uses, _USES_RANGE - 1): recency first, then score
_USES_RANGE = 1 << 20
_NEVER = torch.iinfo(torch.int64).max


class PoolTooSmallError(ValueError):
    """The pool cannot hold the blocks one step attends to (names the minimum)."""


class ResidencyMap:
    """Block -> slot map of one pool (see the module docstring).

    ``num_host_blocks`` (NB) host blocks, ``num_slots`` (S) pool slots, on ``device``.
    Tensors (all int64): ``slot_of [NB + 1]`` (-1: not resident), ``block_of
    [S + 1]`` (-1: free), ``last_used [S + 1]``, ``uses [S + 1]``.
    """

    COUNTERS = ("wanted", "hits", "predicted_hits", "fetched", "prefetched")

    def __init__(self, num_host_blocks: int, num_slots: int, device="cpu"):
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
        self.counters: Dict[str, Tensor] = {c: torch.zeros((), **i64) for c in self.COUNTERS}

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

    def resident(self) -> Tensor:
        """``bool [NB]``: blocks currently in the pool."""
        return self.slot_of[: self.nb] >= 0

    # ------------------------------------------------------------------ the step
    def _admit(self, blocks: Tensor, now: int, counter: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
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
        self.slot_of[self.nb] = -1
        self.block_of[self.s] = -1
        # recency and score of every requested block
        held = self.block_of[: self.s]
        hit_slot = want[held.clamp(min=0)] & (held >= 0)
        self.last_used[: self.s] = torch.where(hit_slot, now, self.last_used[: self.s])
        self.counters[counter] += n_miss
        return want, src, dst, n_miss

    def request(self, blocks: Tensor, now: int) -> Tuple[Tensor, Tensor, Tensor]:
        """The blocks one attention call needs: ``blocks int [N]`` host block ids
        (``-1`` padding, duplicates allowed), ``now`` the step number (host int,
        increasing). Counts hits and prediction hits, picks victims, updates the map.

        Returns ``(src int64 [N], dst int64 [N], n_miss int64 [])`` for the mover."""
        blocks = blocks.reshape(-1).long()
        want, src, dst, n_miss = self._admit(blocks, now, "fetched")
        n_want = want.sum()
        self.counters["wanted"] += n_want
        self.counters["hits"] += n_want - n_miss
        self.counters["predicted_hits"] += (want & self._predicted[: self.nb]).sum()
        held = self.block_of[: self.s]
        self.uses[: self.s] += (want[held.clamp(min=0)] & (held >= 0)).long()
        return src, dst, n_miss

    def predict(self, blocks: Tensor, now: int) -> Tuple[Tensor, Tensor, Tensor]:
        """Prefetch: make ``blocks int [N]`` (a prediction of the next request)
        resident ahead of time and remember it for the ``predicted_hits`` counter.
        Returns ``(src, dst, n_miss)`` like :meth:`request`."""
        blocks = blocks.reshape(-1).long()
        want, src, dst, n_miss = self._admit(blocks, now, "prefetched")
        self._predicted[: self.nb] = want
        return src, dst, n_miss

    def stats(self) -> Dict[str, int]:
        """Counters as host ints (a host sync: call outside the decode step)."""
        return {c: int(v.item()) for c, v in self.counters.items()}

    def reset_counters(self) -> None:
        for v in self.counters.values():
            v.zero_()
