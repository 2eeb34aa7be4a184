"""MLP hash ops (spec 12, docs/spec.md): ``torch.ops.gsa.mlp_hash_encode`` and
``torch.ops.gsa.mlp_hash_encode_and_cache``, checked and dispatched like the
ops of :mod:`gsa.ops` (which re-exports the two public functions below).

Shapes: ``x [N, H, D]`` / ``k [T, Hkv, D]`` (fp16/bf16/fp32); ``weights``: a
list of ``L`` (1..3) fp32 tensors ``[H, in_i, out_i]`` with ``in_0 = D``,
``in_{i+1} = out_i``, equal hidden widths, ``out_{L-1} = R`` (a multiple of
32); ``biases``: ``L`` fp32 tensors ``[H, out_i]``. Row head ``h`` uses MLP ``h``.
"""
from __future__ import annotations

from typing import List, Sequence

import torch

from gsa import dispatch
from gsa import op_checks as C
from gsa import validate as V

__all__ = ["MAX_MLP_LAYERS", "check_mlp_stack", "mlp_hash_encode", "mlp_hash_encode_and_cache"]

Tensor = torch.Tensor
#: depths the kernels implement (spec 12: 1-, 2- and 3-layer encoders)
MAX_MLP_LAYERS = 3


def check_mlp_stack(op: str, weights: Sequence[Tensor], biases: Sequence[Tensor], heads: int, d: int) -> int:
    """Spec 12's weight rules for ``heads`` MLPs on ``d``-dim inputs; returns ``R``."""
    if not isinstance(weights, (list, tuple)) or not 1 <= len(weights) <= MAX_MLP_LAYERS:
        V.fail(op, "weights", f"a list of 1..{MAX_MLP_LAYERS} tensors [H, in, out]",
               f"{type(weights).__name__} of length {len(weights) if isinstance(weights, (list, tuple)) else '-'}")
    if not isinstance(biases, (list, tuple)) or len(biases) != len(weights):
        V.fail(op, "biases", f"a list of {len(weights)} tensors [H, out] (one per weight)",
               f"{type(biases).__name__} of length {len(biases) if isinstance(biases, (list, tuple)) else '-'}")
    width_in, hidden = d, None
    for i, (w, b) in enumerate(zip(weights, biases)):
        V.tensor(op, f"weights[{i}]", w, (torch.float32,), dim=3)
        V.tensor(op, f"biases[{i}]", b, (torch.float32,), dim=2)
        V.size(op, f"weights[{i}]", w, 0, heads, "one MLP per input head")
        V.size(op, f"weights[{i}]", w, 1, width_in, "the previous layer's width (D for the first)")
        out = w.shape[2]
        if out < 1:
            V.fail(op, f"weights[{i}]", "an output width >= 1", f"shape {tuple(w.shape)}")
        if i < len(weights) - 1:
            if hidden is not None and out != hidden:
                V.fail(op, f"weights[{i}]", f"hidden width {hidden} (all hidden layers equal)", f"shape {tuple(w.shape)}")
            hidden = out
        if tuple(b.shape) != (heads, out):
            V.fail(op, f"biases[{i}]", f"shape {(heads, out)} (heads, out width of weights[{i}])", f"shape {tuple(b.shape)}")
        width_in = out
    V.hash_bits(op, f"weights[{len(weights) - 1}]", width_in)
    return width_in


def _devices(op: str, first: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], **named) -> None:
    tensors = dict(named)
    tensors.update({f"weights[{i}]": w for i, w in enumerate(weights)})
    tensors.update({f"biases[{i}]": b for i, b in enumerate(biases)})
    for arg, t in tensors.items():
        if t.device != first.device:
            V.fail(op, arg, f"a tensor on {first.device} (as the input)", f"device {t.device}")


def check_mlp_hash_encode(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> int:
    op = "mlp_hash_encode"
    V.tensor(op, "x", x, V.FLOAT_DTYPES, dim=3)
    r = check_mlp_stack(op, weights, biases, x.shape[1], x.shape[2])
    _devices(op, x, weights, biases)
    return r


def check_mlp_hash_encode_and_cache(k: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], cache: Tensor,
                                    slot_mapping: Tensor) -> None:
    op = "mlp_hash_encode_and_cache"
    V.tensor(op, "k", k, V.FLOAT_DTYPES, dim=3)
    r = check_mlp_stack(op, weights, biases, k.shape[1], k.shape[2])
    C._check_cache(op, cache, k.shape[1], r // 8, "Hkv of k")
    V.tensor(op, "slot_mapping", slot_mapping)
    _devices(op, k, weights, biases, cache=cache, slot_mapping=slot_mapping)
    C._check_slots(op, slot_mapping, k.shape[0], cache)


@torch.library.custom_op("gsa::mlp_hash_encode", mutates_args=())
def _mlp_hash_encode(x: Tensor, weights: List[Tensor], biases: List[Tensor]) -> Tensor:
    check_mlp_hash_encode(x, weights, biases)
    return dispatch.kernel("mlp_hash_encode", x.device.type)(x, list(weights), list(biases))


@_mlp_hash_encode.register_fake
def _(x, weights, biases):
    r = check_mlp_hash_encode(x, weights, biases)
    return x.new_empty((x.shape[0], x.shape[1], r // 8), dtype=torch.uint8)


@torch.library.custom_op("gsa::mlp_hash_encode_and_cache", mutates_args=("cache",))
def _mlp_hash_encode_and_cache(k: Tensor, weights: List[Tensor], biases: List[Tensor], cache: Tensor,
                               slot_mapping: Tensor) -> None:
    check_mlp_hash_encode_and_cache(k, weights, biases, cache, slot_mapping)
    dispatch.kernel("mlp_hash_encode_and_cache", k.device.type)(k, list(weights), list(biases), cache,
                                                                 V.unit_inner(slot_mapping))


@_mlp_hash_encode_and_cache.register_fake
def _(k, weights, biases, cache, slot_mapping):
    check_mlp_hash_encode_and_cache(k, weights, biases, cache, slot_mapping)
    return None


def _tensor_list(op: str, arg: str, v: object) -> List[Tensor]:
    if not isinstance(v, (list, tuple)):
        V.fail(op, arg, "a list of tensors", type(v).__name__)
    for i, t in enumerate(v):
        V.tensor(op, f"{arg}[{i}]", t)
    return list(v)


def mlp_hash_encode(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> Tensor:
    """Spec 12. ``x [N, H, D]`` fp16/bf16/fp32 with an ``H``-head MLP stack (``weights[i]
    fp32 [H, in_i, out_i]``, ``biases[i] fp32 [H, out_i]``, 1..3 layers, SiLU between)
    -> ``uint8 [N, H, R/8]``, bit ``r`` = ``MLP_h(x)[r] > 0`` (spec 1 packing).
    Queries pass the query stack (``H = Hq``), keys the key stack (``H = Hkv``)."""
    op = "mlp_hash_encode"
    V.tensor(op, "x", x)
    return torch.ops.gsa.mlp_hash_encode(x, _tensor_list(op, "weights", weights), _tensor_list(op, "biases", biases))


def mlp_hash_encode_and_cache(k: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], cache: Tensor,
                              slot_mapping: Tensor) -> None:
    """Spec 12 + 3. Key codes of ``k [T, Hkv, D]`` (key MLP stack, ``Hkv`` heads) written
    into ``cache uint8 [NB, Hkv, bs, R/8]`` in place at ``slot_mapping int32/int64 [T]``
    (``-1`` skips; a slot at most once)."""
    op = "mlp_hash_encode_and_cache"
    for arg, t in (("k", k), ("cache", cache), ("slot_mapping", slot_mapping)):
        V.tensor(op, arg, t)
    torch.ops.gsa.mlp_hash_encode_and_cache(k, _tensor_list(op, "weights", weights),
                                            _tensor_list(op, "biases", biases), cache, slot_mapping)
