"""Speculative queries (InfiniGen-style) for the offload traces: layer ``l``'s query
predicted from the residual stream of an earlier point of the same forward.

Issue 18's offload overlaps layer ``l``'s block fetch with layer ``l - 1``'s compute,
so layer ``l``'s selection can be *predicted* while ``l - 1`` runs from what exists
then. :class:`SpeculativeQueries` hooks a Hugging Face decoder (Llama / Qwen 2
layout: ``model.model.layers[i]`` with ``input_layernorm``, ``self_attn.q_proj``,
``post_attention_layernorm``; the rotary ``position_embeddings`` passed to every
layer) with plain ``torch.nn`` hooks that only keep references to the tensors the
model computes anyway:

* ``"in_prev"``: the hidden state entering layer ``l - 1`` (InfiniGen's choice:
  the prediction overlaps all of layer ``l - 1``);
* ``"attn_prev"``: layer ``l - 1``'s residual stream after its attention
  (the input of its ``post_attention_layernorm``; overlaps the MLP only);
* ``"in_prev2"``: the hidden state entering layer ``l - 2`` (two layers of lead time:
  how fast the prediction decays with the distance);
* ``"in_cur"``: layer ``l``'s own input (no speculation: reproduces the real query;
  the sanity check of the math, tests/test_offload_speculative.py).

:meth:`SpeculativeQueries.query` then applies layer ``l``'s own modules to the chosen
state: ``input_layernorm`` -> ``q_proj`` (with its bias) -> the model module's
``apply_rotary_pos_emb`` with this forward's ``(cos, sin)`` -> ``[T, Hq, D]``, the
layout ``gsa.eval.model``'s attention hook hands to ``TeacherForcedRun`` observers,
so the speculative query is hashed and scored exactly as the real one is.
Works beside :class:`gsa.eval.model.TeacherForcedRun` (its attention hook and
observer are untouched); the captured tensors are those of the latest forward.
"""
from __future__ import annotations

import sys
from typing import Dict, Optional

import torch

VARIANTS = ("in_prev", "attn_prev", "in_prev2")  #: the speculative states the traces record
ALL_VARIANTS = VARIANTS + ("in_cur",)


class SpeculativeQueries:
    """Hooks on ``model``'s decoder layers; ``query(layer, variant)`` after (or during)
    a forward. ``close()`` removes the hooks (also a context manager)."""

    def __init__(self, model):
        inner = getattr(model, "model", None)
        layers = getattr(inner, "layers", None)
        if layers is None:
            raise ValueError(f"SpeculativeQueries: expected a decoder with model.model.layers, got "
                             f"{type(model).__name__}")
        for i, lay in enumerate(layers):
            missing = [n for n in ("input_layernorm", "post_attention_layernorm", "self_attn") if not hasattr(lay, n)]
            if missing or not hasattr(lay.self_attn, "q_proj"):
                raise ValueError(f"SpeculativeQueries: layer {i} ({type(lay).__name__}) lacks "
                                 f"{missing or ['self_attn.q_proj']}: expected the Llama / Qwen 2 layer layout")
        self.layers = layers
        attn = layers[0].self_attn
        mod = sys.modules[type(attn).__module__]
        if not hasattr(mod, "apply_rotary_pos_emb"):
            raise ValueError(f"SpeculativeQueries: {mod.__name__} has no apply_rotary_pos_emb")
        self._rope = mod.apply_rotary_pos_emb  # the model's own RoPE, as its attention applies it
        self.head_dim = attn.head_dim
        self.layer_in: Dict[int, torch.Tensor] = {}  # layer -> [1, T, H] entering the layer
        self.after_attn: Dict[int, torch.Tensor] = {}  # layer -> [1, T, H] after the attention residual add
        self.rope: Optional[tuple] = None  # (cos, sin) of the latest forward
        self._handles = []
        for i, lay in enumerate(layers):
            self._handles.append(lay.register_forward_pre_hook(self._layer_pre(i), with_kwargs=True))
            self._handles.append(lay.post_attention_layernorm.register_forward_pre_hook(self._post_attn_pre(i)))

    def _layer_pre(self, i):
        def hook(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            self.layer_in[i] = h
            pe = kwargs.get("position_embeddings")
            if pe is None:
                raise ValueError(f"SpeculativeQueries: layer {i} was called without position_embeddings "
                                 "(expected the model to pass its rotary (cos, sin) to every layer)")
            self.rope = pe
        return hook

    def _post_attn_pre(self, i):
        def hook(module, args):
            self.after_attn[i] = args[0]
        return hook

    def state(self, layer: int, variant: str) -> torch.Tensor:
        """The hidden state ``[1, T, H]`` that ``variant`` uses to predict ``layer``'s query."""
        if variant not in ALL_VARIANTS:
            raise ValueError(f"SpeculativeQueries: variant must be one of {ALL_VARIANTS}, got {variant!r}")
        if variant == "in_cur":
            return self.layer_in[layer]
        back = 2 if variant == "in_prev2" else 1
        if layer < back:
            raise ValueError(f"SpeculativeQueries: layer {layer} has no layer {layer - back} to predict from")
        if variant == "attn_prev":
            return self.after_attn[layer - 1]
        return self.layer_in[layer - back]

    @torch.no_grad()
    def query_from(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """Layer ``layer``'s query for the hidden state ``hidden [1, T, H]`` at this
        forward's positions: ``float [T, Hq, D]`` (post-RoPE, the attention hook's layout)."""
        lay = self.layers[layer]
        x = lay.self_attn.q_proj(lay.input_layernorm(hidden))
        q = x.view(*x.shape[:-1], -1, self.head_dim).transpose(1, 2)  # [1, Hq, T, D]
        cos, sin = self.rope
        q, _ = self._rope(q, q, cos, sin)
        return q[0].transpose(0, 1)

    def query(self, layer: int, variant: str) -> torch.Tensor:
        """The speculative query of ``layer`` from ``variant``'s state: ``[T, Hq, D]``."""
        return self.query_from(layer, self.state(layer, variant))

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
