"""CPU top-k mode: hash codes in host memory, selection on a host worker thread.

For devices with tight memory (and Ascend, where the host has cores to spare):
the keys are hashed on the device (:func:`gsa.ops.hash_encode`), only the codes
(1/32 of the K+V bytes at 128 bits, D = 128) go to host memory, and
:func:`gsa.ops.hamming_dist_top_k` + :func:`gsa.ops.kv_select` run on CPU
tensors, which :mod:`gsa.dispatch` sends to the C++ ``cpu`` backend when it is
built (it releases the GIL, so the worker runs beside the Python thread).

``lag = 0``: the step's own query, selected on the worker while the caller
waits: bit for bit the all-in-HBM :meth:`GSASparse.select`.
``lag = 1``: one step behind. The query of step ``t`` is submitted when the
layer is done and selected while the rest of the step runs; step ``t + 1`` uses
that selection (known at :meth:`begin_step` of ``t + 1``, so its blocks can be
fetched before the layer runs), fixed up for the new lengths: rows that are
dense now take every block, sparse rows add the forced blocks of the new
length (the new last block). A row set that changed since the last step
(different batch size) falls back to ``lag = 0`` for that step (counted).
The accuracy cost of the lag is measured in docs/offload.md.
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from gsa import ops
from gsa.sparse import GSASparse, Step

__all__ = ["CPUTopK", "merge_lagged"]

Tensor = torch.Tensor
_BIG = 2**30


def merge_lagged(indices: Tensor, n_blocks: np.ndarray, budgets: np.ndarray, must_select, k: int) -> Tuple[Tensor, Tensor]:
    """A lagged selection made valid for the current lengths.

    ``indices int32 [B, K0]`` (logical blocks ascending, ``-1`` padding, from the
    previous step); ``n_blocks, budgets [B]`` of the current step (host);
    ``must_select`` the forced blocks; ``k`` the current step's width. Rows with
    ``budget >= n_blocks`` take all blocks; other rows keep their lagged blocks
    that still exist plus the current forced ones. Returns ``(indices int32 [B,
    K1], n_sel int32 [B])`` with ``K1 = max(k, K0 + len(must_select))``.
    """
    b, k0 = indices.shape
    nb = torch.tensor(np.asarray(n_blocks), dtype=torch.int64)[:, None]
    cols = [indices.long()]
    for m in must_select:
        f = torch.full((b, 1), int(m), dtype=torch.int64) if m >= 0 else nb + int(m)
        cols.append(f)
    cand = torch.cat(cols, dim=1)
    cand = torch.where((cand >= 0) & (cand < nb), cand, _BIG)
    cand, _ = torch.sort(cand, dim=1)
    dup = torch.zeros_like(cand, dtype=torch.bool)
    dup[:, 1:] = cand[:, 1:] == cand[:, :-1]
    cand, _ = torch.sort(torch.where(dup, _BIG, cand), dim=1)
    k1 = max(k, cand.shape[1])
    if cand.shape[1] < k1:
        cand = torch.cat([cand, torch.full((b, k1 - cand.shape[1]), _BIG, dtype=torch.int64)], dim=1)
    dense = torch.as_tensor(np.asarray(budgets) >= np.asarray(n_blocks))[:, None]
    all_blocks = torch.arange(k1)[None, :].expand(b, k1)
    cand = torch.where(dense, torch.where(all_blocks < nb, all_blocks, _BIG), cand)
    n_sel = (cand < _BIG).sum(dim=1).to(torch.int32)
    return torch.where(cand < _BIG, cand, -1).to(torch.int32), n_sel


class CPUTopK:
    """Selection from host-memory codes on a worker thread (see the module docstring).

    ``gsa``: the orchestrator (its device hashes queries and keys and receives the
    tables); ``num_host_blocks``: blocks per layer of the host code cache
    ``uint8 [NB, Hkv, bs, C]``; ``lag``: 0 or 1; ``layers``: the scoring layers to
    keep codes for (default all). GQA configs only.
    """

    def __init__(self, gsa: GSASparse, num_host_blocks: int, lag: int = 0, layers=None):
        if lag not in (0, 1):
            raise ValueError(f"CPUTopK: 'lag' must be 0 or 1, got {lag!r}")
        if gsa.config.is_mla:
            raise ValueError("CPUTopK: MLA configs are not supported by the CPU top-k mode yet")
        self.gsa, self.lag = gsa, lag
        keep = set(gsa.scoring_layers if layers is None else layers)
        shape = gsa.hash_cache_shape(num_host_blocks)
        self.codes = {l: torch.zeros(shape, dtype=torch.uint8) for l in gsa.scoring_layers if l in keep}
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gsa-cpu-topk")
        self._step: Optional[Step] = None
        self._sel: Dict[int, Tuple[Tensor, Tensor]] = {}
        self._lagged: Dict[int, Tuple[int, Future]] = {}  # layer -> (batch size, future of (indices, n_sel))
        self._merged: Dict[int, Tuple[Tensor, Tensor]] = {}  # layer -> this step's lagged (indices, n_sel)
        self.fallbacks = 0  # lag-1 steps that had to select synchronously
        self.select_seconds: List[float] = []

    def cache_keys(self, layer: int, slot_mapping: Tensor, key: Tensor) -> None:
        """Hash ``key [T, Hkv, D]`` on its device; store the codes at ``slot_mapping [T]``
        of the host code cache (``-1`` skips). No-op for layers that do not score."""
        if layer not in self.codes:
            return
        codes = ops.hash_encode(key, self.gsa.weights(layer)).to("cpu")  # [T, Hkv, C]
        slots = slot_mapping.to("cpu").long()
        ok = slots >= 0
        slots, codes = slots[ok], codes[ok]
        bs = self.gsa.config.chunk_size
        self.codes[layer][slots // bs, :, slots % bs, :] = codes

    def begin_step(self, step: Step) -> None:
        self._step, self._sel, self._merged = step, {}, {}

    def _lagged_sel(self, layer: int, step: Step) -> Optional[Tuple[Tensor, Tensor]]:
        """This step's lagged ``(indices, n_sel)`` of a scoring layer, or ``None``."""
        if layer in self._merged:
            return self._merged[layer]
        prev = self._lagged.pop(layer, None)
        plan = step.plan
        if prev is None or prev[0] != plan.batch_size:
            return None
        idx0, _ = prev[1].result()
        self._merged[layer] = merge_lagged(idx0, plan.n_blocks, plan.budgets[layer],
                                           self.gsa.config.must_select_blocks, plan.k)
        return self._merged[layer]

    def lagged(self, layer: int, step: Step, block_table: Tensor) -> Optional[Tensor]:
        """Lag 1: the host blocks ``layer`` will attend to in ``step`` (known before
        its query), flat ``int64 [B * K]`` with ``-1`` for unused entries; ``None``
        when there is none (dense, lag 0, first step, changed batch)."""
        lp, plan = self.gsa.policy.layer(layer), step.plan
        if not self.lag or lp.dense or not plan.sparse:
            return None
        sel = self._lagged_sel(lp.selection_layer, step)
        if sel is None:
            return None
        sl = torch.from_numpy(np.array(plan.seq_lens, dtype=np.int32))
        table, lens = ops.kv_select(sel[0], sel[1], block_table.to(torch.int32), sl, self.gsa.config.chunk_size,
                                    self.gsa.pad_id)
        bs = self.gsa.config.chunk_size
        used = torch.arange(table.shape[1])[None, :] < ((lens + bs - 1) // bs)[:, None]
        return torch.where(used, table.long(), -1).reshape(-1)

    def _topk(self, layer: int, q_codes: Tensor, block_table: Tensor, seq_lens: Tensor, budgets: np.ndarray, k: int):
        c = self.gsa.config
        t0 = time.perf_counter()
        out = ops.hamming_dist_top_k(q_codes, self.codes[layer], block_table, seq_lens,
                                      torch.from_numpy(np.array(budgets, dtype=np.int32)), k,
                                      c.must_select_blocks, c.chunk_repre_method, 0, 1.0)
        self.select_seconds.append(time.perf_counter() - t0)  # the worker's time per selection
        return out

    def select(self, layer: int, step: Step, block_table: Tensor, seq_lens: Tensor, q: Tensor,
               device) -> Tuple[Tensor, Tensor]:
        """``block_table int32 [B, M]``, ``seq_lens int32 [B]`` on the host; ``q [B, Hq, D]``
        on the device. Returns ``(sparse_block_table, sparse_seq_lens)`` on ``device``
        (dense layers/steps: the inputs)."""
        lp = self.gsa.policy.layer(layer)
        plan = step.plan
        dev = torch.device(device)
        if lp.dense or not plan.sparse:
            return block_table.to(dev), seq_lens.to(dev)
        if lp.selection_layer != layer:
            return self._sel[lp.selection_layer]
        bt, sl = block_table.to(torch.int32).contiguous(), seq_lens.to(torch.int32).contiguous()
        q_codes = ops.hash_encode(q, self.gsa.weights(layer)).to("cpu")
        budgets = plan.budgets[layer]
        merged = self._lagged_sel(layer, step) if self.lag else None
        if merged is not None:
            idx, n_sel = merged
        else:
            if self.lag:
                self.fallbacks += 1
            idx, n_sel = self.pool.submit(self._topk, layer, q_codes, bt, sl, budgets, plan.k).result()
            self._merged[layer] = (idx, n_sel)  # this step's selection (a reusing layer's prediction)
        if self.lag:  # this step's query selects for the next step, on the worker
            self._lagged[layer] = (plan.batch_size, self.pool.submit(self._topk, layer, q_codes, bt, sl, budgets, plan.k))
        table, lens = ops.kv_select(idx, n_sel, bt, sl, self.gsa.config.chunk_size, self.gsa.pad_id)
        if dev.type == "cuda":
            table, lens = table.pin_memory(), lens.pin_memory()  # truly asynchronous copies
        table, lens = table.to(dev, non_blocking=True), lens.to(dev, non_blocking=True)
        self._sel[layer] = (table, lens)
        return table, lens

    def close(self) -> None:
        self.pool.shutdown(wait=True)
