"""How the benchmark's synthetic hit rate depends on how far its query chain has drifted (CPU).

The offload benchmark (benchmarks/offload_bench.py) plants a hot set matching each row's
FIRST query; every step the query drifts. Until ``Workload.restart`` the rows of a batch ran
one after another on ONE chain, so later rows saw more drifted queries. This replays that:
``--steps`` decode steps of one chain at the benchmark's shapes (128K, Qwen3-8B-shaped, ratio
1/8, 2 timed layers), selection and the engine's ResidencyMap only (no attention, no copies),
a fresh pool every 9 steps (a row: 3 warm-up + 6 counted), and prints per 9-step window the
pool hit rate (counted steps) and the consecutive-selection overlap.

Usage: python benchmarks/offload_drift_check.py [--context 131072] [--batch 6] [--pool-frac 0.25] [--steps 90]
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import offload_bench as ob  # noqa: E402
from gsa.offload import ResidencyMap  # noqa: E402
from gsa.sparse import GSASparse  # noqa: E402


def windows(ctx: int, b: int, frac: float, n_steps: int, drift: float = 0.2, window: int = 9, warm: int = 3):
    """``[(hit rate, consecutive overlap)]`` per ``window`` steps of one drifting query chain."""
    cfg = ob.config(0.125)
    g = GSASparse(cfg, torch.device("cpu"), block_size=cfg.chunk_size)
    layers = [l for l, r in enumerate(cfg.top_k_ratio_per_layer) if r < 1][:2]
    w = ob.Workload(cfg, b, ctx, window, torch.device("cpu"), len(layers), torch.bfloat16)
    hc = {l: torch.randint(0, 256, g.hash_cache_shape(w.nb), dtype=torch.uint8) for l in layers}
    ob.plant_hot_blocks(hc, w, g, 0.125, 0.75)
    slots = math.ceil(frac * w.nb)
    prev, ov, out, maps = {}, [], [], {}
    bs = cfg.chunk_size
    for i in range(n_steps):
        j = i % window
        w.advance(j, drift)  # one chain: never restarted
        if j == 0:
            maps = {l: ResidencyMap(w.nb, slots) for l in layers}
        if j == warm:
            for m in maps.values():
                m.reset_counters()
        st = g.begin_step(w.lens(j))
        for q, l in zip(w.qs, layers):
            table, lens = g.select(l, st, w.table, w.seq, hc[l], q)
            used = torch.arange(table.shape[1])[None] < ((lens + bs - 1) // bs)[:, None]
            blk = torch.where(used, table.long(), -1).reshape(-1)
            s = set(blk[blk >= 0].tolist())
            if l in prev and j:
                ov.append(len(s & prev[l]) / len(s))
            prev[l] = s
            maps[l].request(blk, i + 1)
        if j == window - 1:
            hits = sum(m.stats()["hits"] for m in maps.values())
            wanted = sum(m.stats()["wanted"] for m in maps.values())
            out.append((hits / max(wanted, 1), sum(ov) / max(len(ov), 1)))
            ov = []
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--context", type=int, default=131072)
    ap.add_argument("--batch", type=int, default=6)
    ap.add_argument("--pool-frac", type=float, default=0.25)
    ap.add_argument("--steps", type=int, default=90)
    a = ap.parse_args(argv)
    res = windows(a.context, a.batch, a.pool_frac, a.steps)
    print(f"context {a.context}, B = {a.batch}, pool {a.pool_frac:g}: (hit, consecutive overlap) per 9-step window")
    print(", ".join(f"({h:.3f}, {o:.3f})" for h, o in res))
    return res


if __name__ == "__main__":
    main()
