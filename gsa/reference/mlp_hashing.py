"""Reference MLP hash encoder: spec section 12 (docs/spec.md).

Pure torch, any device; float64 where the device has it (the spec's yardstick).
Inputs are validated by the custom ops (:mod:`gsa.op_checks`).

Shapes: ``x [N, H, D]``; ``weights``: ``L`` tensors ``[H, in_i, out_i]``
(``in_0 = D``, ``out_{L-1} = R``); ``biases``: ``L`` tensors ``[H, out_i]``.
Row head ``h`` uses MLP ``h`` (queries: one MLP per query head; keys: one per KV head).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

from .hashing import _accum_dtype, _scatter_codes, sign_bits_pack

__all__ = ["BAND", "mlp_project", "mlp_band", "mlp_hash_encode", "mlp_hash_encode_and_cache"]

#: spec 12's relative band: bits with |y| <= BAND * m may differ from the reference
BAND = 1e-4


def mlp_project(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                dtype: torch.dtype = None) -> torch.Tensor:
    """Spec 12's ``y``: ``x [N, H, D]`` -> ``[N, H, R]`` in float64 (float32 on devices
    without it, or ``dtype`` if given). SiLU between layers, none after the last."""
    dt = dtype or _accum_dtype(x.device)
    a = x.to(dt)
    n_layers = len(weights)
    for i, (w, b) in enumerate(zip(weights, biases)):
        a = torch.einsum("nhi,hio->nho", a, w.to(dt)) + b.to(dt).unsqueeze(0)
        if i < n_layers - 1:
            a = a * torch.sigmoid(a)
    return a


def mlp_band(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]) -> torch.Tensor:
    """Spec 12's band scale ``m [N, H, R]`` (float64): ``|a_{L-1}| @ |W_L| + |b_L|`` with
    ``a_{L-1}`` the reference's last hidden activation (``x`` for one layer). A backend's bit
    ``r`` may differ from the reference only where ``|y[r]| <= BAND * m[r]``."""
    dt = _accum_dtype(x.device)
    a = mlp_project(x, weights[:-1], biases[:-1], dtype=dt) if len(weights) > 1 else x.to(dt)
    if len(weights) > 1:
        a = a * torch.sigmoid(a)  # the last hidden layer's SiLU (mlp_project stops before it)
    return torch.einsum("nhi,hio->nho", a.abs(), weights[-1].to(dt).abs()) + biases[-1].to(dt).abs().unsqueeze(0)


def mlp_hash_encode(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]) -> torch.Tensor:
    """Spec 12. ``x [N, H, D]`` fp16/bf16/fp32 -> ``uint8 [N, H, R/8]`` = ``sign_bits_pack(MLP_h(x))``."""
    return sign_bits_pack(mlp_project(x, weights, biases))


def mlp_hash_encode_and_cache(k: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                              cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Spec 12 + 3. ``k [T, Hkv, D]``, key MLP stack (``Hkv`` heads), ``cache uint8
    [NB, Hkv, bs, R/8]`` written in place at ``slot_mapping int32/int64 [T]`` (-1 skips)."""
    _scatter_codes(mlp_hash_encode(k, weights, biases), cache, slot_mapping)
