"""Backend-independent parts of the vLLM attention wrappers.

A wrapped backend (CPU_ATTN, FLASH_ATTN, Ascend) is the platform's backend
class subclassed three times over:

* ``Backend``: same name (so vLLM's enum lookup still works), our builder and impl;
* ``MetadataBuilder.build``: the original metadata, plus ``gsa`` (a
  :class:`~gsa.integrations.vllm.runtime.StepState`) planned from host lengths;
* ``Impl``: ``do_kv_cache_update`` also hashes the keys; ``forward`` on a sparse
  step replaces ``(block_table, seq_lens)`` by the selection, rebuilds the
  backend's derived fields (:meth:`GSAImplMixin._sparse_metadata`, per backend)
  on a ``dataclasses.replace`` copy and calls the unmodified backend.

When GSA is not enabled for an engine, every method is the original's.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from .compat import host_seq_lens
from .runtime import GSAVllmRuntime, StepState, _register, runtime_for
from .settings import GSAVllmConfigError, check_against_model, read_settings

__all__ = ["runtime_at_init", "layer_index", "host_lengths", "shallow_copy", "GSAImplMixin"]

logger = logging.getLogger("gsa.vllm")


def _hf_text_config(model_config: Any) -> Any:
    return getattr(model_config, "hf_text_config", None) or model_config.hf_config


def runtime_at_init(device: Optional[torch.device] = None) -> Optional[GSAVllmRuntime]:
    """The runtime for the engine being built (from vLLM's current config), created
    and checked against the model on first call; ``None`` when GSA is off."""
    from vllm.config import get_current_vllm_config

    vc = get_current_vllm_config()
    rt = runtime_for(vc)
    if rt is not None:
        return rt
    mc = getattr(vc, "model_config", None)
    if mc is None:
        return None
    settings = read_settings(getattr(vc, "additional_config", None), mc)
    if settings is None:
        return None
    pc = vc.parallel_config
    text = _hf_text_config(mc)
    check_against_model(
        settings.config,
        num_layers=int(getattr(text, "num_hidden_layers")),
        num_heads=int(mc.get_total_num_attention_heads() if hasattr(mc, "get_total_num_attention_heads")
                      else text.num_attention_heads),
        num_kv_heads=int(mc.get_total_num_kv_heads()),
        head_dim=int(mc.get_head_size()),
        block_size=int(vc.cache_config.block_size),
        use_mla=bool(getattr(mc, "use_mla", False)),
        sliding_window=getattr(text, "sliding_window", None) if getattr(text, "use_sliding_window", True) else None,
        layer_types=getattr(text, "layer_types", None),
        origin=settings.origin,
    )
    if getattr(vc, "speculative_config", None) is not None:
        raise GSAVllmConfigError("GSA vLLM plugin: speculative decoding: expected none (GSA plans decode rows of "
                                 "one token; verification rows would be treated as prefill), got "
                                 f"{vc.speculative_config!r}")
    for what in ("pipeline_parallel_size", "decode_context_parallel_size", "prefill_context_parallel_size"):
        if int(getattr(pc, what, 1) or 1) != 1:
            raise GSAVllmConfigError(f"GSA vLLM plugin: {what}: expected 1 (only tensor parallelism is supported "
                                     f"with GSA), got {getattr(pc, what)}")
    tp_size = int(pc.tensor_parallel_size)
    tp_rank = 0
    if tp_size > 1:
        from vllm.distributed import get_tensor_model_parallel_rank

        tp_rank = int(get_tensor_model_parallel_rank())
    if device is None:
        from vllm.platforms import current_platform

        dt = current_platform.device_type
        device = torch.device("cpu") if dt == "cpu" else torch.device(dt, torch.accelerator.current_device_index())
    rt = GSAVllmRuntime(settings, device=device, tp_rank=tp_rank, tp_size=tp_size,
                        num_layers=settings.config.num_hidden_layers)
    _register(vc, rt)
    kv_elt = torch.empty((), dtype=mc.dtype).element_size()
    per_block_kv = 2 * text.num_hidden_layers * settings.config.chunk_size * settings.config.head_dim * kv_elt * \
        max(1, settings.config.num_key_value_heads // tp_size)
    # under TP every rank keeps the codes of all Hkv KV heads (selection needs them all)
    # against its own Hkv/tp heads of K and V: the fraction grows with tp
    logger.info("GSA enabled for %s (%s): %d scoring layers, %d sparse, block size %d, TP %d; hash caches "
                "(codes of all %d KV heads on every rank) add %.2f%% to this rank's KV cache memory (not "
                "deducted from vLLM's KV budget, see docs/vllm.md)",
                settings.config.model_name, settings.origin, len(rt.policy.scoring_layers),
                sum(1 for lp in rt.policy.layers if not lp.dense), settings.config.chunk_size, tp_size,
                settings.config.num_key_value_heads, 100.0 * rt.hash_cache_bytes_per_block() / per_block_kv)
    return rt


_LAYER_IDX: Dict[str, int] = {}


def layer_index(layer: Any) -> int:
    """The decoder layer index of a vLLM attention layer (from its name)."""
    name = getattr(layer, "layer_name", None)
    idx = _LAYER_IDX.get(name)
    if idx is None:
        from vllm.model_executor.models.utils import extract_layer_index

        idx = extract_layer_index(name)
        _LAYER_IDX[name] = idx
    return idx


def host_lengths(common: Any) -> Tuple[np.ndarray, np.ndarray]:
    """Host-side ``(seq_lens, query_lens)`` ``int64 [num_reqs]`` of a step, from
    ``CommonAttentionMetadata`` without reading a device tensor."""
    n = int(common.num_reqs)
    qsl = common.query_start_loc_cpu[: n + 1].numpy().astype(np.int64)
    return host_seq_lens(common, n), qsl[1:] - qsl[:-1]


_PLAIN: Dict[type, bool] = {}


def _plain_class(cls: type) -> bool:
    """Whether ``copy.copy`` of a ``cls`` instance is ``cls.__new__(cls)`` plus its ``__dict__``:
    no ``__copy__``, no custom reduce, no ``copyreg`` entry and no ``__slots__`` anywhere."""
    import copyreg

    return (getattr(cls, "__copy__", None) is None and cls.__reduce_ex__ is object.__reduce_ex__
            and cls.__reduce__ is object.__reduce__ and cls not in copyreg.dispatch_table
            and not any("__slots__" in vars(c) for c in cls.__mro__[:-1]))


def shallow_copy(obj: Any) -> Any:
    """``copy.copy(obj)`` without the reduce protocol for plain classes (a backend's metadata
    dataclass): the same object, at a few microseconds less per sparse layer and step."""
    cls = type(obj)
    plain = _PLAIN.get(cls)
    if plain is None:
        plain = _PLAIN[cls] = _plain_class(cls)
    if not plain:
        import copy

        return copy.copy(obj)
    out = cls.__new__(cls)
    out.__dict__.update(obj.__dict__)
    return out


def with_padded_rows(table: torch.Tensor, lens: torch.Tensor, full_table: torch.Tensor,
                     full_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The step's sparse ``(table [B, K], lens [B])`` extended to the backend's rows
    (``full_table [B', M]``, ``full_lens [B']``, ``B' >= B``): rows an engine padded past the
    step's requests keep their lengths and get an all-zero table row."""
    b = lens.shape[0]
    if full_lens.shape[0] <= b:
        return table, lens
    return (torch.cat([table, table.new_zeros((full_table.shape[0] - b, table.shape[1]))]),
            torch.cat([lens, full_lens[b:].to(lens.dtype)]))


class GSAImplMixin:
    """Put before the backend's impl class: ``class X(GSAImplMixin, FooImpl)``."""

    gsa: Optional[GSAVllmRuntime] = None

    def _gsa_init(self, device: Optional[torch.device] = None) -> None:
        from vllm.v1.attention.backend import AttentionType

        self.gsa = None
        if getattr(self, "attn_type", AttentionType.DECODER) != AttentionType.DECODER:
            return
        self.gsa = runtime_at_init(device)
        if self.gsa is not None and getattr(self, "kv_sharing_target_layer_name", None) is not None:
            raise GSAVllmConfigError("GSA vLLM plugin: kv_sharing_target_layer_name: expected none (each GSA "
                                     f"layer hashes its own keys), got {self.kv_sharing_target_layer_name!r}")

    # -- keys ------------------------------------------------------------
    def _gsa_cache_keys(self, layer: Any, key: torch.Tensor, value: torch.Tensor, slot_mapping: torch.Tensor,
                        num_blocks: int, block_size: int) -> None:
        rt = self.gsa
        if rt is None or num_blocks == 0:
            return
        l = layer_index(layer)
        if block_size != rt.config.chunk_size:
            raise GSAVllmConfigError(f"GSA vLLM plugin: layer {l}: KV cache block size: expected the config's "
                                     f"chunk_size {rt.config.chunk_size}, got {block_size}")
        rt.cache_keys(l, key, slot_mapping, num_blocks)
        if rt.capture_layer == l:
            rt.shadow_write(l, key, value, slot_mapping, num_blocks)

    # -- attention -------------------------------------------------------
    def _gsa_state(self, layer: Any, attn_metadata: Any) -> Tuple[int, Optional[StepState]]:
        rt = self.gsa
        state = getattr(attn_metadata, "gsa", None) if attn_metadata is not None else None
        if rt is None or state is None or state.step is None:
            return -1, None
        l = layer_index(layer)
        if not rt.is_sparse(l, state):
            return l, None
        return l, state

    def _gsa_forward(self, base_forward, layer, query, key, value, kv_cache, attn_metadata, output, **kw):
        l, state = self._gsa_state(layer, attn_metadata)
        if state is None:
            return base_forward(layer, query, key, value, kv_cache, attn_metadata, output, **kw)
        rt = self.gsa
        src = rt.policy.layer(l).selection_layer
        md = state.derived.get(src)
        if md is None:
            full_table, full_lens = self._gsa_table_and_lens(attn_metadata)
            table, lens = with_padded_rows(*rt.select(l, state, query, full_table, full_lens), full_table, full_lens)
            md = self._sparse_metadata(attn_metadata, table, lens, state, src)
            state.derived[src] = md
        out = base_forward(layer, query, key, value, kv_cache, md, output, **kw)
        if rt.capture_layer == l and rt.captured is None:
            rt.maybe_capture(l, state, query, output, self._gsa_table_and_lens(attn_metadata),
                             self._gsa_table_and_lens(md), float(self.scale))
        return out

    # -- per backend -----------------------------------------------------
    def _gsa_table_and_lens(self, md: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        """The backend metadata's ``(block_table [B, M], seq_lens [B])``."""
        return md.block_table, md.seq_lens

    def _sparse_metadata(self, md: Any, table: torch.Tensor, lens: torch.Tensor, state: StepState, layer: int) -> Any:
        """A ``dataclasses.replace`` copy of ``md`` attending over ``(table [B, K], lens [B])``,
        the selection made by ``layer``, with the backend's derived fields rebuilt."""
        raise NotImplementedError
