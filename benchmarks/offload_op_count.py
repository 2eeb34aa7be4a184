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

Usage: python benchmarks/offload_op_count.py
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

from gsa import ops  # noqa: E402
from gsa.offload import OffloadedGSA, min_pool_blocks  # noqa: E402
from gsa.sparse import GSASparse  # noqa: E402


class OpCount(TorchDispatchMode):
    """Counts aten ops dispatched inside the ``with`` block."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def main() -> dict:
    spec = importlib.util.spec_from_file_location("offload_bench", os.path.join(ROOT, "benchmarks", "offload_bench.py"))
    ob = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ob)
    cfg, dev, dt, b, ctx = ob.config(0.125, 512), torch.device("cpu"), torch.bfloat16, 2, 8192
    w = ob.Workload(cfg, b, ctx, 8, dev)
    g = GSASparse(cfg, dev, block_size=cfg.chunk_size)
    layers = [l for l, r in enumerate(cfg.top_k_ratio_per_layer) if r < 1][:2]
    hc = {l: torch.randint(0, 256, g.hash_cache_shape(w.nb), dtype=torch.uint8) for l in layers}
    kc = torch.zeros(w.nb, cfg.chunk_size, cfg.num_key_value_heads, cfg.head_dim, dtype=dt)
    lens, s = [ctx] * b, torch.tensor([ctx] * b, dtype=torch.int32)
    q = w.step_queries(0.2, dt)
    out = {}
    st = g.begin_step(lens)
    g.decode_attention(layers[0], st, q, kc, kc, w.table, s, hc[layers[0]])  # first call validates inputs
    with OpCount() as c:
        g.decode_attention(layers[0], st, q, kc, kc, w.table, s, hc[layers[0]])
    out["GSASparse.decode_attention"] = c.total
    for pf in (None, "previous"):
        pool = max(min_pool_blocks(g, b, ctx + 10), w.nb // 4)
        off = OffloadedGSA(g, w.nb, pool, b, ctx + 10, cfg.num_key_value_heads, cfg.head_dim, dt, layers=layers,
                           prefetch=pf)
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
        # the same layer's select and attention alone: the rest is the offload's own work
        with OpCount() as c:
            table, tl = off.select(layers[0], st, w.table, s, q)
        n_select = c.total
        pool_table = off.maps[layers[0]].table(table)
        with OpCount() as c:
            ops.paged_decode_attention(q, off.pool_k[layers[0]], off.pool_v[layers[0]], pool_table, tl)
        out[f"  of which offload's own (not select/attention), prefetch={pf}"] = (
            out[f"OffloadedGSA.decode_attention, prefetch={pf}"] - n_select - c.total)
    m = off.maps[layers[0]]
    blocks = torch.arange(min(20, m.s))
    for name, fn in (("ResidencyMap.request", m.request), ("ResidencyMap.predict", m.predict)):
        with OpCount() as c:
            fn(blocks, 99)
        out[name] = c.total
    for k, v in out.items():
        print(f"{k}: {v} ops")
    return out


if __name__ == "__main__":
    main()
