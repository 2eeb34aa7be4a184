"""``sign_bits_pack`` through torch_npu's native ``npu_sign_bits_pack``, behind a conformance check.

Spec 1: bit ``i`` (LSB first) of byte ``j`` is ``x[8j+i] > 0``; 0, -0 and NaN give 0.
torch_npu documents ``npu_sign_bits_pack(x, size)`` (1-D fp16/fp32 in, uint8
``[size, n/8/size]`` out) and its example packs ``x >= 0`` LSB first. If that
holds, ``~native(-x)`` is the spec's rule for every non-NaN ``x`` (``-0 >= 0``
is true, so 0 and -0 give 0), and mapping NaN to 0 first covers NaN. We never
trust that reading: :func:`conformance_check` runs the wrapped native op on
edge cases and random data on the device and compares with the reference
byte for byte; the backend uses the native op only if it passes.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

__all__ = ["wrap_native", "conformance_inputs", "conformance_check"]

NativePack = Callable[[torch.Tensor, int], torch.Tensor]


def wrap_native(native: NativePack) -> Callable[[torch.Tensor], torch.Tensor]:
    """Spec-1 ``sign_bits_pack(x [..., N]) -> uint8 [..., N/8]`` built on ``native(x1d, size)``
    (assumed to pack ``x >= 0`` LSB first; :func:`conformance_check` verifies)."""

    def sign_bits_pack(x: torch.Tensor) -> torch.Tensor:
        lead, n = x.shape[:-1], x.shape[-1]
        rows = 1
        for s in lead:
            rows *= int(s)
        if rows == 0 or n == 0:
            return torch.empty(*lead, n // 8, dtype=torch.uint8, device=x.device)
        # the native op takes fp16/fp32 only; widening bf16 keeps every sign
        xf = x if x.dtype in (torch.float16, torch.float32) else x.float()
        neg = -torch.nan_to_num(xf, nan=0.0)  # NaN -> 0 -> -0 -> packs as 0 after the flip
        packed = native(neg.reshape(-1).contiguous(), rows)
        return torch.bitwise_not(packed).reshape(*lead, n // 8).to(torch.uint8)

    return sign_bits_pack


def conformance_inputs(device: torch.device, seed: int = 1234) -> torch.Tensor:
    """``float32 [64, 64]`` probe rows: +-0, NaN, +-inf, subnormals, tiny/huge values, random."""
    g = torch.Generator().manual_seed(seed)
    edge = torch.tensor(
        [0.0, -0.0, float("nan"), float("inf"), float("-inf"), 1e-45, -1e-45, 1e-38, -1e-38,
         1.0, -1.0, 3e38, -3e38, 0.5, -0.5, 2.0], dtype=torch.float32)
    rows = [edge.repeat(4)]
    for _ in range(63):
        r = torch.randn(64, generator=g)
        r[torch.randint(0, 64, (8,), generator=g)] = 0.0
        rows.append(r)
    return torch.stack(rows).to(device)


def conformance_check(candidate: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> Tuple[bool, str]:
    """Whether ``candidate`` equals the reference on the probe set in fp32, fp16 and bf16."""
    from gsa.reference import sign_bits_pack as ref

    base = conformance_inputs(device)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = base.to(dtype)
        try:
            got = candidate(x)
        except Exception as exc:  # a native op that rejects the input fails the check
            return False, f"{dtype}: {type(exc).__name__}: {exc}"
        want = ref(x)
        if got.shape != want.shape or got.dtype != torch.uint8:
            return False, f"{dtype}: got {got.dtype}{tuple(got.shape)}, want uint8{tuple(want.shape)}"
        bad = (got.cpu() != want.cpu()).nonzero()
        if bad.numel():
            r, c = (int(v) for v in bad[0])
            return False, (f"{dtype}: byte [{r}, {c}] = {int(got[r, c])}, spec {int(want[r, c])} "
                           f"(inputs {x[r, 8 * c:8 * c + 8].float().cpu().tolist()})")
    return True, "matches spec 1 on +-0, NaN, +-inf, subnormals and random data (fp32/fp16/bf16)"


def native_sign_bits_pack(device: torch.device, torch_npu_module=None) -> Tuple[Optional[Callable], str]:
    """The wrapped native op if torch_npu has it and it passes on ``device``, else ``(None, why)``."""
    if torch_npu_module is None:
        import importlib

        torch_npu_module = importlib.import_module("torch_npu")
    native = getattr(torch_npu_module, "npu_sign_bits_pack", None)
    if native is None:
        return None, "torch_npu has no npu_sign_bits_pack"
    fn = wrap_native(native)
    ok, why = conformance_check(fn, device)
    return (fn if ok else None), ("native npu_sign_bits_pack: " + why if ok else "native npu_sign_bits_pack fails the spec: " + why)
