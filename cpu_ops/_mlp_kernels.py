"""C++ CPU kernels of spec 12 (the MLP hash encoder, docs/spec.md): torch CPU
tensors -> raw buffers for ``cpu_ops._gsa_cpu.mlp_hash_encode_and_cache``.

Signatures are those of ``torch.ops.gsa.mlp_hash_encode*`` (validated inside the
custom op, :mod:`gsa.ops_mlp`). The MLP runs in fp32 in C++, fused with the sign
packing and the cache write; plain codes are the same kernel writing row ``t`` to
slot ``t`` of a ``[N, H, 1, C]`` view of the output.
"""
from __future__ import annotations

from typing import List

import torch

from cpu_ops import extension

__all__ = ["KERNELS", "mlp_hash_encode", "mlp_hash_encode_and_cache"]

Tensor = torch.Tensor


def _run(x: Tensor, weights: List[Tensor], biases: List[Tensor], cache: Tensor, slots) -> None:
    """``x [T, H, D]`` -> codes into contiguous ``cache uint8 [NB, H, bs, C]`` (``slots``
    int32/int64 ``[T]``, or ``None``: row ``t`` -> slot ``t``)."""
    t, h, d = x.shape
    if t == 0:
        return
    xf = x.to(torch.float32).contiguous()
    ws = [w.contiguous() for w in weights]
    bs_ = [b.contiguous() for b in biases]
    widths = [d] + [w.shape[2] for w in ws]
    s = slots.contiguous() if slots is not None else None
    ext = extension()
    ext.mlp_hash_encode_and_cache(
        xf.data_ptr(), t, h, d, [w.data_ptr() for w in ws], [b.data_ptr() for b in bs_], widths,
        cache.data_ptr(), cache.shape[0], cache.shape[2], s.data_ptr() if s is not None else 0,
        bool(s is not None and s.dtype == torch.int64), ext.get_num_threads())


def mlp_hash_encode(x: Tensor, weights: List[Tensor], biases: List[Tensor]) -> Tensor:
    """Spec 12. ``x [N, H, D]`` fp16/bf16/fp32 -> ``uint8 [N, H, R/8]``."""
    n, h, _ = x.shape
    out = torch.empty((n, h, 1, weights[-1].shape[2] // 8), dtype=torch.uint8)
    _run(x, weights, biases, out, None)
    return out.reshape(n, h, out.shape[-1])


def mlp_hash_encode_and_cache(k: Tensor, weights: List[Tensor], biases: List[Tensor], cache: Tensor,
                              slot_mapping: Tensor) -> None:
    """Spec 12 + 3. ``k [T, Hkv, D]`` -> ``cache uint8 [NB, Hkv, bs, R/8]`` in place at
    ``slot_mapping int32/int64 [T]`` (slots < 0 or past the cache: never written)."""
    if cache.is_contiguous():
        _run(k, weights, biases, cache, slot_mapping)
        return
    # a strided cache view (rare): codes first, then the same slot rule by indexing
    codes = mlp_hash_encode(k, weights, biases)
    nb, _, bs, _ = cache.shape
    s = slot_mapping.to(torch.int64)
    keep = (s >= 0) & (s < nb * bs)
    cache[s[keep] // bs, :, s[keep] % bs, :] = codes[keep]


KERNELS = {"mlp_hash_encode": mlp_hash_encode, "mlp_hash_encode_and_cache": mlp_hash_encode_and_cache}
