"""Input checks for the public op boundary (gsa.ops).

Two levels:

* cheap checks, always: dtype, rank, shape agreement, device agreement, static
  arguments. No device data is read.
* range checks (``seq_len >= 1``, block ids and slots in range, ``k`` large
  enough, ...): they read tensor values, so on an accelerator they need a host
  sync. They run when the tensors are on the CPU (free) or when debug mode is
  on (``GSA_DEBUG=1`` or :func:`set_debug`), never while compiling or capturing.

Every error is a :class:`GSAInputError` (a ``ValueError``) that names the
argument and says expected vs got.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

__all__ = ["GSAInputError", "set_debug", "debug_enabled", "range_checks_on"]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32,)
SLOT_DTYPES = (torch.int32, torch.int64)

_DEBUG: Optional[bool] = None


class GSAInputError(ValueError):
    """Bad input to a GSA op: names the argument, expected vs got."""


def set_debug(enabled: Optional[bool]) -> None:
    """Turn full range checks on device tensors on/off (``None``: follow ``GSA_DEBUG``)."""
    global _DEBUG
    _DEBUG = enabled


def debug_enabled() -> bool:
    if _DEBUG is not None:
        return _DEBUG
    return os.environ.get("GSA_DEBUG", "0") not in ("", "0", "false", "False")


def _capturing() -> bool:
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def range_checks_on(*tensors: torch.Tensor) -> bool:
    """Whether value-reading checks run for these tensors now."""
    if _capturing():
        return False
    if any(getattr(t, "is_meta", False) or type(t).__name__ == "FakeTensor" for t in tensors):
        return False
    return debug_enabled() or all(t.device.type == "cpu" for t in tensors)


def fail(op: str, arg: str, expected: str, got: object) -> None:
    raise GSAInputError(f"gsa.{op}: argument '{arg}': expected {expected}, got {got}")


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    return " or ".join(str(d).replace("torch.", "") for d in dtypes)


def tensor(
    op: str,
    arg: str,
    t: object,
    dtypes: Optional[Sequence[torch.dtype]] = None,
    dim: Optional[int] = None,
    min_dim: Optional[int] = None,
) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        fail(op, arg, "a torch.Tensor", type(t).__name__)
    if dtypes is not None and t.dtype not in dtypes:
        fail(op, arg, f"dtype {_dtype_names(dtypes)}", str(t.dtype).replace("torch.", ""))
    if dim is not None and t.dim() != dim:
        fail(op, arg, f"a {dim}-D tensor", f"shape {tuple(t.shape)}")
    if min_dim is not None and t.dim() < min_dim:
        fail(op, arg, f"at least {min_dim} dimensions", f"shape {tuple(t.shape)}")
    return t


def size(op: str, arg: str, t: torch.Tensor, axis: int, expected: int, what: str) -> None:
    if t.shape[axis] != expected:
        fail(op, arg, f"shape[{axis}] == {expected} ({what})", f"shape {tuple(t.shape)}")


def same_device(op: str, **tensors: torch.Tensor) -> None:
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            fail(op, name, f"device {first.device} (same as '{first_name}')", t.device)


def hash_bits(op: str, arg: str, r: int) -> None:
    if r % 32 != 0 or r <= 0:
        fail(op, arg, "hash bits R a positive multiple of 32 (last dim)", r)


def code_bytes(op: str, arg: str, c: int) -> None:
    if c % 4 != 0 or c <= 0:
        fail(op, arg, "code bytes a positive multiple of 4 (R % 32 == 0)", c)


def host_values(t: torch.Tensor) -> np.ndarray:
    """A tensor's values as a numpy array for range checks: zero-copy on the CPU;
    on an accelerator a device-to-host copy (a sync: range checks only run there
    in debug mode). numpy keeps each check to microseconds, where a chain of
    small torch ops costs about a millisecond on the CPU."""
    return t.detach().cpu().numpy()


def all_in(op: str, arg: str, values, lo: int, hi: int, what: str) -> None:
    """Every value in ``[lo, hi)``; report the first offender."""
    v = host_values(values) if isinstance(values, torch.Tensor) else np.asarray(values)
    if v.size == 0:
        return
    flat = v.reshape(-1)
    bad = (flat < lo) | (flat >= hi)
    if bad.any():
        pos = int(np.argmax(bad))
        fail(op, arg, f"{what} in [{lo}, {hi})", f"{int(flat[pos])} at flat position {pos}")
