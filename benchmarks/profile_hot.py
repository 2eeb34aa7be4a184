"""Where the host time of one eager sparse layer goes (a developer's tool for issue 12).

    python benchmarks/profile_hot.py [--ctx 32768] [--ratio 0.125]

Runs the engine_step.py layer (new-key hash + selection + attention through the
orchestrator's hot path) under cProfile and prints the functions by own time, the
per-part host times, and how many Triton launches went direct (``cuda_ops.launch``).
"""
import argparse
import cProfile
import pstats
import time

import torch

import gsa
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine_step import BS, B, D, HKV, HQ, R, gsa_config, host_us, make_kv
from gsa.hotpath import hot_path_for
from gsa.sparse import GSASparse


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctx", type=int, default=32768)
    ap.add_argument("--ratio", type=float, default=0.125)
    a = ap.parse_args()
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    with gsa.use_backend("triton"):
        kc, vc, table, m, nb = make_kv(B, a.ctx, dev, gen)
        seq_host = [a.ctx] * B
        seq = torch.tensor(seq_host, dtype=torch.int32, device=dev)
        q = torch.randn(B, HQ, D, device=dev, dtype=torch.bfloat16, generator=gen)
        hc = torch.randint(0, 256, (nb, HKV, BS, R // 8), dtype=torch.uint8, device=dev, generator=gen)
        new_k = torch.randn(B, HKV, D, device=dev, dtype=torch.bfloat16, generator=gen)
        slots = table[:, -1].long() * BS + BS - 1
        gs = GSASparse(gsa_config(1, a.ratio), dev)
        k = int(gs.begin_step(seq_host).plan.k)
        step = gs.begin_step(seq_host, k=k, graph=True)
        parts = {
            "cache_keys": lambda: gs.cache_keys(0, hc, slots, new_k),
            "select": lambda: gs.select(0, step, table, seq, hc, q),
            "decode_attention": lambda: gs.decode_attention(0, step, q, kc, vc, table, seq, hc),
            "hot_path_for": lambda: hot_path_for(dev),
            "begin_step(graph)": lambda: gs.begin_step(seq_host, k=k, graph=True),
            "begin_step": lambda: gs.begin_step(seq_host),
            "empty_like": lambda: torch.empty_like(q),
        }
        for name, fn in parts.items():
            for _ in range(5):
                fn()
            print(f"host us {name}: {host_us(fn, n=40):.1f}", flush=True)
        layer = lambda: (gs.cache_keys(0, hc, slots, new_k), gs.decode_attention(0, step, q, kc, vc, table, seq, hc))  # noqa: E731
        print(f"host us layer: {host_us(layer, n=40):.1f}")
        pr = cProfile.Profile()
        torch.cuda.synchronize()
        pr.enable()
        t = time.perf_counter()
        for _ in range(100):
            layer()
        dt = time.perf_counter() - t
        pr.disable()
        torch.cuda.synchronize()
        print(f"profiled: {dt / 100 * 1e6:.1f} us per layer")
        pstats.Stats(pr).sort_stats("tottime").print_stats(28)
        progs = [("select", gs._hot[0].cur.program)] + [(f"cache {i}", p) for i, (p, _) in enumerate(gs._hot_keys[0].values())]
        progs += [("attention", w.get("program")) for w in gs._hot_attn[0].values()]
        for name, prog in progs:
            kinds = [(l.fn.__name__, l.ck is not None) for l in getattr(prog, "launches", [])]
            print("program", name, type(prog).__name__, "launches (kernel, compiled/direct):", kinds)


if __name__ == "__main__":
    main()
