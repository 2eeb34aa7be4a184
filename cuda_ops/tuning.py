"""Per-device launch choices of the Triton kernels (like vLLM's per-device MoE configs).

``benchmarks/kernel_sweep.py`` times the variants of each kernel on a device and
writes the fastest as ``cuda_ops/tuning/<device>.json`` (``<device>``: the CUDA
device name, lower case, non-alphanumerics as ``_``, e.g. ``nvidia_h200.json``).
The wrappers read it through :func:`knob`; a device without a file, the
interpreter and the CPU get the defaults written in each wrapper. The file only
changes launch choices (warps, tile sizes, which of two equivalent code paths);
every choice computes the same result, which the tests check for each one.
``GSA_TRITON_TUNING=path.json`` replaces the file (benchmarks, experiments).
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict

import torch

__all__ = ["knob", "device_file", "load"]

_DIR = os.path.join(os.path.dirname(__file__), "tuning")
_CACHE: Dict[Any, Dict[str, Any]] = {}


def device_file(name: str) -> str:
    """Path of the tuning file for a CUDA device called ``name``."""
    return os.path.join(_DIR, re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") + ".json")


def load(device: torch.device) -> Dict[str, Any]:
    """The tuning dict of ``device`` (cached; empty off CUDA or without a file)."""
    if device.type != "cuda":
        return {}
    idx = device.index if device.index is not None else torch.cuda.current_device()
    got = _CACHE.get(idx)
    if got is None:
        path = os.environ.get("GSA_TRITON_TUNING") or device_file(torch.cuda.get_device_name(idx))
        got = {}
        if os.path.exists(path):
            with open(path) as f:
                got = json.load(f).get("knobs", {})
        _CACHE[idx] = got
    return got


def knob(device: torch.device, kernel: str, name: str, default: Any) -> Any:
    """``knobs[kernel][name]`` from the device's tuning file, else ``default``."""
    return load(device).get(kernel, {}).get(name, default)
