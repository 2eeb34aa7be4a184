"""Backend registry and kernel selection.

``gsa`` never imports a backend module directly. Backends (``cpu_ops``,
``cuda_ops``, ``npu_ops``, or a third-party package) register themselves by
calling :func:`register_backend` from a ``register()`` function that is found
through the ``gsa.backends`` entry-point group (or, for a source checkout that
was not pip-installed, the module names in ``_BUILTIN_BACKEND_MODULES``).

Selection for one op on one device, first match wins:

1. the backend forced by :func:`use_backend` (a context manager), else by the
   ``GSA_BACKEND`` environment variable. A forced backend that is not
   available raises :class:`BackendUnavailableError` saying what is missing
   and how to install it. A forced backend that is available but has no kernel
   for the op (e.g. the C++ CPU backend has no attention kernel) falls back to
   ``reference``; :func:`resolve` reports the backend actually used.
2. otherwise the available backend with the highest priority that has a kernel
   for this op on this device type;
3. otherwise ``reference`` (pure torch, every device).

A kernel receives exactly the arguments of the ``torch.ops.gsa.<op>`` schema,
already validated inside the custom op (:mod:`gsa.op_checks`; index tensors have a
unit inner stride).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "register_backend",
    "use_backend",
    "resolve",
    "backends",
    "backend_report",
    "OP_NAMES",
]

#: Every op of the contract (docs/spec.md). Backends implement any subset.
OP_NAMES = (
    "sign_bits_pack",
    "hash_encode",
    "hash_encode_and_cache",
    "mla_hash_encode",
    "mla_hash_encode_and_cache",
    "hamming_dist_top_k",
    "kv_select",
    "paged_decode_attention",
    "mlp_hash_encode",
    "mlp_hash_encode_and_cache",
)

#: backend name -> module with a ``register()`` (used when entry points are absent)
_BUILTIN_BACKEND_MODULES = {"cpu": "cpu_ops", "triton": "cuda_ops", "npu": "npu_ops"}


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run here."""


@dataclass
class Backend:
    """One backend: which devices it serves and a kernel per op.

    ``probe`` returns ``(ok, reason)``; it is called once, lazily, so that a
    backend module can register cheaply and defer heavy imports (triton,
    torch_npu, a compiled library) until first use. ``kernels`` may be filled
    by the probe.
    """

    name: str
    device_types: Tuple[str, ...]
    kernels: Dict[str, Callable] = field(default_factory=dict)
    priority: int = 0
    probe: Optional[Callable[[], Tuple[bool, str]]] = None
    install_hint: str = ""
    #: optional factory of the backend's decode hot path (see :mod:`gsa.hotpath`):
    #: an object with ``hash_into``, ``hash_cache``, ``select_into``, ``attention_into``
    hot_path: Optional[Callable[[], Any]] = None
    _status: Optional[Tuple[bool, str]] = field(default=None, repr=False)

    def status(self) -> Tuple[bool, str]:
        if self._status is None:
            if self.probe is None:
                self._status = (True, "ok")
            else:
                try:
                    self._status = self.probe()
                except Exception as exc:  # a probe must never break dispatch
                    self._status = (False, f"probe failed: {type(exc).__name__}: {exc}")
        return self._status

    @property
    def available(self) -> bool:
        return self.status()[0]

    def serves(self, device_type: str) -> bool:
        return device_type in self.device_types or "*" in self.device_types


_REGISTRY: Dict[str, Backend] = {}
#: backend name -> why it could not even be registered (import failure)
_LOAD_ERRORS: Dict[str, str] = {}
_DISCOVERED = False
_LOCK = threading.RLock()
_LOCAL = threading.local()

_INSTALL_HINTS = {
    "cpu": "build the C++ extension: `pip install -e .` with a C++ compiler and pybind11 present",
    "triton": "`pip install gsa-ops[triton]` and a CUDA GPU (or TRITON_INTERPRET=1 for the CPU interpreter)",
    "npu": "install CANN, torch_npu (`pip install gsa-ops[npu]`) and run on an Ascend NPU; see npu_ops/README.md",
}


def register_backend(backend: Backend) -> Backend:
    """Add (or replace) a backend. Called by backend modules' ``register()``."""
    if backend.name == "reference":
        raise ValueError("backend name 'reference' is reserved for the pure-torch reference")
    unknown = set(backend.kernels) - set(OP_NAMES)
    if unknown:
        raise ValueError(f"backend {backend.name!r} registers unknown ops {sorted(unknown)}; known: {OP_NAMES}")
    with _LOCK:
        _REGISTRY[backend.name] = backend
        _LOAD_ERRORS.pop(backend.name, None)
    return backend


def _reference_backend() -> Backend:
    from gsa import reference

    return Backend(
        name="reference",
        device_types=("*",),
        kernels={op: getattr(reference, op) for op in OP_NAMES},
        priority=-100,
    )


def _discover() -> None:
    """Load every backend module once (entry points, then built-in names)."""
    global _DISCOVERED
    with _LOCK:
        if _DISCOVERED:
            return
        _DISCOVERED = True
        _REGISTRY.setdefault("reference", _reference_backend())
        seen = set()
        try:
            from importlib.metadata import entry_points

            for ep in entry_points(group="gsa.backends"):
                seen.add(ep.value.split(":")[0])
                try:
                    ep.load()()
                except Exception as exc:
                    _LOAD_ERRORS[ep.name] = f"{type(exc).__name__}: {exc}"
        except Exception:  # pragma: no cover - metadata machinery broken
            pass
        for name, mod in _BUILTIN_BACKEND_MODULES.items():
            if mod in seen or name in _REGISTRY:
                continue
            try:
                module = importlib.import_module(mod)
            except ImportError as exc:
                _LOAD_ERRORS[name] = f"cannot import {mod}: {exc}"
                continue
            try:
                module.register()
            except Exception as exc:
                _LOAD_ERRORS[name] = f"{type(exc).__name__}: {exc}"


def backends() -> Dict[str, Backend]:
    """All registered backends by name (discovering them on first call)."""
    _discover()
    return dict(_REGISTRY)


def _forced_name() -> Optional[str]:
    stack = getattr(_LOCAL, "stack", None)
    if stack:
        return stack[-1]
    env = os.environ.get("GSA_BACKEND", "").strip()
    return env or None


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """Force backend ``name`` for ops called inside the block (``None``: automatic).

    >>> with use_backend("reference"):
    ...     codes = gsa.ops.hash_encode(x, w)
    """
    if name is not None:
        _require(name)
    stack = getattr(_LOCAL, "stack", None)
    if stack is None:
        stack = _LOCAL.stack = []
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def _require(name: str) -> Backend:
    regs = backends()
    if name not in regs:
        why = _LOAD_ERRORS.get(name, "it is not installed")
        hint = _INSTALL_HINTS.get(name, "")
        raise BackendUnavailableError(
            f"GSA backend {name!r} was requested but is missing: {why}."
            + (f" To install: {hint}." if hint else "")
            + f" Registered backends: {sorted(regs)}."
        )
    backend = regs[name]
    ok, reason = backend.status()
    if not ok:
        hint = backend.install_hint or _INSTALL_HINTS.get(name, "")
        raise BackendUnavailableError(
            f"GSA backend {name!r} was requested but is not available here: {reason}."
            + (f" To install: {hint}." if hint else "")
        )
    return backend


def resolve(op: str, device_type: str) -> Backend:
    """The backend that will run ``op`` on a tensor of ``device_type``."""
    if op not in OP_NAMES:
        raise ValueError(f"unknown GSA op {op!r}; known: {OP_NAMES}")
    regs = backends()
    forced = _forced_name()
    if forced is not None:
        backend = _require(forced)
        if op in backend.kernels and backend.serves(device_type):
            return backend
        if forced != "reference" and not backend.serves(device_type):
            raise BackendUnavailableError(
                f"GSA backend {forced!r} was requested for op {op!r} on a {device_type!r} tensor, "
                f"but it serves only {backend.device_types}"
            )
        return regs["reference"]
    candidates = [
        b for b in regs.values()
        if b.name != "reference" and op in b.kernels and b.serves(device_type) and b.available
    ]
    if candidates:
        return max(candidates, key=lambda b: b.priority)
    return regs["reference"]


def kernel(op: str, device_type: str) -> Callable:
    return resolve(op, device_type).kernels[op]


def backend_report() -> Dict[str, dict]:
    """For ``gsa info``: every known backend, whether it runs here and why not."""
    regs = backends()
    out = {}
    for name in ("reference", "cpu", "triton", "npu"):
        if name in regs:
            ok, reason = regs[name].status()
            out[name] = {
                "available": ok,
                "reason": reason,
                "devices": list(regs[name].device_types),
                "ops": sorted(regs[name].kernels),
            }
        else:
            out[name] = {
                "available": False,
                "reason": _LOAD_ERRORS.get(name, "not installed") + f" ({_INSTALL_HINTS.get(name, '')})",
                "devices": [],
                "ops": [],
            }
    for name, b in regs.items():
        if name not in out:
            ok, reason = b.status()
            out[name] = {"available": ok, "reason": reason, "devices": list(b.device_types), "ops": sorted(b.kernels)}
    return out
