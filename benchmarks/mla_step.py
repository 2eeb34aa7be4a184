"""GSA's per-layer cost on an MLA model (issue 12/13): the DeepSeek-V2-Lite shape, eager and graph.

On the H200 (2026-11-29) GSA 1/8 in FULL graphs first decoded DeepSeek-V2-Lite attention at 32K x
16 at 0.69x dense (docs/vllm.md, "MLA"); this script found why (the selection read its codes at
150-175 GB/s in the SWAR score kernel), and after the move to the group bit-plane kernel GSA ran at
1.16-1.20x dense. It measures GSA's per-layer work alone, through the orchestrator's hot path as
the vLLM MLA wrappers call it:

* ``cache_keys``: spec 9 key hashing of the step's new ``c_kv [B, 512]`` / ``k_pe [B, 64]``;
* ``select``: the absorbed query and ``q_pe`` hashed, blocks scored (the MLA codes take the
  group bit-plane score kernel, ``cuda_ops/score_planes.py``), selection.

Per context: GPU time per layer of each part replayed from a CUDA graph (the step in graph
form, as FULL graphs run it), host time to issue them eagerly, and what the bytes allow: the
codes the selection reads (B x context x 72 bytes) at the measured copy bandwidth, and the
dense latent read the selection is meant to save (B x context x 1,152 bytes).

    python benchmarks/mla_step.py --out DIR                 # on the GPU: JSON + markdown
    python benchmarks/mla_step.py --out DIR --smoke         # CPU check of the script (tiny, no timing claims)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gsa.config import GSAConfig  # noqa: E402
from gsa.sparse import GSASparse  # noqa: E402

L, P = 512, 64


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _copy_gbs(dev, mib=1024):
    if dev.type != "cuda":
        return float("nan")
    x = torch.empty(mib << 20, dtype=torch.uint8, device=dev)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    _sync(dev)
    return 2 * x.numel() * 10 / (time.perf_counter() - t0) / 1e9


def _gpu_us(fn, dev, iters):
    """GPU microseconds per call of ``fn`` (CUDA events; wall time on the CPU)."""
    if dev.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) / iters * 1e6
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(iters):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / iters * 1e3


def measure(ctx: int, batch: int, dev: torch.device, iters: int) -> dict:
    cfg = GSAConfig.for_model("DeepSeek-V2-Lite")
    gs = GSASparse(cfg, dev)
    layer = gs.scoring_layers[0]
    bs, n, c = cfg.chunk_size, cfg.num_attention_heads, cfg.code_bytes
    m = ctx // bs
    nb = batch * m + 2
    g = torch.Generator().manual_seed(0)
    hc = torch.randint(0, 256, (nb, 1, bs, c), dtype=torch.uint8, generator=g).to(dev)  # random codes
    table = torch.randperm(nb - 2, generator=g)[: batch * m].reshape(batch, m).to(torch.int32).to(dev)
    lens = torch.full((batch,), ctx, dtype=torch.int32, device=dev)
    slots = (table[:, -1].long() * bs + (ctx - 1) % bs).contiguous()  # the step's new token per row
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    q = torch.randn(batch, n, L + P, generator=g).to(dev, dt)
    q_lat, q_pe = q.split([L, P], dim=-1)
    c_kv = torch.randn(batch, L, generator=g).to(dev, dt)
    k_pe = torch.randn(batch, P, generator=g).to(dev, dt)
    step = gs.begin_step([ctx] * batch, k=m, graph=True)

    def keys():
        gs.cache_keys(layer, hc, slots, c_kv, k_pe)

    def select():
        step._selections.clear()
        gs.select(layer, step, table, lens, hc, q_lat, q_pe)

    def both():
        keys()
        select()

    for _ in range(3):  # compile, validate signatures, record the launch programs
        both()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(iters):
        both()
    host_us = (time.perf_counter() - t0) / iters * 1e6  # issue time (no sync inside)
    _sync(dev)
    row = dict(context=ctx, batch=batch, heads=n, code_bytes=c, rope_bytes=cfg.rope_bytes, block=bs,
               n_sel=int(step.plan.n_sel[layer].max()), k=m, host_us_eager=host_us,
               eager_us={"keys": _gpu_us(keys, dev, iters), "select": _gpu_us(select, dev, iters),
                         "both": _gpu_us(both, dev, iters)})
    if dev.type == "cuda":
        from bench_triton import gbench  # benchmarks/ (this script's folder): capture once, replay

        row["graph_us"] = {name: gbench(fn, iters) * 1e3 for name, fn in (("keys", keys), ("select", select),
                                                                           ("both", both))}
    row["code_mb"] = batch * ctx * c / 1e6
    row["dense_latent_mb"] = batch * ctx * (L + P) * 2 / 1e6
    return row


def report(res: dict) -> str:
    bw = res["copy_gbs"]
    lines = [f"# GSA per-layer cost, DeepSeek-V2-Lite MLA shape ({res['device']})", "",
             f"copy bandwidth {bw:.0f} GB/s; torch {res['torch']}; {res['note']}", "",
             "| context x batch | n_sel / k | keys us (graph) | select us (graph) | both us (graph) | host us (eager issue) "
             "| codes at copy bw us | dense latent at copy bw us | select GB/s of codes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        gr = r.get("graph_us") or r["eager_us"]
        codes_us = r["code_mb"] * 1e6 / (bw * 1e9) * 1e6 if bw == bw else float("nan")
        dense_us = r["dense_latent_mb"] * 1e6 / (bw * 1e9) * 1e6 if bw == bw else float("nan")
        lines.append(f"| {r['context'] // 1024}K x {r['batch']} | {r['n_sel']} / {r['k']} | {gr['keys']:.1f} | "
                     f"{gr['select']:.1f} | {gr['both']:.1f} | {r['host_us_eager']:.1f} | {codes_us:.1f} | "
                     f"{dense_us:.1f} | {r['code_mb'] / gr['select'] * 1e3:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--contexts", type=int, nargs="+", default=[32768, 65536, 131072])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--smoke", action="store_true", help="CPU check of the script: 2 x 2K tokens, 3 iterations")
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.smoke:
        args.contexts, args.batch, args.iters = [2048], 2, 3
    rows = []
    for ctx in args.contexts:
        rows.append(measure(ctx, args.batch, dev, args.iters))
        print(json.dumps(rows[-1]), flush=True)
    res = dict(device=torch.cuda.get_device_name(0) if dev.type == "cuda" else platform.processor() or "cpu",
               torch=torch.__version__, copy_gbs=_copy_gbs(dev), rows=rows,
               note="smoke run on the CPU: a check of the script, not a measurement" if args.smoke else
               "graph: one layer's calls captured and replayed; eager: GPU time of the calls issued from Python")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "mla_step.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(args.out, "mla_step.md"), "w") as f:
        f.write(report(res))
    print(report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
