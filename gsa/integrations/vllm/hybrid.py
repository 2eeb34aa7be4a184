"""Models mixing sliding-window and full-attention layers (Gemma 2/3, gpt-oss, Mistral-style).

GSA selects KV blocks only on full-attention layers; sliding-window layers run
vLLM's attention untouched. Two checks enforce that the config says so:

* at start-up, from the HF config (``layer_types`` / ``sliding_window``):
  :func:`gsa.integrations.vllm.settings.check_against_model`;
* when vLLM builds each KV cache group's metadata builder (engine start, before
  any request), from the layers vLLM actually built: :func:`gsa_group` reads
  every layer's ``sliding_window`` and raises :class:`GSAVllmConfigError` for a
  sparse ratio on a windowed layer, naming the layer, expected vs got.

vLLM gives sliding and full layers separate KV cache groups (separate block
tables and metadata builders). Only groups that hold a full-attention layer plan
GSA steps; a group of windowed layers only builds vLLM's own metadata, so its
layers stay dense and the step is planned (and counted) once per full group.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional

from .settings import GSAVllmConfigError, check_sliding_layers

__all__ = ["layer_windows", "gsa_group"]


def layer_windows(vllm_config: Any, layer_names: Iterable[str]) -> Dict[int, Optional[int]]:
    """``{decoder layer index: sliding window or None}`` of the attention layers named,
    read from vLLM's built layers (``static_forward_context``)."""
    from vllm.model_executor.models.utils import extract_layer_index

    ctx = vllm_config.compilation_config.static_forward_context
    out: Dict[int, Optional[int]] = {}
    for name in layer_names:
        w = getattr(ctx.get(name), "sliding_window", None)
        out[extract_layer_index(name)] = int(w) if w is not None and int(w) > 0 else None
    return out


def gsa_group(rt: Any, vllm_config: Any, layer_names: Iterable[str]) -> bool:
    """Check one KV cache group's layers against the runtime's config; ``True`` when
    the group holds a full-attention layer (its builder plans GSA steps).

    Raises :class:`GSAVllmConfigError` when a windowed layer is sparse in the config,
    or when a layer reuses the selection of a layer of another group (each group's
    builder plans its own step, so a selection cannot cross groups)."""
    windows = layer_windows(vllm_config, layer_names)
    for l, w in windows.items():
        if w is not None:
            check_sliding_layers(rt.config, {l: "sliding_attention"}, rt.settings.origin, window=w)
    for l in windows:
        lp = rt.policy.layer(l)
        if not lp.dense and lp.selection_layer not in windows:
            raise GSAVllmConfigError(
                f"GSA vLLM plugin: {rt.settings.origin} (model {rt.config.model_name}): key "
                f"'top_k_index_reuse[{l}]': expected a layer of layer {l}'s KV cache group {sorted(windows)} "
                f"(vLLM plans each group separately), got {lp.selection_layer}")
    return any(w is None for w in windows.values())
