"""Python side of the AscendC custom ops (``npu_ops/ascendc``, library ``libgsa_npu_ops.so``).

The library registers ``TORCH_LIBRARY(gsa_npu, m)`` with PrivateUse1 (NPU) and
Meta kernels:

* ``gsa_npu::hash_encode_and_cache(Tensor k, Tensor weight, Tensor(a!) cache, Tensor slot_mapping, int col_off,
  Tensor? threshold=None) -> ()``
  ``k [T, H, D]`` fp16/bf16/fp32, ``weight [H, D, R]`` (per head), ``cache uint8
  [NB, H, bs, C]``; writes the ``R/8`` code bytes at byte ``col_off`` of each slot;
  ``threshold`` (spec 13) ``[H, R]`` or ``[R]``: bit = projection ``> t``.
* ``gsa_npu::hamming_dist_top_k(Tensor q_codes, Tensor key_cache, Tensor block_table, Tensor seq_lens,
  Tensor budgets, Tensor forced, int k, int mean, int rope_bytes, int w16) -> (Tensor, Tensor)``
  (``forced`` int32 ``[F]``; ``w16 = 16 * rope_score_weight``).
* ``gsa_npu::kv_select(Tensor indices, Tensor n_sel, Tensor block_table, Tensor seq_lens, int block_size,
  int pad_id) -> (Tensor, Tensor)``

This module adapts ``gsa``'s op signatures to those (one name per op, same
arguments as ``torch.ops.gsa.<op>``). Loading needs ``torch_npu`` imported first
(the library links libtorch_npu); :func:`load` never raises.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Tuple

import torch

__all__ = ["LIB_NAME", "library_candidates", "load", "KERNELS"]

LIB_NAME = "libgsa_npu_ops.so"
_HERE = Path(__file__).resolve().parent


def library_candidates() -> List[Path]:
    """Where the built library may be: ``$GSA_NPU_OPS_LIB``, then the CMake build dirs."""
    out = []
    env = os.environ.get("GSA_NPU_OPS_LIB")
    if env:
        out.append(Path(env))
    out += [_HERE / "lib" / LIB_NAME, _HERE / "ascendc" / "build" / LIB_NAME]
    return out


def load() -> Tuple[bool, str]:
    """Load the custom-op library once; ``(ok, where or why not)``."""
    if hasattr(torch.ops, "gsa_npu") and hasattr(torch.ops.gsa_npu, "hamming_dist_top_k"):
        return True, "already loaded"
    tried = []
    for path in library_candidates():
        if not path.is_file():
            tried.append(f"{path} (absent)")
            continue
        try:
            torch.ops.load_library(str(path))
        except Exception as exc:
            tried.append(f"{path} ({type(exc).__name__}: {exc})")
            continue
        return True, str(path)
    return False, "AscendC library not built: " + "; ".join(tried) + " (build: bash npu_ops/ascendc/build.sh)"


_FORCED: Dict[Tuple[Tuple[int, ...], str], torch.Tensor] = {}


def _forced(must_select_blocks, device) -> torch.Tensor:
    # cached: building it is a host-to-device copy, which must not happen while capturing
    key = (tuple(int(m) for m in must_select_blocks), str(device))
    t = _FORCED.get(key)
    if t is None:
        t = torch.tensor(list(key[0]), dtype=torch.int32, device=device)
        _FORCED[key] = t
    return t


def _per_head(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """``[D, R]`` or ``[H, D, R]`` -> contiguous ``[H, D, R]`` (the kernel indexes by head)."""
    w = weight if weight.dim() == 3 else weight.unsqueeze(0).expand(heads, *weight.shape)
    return w.contiguous()


def hash_encode_and_cache(k, weight, cache, slot_mapping, threshold=None) -> None:
    """Spec 3 (+ 12). ``k [T, Hkv, D]``, ``weight [Hkv, D, R]`` or ``[D, R]``, ``cache uint8 [NB, Hkv, bs, R/8]``,
    ``threshold [Hkv, R]`` / ``[R]`` or ``None``."""
    torch.ops.gsa_npu.hash_encode_and_cache(k.contiguous(), _per_head(weight, k.shape[1]), cache,
                                            slot_mapping.contiguous(), 0, threshold)


def mla_hash_encode_and_cache(c_kv, k_pe, w_lora, w_rope, cache, slot_mapping) -> None:
    """Spec 3 + 9. ``c_kv [T, L]``, ``k_pe [T, P]``, ``cache uint8 [NB, 1, bs, (R_lora+R_rope)/8]``."""
    slots = slot_mapping.contiguous()
    torch.ops.gsa_npu.hash_encode_and_cache(c_kv.unsqueeze(1).contiguous(), w_lora.unsqueeze(0).contiguous(),
                                            cache, slots, 0)
    torch.ops.gsa_npu.hash_encode_and_cache(k_pe.unsqueeze(1).contiguous(), w_rope.unsqueeze(0).contiguous(),
                                            cache, slots, w_lora.shape[1] // 8)


def hamming_dist_top_k(q_codes, key_cache, block_table, seq_lens, budgets, k, must_select_blocks,
                       chunk_repre_method, rope_bytes, rope_score_weight):
    """Spec 4 + 5. Same arguments and outputs as ``gsa.ops.hamming_dist_top_k``."""
    return torch.ops.gsa_npu.hamming_dist_top_k(
        q_codes.contiguous(), key_cache, block_table.contiguous(), seq_lens.contiguous(), budgets.contiguous(),
        _forced(must_select_blocks, q_codes.device), int(k), int(chunk_repre_method == "mean"),
        int(rope_bytes), int(round(float(rope_score_weight) * 16)))


def kv_select(indices, n_sel, block_table, seq_lens, block_size, pad_id):
    """Spec 6. Same arguments and outputs as ``gsa.ops.kv_select``."""
    return torch.ops.gsa_npu.kv_select(indices.contiguous(), n_sel.contiguous(), block_table.contiguous(),
                                       seq_lens.contiguous(), int(block_size), int(pad_id))


#: ops served by the AscendC library
KERNELS = {
    "hash_encode_and_cache": hash_encode_and_cache,
    "mla_hash_encode_and_cache": mla_hash_encode_and_cache,
    "hamming_dist_top_k": hamming_dist_top_k,
    "kv_select": kv_select,
}
