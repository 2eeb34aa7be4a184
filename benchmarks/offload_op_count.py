"""Count the torch ops one offloaded decode layer dispatches (CPU, seconds).

Each op is a kernel launch and a few microseconds of host time in an eager GPU
step, so the count says how much host overhead a layer carries before any GPU
work (docs/offload.md, "Why: what the time is spent on"). Counted with a
``TorchDispatchMode`` on CPU tensors (the benchmark's Qwen3-8B-shaped config,
B = 2 rows of 8K tokens, pool 1/4; second calls: the pool is warm and the
one-time input checks are done):
``GSASparse.decode_attention`` (select + attention, all KV in one cache),
``OffloadedGSA.decode_attention`` on demand and with "previous" prefetch, and
``ResidencyMap.request`` / ``predict`` alone, and how many of the offloaded
layer's ops are its own (not the selection's or the attention's). Backend kernels that are not aten
ops (Triton on CUDA) are not counted, so on a GPU the select/attention share
differs; the residency map's ops are plain torch ops on every device.

With ``TRITON_INTERPRET=1`` the same counts are taken a second time with the fused
residency kernel (cuda_ops/offload_residency.py, what CUDA runs) in every map: its
Triton launches are counted beside the aten ops ("launches"), as on a GPU each is a
kernel launch too. The mover is the CPU's ``direct`` copy here (4 aten ops); on CUDA
it is one ``gather_blocks`` launch plus stream/event calls.

Score-aware eviction (``eviction="score"``) adds, per offloaded layer, the block-score
read (with ``TRITON_INTERPRET=1``: from the Triton select program's keys, as on CUDA;
without: the pure-torch reference recomputation, CPU only), ``update_priority`` and
``ResidencyMap.set_priority``: counted alone on the same shapes.

Usage: [TRITON_INTERPRET=1] python benchmarks/offload_op_count.py
"""
from __future__ import annotations

import collections
import contextlib
import importlib.util
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gsa.offload import OffloadedGSA, ResidencyMap, min_pool_blocks  # noqa: E402
from gsa.sparse import GSASparse  # noqa: E402


_LAUNCHES = [0]  # Triton launches of the counted kernels (see _count_launches)
_IN_LAUNCH = [False]  # inside a launch: the interpreter's own torch ops are not the caller's


class OpCount(TorchDispatchMode):
    """Counts aten ops and Triton launches dispatched inside the ``with`` block."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __enter__(self):
        self._l0 = _LAUNCHES[0]
        return super().__enter__()

    def __exit__(self, *exc):
        self.launches = _LAUNCHES[0] - self._l0
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not _IN_LAUNCH[0]:
            self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values()) + getattr(self, "launches", 0)

    @property
    def host(self) -> int:
        """Host values made or read inside the block: a tensor made from a Python value
        (``aten::lift_fresh``: ``t[i] = 0``, ``torch.tensor(...)``; on a GPU, written into device
        memory, a blocking host->device copy, and illegal in a CUDA-graph capture) or a device
        value read on the host (``.item()``, ``int(t)``: a host sync)."""
        return sum(v for k, v in self.ops.items() if k.startswith(("aten.lift_fresh", "aten._local_scalar_dense")))


class _Counted:
    """A Triton kernel whose launches (``kernel[grid](...)``) are counted."""

    def __init__(self, fn):
        self.fn = fn

    def __getattr__(self, name):
        return getattr(self.fn, name)

    def __getitem__(self, grid):
        launcher = self.fn[grid]

        def run(*args, **kwargs):
            _LAUNCHES[0] += 1
            _IN_LAUNCH[0] = True
            try:
                return launcher(*args, **kwargs)
            finally:
                _IN_LAUNCH[0] = False
        return run


def _count_launches() -> None:
    import cuda_ops.offload_copy as oc
    import cuda_ops.offload_residency as orr

    for mod, names in ((orr, ("_mark", "_count", "_rank", "_apply", "_prio_update", "_prio_keys")),
                       (oc, ("_gather_kernel", "_scatter_kernel"))):
        for n in names:
            setattr(mod, n, _Counted(getattr(mod, n)))


def main() -> dict:
    spec = importlib.util.spec_from_file_location("offload_bench", os.path.join(ROOT, "benchmarks", "offload_bench.py"))
    ob = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ob)
    cfg, dev, dt, b, ctx = ob.config(0.125, 512), torch.device("cpu"), torch.bfloat16, 2, 8192
    w = ob.Workload(cfg, b, ctx, 8, dev, 1, dt)
    w.advance(1, 0.2)
    g = GSASparse(cfg, dev, block_size=cfg.chunk_size)
    layers = [l for l, r in enumerate(cfg.top_k_ratio_per_layer) if r < 1][:2]
    hc = {l: torch.randint(0, 256, g.hash_cache_shape(w.nb), dtype=torch.uint8) for l in layers}
    kc = torch.zeros(w.nb, cfg.chunk_size, cfg.num_key_value_heads, cfg.head_dim, dtype=dt)
    lens, s = [ctx] * b, torch.tensor([ctx] * b, dtype=torch.int32)
    q = w.qs[0]
    out = {}
    st = g.begin_step(lens)
    g.decode_attention(layers[0], st, q, kc, kc, w.table, s, hc[layers[0]])  # first call validates inputs
    with OpCount() as c:
        g.decode_attention(layers[0], st, q, kc, kc, w.table, s, hc[layers[0]])
    out["GSASparse.decode_attention"] = c.total
    fused = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if fused:
        from cuda_ops.hotpath import TritonHotPath
        _count_launches()
    for pf, kernel in [(None, None), ("previous", None)] + ([(None, "fused"), ("previous", "fused")] if fused else []):
        pool = max(min_pool_blocks(g, b, ctx + 10), w.nb // 4)
        off = OffloadedGSA(g, w.nb, pool, b, ctx + 10, cfg.num_key_value_heads, cfg.head_dim, dt, layers=layers,
                           prefetch=pf)
        if kernel:
            for m in off.maps.values():
                m.backend = TritonHotPath()
            pf = f"{pf}, fused residency kernel"
        for l in layers:
            off.hash_caches[l].copy_(hc[l])
        for i in range(2):
            st = off.begin_step(lens, block_table_host=w.table_host)
            for l in layers:
                c = OpCount()
                with c if (i == 1 and l == layers[0]) else contextlib.nullcontext():  # count the warm step
                    off.decode_attention(l, st, q, w.table, s, block_table_host=w.table_host, seq_lens_host=s)
                if i == 1 and l == layers[0]:
                    out[f"OffloadedGSA.decode_attention, prefetch={pf}"] = c.total
                    layer_host = c.host
        # the same layer's select and attention alone: the rest is the offload's own work
        with OpCount() as c:
            table, tl = off.select(layers[0], st, w.table, s, q)
        n_select, host_select = c.total, c.host
        pool_table = off.maps[layers[0]].table(table)
        with OpCount() as c:  # the hot-path attention decode_attention uses
            g._attention_hot(layers[0], q, off.pool_k[layers[0]], off.pool_v[layers[0]], pool_table, tl, None)
        out[f"  of which offload's own (not select/attention), prefetch={pf}"] = (
            out[f"OffloadedGSA.decode_attention, prefetch={pf}"] - n_select - c.total)
        # (until 2026-11-29 "previous" made one per layer: mark_predicted's `t[NB] = False`, on the H200 a
        # blocking copy per layer in eager steps and the graph rows' capture failure)
        out[f"  offload's own host values (blocking copies / syncs on a GPU), prefetch={pf}"] = (
            layer_host - host_select - c.host)
    # score-aware eviction's own ops on the same shapes (the selection has run: its keys are fresh)
    from gsa import use_backend
    from gsa.offload.scores import block_scores, fast_block_scores_available, new_priority, update_priority
    ctx_mgr = use_backend("triton") if fused else contextlib.nullcontext()
    with ctx_mgr:
        gs = GSASparse(cfg, dev, block_size=cfg.chunk_size)
        stp = gs.begin_step(lens)
        for _ in range(2):
            gs.select(layers[0], stp, w.table, s, hc[layers[0]], q)
        fast = fast_block_scores_available(gs, layers[0], *w.table.shape)
        with OpCount() as c:
            sc = block_scores(gs, layers[0], q, hc[layers[0]], w.table, s)
        out[f"block_scores ({'hot-path keys' if fast else 'reference recomputation'})"] = c.total
    prio, m = new_priority(w.nb, dev), ResidencyMap(w.nb, w.nb // 4, backend=False)
    with OpCount() as c:
        update_priority(prio, w.table, sc, 0.7)
    out["update_priority (torch)"] = c.total
    with OpCount() as c:
        m.set_priority(prio)
    out["ResidencyMap.set_priority (torch)"] = c.total
    if fused:  # what CUDA runs: the select program's keys into one update launch, one key launch
        from gsa.offload.scores import fold_step_scores, step_scores
        with use_backend("triton"):
            got = step_scores(gs, layers[0], q, hc[layers[0]], w.table, s)
            with OpCount() as c:
                got = step_scores(gs, layers[0], q, hc[layers[0]], w.table, s)
                fold_step_scores(gs, got, prio, w.table, s, 0.7)
            out[f"step_scores + fold_step_scores ({got[0]}, fused priority_update)"] = c.total
        m = ResidencyMap(w.nb, w.nb // 4, backend=TritonHotPath())
        with OpCount() as c:
            m.set_priority(prio)
        out["ResidencyMap.set_priority (fused priority_keys)"] = c.total
    blocks = torch.arange(20)
    maps = [("", lambda: ResidencyMap(w.nb, w.nb // 4, backend=False))]
    if fused:
        maps.append((", fused kernel (aten ops + launches)", lambda: ResidencyMap(w.nb, w.nb // 4, backend=TritonHotPath())))
    for tag, make in maps:
        m = make()
        m.request(blocks + 1, 1)  # first calls: the kernel's buffers and recorded launches
        m.predict(blocks + 2, 1)
        for name, fn in (("ResidencyMap.request", m.request), ("ResidencyMap.predict", m.predict)):
            with OpCount() as c:
                fn(blocks, 99)
            out[name + tag] = c.total
    for k, v in out.items():
        print(f"{k}: {v} ops")
    return out


if __name__ == "__main__":
    main()
