"""GSA with the KV cache in host memory and a device pool of hot blocks (docs/offload.md).

Per offloaded layer: the full paged KV ``[NB (+1 scratch), bs, Hkv, D]`` in
host memory (pinned on an accelerator), a device pool ``[S + 1, bs, Hkv, D]`` of hot blocks
(slot ``S`` scratch), a :class:`~gsa.offload.residency.ResidencyMap` and a
:class:`~gsa.offload.mover.BlockMover`. Hash codes stay on the device (the
usual :meth:`GSASparse.allocate_hash_caches` of ``NB`` blocks), so selection is
exactly the all-in-HBM :meth:`GSASparse.select` (or :class:`CPUTopK` in CPU
top-k mode).

Per decode step and offloaded layer: select -> the selected host blocks ->
:meth:`ResidencyMap.request` (hits, victims by recency and score) -> fetch the
misses -> remap the sparse table to pool slots -> the unmodified
:func:`gsa.ops.paged_decode_attention` over the pool.

Prefetch: a prediction of a layer's next request is made resident ahead of it
(for the first offloaded layer at :meth:`begin_step`, for layer ``l+1`` while
layer ``l`` attends, on the copy stream), and how much of the request it
covered is counted (``predicted_rate``). Sources (``prefetch=``):

* ``"previous"``: the layer's selection of the previous step (the issue's
  predictor). In a per-layer pool that selection is the layer's own last request,
  still resident (only the layer's requests evict), so it is only marked for the
  ``predicted_rate`` counter (:meth:`ResidencyMap.mark_predicted`: no residency
  pass, no copy); hits and fetches are on-demand's (tested).
* ``"lookahead"``: a second, wider selection (budgets times ``lookahead``) of
  the same query; its extra blocks (the runners-up) are fetched for the next
  step. Costs one more ``hamming_dist_top_k`` per scoring layer.
* CPU top-k with ``cpu_lag=1``: the lagged selection *is* the next request, so
  it is prefetched exactly (pass ``block_table_host`` to :meth:`begin_step`).
* ``"speculative"`` (InfiniGen-style, docs/offload.md "Speculative prefetch"): the caller
  hands a scoring layer's *speculative query* of the current step (e.g. layer ``l``'s norm +
  q projection + RoPE applied to the hidden state entering layer ``l - 1``) to
  :meth:`OffloadedGSA.speculate` before that layer's selection; the layer's selection of that
  query (the step's budgets, or ``width`` times them) is admitted on the copy stream. A layer
  that reuses a scoring layer's selection gets that real selection prefetched right after the
  source layer's request (exact: it never depends on speculation). No previous-step prediction.

Eviction (``eviction=``): ``"lru"`` (default) evicts the least recently selected block
(ties by fewest selections); ``"score"`` evicts the lowest exponentially decayed
block score (:mod:`gsa.offload.scores`: every step's block scores of the selection,
z-scored per row, decayed by ``score_decay``), which on real traces hits more and
fetches less (docs/offload_policies.md). Neither changes what attention reads.

Dense layers (ratio >= 1) are not offloaded: they read every block, so their
KV stays on the device under the engine's own cache (3 of 36 layers in the
shipped Qwen3 configs). Which layers are offloaded: :attr:`OffloadedGSA.layers`.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch

from gsa import hash_codes, ops
from gsa.offload.cpu_topk import CPUTopK
from gsa.offload.mover import BlockMover
from gsa.offload.prefetch import (check_eviction, check_prefetch, check_speculate, speculative_budgets,
                                  wide_budgets, wide_k)
from gsa.offload.residency import PoolTooSmallError, ResidencyMap
from gsa.offload.scores import fold_step_scores, new_priority, step_scores
from gsa.sparse import GSASparse, Step

__all__ = ["OffloadedGSA", "min_pool_blocks"]

Tensor = torch.Tensor


def min_pool_blocks(gsa: GSASparse, max_batch: int, max_seq_len: int, cpu_lag: int = 0,
                    lookahead: float = 1.0) -> int:
    """Pool slots one offloaded layer needs for a decode step of up to ``max_batch``
    rows of up to ``max_seq_len`` tokens: ``max_batch`` times the widest row
    selection (a sparse row at ``max_seq_len``, or a dense row just under the
    sparse threshold), which is also the step's ``B * k`` bound. A lagged CPU
    top-k selection may carry the forced blocks once more per row; a lookahead
    prediction is ``lookahead`` times wider."""
    pol = gsa.policy
    nb_max = int(pol.n_blocks([max_seq_len])[0])
    widest = int(pol.n_blocks([max(1, min(max_seq_len, pol.seq_len_threshold - 1))])[0])
    for l in pol.scoring_layers:
        bud = max(int(pol.sparse_budget(l, [nb_max])[0]), int(pol.n_forced([nb_max])[0]))
        if lookahead > 1:
            bud = max(bud, int(wide_budgets(np.array([bud]), np.array([nb_max]), lookahead)[0]))
        widest = max(widest, min(bud, nb_max))
    if cpu_lag:
        widest += len(gsa.config.must_select_blocks)
    return max_batch * widest


class OffloadedGSA:
    """Two-tier KV for the sparse layers of one model (see the module docstring).

    ``gsa``: the :class:`GSASparse` orchestrator (its device is the pool's).
    ``num_host_blocks``: host KV blocks per layer (``NB``; block ids of the
    engine's block tables). ``pool_blocks``: device slots per layer (``S``),
    at least :func:`min_pool_blocks` of ``max_batch, max_seq_len`` (else
    :class:`PoolTooSmallError` naming the minimum). ``kv_heads, head_dim,
    dtype``: the KV layout. ``prefetch``: ``None``/``False`` (on demand only),
    ``"previous"`` (or ``True``), ``"lookahead"`` (with ``lookahead`` > 1,
    the width factor) or ``"speculative"`` (device selector; the caller calls
    :meth:`speculate`); see the module docstring. ``selector``: ``"device"``
    (the hash cache on the device) or ``"cpu"`` (:class:`CPUTopK`, codes in host
    memory, ``cpu_lag`` 0 or 1 steps; with lag 1 the lagged selection is the
    prediction whatever ``prefetch`` says, unless it is off). ``mover_mode``:
    see :class:`BlockMover`. ``layers``: the sparse layers to offload (default
    all; a reusing layer needs its source among them). ``eviction``: ``"lru"``
    or ``"score"`` (device selector, prefetch ``None``, ``"previous"`` or ``"speculative"``), with
    ``score_decay`` in ``[0, 1)`` (the weight of a block's past scores).
    """

    def __init__(self, gsa: GSASparse, num_host_blocks: int, pool_blocks: int, max_batch: int, max_seq_len: int,
                 kv_heads: int, head_dim: int, dtype: torch.dtype = torch.bfloat16,
                 prefetch: Union[bool, str, None] = "previous", lookahead: float = 2.0,
                 selector: str = "device", cpu_lag: int = 0, mover_mode: Optional[str] = None,
                 host_device: Union[str, torch.device] = "cpu", layers: Optional[Sequence[int]] = None,
                 eviction: str = "lru", score_decay: float = 0.7):
        if not isinstance(gsa, GSASparse):
            raise TypeError(f"OffloadedGSA: 'gsa' must be a GSASparse, got {type(gsa).__name__}")
        c = gsa.config
        if c.is_mla:
            raise ValueError(f"OffloadedGSA: MLA configs ({c.model_name}) are not supported yet (GQA only)")
        if head_dim != c.head_dim or not isinstance(kv_heads, int) or kv_heads < 1 or c.num_key_value_heads % kv_heads:
            raise ValueError(f"OffloadedGSA: 'kv_heads, head_dim' must be the config's KV heads "
                             f"({c.num_key_value_heads}, or a tensor-parallel share of them) and head_dim "
                             f"({c.head_dim}), got {kv_heads}, {head_dim}")
        if selector not in ("device", "cpu"):
            raise ValueError(f"OffloadedGSA: 'selector' must be 'device' or 'cpu', got {selector!r}")
        prefetch = check_prefetch("OffloadedGSA", prefetch, selector)
        if prefetch == "lookahead" and (selector == "cpu" or not lookahead > 1):
            raise ValueError(f"OffloadedGSA: prefetch 'lookahead' needs the device selector and 'lookahead' > 1, "
                             f"got selector {selector!r}, lookahead {lookahead!r}")
        check_eviction("OffloadedGSA", eviction, selector, prefetch)
        if not (isinstance(score_decay, (int, float)) and 0.0 <= float(score_decay) < 1.0):
            raise ValueError(f"OffloadedGSA: 'score_decay' must be a number in [0, 1), got {score_decay!r}")
        self.eviction, self.score_decay = eviction, float(score_decay)
        self.lookahead = float(lookahead) if prefetch == "lookahead" else 1.0
        need = min_pool_blocks(gsa, max_batch, max_seq_len, cpu_lag if selector == "cpu" else 0, self.lookahead)
        if pool_blocks < need:
            raise PoolTooSmallError(
                f"GSA offload: 'pool_blocks' = {pool_blocks} slots per layer cannot hold one decode step of "
                f"{max_batch} rows at up to {max_seq_len} tokens; the minimum is {need} slots")
        self.gsa, self.device = gsa, gsa.device
        self.bs = gsa.config.chunk_size
        self.nb, self.s = int(num_host_blocks), int(pool_blocks)
        self.prefetch = prefetch
        sparse_layers = tuple(l for l in range(gsa.config.num_hidden_layers) if not gsa.policy.is_dense(l))
        self.layers = sparse_layers if layers is None else tuple(sorted(int(l) for l in layers))
        bad = [l for l in self.layers if l not in sparse_layers]
        if bad:
            raise ValueError(f"OffloadedGSA: 'layers' must be sparse layers of the config {list(sparse_layers)}, "
                             f"got {bad}")
        sources = {gsa.policy.layer(l).selection_layer for l in self.layers}
        if not sources <= set(self.layers):
            raise ValueError(f"OffloadedGSA: 'layers' must include the layers they reuse the selection of "
                             f"(missing {sorted(sources - set(self.layers))})")
        host_dev = torch.device(host_device)
        pin = self.device.type not in ("cpu", "meta") and host_dev.type == "cpu"
        shape = (self.nb, self.bs, kv_heads, head_dim)
        self.host_k: Dict[int, Tensor] = {}
        self.host_v: Dict[int, Tensor] = {}
        self.pool_k: Dict[int, Tensor] = {}
        self.pool_v: Dict[int, Tensor] = {}
        self.maps: Dict[int, ResidencyMap] = {}
        self.movers: Dict[int, BlockMover] = {}
        # the step number on the device: a captured step reads the value begin_step wrote
        self.now_t = torch.zeros(1, dtype=torch.int64, device=self.device)
        self.selector = selector
        stream = None
        if self.device.type != "cpu" and mover_mode != "direct":
            stream = torch.get_device_module(self.device).Stream(device=self.device)  # one copy stream
        for l in self.layers:
            host_shape = (self.nb + 1, *shape[1:])  # block NB: scratch for skipped token writes
            self.host_k[l] = torch.zeros(host_shape, dtype=dtype, device=host_dev, pin_memory=pin)
            self.host_v[l] = torch.zeros(host_shape, dtype=dtype, device=host_dev, pin_memory=pin)
            self.pool_k[l] = torch.zeros((self.s + 1, *shape[1:]), dtype=dtype, device=self.device)
            self.pool_v[l] = torch.zeros_like(self.pool_k[l])
            self.maps[l] = ResidencyMap(self.nb, self.s, self.device)
            self.maps[l].now_t = self.now_t  # one step counter on the device for every layer
            self.movers[l] = BlockMover(self.host_k[l], self.host_v[l], self.pool_k[l], self.pool_v[l],
                                        mover_mode, stream)
        self.cpu_topk = CPUTopK(gsa, self.nb, lag=cpu_lag, layers=sources) if selector == "cpu" else None
        hc_shape = gsa.hash_cache_shape(self.nb)
        self.hash_caches = {} if self.cpu_topk else {
            l: torch.zeros(hc_shape, dtype=torch.uint8, device=self.device) for l in sorted(sources)}
        self._pred: Dict[int, Tensor] = {}  # layer -> host blocks predicted for its next request
        # prefetch "speculative": scoring layer -> the offloaded layers that reuse its selection
        # (prefetched with its real selection right after its request); layers speculated this step
        self._reusers: Dict[int, tuple] = {
            s: tuple(l for l in self.layers if l != s and gsa.policy.layer(l).selection_layer == s)
            for s in sorted(sources)}
        self._speculated: set = set()
        # eviction "score": per offloaded layer the decayed block score of every host block
        self.priority: Dict[int, Tensor] = {
            l: new_priority(self.nb, self.device) for l in self.layers} if eviction == "score" else {}
        self._scores: Dict[int, tuple] = {}  # scoring layer -> this step's scores (scores.step_scores)
        self._pred_bufs: Dict[tuple, Tensor] = {}  # (layer, width) -> persistent copy of a selection
        self._wide: Dict[int, Tensor] = {}  # scoring layer -> lookahead budgets of this step (device)
        self._aranges: Dict[tuple, Tensor] = {}  # (width, device) -> arange(width), for _blocks
        self._step: Optional[Step] = None
        self._bt_host: Optional[Tensor] = None
        self.now = 0

    # ------------------------------------------------------------------ writes
    def write_kv(self, layer: int, slot_mapping: Tensor, k: Tensor, v: Tensor,
                 slot_mapping_host: Optional[Tensor] = None) -> None:
        """New tokens of ``layer`` (prefill or decode): ``k, v [T, Hkv, D]`` at flat
        slots ``slot_mapping int32/int64 [T]`` (``-1`` skips). Hashes the keys (on
        the device, or into the CPU top-k host codes), writes the host KV and, for
        blocks in the pool, the pool copy too. ``slot_mapping_host``: the same slots
        on the host (avoids a sync on an accelerator)."""
        self._check_layer(layer)
        if self.cpu_topk is not None:
            self.cpu_topk.cache_keys(layer, slot_mapping if slot_mapping_host is None else slot_mapping_host, k)
        else:
            self.gsa.cache_keys(layer, self.hash_caches.get(layer), slot_mapping, k)
        self.movers[layer].write_host(slot_mapping, k, v, slot_mapping_host)
        # write-through: resident blocks get the rows too; others go to the scratch slot S.
        # A prefetch of this layer may still be copying a block in: wait for it first.
        self.movers[layer].wait()
        slots = slot_mapping.to(self.device).long()
        blk = torch.where(slots >= 0, slots // self.bs, self.nb)
        pslot = self.maps[layer].slot_of[blk]
        flat = torch.where(pslot >= 0, pslot * self.bs + slots % self.bs, self.s * self.bs)
        for pool, x in ((self.pool_k[layer], k), (self.pool_v[layer], v)):
            pool.view(-1, *pool.shape[2:]).index_copy_(0, flat, x.to(pool.dtype))

    def load_prefilled(self, kv: Dict[int, Sequence[Tensor]], hash_caches: Dict[int, Tensor]) -> None:
        """A prefilled model's state into the host tier: per offloaded layer ``kv[l] = (k, v)``,
        paged ``[N, bs, Hkv, D]`` with ``N <= num_host_blocks`` (blocks ``0 .. N-1``), and each
        scoring layer's codes ``hash_caches[l]`` (the device hash caches, or the CPU top-k
        mode's host codes). The pool and residency are left as they are: load before the first
        step, or call :meth:`reset_residency` after."""
        codes = self.cpu_topk.codes if self.cpu_topk else self.hash_caches
        for l in self.layers:
            k, v = kv[l]
            self.host_k[l][: k.shape[0]].copy_(k)
            self.host_v[l][: v.shape[0]].copy_(v)
            if l in codes:
                codes[l].copy_(hash_caches[l])

    def _check_layer(self, layer: int) -> None:
        if layer not in self.maps:
            raise ValueError(f"GSA offload: layer {layer} is not offloaded (dense layers keep their KV on the "
                             f"device); offloaded layers: {list(self.layers)}")

    # ------------------------------------------------------------------ steps
    def begin_step(self, seq_lens, query_lens=None, k: Optional[int] = None,
                   block_table_host: Optional[Tensor] = None, graph: bool = False) -> Step:
        """:meth:`GSASparse.begin_step` plus the pool capacity check of this step
        (host data), the step number written to the device (``now_t``) and, with
        prefetch, the first offloaded layer's prediction. ``block_table_host int32
        [B, M]``: the step's block table on the host (CPU top-k: the lagged
        selections become predictions).

        ``graph=True`` (needs ``k``): the step in CUDA-graph form
        (:meth:`GSASparse.begin_step`): call it before every replay, outside the
        graph; the captured layers read its budgets and ``now_t``. Needs the
        device selector and prefetch ``None``, ``"previous"`` or ``"speculative"``
        (the lookahead's budgets and the CPU worker are host-side per step; the
        speculative pass reads the step's device budgets)."""
        if graph and (self.selector != "device" or self.prefetch == "lookahead"):
            raise ValueError(f"OffloadedGSA: begin_step(graph=True) needs the device selector and prefetch None, "
                             f"'previous' or 'speculative', got selector {self.selector!r}, "
                             f"prefetch {self.prefetch!r}")
        step = self.gsa.begin_step(seq_lens, query_lens, k, graph=graph)
        self._step, self._bt_host = step, block_table_host
        self._scores = {}
        self._speculated = set()
        self.now += 1
        self.now_t.fill_(self.now)
        plan = step.plan
        if step.graph:
            need = plan.batch_size * plan.k  # a captured step selects on every sparse layer
            what = f"this step ({plan.batch_size} rows x k = {plan.k} blocks)"
        elif plan.sparse:
            need = plan.batch_size * plan.k
            what = f"this step ({plan.batch_size} rows x k = {plan.k} blocks)"
        else:
            need = int(plan.n_blocks.sum())
            what = f"this dense step ({need} blocks: fewer sparse rows than the concurrency threshold)"
        if need > self.s:
            raise PoolTooSmallError(f"GSA offload: the device pool has {self.s} slots per layer but {what} "
                                    f"needs {need}; make the pool at least {need} slots")
        if self.cpu_topk is not None:
            self.cpu_topk.begin_step(step)
        self._wide = {}
        if self.prefetch == "lookahead" and plan.sparse:
            dev_budgets: Dict[int, Tensor] = {}
            for l in self.gsa.scoring_layers:
                wide = wide_budgets(plan.budgets[l], plan.n_blocks, self.lookahead)
                key = wide.tobytes()
                if key not in dev_budgets:
                    t = torch.from_numpy(wide)
                    if self.device.type == "cuda":
                        t = t.pin_memory()  # a truly asynchronous copy
                    dev_budgets[key] = t.to(self.device, non_blocking=True)
                self._wide[l] = dev_budgets[key]
        if self.prefetch in ("previous", "lookahead") and self.layers and not step.graph:
            # (graph form: the first layer requests on demand; its previous selection is still
            # resident in a per-layer pool, and a copy issued here would not be ordered before a replay)
            self._predict(self.layers[0])
        return step

    def reset_residency(self, prefetch: Union[bool, str, None, type(...)] = ...,
                        eviction: Union[str, type(...)] = ...) -> None:
        """Forget what the pools hold (fresh residency maps, counters zero, priorities unknown;
        pool and host contents stay) and optionally switch ``prefetch`` (``None``,
        ``"previous"`` or ``"speculative"``; ``"lookahead"`` is fixed at construction: its
        pool is sized for the wider prediction) and ``eviction`` (``"lru"`` or ``"score"``):
        a cold start without reallocating the host KV (the benchmark's variants)."""
        where = "OffloadedGSA.reset_residency"
        new_prefetch = self.prefetch
        if prefetch is not ...:
            new_prefetch = check_prefetch(where, prefetch, self.selector)
            if (self.prefetch == "lookahead") != (new_prefetch == "lookahead"):
                raise ValueError(f"{where}: 'prefetch' must be None, 'previous' or 'speculative' (lookahead is "
                                 f"fixed at construction), got {prefetch!r} (constructed with {self.prefetch!r})")
        new_eviction = self.eviction if eviction is ... else eviction
        check_eviction(where, new_eviction, self.selector, new_prefetch)  # both checked before either changes
        self.prefetch, self.eviction = new_prefetch, new_eviction
        if self.eviction == "score" and not self.priority:
            self.priority = {l: new_priority(self.nb, self.device) for l in self.layers}
        for mv in self.movers.values():
            mv.wait()
        for l in self.layers:
            self.maps[l] = ResidencyMap(self.nb, self.s, self.device)
            self.maps[l].now_t = self.now_t
            if l in self.priority:
                self.priority[l].fill_(float("nan"))
        self._pred = {}
        self._speculated = set()

    def _predict(self, layer: int) -> None:
        pred = self._pred.get(layer)
        lagged = None
        if self.cpu_topk is not None and self.cpu_topk.lag and self._bt_host is not None:
            lagged = self.cpu_topk.lagged(layer, self._step, self._bt_host)
            pred = lagged if lagged is not None else pred
        if pred is None:
            return
        if self.prefetch == "previous" and lagged is None:
            # the layer's own last request: still resident in its pool (only that layer's requests
            # evict), so admitting it would fetch nothing; only mark it for the predicted_hits counter
            self.maps[layer].mark_predicted(pred.to(self.device))
            return
        src, dst, n = self.maps[layer].predict(pred.to(self.device))
        self.movers[layer].fetch(src, dst, n)

    def _selection_blocks(self, layer: int, q: Tensor, block_table: Tensor, seq_lens: Tensor, budgets: Tensor,
                          k: int) -> Tensor:
        """Host blocks (``_blocks``) of scoring layer ``layer``'s selection for query ``q [B, Hq, D]``
        with device ``budgets int32 [B]`` and output width ``k``: the public ops, outside the
        orchestrator's hot path (whose buffers hold the layer's real selection). The lookahead's
        wider and the speculative pass's selections."""
        c = self.gsa.config
        idx, n_sel = ops.hamming_dist_top_k(hash_codes.query_codes(c, layer, q), self.hash_caches[layer],
                                            block_table, seq_lens, budgets, k, c.must_select_blocks,
                                            c.chunk_repre_method, 0, 1.0)
        table, lens = ops.kv_select(idx, n_sel, block_table, seq_lens, self.bs, self.gsa.pad_id)
        return self._blocks(table, lens)

    def _lookahead(self, layer: int, step: Step, q: Tensor, block_table: Tensor, seq_lens: Tensor) -> Tensor:
        """Host blocks of a selection ``lookahead`` times wider than the step's."""
        return self._selection_blocks(layer, q, block_table, seq_lens, self._wide[layer],
                                      wide_k(step, layer, self.lookahead))

    def _admit_prediction(self, layer: int, blocks: Tensor) -> None:
        """Admit ``blocks int64 [N]`` (``-1`` padding) into ``layer``'s pool ahead of its request
        (:meth:`ResidencyMap.predict`) and start their copy on the copy stream (joined by the
        layer's :meth:`decode_attention` or :meth:`write_kv`). Eviction "score": the priorities
        known before this step are written into the keys first, so the admission evicts the
        lowest priority outside ``blocks`` (not the recency stamps of the last request)."""
        if layer in self._speculated:
            # a second admission this step rewrites the map's prediction lists (the fused kernel's
            # persistent buffers) that the first copy may still read: order it after that copy
            self.movers[layer].wait()
        self._speculated.add(layer)
        if self.eviction == "score":
            self.maps[layer].set_priority(self.priority[layer])
        src, dst, n = self.maps[layer].predict(blocks)
        try:
            self.movers[layer].fetch(src, dst, n)
        except BaseException:
            self.movers[layer].wait()  # join the fork before the error leaves (see decode_attention)
            raise

    def speculate(self, layer: int, step: Step, q_spec: Tensor, block_table: Tensor, seq_lens: Tensor,
                  width: float = 1.0) -> None:
        """Prefetch ``"speculative"``: admit into ``layer``'s pool, on the copy stream, the blocks
        its selection picks for ``q_spec [B, Hq, D]`` (dtype as ``q``), the caller's prediction of
        its query this step (e.g. its ``input_layernorm`` + ``q_proj`` + RoPE on the hidden state
        entering layer ``layer - 1``: docs/offload.md), before its :meth:`decode_attention`; the
        copy overlaps what the caller runs next. ``block_table int32 [B, M], seq_lens int32 [B]``:
        the step's, as for :meth:`decode_attention`. ``width >= 1``: budgets ``ceil(width x)`` the
        step's (the pool must hold ``B x`` the wider selection, else :class:`PoolTooSmallError`); a
        dense step admits the whole table (its request). Only residency changes, never the
        selection or attention. ``layer``: an offloaded scoring layer (reusing layers are prefetched
        exactly after their source's request); once per layer and step (a second call waits for
        the first copy). No host sync: a graph-form step can capture it. The current token's key
        need not be cached yet (its block, the last, is forced)."""
        check_speculate(self, layer, step, q_spec, block_table, seq_lens, width)
        got = speculative_budgets(step, layer, seq_lens, self.bs, float(width), block_table.shape[1])
        if got is None:  # a dense step requests the whole table
            blocks = self._blocks(block_table, seq_lens)
        else:
            blocks = self._selection_blocks(layer, q_spec, block_table, seq_lens, *got)
        self._admit_prediction(layer, blocks)

    def _score_eviction(self, layer: int, step: Step, q: Tensor, block_table: Tensor, seq_lens: Tensor) -> None:
        """Eviction "score": fold this step's block scores into the layer's priorities and
        write them into its map's eviction keys (before its request). A reusing layer takes
        its source's scores (same rows, same blocks); a step that did not score (a dense
        step) leaves the priorities as they are."""
        src = self.gsa.policy.layer(layer).selection_layer
        plan = step.plan
        if plan.sparse or step.graph:
            got = self._scores.get(src)
            if got is None and src == layer:
                got = self._scores[src] = step_scores(self.gsa, layer, q, self.hash_caches[layer], block_table,
                                                      seq_lens)
            if got is not None:
                fold_step_scores(self.gsa, got, self.priority[layer], block_table, seq_lens, self.score_decay)
        self.maps[layer].set_priority(self.priority[layer])

    def _prefetch_after(self, layer: int, step: Step, q: Tensor, block_table: Tensor, seq_lens: Tensor,
                        needed: Tensor) -> None:
        """After ``layer``'s request: remember its selection ``needed`` as its next prediction
        (or the lookahead's wider one) and start the next offloaded layer's prefetch (it overlaps
        this layer's copy and attention)."""
        # a persistent buffer per layer and width: a captured step's prediction for this layer
        # reads the selection the previous replay wrote, at an address that outlives both
        buf = self._pred_bufs.get((layer, needed.shape[0]))
        if buf is None:
            buf = self._pred_bufs[(layer, needed.shape[0])] = torch.empty_like(needed)
        buf.copy_(needed)
        self._pred[layer] = buf
        src_layer = self.gsa.policy.layer(layer).selection_layer
        if self.prefetch == "lookahead" and src_layer in self._wide:
            if src_layer == layer:
                self._pred[layer] = self._lookahead(layer, step, q, block_table, seq_lens)
            else:
                self._pred[layer] = self._pred[src_layer]
        i = self.layers.index(layer)
        if i + 1 < len(self.layers):
            self._predict(self.layers[i + 1])

    def _blocks(self, table: Tensor, lens: Tensor) -> Tensor:
        """Host block ids a sparse table uses, ``-1`` for unused entries, flat ``int64 [B * K]``."""
        ar = self._aranges.get((table.shape[1], table.device))
        if ar is None:  # made once per width (a captured step reads the same buffer)
            ar = self._aranges[(table.shape[1], table.device)] = torch.arange(table.shape[1], device=table.device)
        used = ar[None, :] < ((lens + (self.bs - 1)) // self.bs)[:, None]
        return torch.where(used, table.long(), -1).reshape(-1)

    def select(self, layer: int, step: Step, block_table: Tensor, seq_lens: Tensor, q: Tensor,
               block_table_host: Optional[Tensor] = None, seq_lens_host: Optional[Tensor] = None):
        """The sparse selection of ``layer`` (as :meth:`GSASparse.select`, or the CPU
        top-k's): ``(sparse_block_table int32 [B, K], sparse_seq_lens int32 [B])`` in
        host block ids."""
        if self.cpu_topk is not None:
            bt = block_table_host if block_table_host is not None else block_table.cpu()
            sl = seq_lens_host if seq_lens_host is not None else seq_lens.cpu()
            return self.cpu_topk.select(layer, step, bt, sl, q, self.device)
        lp = self.gsa.policy.layer(layer)
        return self.gsa.select(layer, step, block_table, seq_lens, self.hash_caches.get(lp.selection_layer), q)

    def decode_attention(self, layer: int, step: Step, q: Tensor, block_table: Tensor, seq_lens: Tensor,
                         scale: Optional[float] = None, block_table_host: Optional[Tensor] = None,
                         seq_lens_host: Optional[Tensor] = None) -> Tensor:
        """Select, make the selected blocks resident, attend over the pool.

        ``q [B, Hq, D]``; ``block_table int32 [B, M]`` (host block ids) and
        ``seq_lens int32 [B]`` on the device. Returns ``[B, Hq, D]`` in ``q.dtype``,
        equal to :meth:`GSASparse.decode_attention` over the full KV."""
        self._check_layer(layer)
        table, lens = self.select(layer, step, block_table, seq_lens, q, block_table_host, seq_lens_host)
        needed = self._blocks(table, lens)
        self.maps[layer].check_capacity(needed.shape[0])
        if self.eviction == "score":
            self._score_eviction(layer, step, q, block_table, seq_lens)
        src, dst, n = self.maps[layer].request(needed)
        try:
            self.movers[layer].fetch(src, dst, n)  # forks the copy stream (uva / staged on a device)
            if self.prefetch == "speculative":
                # the layers reusing this selection know theirs exactly now: prefetch it for them
                for r in self._reusers.get(layer, ()):
                    self._admit_prediction(r, needed)
            elif self.prefetch:
                self._prefetch_after(layer, step, q, block_table, seq_lens, needed)
        except BaseException:
            # join every fork (this fetch, a next layer's prefetch) before the error leaves: under
            # CUDA-graph capture an exception with the copy stream still forked makes capture_end
            # fail with "capturing stream has unjoined work", which hides the real error (it did on
            # the H200: docs/offload_h200.md, "Graph capture with prefetch")
            for mv in self.movers.values():
                mv.wait()
            raise
        self.movers[layer].wait()  # the join: attention reads the pool after the copies
        # the sparse table in pool slots: `needed` is the table with unused entries -1 (slot 0; never read)
        pool_table = self.maps[layer].slots(needed).view(table.shape)
        # the orchestrator's hot-path attention (validated once per signature; no per-call op dispatch)
        return self.gsa._attention_hot(layer, q, self.pool_k[layer], self.pool_v[layer], pool_table, lens, scale)

    # ------------------------------------------------------------------ accounting
    def stats(self, layers: Optional[Sequence[int]] = None) -> Dict[str, float]:
        """Counters summed over ``layers`` (default all offloaded) and the rates:
        ``hit_rate = hits / wanted`` (selected blocks already in the pool),
        ``predicted_rate = predicted_hits / wanted`` (selected blocks inside the
        layer's last prediction: its previous selection, the lookahead's, or this
        step's speculative one; counted with prefetch on).
        A host sync: call outside the decode loop."""
        tot = {c: 0 for c in ResidencyMap.COUNTERS}
        for l in (self.layers if layers is None else layers):
            for c, v in self.maps[l].stats().items():
                tot[c] += v
        w = max(tot["wanted"], 1)
        out = dict(tot)
        out["hit_rate"] = tot["hits"] / w
        out["predicted_rate"] = tot["predicted_hits"] / w
        pk = self.pool_k[self.layers[0]] if self.layers else None
        out["block_bytes"] = 2 * pk[0].numel() * pk.element_size() if pk is not None else 0  # K + V
        return out
