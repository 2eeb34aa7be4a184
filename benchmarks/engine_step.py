"""Engine-speed benchmark of the GSA decode step (issue 12), eager and graph, on one GPU.

What a user's engine pays, measured in the two modes engines run:

* **eager**: the orchestrator's hot path called from Python per layer, as vLLM's
  PIECEWISE mode calls attention (``GSASparse.cache_keys`` + ``decode_attention``:
  new-key hash, query hash, block scores, selection + kv_select, attention);
  ``host_us``: host time to issue one layer (no sync: the CPU time of the calls);
* **graph**: the same calls captured once in a CUDA graph (``begin_step(graph=True)``)
  and replayed (vLLM's FULL mode).

Baselines from the same run: torch SDPA dense decode on contiguous KV (eager and
graph) and our dense paged decode. Also the copy bandwidth, ``hamming_dist_top_k``'s
code bytes per second at 128K, ``hash_encode_and_cache`` at 64K tokens against copy,
and a 36-layer Qwen3-4B-shaped step (dense layers 0, 1, 35), eager and graph.

Shapes (issue 12): B=16, Hq=32, Hkv=8, D=128, R=128, bs=128, bf16; 32K and 128K.

    python benchmarks/engine_step.py --out DIR          # on the GPU: JSON + markdown
    python benchmarks/engine_step.py --plot DIR/engine_step.json   # PNG, anywhere
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # gsa, cuda_ops without PYTHONPATH
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # timing (also when imported)
from timing import flush_mode  # noqa: E402

B, HQ, HKV, D, R, BS = 16, 32, 8, 128, 128, 128
FLUSH_TEXT = {"zero": "writing a 256 MB buffer (triton do_bench: the first kernel also pays the write-back of a "
                      "dirty L2)",
              "clean": "reading a 256 MB buffer (clean L2: no write-back charged to the timed call; "
                       "benchmarks/timing.py)"}
CONTEXTS = (32768, 131072)
RATIOS = {"1/8": 0.125, "1/64": 1 / 64, "0.3": 0.3}
TARGETS = {"host_us_per_layer": 80.0, "eager_vs_graph": 1.25, "graph_128k_1/8": 5.8, "graph_128k_1/64": 17.0,
           "graph_32k_1/8": 5.0, "graph_32k_1/64": 12.0, "selection_tbps_128k": 4.0, "dense_vs_sdpa": 0.95,
           "hash_cache_frac_copy": 0.6}


def bench(fn, reps=200):
    """Median ms; L2 emptied before each call as ``$GSA_BENCH_FLUSH`` says (benchmarks/timing.py)."""
    from timing import bench as timed

    return timed(fn, reps)


def capture(fn):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def host_us(fn, n=40, batches=7):
    """CPU time to issue ``fn`` (no sync inside; the GPU queue never fills at n calls): the
    median over ``batches`` batches of ``n`` calls, each after a sync. One batch alone swung
    60-112 us between runs of the same code on the device's shared host (2026-11-29)."""
    per = []
    for _ in range(batches):
        torch.cuda.synchronize()
        fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        per.append((time.perf_counter() - t) / n * 1e6)
        torch.cuda.synchronize()
    return sorted(per)[len(per) // 2]


def copy_tbs():
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    del src, dst
    return 2 * n / ms / 1e9


def gsa_config(num_layers, ratios, dense_layers=()):
    from gsa.config import GSAConfig

    r = [1.0 if l in dense_layers else ratios for l in range(num_layers)]
    return GSAConfig(model_name="bench/qwen3-4b-shape", num_hidden_layers=num_layers, num_attention_heads=HQ,
                     num_key_value_heads=HKV, head_dim=D, hash_bits=R, chunk_size=BS, top_k_ratio_per_layer=r)


def make_kv(b, ctx, dev, gen):
    m = ctx // BS
    nb = b * m
    kc = torch.randn(nb, BS, HKV, D, device=dev, dtype=torch.bfloat16, generator=gen)
    vc = torch.randn(nb, BS, HKV, D, device=dev, dtype=torch.bfloat16, generator=gen)
    table = torch.randperm(nb, device=dev, generator=gen).reshape(b, m).to(torch.int32)
    return kc, vc, table, m, nb


def sparse_layer(ratio, dev, seq_host, q, kc, vc, table, seq, hcache, new_k, new_slots):
    """One GSA layer as the hot path runs it, planned for graph capture: ``(gs, step, k, layer)``,
    ``layer()`` hashing the new keys into ``hcache`` and then attending (query hash, scores,
    selection, sparse attention). ``k``: the width a captured step needs (its largest selection).
    Also what ``profile_kernels.py`` profiles."""
    from gsa.sparse import GSASparse

    gs = GSASparse(gsa_config(1, ratio), dev)
    k = gs.begin_step(seq_host).plan.k
    step = gs.begin_step(seq_host, k=k, graph=True)

    def layer():
        gs.cache_keys(0, hcache, new_slots, new_k)
        return gs.decode_attention(0, step, q, kc, vc, table, seq, hcache)

    return gs, step, k, layer


def hash_cache_case(dev, t=65536):
    """``hash_encode_and_cache`` of ``t`` tokens (random keys, orthogonal weights, shuffled slots):
    ``(call, bytes it moves)``."""
    from gsa import ops

    k = torch.randn(t, HKV, D, device=dev).to(torch.bfloat16)
    w = torch.linalg.qr(torch.randn(HKV, D, R, device=dev))[0].contiguous()
    hc = torch.zeros(t // BS, HKV, BS, R // 8, dtype=torch.uint8, device=dev)
    slots = torch.randperm(t, device=dev)
    return (lambda: ops.hash_encode_and_cache(k, w, hc, slots)), k.numel() * 2 + hc.numel() + slots.numel() * 8


def layer_bench(res, ctx, dev, log):
    """One layer: SDPA, our dense, and the sparse step per ratio, eager and graph."""
    from gsa import ops

    gen = torch.Generator(device=dev).manual_seed(ctx)
    r = res["contexts"][str(ctx)] = {"ratios": {}}
    kc, vc, table, m, nb = make_kv(B, ctx, dev, gen)
    seq_host = [ctx] * B
    seq = torch.tensor(seq_host, dtype=torch.int32, device=dev)
    q = torch.randn(B, HQ, D, device=dev, dtype=torch.bfloat16, generator=gen)
    kcont = torch.randn(B, HKV, ctx, D, device=dev, dtype=torch.bfloat16, generator=gen)
    vcont = torch.randn(B, HKV, ctx, D, device=dev, dtype=torch.bfloat16, generator=gen)
    q4 = q.unsqueeze(2)
    sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(q4, kcont, vcont, enable_gqa=True)  # noqa: E731
    r["sdpa_eager_ms"] = bench(sdpa)
    g = capture(sdpa)
    r["sdpa_graph_ms"] = bench(g.replay)
    del g, kcont, vcont
    dense = lambda: ops.paged_decode_attention(q, kc, vc, table, seq)  # noqa: E731
    g = capture(dense)
    r["dense_graph_ms"] = bench(g.replay)
    r["dense_vs_sdpa"] = r["sdpa_graph_ms"] / r["dense_graph_ms"]
    kv_bytes = 2 * B * ctx * HKV * D * 2
    r["sdpa_tbs"] = kv_bytes / r["sdpa_graph_ms"] / 1e9
    r["dense_tbs"] = kv_bytes / r["dense_graph_ms"] / 1e9
    del g
    hcache = torch.randint(0, 256, (nb, HKV, BS, R // 8), dtype=torch.uint8, device=dev, generator=gen)
    new_k = torch.randn(B, HKV, D, device=dev, dtype=torch.bfloat16, generator=gen)
    new_slots = table[:, -1].long() * BS + BS - 1
    for name, ratio in RATIOS.items():
        gs, step, k, layer = sparse_layer(ratio, dev, seq_host, q, kc, vc, table, seq, hcache, new_k, new_slots)
        w = gs.weights(0)
        rr = r["ratios"][name] = {"budget_blocks": int(step.plan.budgets[0][0])}
        for _ in range(3):
            layer()
        rr["host_us"] = host_us(layer)
        t0 = time.perf_counter()
        for _ in range(20):
            gs.begin_step(seq_host, k=k, graph=True)
        rr["begin_step_us"] = (time.perf_counter() - t0) * 1e6 / 20
        rr["step_eager_ms"] = bench(layer)
        g = capture(layer)
        rr["step_graph_ms"] = bench(g.replay)
        del g
        rr["speedup_graph"] = r["sdpa_graph_ms"] / rr["step_graph_ms"]
        rr["speedup_eager"] = r["sdpa_eager_ms"] / rr["step_eager_ms"]
        rr["eager_vs_graph"] = rr["step_eager_ms"] / rr["step_graph_ms"]
        # selection alone (query hash excluded): the op, graph replay
        qc = ops.hash_encode(q, w)
        top = lambda: ops.hamming_dist_top_k(qc, hcache, table, seq, step.budgets[0], k, [0, -2, -1], "max", 0, 1.0)  # noqa: E731,B023
        g = capture(top)
        rr["hamming_graph_ms"] = bench(g.replay)
        rr["hamming_tbs"] = B * ctx * HKV * (R // 8) / rr["hamming_graph_ms"] / 1e9
        del g
        log(f"ctx {ctx} ratio {name}: {json.dumps({k: round(v, 4) for k, v in rr.items()})}")
    log(f"ctx {ctx}: sdpa eager {r['sdpa_eager_ms']:.4f} graph {r['sdpa_graph_ms']:.4f} ms, dense {r['dense_graph_ms']:.4f} ms")
    del kc, vc, hcache
    torch.cuda.empty_cache()


def model_bench(res, ctx, b, dev, log, layers=36, dense_layers=(0, 1, 35), ratio=0.125):
    """A Qwen3-4B-shaped decode step (attention part): every layer hashes its new key and
    attends; KV and hash caches are shared by the layers (timing only)."""
    from gsa.sparse import GSASparse

    gen = torch.Generator(device=dev).manual_seed(7)
    kc, vc, table, m, nb = make_kv(b, ctx, dev, gen)
    seq_host = [ctx] * b
    seq = torch.tensor(seq_host, dtype=torch.int32, device=dev)
    qs = [torch.randn(b, HQ, D, device=dev, dtype=torch.bfloat16, generator=gen) for _ in range(layers)]
    hcache = torch.randint(0, 256, (nb, HKV, BS, R // 8), dtype=torch.uint8, device=dev, generator=gen)
    new_k = torch.randn(b, HKV, D, device=dev, dtype=torch.bfloat16, generator=gen)
    new_slots = table[:, -1].long() * BS + BS - 1
    out = {}
    for name, cfg_ratio in (("dense", 1.0), ("gsa_1/8", ratio)):
        gs = GSASparse(gsa_config(layers, cfg_ratio, dense_layers), dev)
        step = gs.begin_step(seq_host, k=gs.begin_step(seq_host).plan.k, graph=True)

        def model_step():
            for l in range(layers):
                gs.cache_keys(l, hcache if gs.policy.needs_hash_cache(l) else None, new_slots, new_k)
                gs.decode_attention(l, step, qs[l], kc, vc, table, seq, hcache)

        for _ in range(2):
            model_step()
        row = {"host_ms": host_us(model_step, n=5) / 1e3, "eager_ms": bench(model_step, reps=100)}
        g = capture(model_step)
        row["graph_ms"] = bench(g.replay, reps=100)
        del g
        row["eager_us_per_token"] = row["eager_ms"] * 1e3 / b
        row["graph_us_per_token"] = row["graph_ms"] * 1e3 / b
        out[name] = row
    for mode in ("eager", "graph"):
        out[f"speedup_{mode}"] = out["dense"][f"{mode}_ms"] / out["gsa_1/8"][f"{mode}_ms"]
    res["model_step"][f"{ctx}_b{b}"] = out
    log(f"36-layer step ctx {ctx} B={b}: {json.dumps(out)}")
    del kc, vc, hcache
    torch.cuda.empty_cache()


def hash_cache_bench(res, dev):
    call, nbytes = hash_cache_case(dev)
    g = capture(call)
    ms = bench(g.replay)
    res["hash_encode_and_cache_64k"] = {"ms": ms, "tbs": nbytes / ms / 1e9, "frac_copy": nbytes / ms / 1e9 / res["copy_tbs"]}


def summary(res):
    c = res["contexts"]
    s = {"device": res["device"]}
    s["host_us_per_layer"] = {k: v["ratios"]["1/8"]["host_us"] for k, v in c.items()}
    for mode in ("graph", "eager"):
        s[f"speedup_{mode}"] = {k: {rn: v["ratios"][rn][f"speedup_{mode}"] for rn in ("1/8", "1/64")} for k, v in c.items()}
    s["eager_vs_graph"] = {k: {rn: v["ratios"][rn]["eager_vs_graph"] for rn in ("1/8", "1/64")} for k, v in c.items()}
    if "131072" in c:
        s["selection_tbps_128k"] = c["131072"]["ratios"]["1/8"]["hamming_tbs"]
    s["dense_vs_sdpa"] = {k: v["dense_vs_sdpa"] for k, v in c.items()}
    s["hash_cache_frac_copy"] = res["hash_encode_and_cache_64k"]["frac_copy"]
    return s


def markdown(res) -> str:
    s = res["summary"]
    L = [f"# GSA decode step at engine speed ({res['device']}, torch {res['torch']}, triton {res['triton']}, {res['time']})", "",
         f"B={B}, Hq={HQ}, Hkv={HKV}, D={D}, R={R}, bs={BS}, bf16. Copy bandwidth {res['copy_tbs']:.2f} TB/s. "
         "Eager = the orchestrator's hot path called from Python per layer (what vLLM's PIECEWISE mode does); "
         "graph = the same calls replayed from a CUDA graph (vLLM's FULL mode). Baseline: torch SDPA dense "
         "decode on contiguous KV, same run, same mode. Medians over calls, L2 emptied before each call by "
         + FLUSH_TEXT[res.get("flush", "zero")] + ".", "",
         "| context | ratio | budget blocks | host us / layer | step eager ms | step graph ms | eager/graph | SDPA eager ms | SDPA graph ms | speedup eager | speedup graph | hamming_dist_top_k ms (TB/s) |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for ctx, c in res["contexts"].items():
        for rn, rr in c["ratios"].items():
            L.append(f"| {int(ctx) // 1024}K | {rn} | {rr['budget_blocks']} | {rr['host_us']:.1f} | {rr['step_eager_ms']:.4f} | "
                     f"{rr['step_graph_ms']:.4f} | {rr['eager_vs_graph']:.2f} | {c['sdpa_eager_ms']:.4f} | {c['sdpa_graph_ms']:.4f} | "
                     f"{rr['speedup_eager']:.2f}x | {rr['speedup_graph']:.2f}x | {rr['hamming_graph_ms']:.4f} ({rr['hamming_tbs']:.2f}) |")
    L += ["", "| context | SDPA graph ms (TB/s) | our dense paged decode ms (TB/s) | dense / SDPA |", "|---|---|---|---|"]
    for ctx, c in res["contexts"].items():
        L.append(f"| {int(ctx) // 1024}K | {c['sdpa_graph_ms']:.4f} ({c['sdpa_tbs']:.2f}) | {c['dense_graph_ms']:.4f} "
                 f"({c['dense_tbs']:.2f}) | {c['dense_vs_sdpa']:.3f} |")
    h = res["hash_encode_and_cache_64k"]
    L += ["", f"hash_encode_and_cache, 64K tokens: {h['ms']:.4f} ms, {h['tbs']:.2f} TB/s = {100 * h['frac_copy']:.0f}% of copy.", ""]
    if res.get("model_step"):
        L += ["36-layer Qwen3-4B-shaped decode step (attention part: new-key hash + selection + attention per layer; "
              "dense layers 0, 1, 35; GSA 1/8 elsewhere):", "",
              "| context, batch | mode | dense ms (us/token) | GSA 1/8 ms (us/token) | speedup | host ms per step (dense / GSA) |",
              "|---|---|---|---|---|---|"]
        for key, o in res["model_step"].items():
            for mode in ("eager", "graph"):
                L.append(f"| {key} | {mode} | {o['dense'][f'{mode}_ms']:.3f} ({o['dense'][f'{mode}_us_per_token']:.1f}) | "
                         f"{o['gsa_1/8'][f'{mode}_ms']:.3f} ({o['gsa_1/8'][f'{mode}_us_per_token']:.1f}) | {o[f'speedup_{mode}']:.2f}x | "
                         f"{o['dense']['host_ms']:.2f} / {o['gsa_1/8']['host_ms']:.2f} |")
    L += ["", "| target (issue 12) | measured | met |", "|---|---|---|"]
    for name, (val, goal, ok) in res["targets"].items():
        L.append(f"| {name} (goal {goal}) | {val} | {'yes' if ok else 'NO'} |")
    return "\n".join(L) + "\n"


def targets(res):
    s, t, out = res["summary"], TARGETS, {}
    for ctx, v in s["host_us_per_layer"].items():
        out[f"host us per sparse layer, eager, {int(ctx) // 1024}K, 1/8 (<=)"] = (round(v, 1), t["host_us_per_layer"], v <= t["host_us_per_layer"])
    for ctx, d in s["eager_vs_graph"].items():
        for rn, v in d.items():
            out[f"eager step / graph step, {int(ctx) // 1024}K, {rn} (<=)"] = (round(v, 2), t["eager_vs_graph"], v <= t["eager_vs_graph"])
    for ctx, d in s["speedup_graph"].items():
        for rn, v in d.items():
            goal = t[f"graph_{int(ctx) // 1024}k_{rn}"]
            out[f"graph sparse step vs SDPA dense, {int(ctx) // 1024}K, {rn} (>=)"] = (round(v, 2), goal, v >= goal)
    if "selection_tbps_128k" in s:
        v = s["selection_tbps_128k"]
        out["hamming_dist_top_k code TB/s at 128K (>=)"] = (round(v, 2), t["selection_tbps_128k"], v >= t["selection_tbps_128k"])
    for ctx, v in s["dense_vs_sdpa"].items():
        out[f"dense paged decode / SDPA, {int(ctx) // 1024}K (>=)"] = (round(v, 3), t["dense_vs_sdpa"], v >= t["dense_vs_sdpa"])
    v = s["hash_cache_frac_copy"]
    out["hash_encode_and_cache fraction of copy (>=)"] = (round(v, 3), t["hash_cache_frac_copy"], v >= t["hash_cache_frac_copy"])
    return out


def plot(json_path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = json.load(open(json_path))
    ctxs = sorted(res["contexts"], key=int)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    x = range(len(ctxs))
    width = 0.2
    for i, (rn, mode) in enumerate([("1/8", "eager"), ("1/8", "graph"), ("1/64", "eager"), ("1/64", "graph")]):
        a1.bar([j + (i - 1.5) * width for j in x], [res["contexts"][c]["ratios"][rn][f"speedup_{mode}"] for c in ctxs],
               width, label=f"{rn}, {mode}")
    a1.axhline(1.0, color="grey", linewidth=0.8)
    a1.set_xticks(list(x), [f"{int(c) // 1024}K" for c in ctxs])
    a1.set_ylabel("speedup vs SDPA dense (same mode)")
    a1.set_title("one sparse layer, B=16")
    a1.legend(fontsize=8)
    a2.bar([j - 0.2 for j in x], [res["contexts"][c]["ratios"]["1/8"]["host_us"] for c in ctxs], 0.4, label="host us / layer (eager)")
    a2.axhline(TARGETS["host_us_per_layer"], color="red", linewidth=0.8, label="target 80 us")
    a2.set_xticks(list(x), [f"{int(c) // 1024}K" for c in ctxs])
    a2.set_ylabel("microseconds")
    a2.set_title("host time to issue one sparse layer (1/8)")
    a2.legend(fontsize=8)
    fig.suptitle(f"GSA decode step, {res['device']}")
    fig.tight_layout()
    out = os.path.splitext(json_path)[0] + ".png"
    fig.savefig(out, dpi=120)
    return out


def main(out_dir: str, quick: bool = False) -> None:
    import triton

    import gsa

    dev = torch.device("cuda")
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "python": platform.python_version(), "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
           "shapes": dict(B=B, Hq=HQ, Hkv=HKV, D=D, R=R, bs=BS, dtype="bf16"), "contexts": {}, "model_step": {},
           "flush": flush_mode()}
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    with gsa.use_backend("triton"):
        res["copy_tbs"] = copy_tbs()
        log(f"copy {res['copy_tbs']:.2f} TB/s")
        hash_cache_bench(res, dev)
        log(f"hash cache 64K: {res['hash_encode_and_cache_64k']}")
        for ctx in CONTEXTS:
            layer_bench(res, ctx, dev, log)
        if not quick:
            model_bench(res, 32768, 16, dev, log)
            model_bench(res, 131072, 4, dev, log)
    res["summary"] = summary(res)
    res["targets"] = targets(res)
    res.update(res["summary"])
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "engine_step.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    md = markdown(res)
    with open(os.path.join(out_dir, "engine_step.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--quick", action="store_true", help="skip the 36-layer step")
    ap.add_argument("--plot", help="make the PNG from a JSON result (no GPU needed)")
    args = ap.parse_args()
    if args.plot:
        print(plot(args.plot))
    elif not torch.cuda.is_available():
        sys.exit("engine_step.py needs a CUDA GPU (use --plot JSON to plot on a CPU)")
    else:
        main(args.out, args.quick)
