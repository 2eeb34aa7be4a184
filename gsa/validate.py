"""Input checks for the public op boundary (gsa.ops).

Two levels:

* cheap checks, always: dtype, rank, shape agreement, device agreement, static
  arguments. No device data is read.
* range checks (``seq_len >= 1``, block ids and slots in range, ``k`` large
  enough, ...): they read tensor values, so on an accelerator they need a host
  sync. They run when the tensors are on the CPU (free) or when debug mode is
  on (``GSA_DEBUG=1`` or :func:`set_debug`), never while compiling or capturing.
  ``GSA_DEBUG`` is read at import and by ``set_debug(None)``, not on every check.

Every error is a :class:`GSAInputError` (a ``ValueError``) that names the
argument and says expected vs got.
"""
from __future__ import annotations

import operator
import os
from typing import Iterable, List, Optional, Sequence

import numpy as np
import torch

__all__ = ["GSAInputError", "set_debug", "debug_enabled", "range_checks_on"]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32,)
SLOT_DTYPES = (torch.int32, torch.int64)
INT32_MAX = 2**31 - 1
# Spec 5 (gsa-ops 1.2): at most this many distinct must_select_blocks entries, on every
# backend (the Triton selection kernel takes them as scalar arguments).
MAX_FORCED_BLOCKS = 8


def _env_debug() -> bool:
    return os.environ.get("GSA_DEBUG", "0") not in ("", "0", "false", "False")


_DEBUG: Optional[bool] = None  # set_debug's setting (None: follow GSA_DEBUG)
# The answer of debug_enabled(). GSA_DEBUG is read here, at import, and again by set_debug(None):
# a decode step asks tens of times per layer, and an os.environ read costs about a microsecond.
_DEBUG_ON: bool = _env_debug()


class GSAInputError(ValueError):
    """Bad input to a GSA op: names the argument, expected vs got."""


def set_debug(enabled: Optional[bool]) -> None:
    """Turn full range checks on device tensors on/off (``None``: follow ``GSA_DEBUG``, read
    again now: a change of the environment variable after ``import gsa`` takes effect here)."""
    global _DEBUG, _DEBUG_ON
    _DEBUG = enabled
    _DEBUG_ON = _env_debug() if enabled is None else bool(enabled)


def debug_enabled() -> bool:
    """Debug mode: :func:`set_debug`'s setting, else ``GSA_DEBUG`` as read at import or at
    the last ``set_debug(None)``."""
    return _DEBUG_ON


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


# ----------------------------------------------------------------------------
# Python (non-tensor) arguments: the public API turns them into the custom op's
# schema types, so a float, a string or a bool never reaches a kernel truncated.
# ----------------------------------------------------------------------------

def int_arg(op: str, arg: str, v: object, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    """An integer (Python or numpy; not bool, float or str) in ``[lo, hi]``."""
    if isinstance(v, bool):
        fail(op, arg, "an integer", repr(v))
    try:
        n = operator.index(v)
    except TypeError:
        fail(op, arg, "an integer", repr(v))
    if (lo is not None and n < lo) or (hi is not None and n > hi):
        lo_s = "-inf" if lo is None else lo
        hi_s = "inf" if hi is None else hi
        fail(op, arg, f"an integer in [{lo_s}, {hi_s}]", n)
    return n


def float_arg(op: str, arg: str, v: object) -> float:
    if isinstance(v, (bool, str, bytes)):
        fail(op, arg, "a number", repr(v))
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        fail(op, arg, "a number", repr(v))
    raise AssertionError  # unreachable


def str_arg(op: str, arg: str, v: object, choices: Sequence[str]) -> str:
    if not isinstance(v, str) or v not in choices:
        fail(op, arg, " or ".join(repr(c) for c in choices), repr(v))
    return v  # type: ignore[return-value]


def forced_blocks(op: str, arg: str, v: object) -> List[int]:
    """``must_select_blocks``: a list/tuple of integers (int32 range), at most
    :data:`MAX_FORCED_BLOCKS` distinct values (spec 5)."""
    if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)):
        fail(op, arg, "a list of integers", repr(v))
    out = []
    for i, m in enumerate(v):  # type: ignore[union-attr]
        if isinstance(m, bool):
            fail(op, arg, f"a list of integers; entry {i}", repr(m))
        try:
            out.append(operator.index(m))
        except TypeError:
            fail(op, arg, f"a list of integers; entry {i}", repr(m))
    check_forced(op, arg, out)
    return out


def check_forced(op: str, arg: str, forced: Sequence[int]) -> None:
    """Value rules of ``must_select_blocks`` (also run on the raw custom op)."""
    for m in forced:
        if not -INT32_MAX - 1 <= m <= INT32_MAX:
            fail(op, arg, "entries in the int32 range", m)
    if len(set(forced)) > MAX_FORCED_BLOCKS:
        fail(op, arg, f"at most {MAX_FORCED_BLOCKS} distinct entries (spec 5)", list(forced))


# ----------------------------------------------------------------------------
# layout: strides of tensors a kernel writes, and index tensors normalised
# ----------------------------------------------------------------------------

def writable(op: str, arg: str, t: torch.Tensor) -> None:
    """A tensor written in place: unit stride on the last dim and no two elements
    sharing memory (sorted by stride, each stride spans the dims below it). Kernels
    write rows of bytes, so any other layout could land outside the view."""
    dims = [(t.stride(i), t.shape[i]) for i in range(t.dim()) if t.shape[i] > 1]
    if t.dim() and t.shape[-1] > 1 and t.stride(-1) != 1:
        fail(op, arg, "a last-dim stride of 1 (written in place)", f"strides {tuple(t.stride())}")
    span = 1
    for st, n in sorted(dims):
        if st < span:
            fail(op, arg, "a non-overlapping view (written in place)",
                 f"shape {tuple(t.shape)} strides {tuple(t.stride())}")
        span = st * n


def unit_inner(t: torch.Tensor) -> torch.Tensor:
    """Small index tensors with a non-unit inner stride become contiguous (a copy of
    a few bytes; graph-safe). Kernels index their last dim as if contiguous."""
    if t.dim() and t.shape[-1] > 1 and t.stride(-1) != 1:
        return t.contiguous()
    return t


def nonempty(op: str, arg: str, t: torch.Tensor, axes: Sequence[int], what: str) -> None:
    for a in axes:
        if t.shape[a] < 1:
            fail(op, arg, f"shape[{a}] >= 1 ({what})", f"shape {tuple(t.shape)}")


def score_bound(op: str, hq: int, c: int, rope_bytes: int, w16: int) -> None:
    """Spec 4: token scores are int32 in every backend: ``16*Hq*R_main + w16*Hq*R_rope``
    must fit (block sums for ``mean`` are int64)."""
    bound = 16 * hq * 8 * (c - rope_bytes) + w16 * hq * 8 * rope_bytes
    if bound > INT32_MAX:
        fail(op, "q_codes", f"Hq * R small enough that token scores fit int32 "
                            f"(16*Hq*R_main + 16w*Hq*R_rope <= {INT32_MAX})", f"{bound} (Hq = {hq}, C = {c})")


def distinct_slots(op: str, arg: str, slots: np.ndarray) -> None:
    """Spec 3 (1.2): no slot written twice in one call."""
    s = slots[slots >= 0]
    if s.size < 2:
        return
    srt = np.sort(s)
    dup = srt[1:] == srt[:-1]
    if dup.any():
        fail(op, arg, "distinct slots (each cache slot written at most once per call)",
             f"slot {int(srt[1:][dup][0])} more than once")
