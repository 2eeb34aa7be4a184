"""Triton backend (``triton``) for gsa-ops: CUDA GPUs, and the CPU through the
Triton interpreter when ``TRITON_INTERPRET=1``.

``register()`` is cheap and never imports triton: each kernel entry is a thin
wrapper that imports its module on first call, and ``probe()`` reports why the
backend cannot run (triton missing, no CUDA device and no interpreter).
Kernel design notes: ``cuda_ops/README.md``.
"""
from __future__ import annotations

import importlib
import os
from typing import Callable, Tuple

__all__ = ["register", "probe", "interpreting"]

# op name -> module of this package that defines a function of the same name
_OP_MODULES = {
    "sign_bits_pack": "hashing",
    "hash_encode": "hashing",
    "hash_encode_and_cache": "hashing",
    "mla_hash_encode": "hashing",
    "mla_hash_encode_and_cache": "hashing",
    "hamming_dist_top_k": "scoring",
    "kv_select": "select",
    "paged_decode_attention": "attention",
    "mlp_hash_encode": "mlp_hashing",
    "mlp_hash_encode_and_cache": "mlp_hashing",
}

# Below the C++ `cpu` backend (10) on CPU tensors, above the reference on CUDA.
# Backend has one priority, so it depends on whether the interpreter serves CPU.
PRIORITY_INTERPRETED = 5
PRIORITY_CUDA = 50


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def probe() -> Tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return False, f"triton cannot be imported ({type(exc).__name__}: {exc})"
    if interpreting():
        return True, f"triton {triton.__version__} interpreter (TRITON_INTERPRET=1): CPU tensors"
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA device visible to torch, and TRITON_INTERPRET=1 is not set"
    return True, f"triton {triton.__version__} on {torch.cuda.get_device_name()}"


def _lazy(op: str) -> Callable:
    def run(*args):
        module = importlib.import_module(f"{__name__}.{_OP_MODULES[op]}")
        return getattr(module, op)(*args)

    run.__name__ = op
    run.__qualname__ = f"cuda_ops.{op}"
    return run


def _hot_path():
    from .hotpath import TritonHotPath

    return TritonHotPath()


def register() -> None:
    from gsa.dispatch import Backend, register_backend

    interp = interpreting()
    register_backend(
        Backend(
            name="triton",
            device_types=("cuda", "cpu") if interp else ("cuda",),
            kernels={op: _lazy(op) for op in _OP_MODULES},
            priority=PRIORITY_INTERPRETED if interp else PRIORITY_CUDA,
            probe=probe,
            hot_path=_hot_path,
            install_hint="`pip install gsa-ops[triton]` and a CUDA GPU (or TRITON_INTERPRET=1 for the CPU interpreter)",
        )
    )
