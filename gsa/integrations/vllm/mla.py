"""Backend-independent parts of the GSA wrappers around vLLM's MLA backends (spec 9).

vLLM's MLA layer (``MLAAttention.forward_impl``) caches the normalised latent
``c_kv [T, kv_lora_rank]`` and the post-RoPE ``k_pe [T, 1, qk_rope_head_dim]``
through the impl's ``do_kv_cache_update``, and decodes with weight absorption:
it hands the impl's ``forward_mqa`` the query ``(q_nope @ W_UK^T [B, N, L],
q_pe [B, N, P])`` (or the two concatenated, ``[B, N, L + P]``) and a metadata
whose ``decode`` part holds ``block_table [B, M]`` and ``seq_lens [B]`` of the
decode rows (the first ``num_decodes`` rows: vLLM sorts decodes first).

GSA hooks in at exactly those two places:

* ``do_kv_cache_update``: after the backend's own write, ``c_kv`` and ``k_pe``
  are hashed into the layer's hash cache ``uint8 [NB, 1, bs, (R_lora + R_rope)/8]``
  (spec 3/9) at the same slots;
* ``forward_mqa`` on a sparse step: the absorbed query and ``q_pe`` score the
  blocks (spec 4, MLA token score); the decode metadata is replaced by a
  ``dataclasses.replace`` copy over the sparse ``(block_table, seq_lens)``
  (:meth:`GSAMLAImplMixin._sparse_decode`, per backend) and the unmodified
  backend decodes. Prefill (``forward_mha``) is never touched: prefill rows are
  dense (spec 8).

The step is planned by the metadata builder over the decode rows only, from
host lengths (:class:`GSAMLABuilderMixin`); a uniform decode batch in graph form
(as :mod:`.cuda`: persistent budgets, the table's full width, the selection in the
layer's persistent hot-path buffers), so the wrapped backends keep their own CUDA
graph support (FULL decode graphs). Limits (start-up errors):
tensor parallelism > 1 (the scores sum over all heads; the MLA path does not
gather query codes across ranks yet), and a config whose ``kv_lora_rank`` /
``qk_rope_head_dim`` differ from the model's.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Dict, Optional

import numpy as np
import torch

from .common import host_lengths, layer_index, runtime_at_init, shallow_copy, with_padded_rows
from .hybrid import gsa_group
from .runtime import GSAVllmRuntime, StepState, runtime_for
from .settings import GSAVllmConfigError

__all__ = ["GSAMLABuilderMixin", "GSAMLAImplMixin", "with_gsa_field"]

logger = logging.getLogger("gsa.vllm")

_GSA_CLASSES: Dict[type, type] = {}


def with_gsa_field(md: Any) -> Any:
    """A copy of the dataclass ``md`` whose class is a subclass with one more field,
    ``gsa: Optional[StepState] = None`` (made once per metadata class)."""
    cls = type(md)
    sub = _GSA_CLASSES.get(cls)
    if sub is None:
        sub = dataclasses.make_dataclass("GSA" + cls.__name__,
                                         [("gsa", Optional[StepState], dataclasses.field(default=None))],
                                         bases=(cls,))
        sub.__module__ = __name__
        _GSA_CLASSES[cls] = sub
    return sub(**{f.name: getattr(md, f.name) for f in dataclasses.fields(md) if f.init})


class GSAMLABuilderMixin:
    """Put before the backend's MLA metadata builder: ``class X(GSAMLABuilderMixin, FooBuilder)``."""

    #: plan uniform decode batches in graph form (a backend whose builder keeps CUDA graphs)
    _gsa_graph_form = False

    def _gsa_builder_init(self, vllm_config: Any, layer_names: Any) -> None:
        self._gsa_vllm_config = vllm_config
        rt = runtime_for(vllm_config)
        self._gsa_plans = rt is not None and gsa_group(rt, vllm_config, layer_names)

    def _gsa_attach(self, md: Any, common: Any) -> Any:
        """``md`` with ``gsa``: the step planned over its decode rows (``None`` when GSA is off)."""
        rt = runtime_for(self._gsa_vllm_config)
        if rt is None or not self._gsa_plans:
            return md
        md = with_gsa_field(md)
        seq_lens, query_lens = host_lengths(common)
        # decode rows come first and are the only rows forward_mqa sees; a step
        # without them is planned whole (all prefill: dense) so that it is counted
        rows = int(md.num_decodes) if int(md.num_decodes) > 0 else seq_lens.shape[0]
        static = None
        if self._gsa_graph_form and common.max_query_len == 1 and int(md.num_prefills) == 0 and rows <= 1024:
            # a uniform decode batch: graph form (the table's full width, persistent budgets), which a
            # FULL graph needs and which also spares eager (PIECEWISE) steps the per-step gathers
            static = common.block_table_tensor.shape[1]
        md.gsa = rt.plan(seq_lens[:rows], query_lens[:rows], common.query_start_loc[: rows + 1], static_width=static)
        if md.gsa.step is not None and int(md.num_prefills) > 0:
            rt.counters.mixed_steps += 1  # the plan saw only the decode rows
        md.gsa.builder = self
        return md


class GSAMLAImplMixin:
    """Put before the backend's MLA impl: ``class X(GSAMLAImplMixin, FooMLAImpl)``."""

    gsa: Optional[GSAVllmRuntime] = None

    def _gsa_mla_init(self, device: Optional[torch.device] = None) -> None:
        from vllm.config import get_current_vllm_config

        self.gsa = None
        self._gsa_layer: Optional[int] = None
        rt = runtime_at_init(device)
        if rt is None:
            return
        cfg = rt.config
        where = f"GSA vLLM plugin: {rt.settings.origin} (model {cfg.model_name})"
        for key, model_value in (("kv_lora_rank", self.kv_lora_rank), ("qk_rope_head_dim", self.qk_rope_head_dim)):
            if getattr(cfg, key) != int(model_value):
                raise GSAVllmConfigError(f"{where}: key '{key}': expected {model_value} (the served model's value), "
                                         f"got {getattr(cfg, key)!r}")
        if rt.tp_size != 1:
            raise GSAVllmConfigError(f"{where}: tensor_parallel_size: expected 1 for an MLA model (GSA's MLA path "
                                     f"does not gather query codes across ranks yet), got {rt.tp_size}")
        self.gsa = rt
        self._gsa_ctx = get_current_vllm_config().compilation_config.static_forward_context

    def _gsa_layer_index(self) -> int:
        """This impl's decoder layer (``do_kv_cache_update`` is not handed the layer:
        found once in vLLM's layer registry by identity)."""
        if self._gsa_layer is None:
            for name, mod in self._gsa_ctx.items():
                if getattr(mod, "impl", None) is self:
                    self._gsa_layer = layer_index(mod)
                    break
            else:
                raise RuntimeError("GSA: an MLA impl not registered in vLLM's static_forward_context")
        return self._gsa_layer

    # -- keys ------------------------------------------------------------
    def _gsa_cache_latent(self, kv_c_normed: torch.Tensor, k_pe: torch.Tensor, kv_cache: torch.Tensor,
                          slot_mapping: torch.Tensor) -> None:
        """Hash ``c_kv [T, L]`` and ``k_pe [T, 1, P]`` (or ``[T, P]``) into the layer's hash
        cache at ``slot_mapping [T']`` (``T' <= T``; ``-1`` slots skipped). ``kv_cache
        [NB, bs, L + P]``: the backend's cache (its block count and size)."""
        rt = self.gsa
        if rt is None or kv_cache.numel() == 0:
            return
        l = self._gsa_layer_index()
        if not rt.policy.needs_hash_cache(l):
            return
        num_blocks, block_size = int(kv_cache.shape[0]), int(kv_cache.shape[1])
        if block_size != rt.config.chunk_size:
            raise GSAVllmConfigError(f"GSA vLLM plugin: layer {l}: KV cache block size: expected the config's "
                                     f"chunk_size {rt.config.chunk_size}, got {block_size}")
        t0 = time.perf_counter()
        n = slot_mapping.shape[0]
        c_kv = kv_c_normed[:n]
        pe = k_pe[:n].reshape(n, -1)
        rt.sparse.cache_keys(l, rt.hash_cache(l, num_blocks), slot_mapping, c_kv if c_kv.is_contiguous() else c_kv.contiguous(),
                             pe if pe.is_contiguous() else pe.contiguous())
        rt.counters.hashing_s += time.perf_counter() - t0

    # -- decode ----------------------------------------------------------
    def _gsa_forward_mqa(self, base_forward_mqa, q: Any, kv_cache: torch.Tensor, attn_metadata: Any, layer: Any):
        rt = self.gsa
        state: Optional[StepState] = getattr(attn_metadata, "gsa", None)
        if rt is None or state is None or state.step is None:
            return base_forward_mqa(q, kv_cache, attn_metadata, layer)
        l = layer_index(layer)
        if not rt.is_sparse(l, state):
            return base_forward_mqa(q, kv_cache, attn_metadata, layer)
        q_nope, q_pe = q if isinstance(q, tuple) else q.split([self.kv_lora_rank, self.qk_rope_head_dim], dim=-1)
        md = self._gsa_sparse_attn_metadata(l, state, q_nope, q_pe, attn_metadata)
        out = base_forward_mqa(q, kv_cache, md, layer)
        if rt.capture_layer == l and rt.captured is None:
            self._gsa_capture(rt, l, state, q_nope, q_pe, out[0], kv_cache, attn_metadata.decode, md.decode)
        return out

    def _gsa_sparse_attn_metadata(self, l: int, state: StepState, q_nope: torch.Tensor, q_pe: torch.Tensor,
                                  attn_metadata: Any) -> Any:
        """A copy of ``attn_metadata`` whose ``decode`` part reads sparse layer ``l``'s selection
        (made once per selection layer and step). ``q_nope [B', N, L]``: the absorbed query,
        ``q_pe [B', N, P]``; the first ``B`` rows are the step's decode rows, one token each."""
        src = self.gsa.policy.layer(l).selection_layer
        md = state.derived.get(src)
        if md is None:
            dec = attn_metadata.decode
            dense_table, dense_lens = self._gsa_decode_table_and_lens(dec)
            # the first b query tokens are the b decode rows (one token each): q_rows is 0..b-1
            table, lens = with_padded_rows(*self.gsa.select(l, state, q_nope, dense_table, dense_lens, query_rope=q_pe),
                                           dense_table, dense_lens)
            # shallow copies (dataclasses.replace re-runs __init__: ~10x the host time)
            md = shallow_copy(attn_metadata)
            md.decode = self._sparse_decode(dec, table, lens, state)
            state.derived[src] = md
        return md

    def _gsa_decode_table_and_lens(self, dec: Any):
        """The decode rows' ``(block_table [B, M], seq_lens [B])`` on one device (per backend)."""
        return dec.block_table, dec.seq_lens

    def _sparse_decode(self, dec: Any, table: torch.Tensor, lens: torch.Tensor, state: StepState) -> Any:
        """A shallow copy of the decode metadata ``dec`` over the sparse ``(table int32
        [B, K], lens int32 [B])``, derived fields rebuilt (per backend)."""
        out = shallow_copy(dec)
        out.block_table, out.seq_lens = table, lens
        return out

    # -- debug capture (tests) -------------------------------------------
    def _gsa_capture(self, rt: GSAVllmRuntime, l: int, state: StepState, q_nope: torch.Tensor, q_pe: torch.Tensor,
                     out: torch.Tensor, kv_cache: torch.Tensor, dense: Any, sparse: Any) -> None:
        """Record layer ``l``'s sparse decode (see :meth:`GSAVllmRuntime.enable_capture`): the
        sparse rows' absorbed query ``q [R, N, L + P]``, output ``[R, N, L]``, dense and sparse
        tables and lengths, the latent cache ``[NB, bs, L + P]`` and the hash cache."""
        step = state.step
        rows = torch.from_numpy(np.nonzero(step.plan.sparse_rows)[0]).to(q_nope.device)
        if rows.numel() == 0:
            return
        sel = rt.policy.layer(l).selection_layer
        rt.captured = {
            "layer": l,
            "rows": rows.clone(),
            "q": torch.cat([q_nope.index_select(0, rows), q_pe.index_select(0, rows)], dim=-1).clone(),
            "out": out.index_select(0, rows).clone(),
            "block_table": dense.block_table.index_select(0, rows).clone(),
            "seq_lens": dense.seq_lens.index_select(0, rows).clone(),
            "sparse_block_table": sparse.block_table.index_select(0, rows).clone(),
            "sparse_seq_lens": sparse.seq_lens.index_select(0, rows).clone(),
            "budgets": step.budgets[sel].index_select(0, rows).clone(),
            "k": step.plan.k,
            "kv_cache": kv_cache.clone(),
            "hash_cache": rt.hash_caches[sel].clone(),
            "weight": rt.sparse.weights(sel),
            "scale": float(self.scale),
        }
