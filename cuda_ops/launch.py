"""Direct Triton launches for the decode hot path.

``kernel[grid](*args)`` costs several microseconds of Python per launch on
Triton 3.x: it binds the arguments, computes their specialisation (integers
equal to 1 or divisible by 16, pointer alignment), hashes that into a cache
key and only then calls the C launcher. On a decode step every one of those
facts is fixed by the shapes, which the hot path checks once per step. A
:class:`BoundLaunch` pays the normal launch once (which compiles, or finds the
compiled kernel) and then calls the compiled kernel's launcher directly with
the same argument layout.

Safety: a compiled kernel is valid only for arguments with the same
specialisation (integer values equal to 1 or divisible by 16, tensor dtypes,
16-byte pointer alignment). A :class:`BoundLaunch` remembers the integer
arguments and tensor dtypes of the launch that compiled it and launches
directly only when a call has the same integers, the same dtypes and 16-byte
aligned pointers; any other call takes the normal launch (which picks or
compiles the right variant) and rebinds. On a decode step the integers are
shapes and strides, so they repeat. In the Triton interpreter
(``TRITON_INTERPRET=1``) and on Triton versions without this launcher API,
every call is a normal launch.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import torch

from . import interpreting

__all__ = ["BoundLaunch", "LaunchCache", "direct_launch_available", "launch", "sm_count"]

_INTERPRET = interpreting()


def direct_launch_available() -> bool:
    """Whether :class:`BoundLaunch` can skip Triton's binder (CUDA, not the interpreter)."""
    return not _INTERPRET


class BoundLaunch:
    """One kernel launched many times with the same constexprs and grid shape.

    ``fn``: a ``@triton.jit`` function. ``constexprs``: its compile-time
    arguments (and launch options ``num_warps`` / ``num_stages``) by name.
    ``__call__(grid, *args)`` takes the runtime arguments in the kernel's
    parameter order (constexprs left out).
    """

    def __init__(self, fn, **constexprs: Any):
        self.fn = fn
        self.constexprs = constexprs
        names = list(fn.arg_names)
        opts = {"num_warps", "num_stages", "num_ctas", "maxnreg"}
        self._const_pos = [(i, constexprs[n]) for i, n in enumerate(names) if n in constexprs and n not in opts]
        self._n_args = len(names)
        self._compiled = None
        self._sig: Tuple[Any, ...] = ()
        self._run = None

    def _full_args(self, args: Sequence[Any]) -> Tuple[Any, ...]:
        full = list(args)
        for i, v in self._const_pos:
            full.insert(i, v)
        if len(full) != self._n_args:
            raise TypeError(f"{self.fn.__name__}: expected {self._n_args - len(self._const_pos)} runtime arguments, "
                            f"got {len(args)}")
        return tuple(full)

    @staticmethod
    def _signature(args: Sequence[Any]) -> Tuple[Any, ...]:
        sig = []
        for a in args:
            if isinstance(a, torch.Tensor):
                sig.append(a.dtype)
            elif isinstance(a, (bool, int)):
                sig.append(a)
            else:
                sig.append(None)  # floats are not specialised
        return tuple(sig)

    def _matches(self, args: Sequence[Any]) -> bool:
        for a, s in zip(args, self._sig):
            if s is None:
                continue
            if isinstance(s, torch.dtype):
                if not isinstance(a, torch.Tensor) or a.dtype is not s or a.data_ptr() & 15:
                    return False
            elif a != s or type(a) is not type(s):
                return False
        return len(args) == len(self._sig)

    def __call__(self, grid: Tuple[int, int, int], *args: Any) -> None:
        """Launch on the current CUDA stream (capturable: no host sync, no allocation)."""
        if self._run is not None and self._matches(args):
            ck = self._compiled
            stream = torch._C._cuda_getCurrentRawStream(torch.cuda.current_device())
            self._run(grid[0], grid[1], grid[2], stream, ck.function, ck.packed_metadata, None, None, None,
                      *self._full_args(args))
            return
        ck = self.fn[grid](*args, **self.constexprs)
        self._run = None
        if direct_launch_available() and ck is not None and all(
                not isinstance(a, torch.Tensor) or a.data_ptr() % 16 == 0 for a in args):
            try:
                from triton import knobs

                if knobs.runtime.launch_enter_hook is None and knobs.runtime.launch_exit_hook is None:
                    self._compiled = ck
                    self._sig = self._signature(args)
                    self._run = ck.run
            except Exception:  # another Triton layout: keep the normal launch
                self._run = None


class LaunchCache:
    """Bound launches keyed by their constexprs (one per shape signature)."""

    def __init__(self) -> None:
        self._d: Dict[Tuple, BoundLaunch] = {}

    def get(self, fn, **constexprs: Any) -> BoundLaunch:
        key = (fn.fn if hasattr(fn, "fn") else fn, tuple(sorted(constexprs.items())))
        b = self._d.get(key)
        if b is None:
            b = self._d[key] = BoundLaunch(fn, **constexprs)
        return b


def launch(fn, grid, args: Sequence[Any], constexprs: Dict[str, Any], cache: "LaunchCache | None" = None) -> None:
    """``fn[grid](*args, **constexprs)``, or through ``cache``'s bound launch (hot path)."""
    if cache is None:
        fn[grid](*args, **constexprs)
    else:
        cache.get(fn, **constexprs)(grid, *args)


_SMS: Dict[int, int] = {}


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (cached: the property query costs ~8 us); 1 elsewhere."""
    if device.type != "cuda":
        return 1
    idx = device.index if device.index is not None else torch.cuda.current_device()
    n = _SMS.get(idx)
    if n is None:
        n = _SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return n
