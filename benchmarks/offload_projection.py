"""A labelled projection (not a measurement): the H200 offload rows at real-trace hit rates.

Input: an ``offload_bench.py`` result (``--bench``, default
``benchmarks/results/offload_h200.json``) and ``offload_traces.py`` results
(``--traces``). Output: ``benchmarks/results/<bench stem>_projection.{json,md}``.

Steady state first. Runs written before ``offload_bench.py`` counted only its
timed steps (results without ``counted_steps``) summed the pool counters over
every step, warm-up included, and the first step starts from an empty pool:
all ``W`` wanted blocks miss. With ``n`` counted steps and ``W`` wanted blocks
per layer and step (``W = fetched / (1 - hit)`` of the on-demand row of the
same batch, where every miss is one fetch), the steady-state values are
``hit_ss = hit * n / (n - 1)`` and ``fetched_ss = (n * fetched - W) / (n - 1)``;
the timings are medians of steady-state steps already. ``h2d_ss`` is the
host->device rate those fetches used.

Projection: with a real-trace pool hit rate ``h`` the step fetches ``W (1 - h)``
blocks instead of ``fetched_ss``. Model: on-demand fetches sit on the critical
path (select -> fetch -> attend), so every block not fetched saves its time at
the measured PCIe rate: ``t = t_measured - (fetched_ss - W (1 - h)) * block_bytes
/ pcie``. ``t_no_fetch`` (``h = 1``) is what is left: selection, residency
bookkeeping, the copy kernel's fixed cost, attention. Tokens/s use the
benchmark's formula ``B / (3 t_dense + 33 t_sparse)`` with ``t_dense`` backed out of
the row. Rows with the lookahead prefetch (their first step also prefetches a
wide selection) are not projected.

Usage: python benchmarks/offload_projection.py [--bench PATH] [--traces PATH ...]
"""
from __future__ import annotations

import argparse
import json
import os

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DEFAULT_TRACES = ["offload_traces_qwen_16k.json", "offload_traces_qwen_8k.json", "offload_traces_smollm2_8k.json",
                  "offload_traces_smollm2_4k_bs16.json"]


def block_bytes(args: dict) -> int:
    """K + V bytes of one 128-token block of the benchmark's layer (8 KV heads, D = 128, bf16)."""
    return 2 * 128 * 8 * 128 * 2


def steady_rows(bench: dict) -> list:
    """The bench's offload rows with steady-state hit rate, fetches and H2D GB/s added."""
    a = bench["args"]
    n = bench.get("counted_steps") or (a["warmup"] + a["steps"])
    cold = "counted_steps" not in bench  # old runs: the counters include the cold first step
    bb = block_bytes(a)
    rows = [dict(r) for r in bench["rows"] if "hit_rate" in r]
    wanted = {}
    for r in rows:
        if r["row"] == "offload_ondemand" and r["hit_rate"] < 1:
            wanted[r["batch"]] = r["fetched_blocks_per_layer_step"] / (1 - r["hit_rate"])
    for r in rows:
        w = wanted.get(r["batch"])
        r["wanted_per_layer_step"] = w
        f = r["fetched_blocks_per_layer_step"]
        if cold and w is not None and not r["row"].endswith("lookahead"):
            r["hit_ss"] = min(r["hit_rate"] * n / (n - 1), 1.0)  # lag-1 rows: wanted differs a little
            r["fetched_ss"] = (n * f - w) / (n - 1)
        elif not cold:
            r["hit_ss"], r["fetched_ss"] = r["hit_rate"], f
        if "fetched_ss" in r:
            r["h2d_ss_gbs"] = r["fetched_ss"] * bb / (r["t_layer_ms"] * 1e-3) / 1e9
            r["fetch_ms_at_pcie"] = r["fetched_ss"] * bb / bench["pcie_h2d_gbs"] / 1e6
    return rows


def project(bench: dict, rows: list, hit: dict, tag: str) -> list:
    """Projected ms/layer and tokens/s of the steady rows at pool hit rates ``hit[pool_frac]``."""
    bb, pcie = block_bytes(bench["args"]), bench["pcie_h2d_gbs"]
    gsa = {r["batch"]: r["t_layer_ms"] for r in bench["rows"] if r["row"] == "gsa_hbm"}
    dense = {r["batch"]: r["tok_s"] for r in bench["rows"] if r["row"] == "dense_hbm"}
    best_dense = dense[max(dense)] if dense else None
    out = []
    for r in rows:
        if "fetched_ss" not in r or r.get("wanted_per_layer_step") is None or r["pool_frac"] not in hit:
            continue
        b, t = r["batch"], r["t_layer_ms"]
        t_dense = (b / r["tok_s"] - 33 * t * 1e-3) / 3  # seconds, from tok_s = B / (3 t_dense + 33 t)
        h = hit[r["pool_frac"]]
        f_real = r["wanted_per_layer_step"] * (1 - h)
        t_proj = t - (r["fetched_ss"] - f_real) * bb / pcie / 1e6
        t_none = t - r["fetched_ss"] * bb / pcie / 1e6
        tok = b / (3 * t_dense + 33 * t_proj * 1e-3)
        out.append(dict(trace=tag, row=r["row"], batch=b, pool_frac=r["pool_frac"], hit_real=h,
                        hit_ss_synthetic=r["hit_ss"], t_measured_ms=t, t_projected_ms=t_proj,
                        t_no_fetch_ms=t_none, tok_s_measured=r["tok_s"], tok_s_projected=tok,
                        tok_s_no_fetch=b / (3 * t_dense + 33 * t_none * 1e-3),
                        per_request_vs_gsa_hbm=(gsa[b] / t_proj) if b in gsa else None,
                        throughput_vs_dense=(tok / best_dense) if best_dense else None))
    return out


def markdown(bench_path: str, bench: dict, rows: list, proj: list) -> str:
    f = lambda v, p=3: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    out = ["# Offload on the H200: steady state and a projection at real-trace hit rates", "",
           f"From `{os.path.relpath(bench_path)}` (PCIe host->device {bench['pcie_h2d_gbs']:.1f} GB/s). "
           "Written by benchmarks/offload_projection.py; see its docstring for the model.", "",
           "## Steady state (measured rows, first cold step taken out of the counters)", "",
           "| row | batch | pool | ms/layer | hit (as reported) | hit, steady | fetched blocks/layer/step, steady | "
           "H2D GB/s (as reported) | H2D GB/s, steady | fetch ms at PCIe |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['row']} | {r['batch']} | {r['pool_frac']} | {f(r['t_layer_ms'])} | {f(r['hit_rate'])} | "
                   f"{f(r.get('hit_ss'))} | {f(r.get('fetched_ss'), 1)} | {f(r.get('h2d_gbs'), 1)} | "
                   f"{f(r.get('h2d_ss_gbs'), 1)} | {f(r.get('fetch_ms_at_pcie'))} |")
    out += ["", "## PROJECTION (a model, not a measurement) at real-trace pool hit rates (ratio 1/8)", "",
            "| trace | row | batch | pool | hit used | ms/layer measured | ms/layer projected | ms/layer, no fetch | "
            "tok/s measured | tok/s projected | tok/s, no fetch | vs GSA-HBM | vs dense (B=6) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in proj:
        out.append(f"| {p['trace']} | {p['row']} | {p['batch']} | {p['pool_frac']} | {f(p['hit_real'])} | "
                   f"{f(p['t_measured_ms'])} | {f(p['t_projected_ms'])} | {f(p['t_no_fetch_ms'])} | "
                   f"{f(p['tok_s_measured'], 1)} | {f(p['tok_s_projected'], 1)} | {f(p['tok_s_no_fetch'], 1)} | "
                   f"{f(p['per_request_vs_gsa_hbm'])} | "
                   f"{f(p['throughput_vs_dense'])} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", default=os.path.join(RESULTS, "offload_h200.json"))
    ap.add_argument("--traces", nargs="+", default=[os.path.join(RESULTS, t) for t in DEFAULT_TRACES])
    args = ap.parse_args(argv)
    with open(args.bench) as fh:
        bench = json.load(fh)
    rows = steady_rows(bench)
    proj = []
    for path in args.traces:
        if not os.path.exists(path):
            print(f"skipped (not found): {path}")
            continue
        with open(path) as fh:
            tr = json.load(fh)
        ov = tr["ratios"]["0.125"]["overall"]
        hit = {float(k[len("pool_hit_"):]): v for k, v in ov.items()
               if k.startswith("pool_hit_") and not k.endswith("_unforced")}
        tag = os.path.basename(path)[len("offload_traces_"):-len(".json")]
        proj += project(bench, rows, hit, tag)
    res = dict(bench=os.path.relpath(args.bench), steady=rows, projection=proj,
               note="projection: a model from measured rows, not a measurement")
    stem = os.path.splitext(args.bench)[0] + "_projection"
    with open(stem + ".json", "w") as fh:
        json.dump(res, fh, indent=1)
    md = markdown(args.bench, bench, rows, proj)
    with open(stem + ".md", "w") as fh:
        fh.write(md)
    print(md)
    return res


if __name__ == "__main__":
    main()
