"""Kernel launch helpers shared by the Triton wrappers.

:func:`launch` runs ``fn[grid](*args, **constexprs)``, or records the launch when
given a :class:`~cuda_ops.program.Recorder` (the decode hot path replays recorded
launches, see ``program.py``). :func:`sm_count` caches the multiprocessor count
(the device-property query costs microseconds on every call otherwise), and
:func:`cdiv` / :func:`next_pow2` are plain-Python twins of ``triton.cdiv`` /
``triton.next_power_of_2``, which are slower to call from Python in Triton 3.x.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

import torch

__all__ = ["launch", "sm_count", "cdiv", "next_pow2"]


def launch(fn, grid, args: Sequence[Any], constexprs: Dict[str, Any], cache: Any = None) -> None:
    """``fn[grid](*args, **constexprs)``, or recorded when ``cache`` is a ``program.Recorder``."""
    if cache is None:
        fn[grid](*args, **constexprs)
    else:
        cache.record(fn, grid, args, constexprs)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


_SMS: Dict[int, int] = {}


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (cached); 1 elsewhere."""
    if device.type != "cuda":
        return 1
    idx = device.index if device.index is not None else torch.cuda.current_device()
    n = _SMS.get(idx)
    if n is None:
        n = _SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return n
