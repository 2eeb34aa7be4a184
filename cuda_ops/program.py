"""Recorded launch programs: a decode layer's kernels replayed from Python at a few
microseconds each.

The op wrappers (``hashing._launch``, ``scoring.select_blocks``,
``attention.paged_decode_attention``) compute grids, block sizes and the integer
arguments from shapes on every call, then Triton's launcher binds and specialises
the arguments again: tens of microseconds per kernel. For one validated signature
(fixed shapes, strides and dtypes) all of that is constant, so :class:`Program`
records the wrappers' launches once (``launch(..., cache=Recorder)``) and later
calls only swap the tensors that change between calls and call the compiled
kernels' launchers directly.

Which tensors may change is declared (``inputs``, by name); every other tensor a
recorded launch received must be one of the declared persistent ``buffers``, else
the program refuses to build (a wrapper made a temporary, e.g. a ``.contiguous()``
copy, whose address would go stale). A call checks the new tensors' 16-byte
alignment (the compiled kernels' specialisation; integers and dtypes are fixed by
the signature); a misaligned tensor, a launch hook (a profiler) or the interpreter
takes Triton's normal launch for that kernel.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch

from . import interpreting

__all__ = ["Recorder", "Program", "ProgramError"]

_OPTS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


class ProgramError(RuntimeError):
    """The recorded launches cannot be replayed safely (the caller uses the op path)."""


class Recorder:
    """Pass as ``cache=`` to a wrapper: its launches are recorded, not run."""

    def __init__(self) -> None:
        self.calls: List[Tuple[Any, Tuple[int, int, int], Tuple[Any, ...], Dict[str, Any]]] = []

    def record(self, fn, grid, args, consts) -> None:
        g = tuple(grid) + (1,) * (3 - len(grid))
        self.calls.append((fn, g, tuple(args), dict(consts)))


try:
    from triton import knobs as _knobs
except Exception:  # an older Triton: hooks live elsewhere; normal launches only
    _knobs = None


def _hooks_empty() -> bool:
    """No launch hook is installed (Triton keeps them in HookChains; a profiler adds some)."""
    if _knobs is None:
        return False
    rt = _knobs.runtime
    return not getattr(rt.launch_enter_hook, "calls", True) and not getattr(rt.launch_exit_hook, "calls", True)


class _Launch:
    __slots__ = ("fn", "grid", "consts", "full", "rt_pos", "subs", "ck", "run", "function", "packed", "raw", "coop",
                 "pdl")

    def __init__(self, fn, grid, args, consts, ptr_names: Dict[Tuple[int, torch.dtype], int], fixed: set):
        self.fn, self.grid, self.consts = fn, grid, consts
        names = list(fn.arg_names)
        full: List[Any] = []
        rt_pos: List[int] = []
        it = iter(args)
        for n in names:
            if n in consts and n not in _OPTS:
                full.append(consts[n])
            else:
                rt_pos.append(len(full))
                full.append(next(it))
        self.full, self.rt_pos = full, rt_pos
        self.subs: List[Tuple[int, int]] = []  # (position in full, input index)
        for pos in rt_pos:
            a = full[pos]
            if isinstance(a, torch.Tensor):
                key = (a.data_ptr(), a.dtype)
                if key in ptr_names:
                    self.subs.append((pos, ptr_names[key]))
                elif a.data_ptr() not in fixed:
                    raise ProgramError(f"{fn.__name__}: a tensor argument at {pos} is neither an input nor a buffer")
        self.ck = None
        self.raw = None

    def __call__(self, tensors: Sequence[torch.Tensor], stream: int, direct: bool) -> None:
        full = self.full
        for pos, i in self.subs:
            full[pos] = tensors[i]
        if self.ck is not None and direct:
            g = self.grid
            if self.raw is not None:  # the C launcher itself (no scratch buffers to allocate)
                self.raw(g[0], g[1], g[2], stream, self.function, self.coop, self.pdl, None, None, self.packed, None,
                         None, None, *full)
            else:
                self.run(g[0], g[1], g[2], stream, self.function, self.packed, None, None, None, *full)
            return
        ck = self.fn[self.grid](*[full[p] for p in self.rt_pos], **self.consts)
        if ck is not None and self.ck is None and not interpreting():
            self.ck, self.run, self.function, self.packed = ck, ck.run, ck.function, ck.packed_metadata
            run = self.run
            self.raw = None
            if (getattr(run, "global_scratch_size", 1) == 0 and getattr(run, "profile_scratch_size", 1) == 0
                    and hasattr(run, "launch")):
                self.raw, self.coop, self.pdl = run.launch, run.launch_cooperative_grid, run.launch_pdl


class Program:
    """Recorded launches over ``inputs`` (names, in call order) and persistent ``buffers``."""

    def __init__(self, recorder: Recorder, inputs: Sequence[Tuple[str, torch.Tensor]],
                 buffers: Sequence[torch.Tensor], device: torch.device):
        ptr_names: Dict[Tuple[int, torch.dtype], int] = {}
        for i, (name, t) in enumerate(inputs):
            key = (t.data_ptr(), t.dtype)
            if key in ptr_names:
                raise ProgramError(f"inputs {inputs[ptr_names[key]][0]!r} and {name!r} share storage")
            ptr_names[key] = i
        fixed = {b.data_ptr() for b in buffers}
        self.names = tuple(n for n, _ in inputs)
        self.launches = [_Launch(fn, g, a, c, ptr_names, fixed) for fn, g, a, c in recorder.calls]
        self.direct_ok = device.type == "cuda" and not interpreting()
        self.device_index = (device.index if device.index is not None else torch.cuda.current_device()) \
            if self.direct_ok else -1

    def __call__(self, *tensors: torch.Tensor) -> None:
        direct = self.direct_ok and _hooks_empty()
        if direct:
            for t in tensors:
                if t.data_ptr() & 15:
                    direct = False
                    break
        stream = torch._C._cuda_getCurrentRawStream(self.device_index) if direct else 0
        for launch in self.launches:
            launch(tensors, stream, direct)
