"""Benchmark: C++ CPU backend selection (hamming_dist_top_k) vs the pure-torch reference.

Setup (issue 7): B=4 rows (``--batch``) of 32K tokens (``--tokens``), Hkv=8 KV heads, G=4 query heads per KV
head, 128-bit codes (C=16 bytes), block size 128 (``--block-size``), "max"
block scores, forced first and last block, budget 1/8 of the blocks. The block
table is a random permutation (blocks scattered over the cache, as in a real
paged cache).

For every code path this CPU has (portable, avx2, avx512) and 1 and 2 threads:
median and min time of ``--repeat`` calls of the kernel (all configurations
timed round-robin, one call each per round, so they share machine conditions), GB/s of key-code bytes
scored (B * T * Hkv * C per call), GB/s per thread, and the ratio to the
reference backend's median time measured in the same run. Every result is
checked bit-exact against the reference before it is timed. The public op
(``gsa.ops.hamming_dist_top_k`` with input validation) is timed too, on the
default path.

The machine may be shared (other jobs on the same cores): timings are medians
of many calls, and the load average before and after is recorded.

Usage: python benchmarks/bench_cpu_select.py [--block-size 128] [--tokens 32768] [--batch 4] [--repeat 30] [--tag NAME]
(the offload benchmark's CPU top-k shapes: ``--tokens 131072 --batch 6``; one call is one layer's selection)
Writes benchmarks/results/cpu_select[_TAG].{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cpu_ops  # noqa: E402
from gsa import dispatch, ops, reference as ref  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def _time(fn, repeat: int, warmup: int = 3):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts)


def make_inputs(b=4, tokens=32768, hkv=8, g=4, bits=128, bs=128, seed=0):
    """Inputs of the benchmark problem; shapes as in gsa.ops.hamming_dist_top_k."""
    gen = torch.Generator().manual_seed(seed)
    c = bits // 8
    m = tokens // bs
    nb = b * m
    q = torch.randint(0, 256, (b, hkv * g, c), generator=gen, dtype=torch.uint8)
    kc = torch.randint(0, 256, (nb, hkv, bs, c), generator=gen, dtype=torch.uint8)
    bt = torch.randperm(nb, generator=gen).to(torch.int32).reshape(b, m)
    seq = torch.full((b,), tokens, dtype=torch.int32)
    budget = max(1, m // 8)
    bud = torch.full((b,), budget, dtype=torch.int32)
    return (q, kc, bt, seq, bud, budget + 2, [0, -1], "max", 0, 1.0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--batch", type=int, default=4, help="rows B")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--ref-repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cache", nargs="+", choices=["cold", "warm"], default=["cold", "warm"])
    ap.add_argument("--tag", default="", help="suffix of the result files (e.g. a machine name)")
    args = ap.parse_args(argv)

    ok, why = cpu_ops.probe()
    if not ok:
        raise SystemExit(f"cpu backend not available: {why}")
    from cpu_ops import _kernels

    torch.set_num_threads(max(args.threads))  # the reference's torch ops get the same cores
    inputs = make_inputs(b=args.batch, tokens=args.tokens, bs=args.block_size)
    q, kc = inputs[0], inputs[1]
    code_bytes = kc.numel()  # every key code of every row is read once
    load_before = _loadavg()

    want = ref.hamming_dist_top_k(*inputs)
    ref_med, ref_min = _time(lambda: ref.hamming_dist_top_k(*inputs), args.ref_repeat, warmup=0)
    # Two cache states, every configuration in each:
    # * warm: back-to-back calls of one configuration (the 16 MiB of codes may
    #   stay in the last-level cache between calls);
    # * cold: a 64 MiB buffer is rewritten before every call, so the codes come
    #   from DRAM, as in real decoding (each layer's hash cache is read once per
    #   step; all layers together far exceed any cache). Cold configurations are
    #   timed round-robin, so they share machine conditions.
    default_path = cpu_ops.get_path()
    default_threads = cpu_ops.get_num_threads()
    configs = [("kernel", p, t) for p in cpu_ops.supported_paths() for t in args.threads]
    configs += [("gsa.ops", default_path, t) for t in args.threads]  # the public, validated op
    flush = torch.empty(64 << 20, dtype=torch.uint8)

    def call(cfg):
        what, path, threads = cfg
        cpu_ops.set_path(path)
        cpu_ops.set_num_threads(threads)
        if what == "kernel":
            return _kernels.hamming_dist_top_k(*inputs)
        with dispatch.use_backend("cpu"):
            return ops.hamming_dist_top_k(*inputs)

    def timed(cfg, cold):
        if cold:
            flush.fill_(len(times))
        cpu_ops.set_path(cfg[1])
        cpu_ops.set_num_threads(cfg[2])
        t0 = time.perf_counter()
        call(cfg)
        return time.perf_counter() - t0

    for cfg in configs:  # check every configuration first
        got = call(cfg)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), f"{cfg}: mismatch"
    times = {}
    for cache in args.cache:
        for cfg in configs:
            times[(cache,) + cfg] = []
        if cache == "warm":
            for cfg in configs:
                call(cfg)
                times[(cache,) + cfg] = [timed(cfg, False) for _ in range(args.repeat)]
        else:
            for _ in range(args.repeat):
                for cfg in configs:
                    times[(cache,) + cfg].append(timed(cfg, True))
    rows = []
    for key, ts in times.items():
        cache, what, path, threads = key
        med, mn = statistics.median(ts), min(ts)
        rows.append({
            "cache": cache, "what": what, "path": path, "threads": threads, "median_ms": med * 1e3,
            "min_ms": mn * 1e3, "gb_s": code_bytes / med / 1e9, "gb_s_per_thread": code_bytes / med / 1e9 / threads,
            "gb_s_best": code_bytes / mn / 1e9, "x_reference": ref_med / med,
        })
    cpu_ops.set_path(default_path)
    cpu_ops.set_num_threads(default_threads)

    result = {
        "benchmark": "cpu_select",
        "problem": {"B": args.batch, "tokens": args.tokens, "Hkv": 8, "G": 4, "bits": 128, "block_size": args.block_size,
                    "method": "max", "forced": [0, -1], "budget_blocks": int(inputs[4][0]), "k": inputs[5],
                    "code_bytes": code_bytes},
        "machine": {"cpu": _cpu_model(), "logical_cpus": os.cpu_count(), "paths": cpu_ops.supported_paths(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "loadavg_before": load_before, "loadavg_after": _loadavg()},
        "reference": {"median_ms": ref_med * 1e3, "min_ms": ref_min * 1e3, "repeat": args.ref_repeat,
                      "torch_threads": torch.get_num_threads()},
        "repeat": args.repeat, "cache_states": args.cache,
        "goals": {"x_reference": 20, "gb_s_per_core": 4},
        "rows": rows,
    }
    write(result, args.tag)
    return result


def write(result: dict, tag: str) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    stem = os.path.join(RESULTS, "cpu_select" + (f"_{tag}" if tag else ""))
    with open(stem + ".json", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    p, m = result["problem"], result["machine"]
    lines = [
        f"# CPU selection benchmark{' (' + tag + ')' if tag else ''}",
        "",
        f"B={p['B']}, {p['tokens']} tokens, Hkv={p['Hkv']}, G={p['G']}, {p['bits']}-bit codes, block size "
        f"{p['block_size']}, budget {p['budget_blocks']} blocks; {p['code_bytes'] / 2**20:.0f} MiB of key codes per call.",
        f"CPU: {m['cpu']} ({m['logical_cpus']} logical CPUs; paths: {', '.join(m['paths'])}); "
        f"load average before/after: {m['loadavg_before']} / {m['loadavg_after']}.",
        f"Reference backend (pure torch, {result['reference']['torch_threads']} torch threads): "
        f"median {result['reference']['median_ms']:.1f} ms of {result['reference']['repeat']} calls.",
        f"Times: median (and min) of {result['repeat']} calls per row; outputs checked bit-exact against the "
        "reference. cold: a 64 MiB buffer is rewritten before each call (codes come from DRAM, as in decoding), "
        "configurations timed round-robin; warm: back-to-back calls (codes may sit in the last-level cache).",
        "",
        "| cache | what | path | threads | median ms | min ms | GB/s | GB/s per thread | x reference |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['cache']} | {r['what']} | {r['path']} | {r['threads']} | {r['median_ms']:.2f} | {r['min_ms']:.2f} | "
                     f"{r['gb_s']:.2f} | {r['gb_s_per_thread']:.2f} | {r['x_reference']:.0f} |")
    lines += ["", f"Goals: >= {result['goals']['x_reference']}x the reference, >= {result['goals']['gb_s_per_core']} "
              "GB/s per core.", ""]
    with open(stem + ".md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    rows = result["rows"]
    labels = [f"{r['cache']}\n{r['what'] if r['what'] != 'kernel' else r['path']}\n{r['threads']} thr" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4))
    ax.bar(range(len(rows)), [r["gb_s"] for r in rows], color=[f"C{min(r['threads'], 8).bit_length() - 1}" for r in rows])
    for i, r in enumerate(rows):
        ax.text(i, r["gb_s"], f"{r['x_reference']:.0f}x", ha="center", va="bottom", fontsize=8)
    goal = result["goals"]["gb_s_per_core"]
    for i, r in enumerate(rows):  # the per-core goal times the thread count, per bar
        ax.plot([i - 0.4, i + 0.4], [goal * r["threads"]] * 2, color="k", ls="--", lw=0.8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("GB/s of key codes (median)")
    ax.set_title(f"hamming_dist_top_k, CPU backend ({m['cpu'][:40]}); labels: x reference; dashed: 4 GB/s x threads",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(stem + ".png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    res = main()
    for r in res["rows"]:
        print(f"{r['cache']:4s} {r['what']:8s} {r['path']:8s} {r['threads']} thr: {r['median_ms']:7.2f} ms  {r['gb_s']:5.2f} GB/s  "
              f"{r['x_reference']:5.0f}x reference")
