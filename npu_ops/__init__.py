"""GSA backend ``npu``: Ascend NPUs (Atlas A2 / A3) through torch_npu.

Per op, the first of these that is available here serves it (``gsa info`` and
the backend's probe reason say which):

1. ``custom``: the AscendC custom ops of ``npu_ops/ascendc`` when
   ``libgsa_npu_ops.so`` loads (``hash_encode_and_cache``,
   ``mla_hash_encode_and_cache``, ``hamming_dist_top_k``, ``kv_select``);
2. ``triton``: the Ascend-shaped Triton kernels of ``npu_ops.triton`` when
   triton-ascend is installed (hashing, selection, kv_select);
3. ``fia`` for ``paged_decode_attention``: ``torch_npu.npu_fused_infer_attention_score``
   (fp16/bf16; fp32 falls back to the reference);
4. ``native`` for ``sign_bits_pack``: ``torch_npu.npu_sign_bits_pack``, only if it
   passes the spec conformance check on this device (``npu_ops.signpack``);
5. ``reference``: the pure-torch reference, run on the NPU tensors.

``GSA_NPU_TIER=custom|triton|reference`` caps the choice (e.g. to cross-check
the Triton kernels on a machine that also has the custom ops).

Nothing here imports torch_npu, triton or the library at import time:
:func:`register` is cheap and the probe (run once, on first use, outside any
graph capture: call ``gsa info`` or :func:`plan` during warm-up) does the rest.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

__all__ = ["register", "plan", "Probe", "choose", "TIERS"]

TIERS = ("custom", "triton", "reference")
_INSTALL_HINT = ("install CANN and torch_npu (`pip install gsa-ops[npu]`), optionally triton-ascend; "
                 "build the AscendC ops with `bash npu_ops/ascendc/build.sh`; see npu_ops/README.md")


@dataclass
class Probe:
    """What the probe found; every field is filled without raising."""

    torch_npu: Optional[object] = None
    why_not: str = ""  # non-empty: the backend cannot run at all
    custom: Tuple[bool, str] = (False, "not probed")
    triton: Tuple[bool, str] = (False, "not probed")
    fia: bool = False
    sign_pack: Optional[Callable] = None
    sign_pack_why: str = "not probed"
    tier_cap: str = "custom"


def choose(p: Probe) -> Tuple[Dict[str, str], str]:
    """Per op, the implementation name (``custom``, ``triton``, ``fia``, ``native``,
    ``reference``), and a one-line summary for ``gsa info``. Pure: tested without torch_npu."""
    from gsa.dispatch import OP_NAMES

    from .custom import KERNELS as CUSTOM_OPS

    triton_ops = ("hash_encode", "hash_encode_and_cache", "mla_hash_encode", "mla_hash_encode_and_cache",
                  "hamming_dist_top_k", "kv_select")
    cap = TIERS.index(p.tier_cap) if p.tier_cap in TIERS else 0
    use_custom = p.custom[0] and cap <= 0
    use_triton = p.triton[0] and cap <= 1
    impl = {}
    for op in OP_NAMES:
        if use_custom and op in CUSTOM_OPS:
            impl[op] = "custom"
        elif use_triton and op in triton_ops:
            impl[op] = "triton"
        elif op == "paged_decode_attention" and p.fia:
            impl[op] = "fia"
        elif op == "sign_bits_pack" and p.sign_pack is not None:
            impl[op] = "native"
        else:
            impl[op] = "reference"
    groups: Dict[str, list] = {}
    for op, name in impl.items():
        groups.setdefault(name, []).append(op)
    parts = [f"{name}: {', '.join(ops)}" for name, ops in groups.items()]
    notes = [f"custom ops: {p.custom[1]}", f"triton-ascend: {p.triton[1]}", f"sign_bits_pack: {p.sign_pack_why}"]
    if p.tier_cap != "custom":
        notes.append(f"GSA_NPU_TIER={p.tier_cap}")
    return impl, "ok (" + "; ".join(parts) + ") [" + "; ".join(notes) + "]"


def _probe_triton() -> Tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "not installed (pip install triton-ascend==3.2.0)"
    if importlib.util.find_spec("triton.backends.ascend") is None:
        return False, "the installed triton is not triton-ascend (no triton.backends.ascend)"
    try:
        importlib.import_module("npu_ops.triton")
    except Exception as exc:
        return False, f"kernels failed to import: {type(exc).__name__}: {exc}"
    return True, "npu_ops.triton kernels"


def probe_environment() -> Probe:
    """Look at this machine: torch_npu, an NPU, the custom library, triton-ascend, native ops."""
    import torch

    p = Probe(tier_cap=os.environ.get("GSA_NPU_TIER", "custom").strip() or "custom")
    try:
        p.torch_npu = importlib.import_module("torch_npu")
    except Exception as exc:
        p.why_not = f"torch_npu is not importable ({type(exc).__name__}: {exc})"
        return p
    npu = getattr(torch, "npu", None)
    if npu is None or not npu.is_available():
        p.why_not = "torch_npu is installed but no Ascend NPU is visible (torch.npu.is_available() is False)"
        return p
    from . import custom, signpack

    p.custom = custom.load()
    p.triton = _probe_triton()
    p.fia = hasattr(p.torch_npu, "npu_fused_infer_attention_score")
    dev = torch.device("npu", torch.npu.current_device())
    p.sign_pack, p.sign_pack_why = signpack.native_sign_bits_pack(dev, p.torch_npu)
    return p


def _implementation(name: str, op: str, p: Probe) -> Callable:
    if name == "custom":
        from .custom import KERNELS

        return KERNELS[op]
    if name == "triton":
        return getattr(importlib.import_module("npu_ops.triton"), op)
    if name == "fia":
        from .attention import paged_decode_attention

        return paged_decode_attention
    if name == "native":
        return p.sign_pack
    from gsa import reference

    return getattr(reference, op)


@dataclass
class _State:
    impls: Dict[str, Callable] = field(default_factory=dict)
    names: Dict[str, str] = field(default_factory=dict)
    reason: str = "not probed"


_STATE = _State()


def _probe(environment: Callable[[], Probe] = probe_environment) -> Tuple[bool, str]:
    p = environment()
    if p.why_not:
        _STATE.reason = p.why_not
        return False, p.why_not
    names, reason = choose(p)
    _STATE.impls = {op: _implementation(n, op, p) for op, n in names.items()}
    _STATE.names, _STATE.reason = names, reason
    return True, reason


def plan() -> Dict[str, str]:
    """Which implementation serves each op on this machine (probing if needed)."""
    from gsa.dispatch import backends

    b = backends().get("npu")
    if b is not None:
        b.status()
    return dict(_STATE.names)


def _call(op: str, *args):
    return _STATE.impls[op](*args)


def register() -> None:
    """Register the ``npu`` backend (cheap; never imports torch_npu here)."""
    from gsa.dispatch import OP_NAMES, Backend, register_backend

    register_backend(Backend(
        name="npu",
        device_types=("npu",),
        # every op gets a dispatcher now, so automatic selection sees them before
        # the probe has run; the probe binds each to its implementation
        kernels={op: functools.partial(_call, op) for op in OP_NAMES},
        priority=20,
        probe=_probe,
        install_hint=_INSTALL_HINT,
    ))
