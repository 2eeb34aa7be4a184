"""Per-engine GSA state inside a vLLM worker: config, hash caches, step plans, counters.

One :class:`GSAVllmRuntime` per vLLM engine instance (per ``VllmConfig``) in
each worker process. The wrapped attention backends (``cpu.py``, ``cuda.py``,
``ascend.py``) call it from three places:

* the metadata builder, once per step: :meth:`plan` turns the host-side lengths
  into a :class:`gsa.sparse.Step` (spec 8: decode rows over the threshold are
  sparse, prefill rows and short rows dense);
* ``do_kv_cache_update``, per layer: :meth:`cache_keys` hashes the new keys into
  the layer's hash cache (same block ids as the KV cache);
* the attention forward, per layer: :meth:`select` gives the sparse block table
  and lengths (a reusing layer takes its source layer's selection of the step).

Tensor parallelism (``tp.py``, docs/vllm.md "Tensor parallelism"): rank ``r``
holds vLLM's share of the heads and hashes its KV heads with those heads' slices
of the seeded weights (the global head's projection ``W[h]``); the codes of every
KV head are all-gathered into a full hash cache ``[NB, Hkv, bs, C]`` on every
rank, and each scoring layer all-gathers the query codes ``[B, Hq, C]``, so every
rank runs the same selection on the same inputs: identical on all ranks and
equal to a TP=1 run, bit for bit.
"""
from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from gsa import ops
from gsa.config import GSAConfig
from gsa.sparse import GSASparse, Step

from . import tp as _tp
from .settings import PluginSettings

__all__ = ["GSAVllmRuntime", "StepState", "current_runtime", "runtime_for", "stats", "reset_stats"]

logger = logging.getLogger("gsa.vllm")

Tensor = torch.Tensor


class _LocalHeadsSparse(GSASparse):
    """:class:`GSASparse` over the KV heads this rank holds (all of them at TP=1).

    The hash weights are the config's (seeded or from files) sliced to the
    rank's heads, so a key's code is the same bit string at every TP size.
    """

    def __init__(self, config: GSAConfig, device, heads: Tuple[int, int], pad_id: int = 0):
        super().__init__(config, device=device, pad_id=pad_id)
        self.heads = heads  # [lo, hi) global KV heads of this rank
        self._w: Dict[int, Tensor] = {}
        self.last_top_k: Dict[int, Tuple[Tensor, Tensor]] = {}

    def weights(self, layer: int):
        w = self._w.get(layer)
        if w is None:
            full = super().weights(layer)
            lo, hi = self.heads
            # MLA: (w_lora, w_rope) of the one latent head, nothing to slice
            w = full if isinstance(full, tuple) or (lo, hi) == (0, full.shape[0]) else full[lo:hi].contiguous()
            self._w[layer] = w
        return w

    def threshold(self, layer: int):
        """Spec 13 key threshold sliced to this rank's KV heads, like :meth:`weights`."""
        if layer not in self._thr:
            full = super().threshold(layer)
            lo, hi = self.heads
            self._thr[layer] = full if full is None or (lo, hi) == (0, full.shape[0]) else full[lo:hi].contiguous()
        return self._thr[layer]

    def select_codes(self, layer: int, step: Step, block_table: Tensor, seq_lens: Tensor, hash_cache: Tensor,
                     q_codes: Tensor) -> Tuple[Tensor, Tensor]:
        """:meth:`select` of a scoring layer from ready query codes ``uint8 [B, Hq, C]``
        (all heads, gathered over TP) and the full ``hash_cache [NB, Hkv, bs, C]``.
        Returns ``(table int32 [B, K], lens int32 [B])`` and records the selection."""
        c = self.config
        self._check_cache(layer, hash_cache)
        indices, n_sel = ops.hamming_dist_top_k(
            q_codes, hash_cache, block_table, seq_lens, step.budgets[layer], step.plan.k,
            c.must_select_blocks, c.chunk_repre_method, c.rope_bytes, 1.0,
        )
        out = ops.kv_select(indices, n_sel, block_table, seq_lens, c.chunk_size, self.pad_id)
        step._selections[layer] = out
        self.last_top_k[layer] = (indices, n_sel)  # for checks across ranks (tests, debugging)
        return out


@dataclass
class StepState:
    """What the builder hands the layers for one step (attached to the metadata).

    ``step``: the core plan + device budgets (``None``: dense step, nothing to
    do). ``q_rows int64 [B]``: index of each row's last query token (the token
    whose query scores the blocks). ``derived``: backend metadata already rebuilt
    for a selection, keyed by the layer that made the selection (reusing layers
    take it as is).
    """

    step: Optional[Step]
    q_rows: Optional[Tensor] = None
    host_seq_lens: Optional[np.ndarray] = None
    derived: Dict[int, Any] = field(default_factory=dict)
    builder: Any = None  # the backend's metadata builder (rebuilds derived metadata)
    #: a uniform decode step in CUDA-graph form (see :meth:`GSAVllmRuntime.plan`): every
    #: sparse layer selects (dense rows and steps through their budgets), over the whole
    #: block table, from persistent budget buffers, with a fixed width
    static: bool = False


@dataclass
class _Counters:
    steps: int = 0
    sparse_steps: int = 0
    decode_rows: int = 0
    sparse_rows: int = 0
    mixed_steps: int = 0  # sparse steps that also carried prefill rows (kept dense)
    layer_selections: int = 0
    blocks_read: int = 0
    blocks_dense: int = 0
    selection_s: float = 0.0
    hashing_s: float = 0.0

    def as_dict(self) -> Dict[str, Any]:
        d = dict(self.__dict__)
        d["blocks_read_fraction"] = (self.blocks_read / self.blocks_dense) if self.blocks_dense else 1.0
        return d


_LOCK = threading.Lock()
_RUNTIMES: "weakref.WeakValueDictionary[str, GSAVllmRuntime]" = weakref.WeakValueDictionary()
_LATEST: Optional["weakref.ReferenceType[GSAVllmRuntime]"] = None
_KEEP: Dict[str, "GSAVllmRuntime"] = {}  # the engine's config object may be short-lived; keep one per instance


class GSAVllmRuntime:
    """GSA for one vLLM engine in this process (see the module docstring)."""

    def __init__(self, settings: PluginSettings, *, device: torch.device, tp_rank: int = 0, tp_size: int = 1,
                 num_layers: int, layer_names: Optional[Dict[str, int]] = None, tp_group: Any = None):
        cfg = settings.config
        self.settings = settings
        self.config = cfg
        self.device = torch.device(device)
        self.tp_rank, self.tp_size = tp_rank, tp_size
        # vLLM's head split (KV heads replicated when tp_size > Hkv); checked here
        self.layout = _tp.head_layout(cfg.num_attention_heads, cfg.num_key_value_heads, tp_size, tp_rank)
        self._tp_group = tp_group  # resolved lazily to vLLM's TP group when None and tp_size > 1
        self.sparse = _LocalHeadsSparse(cfg, self.device, self.layout.kv_heads)
        self.policy = self.sparse.policy
        self.num_layers = num_layers
        self.hash_caches: Dict[int, Tensor] = {}
        self._hash_storage: Dict[int, Tensor] = {}  # TP: [NB + 1, ...], the cache plus a scratch block
        self.counters = _Counters()
        self.log_every = settings.log_every
        self._lock = threading.Lock()
        # test/debug hook: when set to a layer index, the next sparse step of that
        # layer is recorded (see :meth:`enable_capture`)
        self.capture_layer: Optional[int] = None
        self.captured: Optional[Dict[str, Any]] = None
        self._shadow: Optional[Tuple[Tensor, Tensor]] = None
        # build every scoring layer's hash weights now (seeded QR: a few seconds
        # for a 30-layer model) rather than inside the first sparse step
        for l in self.policy.scoring_layers:
            self.sparse.weights(l)

    # ------------------------------------------------------------------ memory
    def hash_cache_bytes_per_block(self) -> int:
        """Bytes one KV block costs in hash caches, over every scoring layer of this rank.
        Every rank holds the codes of all ``Hkv`` KV heads (``R/8`` bytes per head and token),
        ``Hkv / max(1, Hkv/tp)`` times its own KV heads: the cost relative to its KV cache grows with TP."""
        _, h, bs, c = self.sparse.hash_cache_shape(1)
        return len(self.policy.scoring_layers) * h * bs * c

    @property
    def tp_group(self) -> Any:
        """The group codes are gathered over (``None`` at TP=1): the one given, else vLLM's TP group."""
        if self.tp_size > 1 and self._tp_group is None:
            from vllm.distributed import get_tp_group

            self._tp_group = get_tp_group()
        return self._tp_group

    def hash_cache(self, layer: int, num_blocks: int) -> Tensor:
        """Layer ``layer``'s hash cache ``uint8 [NB, Hkv, bs, C]`` (all KV heads, on every
        TP rank), allocated on first use with the KV cache's block count (block ids are
        shared). Under TP it is a view of ``[NB + 1, ...]`` storage whose last block
        absorbs padding slots (:func:`gsa.integrations.vllm.tp.write_codes`)."""
        hc = self.hash_caches.get(layer)
        if hc is None or hc.shape[0] != num_blocks:
            if self.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise RuntimeError(f"GSA: layer {layer}'s hash cache would be allocated inside CUDA graph capture "
                                   "(its zero fill would be replayed every step); vLLM runs eager warm-up steps "
                                   "before capture, which allocate it: was this layer skipped there?")
            extra = 1 if self.tp_size > 1 else 0
            shape = self.sparse.hash_cache_shape(num_blocks + extra)
            storage = torch.zeros(shape, dtype=torch.uint8, device=self.device)
            hc = storage[:num_blocks]
            self._hash_storage[layer] = storage
            self.hash_caches[layer] = hc
            if len(self.hash_caches) == len(self.policy.scoring_layers):
                total = sum(t.numel() for t in self.hash_caches.values())
                logger.info("GSA: hash caches for %d scoring layers allocated: %.1f MiB (%d blocks)",
                            len(self.hash_caches), total / 2**20, num_blocks)
        return hc

    # ------------------------------------------------------------------ keys
    def cache_keys(self, layer: int, key: Tensor, slot_mapping: Tensor, num_blocks: int) -> None:
        """Hash ``key [T, Hkv_rank, D]`` into the layer's hash cache at ``slot_mapping [T']``
        (``T' <= T``: vLLM may pad the token axis; ``-1`` slots are skipped). Under TP
        the rank's codes ``[T', Hkv_rank, C]`` are all-gathered and every KV head's code
        is written (the same on every rank)."""
        scores = self.policy.layers[layer].scores  # needs a hash cache
        if not scores and layer != self.capture_layer:
            return
        t0 = time.perf_counter()
        n = slot_mapping.shape[0]
        k = key if key.shape[0] == n else key[:n]  # no view op when vLLM did not pad the tokens
        if scores:
            hc = self.hash_cache(layer, num_blocks)
            if self.tp_size == 1:
                self.sparse.cache_keys(layer, hc, slot_mapping, k)
            else:
                codes = ops.hash_encode(k, self.sparse.weights(layer), self.sparse.threshold(layer))  # [T', Hkv_rank, C]
                full = _tp.gather_kv_codes(codes, self.layout, self.tp_group)  # [T', Hkv, C]
                _tp.write_codes(self._hash_storage[layer], full, slot_mapping, num_blocks)
        self.counters.hashing_s += time.perf_counter() - t0

    # ------------------------------------------------------------------ steps
    def plan(self, host_seq_lens: np.ndarray, host_query_lens: np.ndarray,
             query_start_loc: Tensor, static_width: Optional[int] = None) -> StepState:
        """Spec-8 plan of one step from host-side lengths (no device read).

        ``static_width``: the block table's width when the step may run as (or be
        captured into) a FULL CUDA graph (a uniform decode batch): the step is then
        planned in graph form (:attr:`StepState.static`): the selection width is the
        table's width, every scoring layer's budgets live in persistent device buffers
        (copied here, before the replay), and a dense step or row is expressed by its
        budget (``n_blocks``: every block kept), so one captured graph serves every
        step. Otherwise the width is this step's largest selection and dense steps
        skip selection."""
        s = np.asarray(host_seq_lens, dtype=np.int64)
        q = np.asarray(host_query_lens, dtype=np.int64)
        live = s >= 1  # padded rows (length 0) are never sparse
        plan_lens = np.where(live, s, 1)
        plan_q = np.where(live, q, 0)
        if static_width is not None and self.tp_size == 1:
            return self._plan_static(s, plan_lens, plan_q, int(static_width))
        step = self.sparse.begin_step(plan_lens, plan_q)
        self._count(step.plan, plan_q)
        if not step.plan.sparse:
            return StepState(step=None)
        # the step's rows only (a CUDA runner may pad query_start_loc for graphs)
        q_rows = (query_start_loc[1 : s.shape[0] + 1].to(torch.int64) - 1).clamp(min=0)
        return StepState(step=step, q_rows=q_rows, host_seq_lens=s)

    def _count(self, plan, plan_q: np.ndarray) -> None:
        c = self.counters
        c.steps += 1
        decode = plan_q == 1
        n_dec = int(decode.sum())
        c.decode_rows += n_dec
        if n_dec:
            dense = int(plan.n_blocks[decode].sum())
            c.blocks_dense += dense * self.num_layers
            read = 0
            summed: Dict[int, int] = {}  # layers of one budget group share their n_sel array: sum it once
            for lp in self.policy.layers:
                src = lp.selection_layer
                if plan.sparse and src >= 0:
                    sel = plan.n_sel[src]
                    if id(sel) not in summed:
                        summed[id(sel)] = int(sel[decode].sum())
                    read += summed[id(sel)]
                else:
                    read += dense
            c.blocks_read += read
        if plan.sparse:
            c.sparse_steps += 1
            c.sparse_rows += int(plan.sparse_rows.sum())
            if bool((plan_q > 1).any()):
                c.mixed_steps += 1
        self._maybe_log()

    def _plan_static(self, s: np.ndarray, plan_lens: np.ndarray, plan_q: np.ndarray, width: int) -> StepState:
        step = self.sparse.begin_step(plan_lens, plan_q, k=width, graph=True)
        self._count(step.plan, plan_q)
        return StepState(step=step, host_seq_lens=s, static=True)

    def is_sparse(self, layer: int, state: Optional[StepState]) -> bool:
        return state is not None and state.step is not None and not self.policy.is_dense(layer)

    def select(self, layer: int, state: StepState, query: Tensor, block_table: Tensor,
               seq_lens: Tensor, query_rope: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Sparse ``(block_table int32 [B, K], seq_lens int32 [B])`` of ``layer`` for this
        step. ``query [T, Hq_rank, D]``: the step's queries (the last token of each row
        scores; under TP their codes are all-gathered to ``[B, Hq, C]``, so every rank
        selects the same blocks); ``block_table [B, M]``, ``seq_lens [B]``: the backend's (int32).
        MLA (:mod:`.mla`, TP=1): ``query`` is the absorbed ``q_nope @ W_UK^T [T, N, L]`` and
        ``query_rope`` the ``q_pe [T, N, P]``."""
        t0 = time.perf_counter()
        step = state.step
        lp = self.policy.layer(layer)
        b = step.plan.batch_size
        if state.static:
            if lp.scores:
                hc = self.hash_caches.get(layer)
                if hc is None:
                    raise RuntimeError(f"GSA: layer {layer} scores but no keys were hashed into its hash cache "
                                       "(do_kv_cache_update was not called through the GSA backend)")
                # the step's rows (no view op when nothing is padded: the same signature either way)
                bt = block_table if block_table.shape[0] == b else block_table[:b]
                sl = seq_lens if seq_lens.shape[0] == b else seq_lens[:b]
                qr = query_rope if query_rope is None or query_rope.shape[0] == b else query_rope[:b]
                out = self.sparse._select_hot(layer, step, bt, sl, hc, query if query.shape[0] == b else query[:b], qr)
                step._selections[layer] = out
                self.counters.layer_selections += 1
            else:
                out = step._selections[lp.selection_layer]
            self.counters.selection_s += time.perf_counter() - t0
            return out
        # the backend's table is as wide as the longest possible request; scoring
        # reads every column, so cut it to this step's longest row (host-known)
        width = min(int(step.plan.n_blocks.max()), block_table.shape[1])
        bt = block_table[:b, :width]
        sl = seq_lens[:b]
        if bt.dtype != torch.int32:
            bt = bt.to(torch.int32)
        if sl.dtype != torch.int32:
            sl = sl.to(torch.int32)
        if lp.scores:
            sel_lens = sl.clamp(min=1)
            q = query.index_select(0, state.q_rows.to(query.device))
            hc = self.hash_caches.get(layer)
            if hc is None:
                raise RuntimeError(f"GSA: layer {layer} scores but no keys were hashed into its hash cache "
                                   "(do_kv_cache_update was not called through the GSA backend)")
            if self.tp_size == 1:
                q_rope = None if query_rope is None else query_rope.index_select(0, state.q_rows.to(query.device))
                table, lens = self.sparse.select(layer, step, bt, sel_lens, hash_cache=hc, q=q, q_rope=q_rope)
            else:
                q_codes = ops.hash_encode(q, self.sparse.weights(layer))  # [B, Hq_rank, C]
                q_codes = _tp.gather_q_codes(q_codes, self.layout, self.tp_group)  # [B, Hq, C]
                table, lens = self.sparse.select_codes(layer, step, bt, sel_lens, hc, q_codes)
            lens = torch.where(sl > 0, lens, sl)
            step._selections[layer] = (table, lens)
            self.counters.layer_selections += 1
        else:
            table, lens = self.sparse.select(layer, step, bt, sl)
        self.counters.selection_s += time.perf_counter() - t0
        return table, lens

    def host_sparse_lens(self, layer: int, state: StepState) -> np.ndarray:
        """Host-side sparse lengths ``int64 [B]`` of ``layer``'s selection, without
        reading the device: exact when the last block is forced (``-1`` in
        ``must_select_blocks``), which backends that take lengths as host lists
        (Ascend's ``actual_seq_lengths_kv``) require."""
        plan = state.step.plan
        src = self.policy.layer(layer).selection_layer
        s, nb, n_sel = plan.seq_lens, plan.n_blocks, plan.n_sel[src]
        bs = self.config.chunk_size
        last = s - (nb - 1) * bs
        out = np.where(n_sel >= nb, s, (n_sel - 1) * bs + last)
        return np.where(state.host_seq_lens >= 1, out, state.host_seq_lens)

    # ------------------------------------------------------------------ counters
    def stats(self) -> Dict[str, Any]:
        d = self.counters.as_dict()
        d.update(model=self.config.model_name, origin=self.settings.origin, tp_rank=self.tp_rank,
                 scoring_layers=len(self.policy.scoring_layers))
        return d

    def reset_stats(self) -> None:
        self.counters = _Counters()

    def _maybe_log(self) -> None:
        n = self.log_every
        if n and self.counters.steps % n == 0:
            logger.info("GSA stats: %s", format_stats(self.stats()))

    # ------------------------------------------------------------------ debug capture
    def enable_capture(self, layer: int) -> None:
        """Record ``layer``'s inputs and output at its next sparse step (tests, debugging).

        Keeps a plain ``[NB, bs, Hkv, D]`` copy of the layer's keys and values as they
        are written (the backends' own caches use kernel-specific layouts), so that
        :attr:`captured` can be checked against the reference attention.
        """
        self.capture_layer = layer
        self.captured = None
        self._shadow = None

    def shadow_write(self, layer: int, key: Tensor, value: Tensor, slot_mapping: Tensor, num_blocks: int) -> None:
        if layer != self.capture_layer or self.captured is not None:
            return
        bs = self.config.chunk_size
        if self._shadow is None:
            shape = (num_blocks, bs, key.shape[1], key.shape[2])
            self._shadow = (torch.zeros(shape, dtype=key.dtype, device=key.device),
                            torch.zeros(shape, dtype=value.dtype, device=value.device))
        n = slot_mapping.shape[0]
        slots = slot_mapping.to(torch.int64)
        keep = slots >= 0
        s = slots[keep]
        self._shadow[0][s // bs, s % bs] = key[:n][keep]
        self._shadow[1][s // bs, s % bs] = value[:n][keep]

    def maybe_capture(self, layer: int, state: StepState, query: Tensor, output: Tensor, dense: Tuple[Tensor, Tensor],
                      sparse: Tuple[Tensor, Tensor], scale: float) -> None:
        if layer != self.capture_layer or self.captured is not None or self._shadow is None:
            return
        step = state.step
        rows = torch.from_numpy(np.nonzero(step.plan.sparse_rows)[0]).to(query.device)
        if rows.numel() == 0:
            return
        qi = rows if state.q_rows is None else state.q_rows.index_select(0, rows)  # graph form: row i is token i
        hq = query.shape[1]
        self.captured = {
            "layer": layer,
            "rows": rows.clone(),
            "q": query.index_select(0, qi).clone(),
            "out": output.view(output.shape[0], hq, -1).index_select(0, qi).clone(),
            "block_table": dense[0].index_select(0, rows).clone(),
            "seq_lens": dense[1].index_select(0, rows).clone(),
            "sparse_block_table": sparse[0].index_select(0, rows).clone(),
            "sparse_seq_lens": sparse[1].index_select(0, rows).clone(),
            "budgets": step.budgets[self.policy.layer(layer).selection_layer].index_select(0, rows).clone(),
            "k": step.plan.k,
            "k_cache": self._shadow[0].clone(),
            "v_cache": self._shadow[1].clone(),
            # all KV heads (under TP: this rank's are kv_heads[0]:kv_heads[1])
            "hash_cache": self.hash_caches[self.policy.layer(layer).selection_layer].clone(),
            "kv_heads": self.layout.kv_heads,
            # the rank's heads' projection (the captured q and keys are the rank's heads)
            "weight": self.sparse.weights(self.policy.layer(layer).selection_layer),
            "scale": scale,
        }
        self._shadow = None


def format_stats(s: Dict[str, Any]) -> str:
    return (f"steps={s['steps']} sparse_steps={s['sparse_steps']} sparse_rows={s['sparse_rows']}/"
            f"{s['decode_rows']} decode rows, mixed_steps={s['mixed_steps']}, blocks read {s['blocks_read']}/{s['blocks_dense']} dense "
            f"({100 * s['blocks_read_fraction']:.1f}%), selection {s['selection_s'] * 1e3:.1f} ms, "
            f"key hashing {s['hashing_s'] * 1e3:.1f} ms")


# ---------------------------------------------------------------------- registry
def runtime_for(vllm_config: Any) -> Optional[GSAVllmRuntime]:
    """The runtime of the engine that owns ``vllm_config`` in this process, if any."""
    key = getattr(vllm_config, "instance_id", None) or str(id(vllm_config))
    return _RUNTIMES.get(key)


def _register(vllm_config: Any, rt: GSAVllmRuntime) -> None:
    global _LATEST
    key = getattr(vllm_config, "instance_id", None) or str(id(vllm_config))
    with _LOCK:
        _RUNTIMES[key] = rt
        _KEEP.clear()  # one engine at a time keeps its runtime alive through this dict
        _KEEP[key] = rt
        _LATEST = weakref.ref(rt)


def release_runtimes() -> None:
    """Drop this process's references to every runtime (their hash caches are freed
    once the engine is gone too)."""
    global _LATEST
    with _LOCK:
        _KEEP.clear()
        _LATEST = None


def current_runtime() -> Optional[GSAVllmRuntime]:
    """The most recently started GSA runtime in this process (``None`` if none).

    With ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` the engine runs in the caller's
    process, so this is the engine's; otherwise it lives in the worker processes
    and only their log lines show the counters.
    """
    return _LATEST() if _LATEST is not None else None


def stats() -> Optional[Dict[str, Any]]:
    """Counters of :func:`current_runtime` (see docs/vllm.md), or ``None``."""
    rt = current_runtime()
    return None if rt is None else rt.stats()


def reset_stats() -> None:
    rt = current_runtime()
    if rt is not None:
        rt.reset_stats()
