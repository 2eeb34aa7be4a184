"""GPU timers shared by the benchmarks, with a choice of how L2 is emptied before each call.

``triton.testing.do_bench`` empties L2 before every timed call by **writing** a 256 MB buffer
(``zero_``). The H200's L2 (~50 MB) is then full of dirty lines, and the first kernel of the
timed call pays for writing them back to HBM on top of its own traffic (up to ~50 MB, ~12 us
at HBM speed). A long call hides that; a 20-80 us call does not. In an engine the kernel before
a decode-step kernel is a GEMM or another small kernel that leaves few dirty lines, so the
timers offer two flush modes (environment variable ``GSA_BENCH_FLUSH`` or the ``flush``
argument; results record which):

* ``zero`` (default): ``triton.testing.do_bench`` itself, as every result before the eighth session of 2026-11-29;
* ``clean``: the same loop, but L2 is emptied by **reading** a 256 MB buffer (a sum), so the
  timed call starts with a cold L2 holding only clean lines: no write-back is charged to it.

Both keep the cache cold for the timed call's own data; neither is "warm".
"""
from __future__ import annotations

import os
import statistics

import torch

FLUSH_MODES = ("zero", "clean")
_FLUSH_BYTES = 256 * 1024 * 1024
_buffers: dict = {}


def flush_mode(flush: str | None = None) -> str:
    """The flush mode to use: ``flush`` if given, else ``$GSA_BENCH_FLUSH``, else ``zero``."""
    mode = flush or os.environ.get("GSA_BENCH_FLUSH") or "zero"
    if mode not in FLUSH_MODES:
        raise ValueError(f"flush mode: expected one of {FLUSH_MODES}, got {mode!r}")
    return mode


def _clean_flush():
    """Read a 256 MB buffer: L2 ends up holding its (clean) lines and nothing else."""
    buf = _buffers.get("clean")
    if buf is None:
        buf = _buffers["clean"] = torch.ones(_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    return buf.sum()


def bench(fn, reps: int = 100, flush: str | None = None, warmup_ms: float = 25.0) -> float:
    """Median milliseconds of ``fn`` (a GPU call, e.g. a graph's ``replay``), L2 emptied before
    each timed call as ``flush`` says (see the module docstring). ``reps``: the timed budget in
    milliseconds, as ``do_bench``'s ``rep``."""
    mode = flush_mode(flush)
    if mode == "zero":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=int(warmup_ms), rep=reps, return_mode="median"))
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        _clean_flush()
        fn()
    end.record()
    torch.cuda.synchronize()
    est = max(start.elapsed_time(end) / 5, 1e-3)
    for _ in range(max(1, int(warmup_ms / est))):
        fn()
    n = max(1, int(reps / est))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        _clean_flush()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return float(statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)))
