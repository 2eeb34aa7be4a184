"""Benchmark: GSA offload (gsa.offload) against dense and GSA with all KV in HBM.

Setup (issue 18): Qwen3-8B-shaped attention (36 layers, 32 query heads, 8 KV
heads, D = 128, bf16; the shipped Qwen3-4B config has the same attention
shapes: first two and last layer dense), 128-token blocks, 128-bit codes,
``--context`` tokens per request (128K), GSA ratio ``--ratio`` (1/8) on the
sparse layers, device pool ``--pool-frac`` (1/4) of each offloaded layer's KV.

What is timed (decode attention only): one whole decode step of the timed layers,
``--timed-layers`` sparse layers (host memory bounds the rest: a 128K request holds
16.5 GiB of offloaded KV) or one dense layer, per step ``begin_step`` (host planning)
plus every layer, medians over ``--steps`` steps after ``--warmup`` (steady state: the
pool's cold fill is not counted, neither in times nor in hit rates). In two modes
(``--modes``): **eager** (the layers called from Python, as an engine calls attention per
layer) and **graph** (CUDA: the layers captured once in a CUDA graph after the warm-up,
each step ``begin_step(graph=True)`` + a replay). Queries and lengths are made on the device
into static inputs before the clock starts (no host->device copy in the timed step).
Tokens/s of the whole model = ``B / (3 * t_dense + 33 * t_sparse)`` with the same mode's
dense layer time. Offload rows per batch: the largest pool fraction whose memory-model
batch reaches it (``--all-fracs``: every such fraction), so the 1/8 pool runs at 4x the
dense batch.

Rows (each batch size ``B``):
  dense_hbm            paged attention over the full KV on the device (where it fits)
  dense_host_streamed  the full KV copied host->device per layer, then attention
                       (eager, first batch only: PCIe-bound at every batch; a zero-copy
                       kernel reading pinned memory was not written, this is the same traffic)
  gsa_hbm              GSASparse.select + attention, all KV on the device
  offload_ondemand     OffloadedGSA, no prefetch
  offload_prefetch     OffloadedGSA, prefetch "previous" (and "lookahead" as its own row, eager)
  offload_score        OffloadedGSA, on demand, score-aware eviction (``eviction="score"``)
  cpu_topk_lag1        OffloadedGSA with codes in host memory, selection on a CPU worker
                       one step behind (its blocks are prefetched exactly; eager)

Each layer's query drifts once per step (``q_t = normalise(q_{t-1} + drift * noise / sqrt(D))``), key codes
are random bytes with a planted hot set per row (``--hot-frac`` of the budget, see
:func:`plant_hot_blocks`), KV values zeros (values do not change timings); every row and
mode restarts the same query chain (``Workload.restart``), so rows see the same selections. The
defaults (drift 0.2, hot 0.75) were calibrated on CPU at 128K tokens: consecutive
selections at ratio 1/8 overlap 0.84 (12 steps, one row), as the SmolLM2 8K
trace with 128-token blocks does (0.840); random codes alone overlap ~0.15.
Hit rates here are still synthetic; the real-trace hit rate (``hit_rate_1_8``) is the lowest
pool-1/4 hit at ratio 1/8 among ``--traces`` (default: the Qwen2.5-Coder-0.5B 8K and 16K
traces and SmolLM2 4K with 16-token blocks, those present; written on CPU by
benchmarks/offload_traces.py); every trace's value is in ``hit_rate_1_8_by_trace``.

Memory model (the concurrency headline): requests that fit ``--hbm-gib`` minus
``--weights-gib`` (Qwen3-8B bf16 weights) minus 10% reserve, per request: dense
= all 36 layers' KV; offload = the 3 dense layers' KV + pool + hash codes.

Usage: python benchmarks/offload_bench.py [--smoke] [--device cuda] [--out DIR]
Writes DIR/offload_h200.{json,md,png} (smoke: offload_smoke.*), DIR defaults to
benchmarks/results.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gsa import ops  # noqa: E402
from gsa.config import GSAConfig  # noqa: E402
from gsa.offload import OffloadedGSA, min_pool_blocks  # noqa: E402
from gsa.sparse import GSASparse  # noqa: E402
from offload_capture_check import chain  # noqa: E402  (an exception and the one it replaced)
from offload_report import markdown, plot  # noqa: E402  (the benchmark's md table and png)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
GIB = 1024 ** 3


def config(ratio: float, threshold: int = 2048, n_layers: int = 36) -> GSAConfig:
    base = GSAConfig.for_model("Qwen3-4B")
    ratios = [1.0 if l in (0, 1, n_layers - 1) else ratio for l in range(n_layers)]
    return base.replace(model_name="Qwen3-8B-shaped", top_k_ratio_per_layer=ratios,
                        gpu_seq_len_threshold=threshold, npu_seq_len_threshold=threshold)


def sync(dev: torch.device) -> None:
    if dev.type != "cpu":
        torch.get_device_module(dev).synchronize()


class Workload:
    """B rows of ``ctx`` tokens growing by one per step; block tables a random permutation.

    Static device inputs (what a captured step reads): ``qs[l]`` the query of timed layer
    ``l`` (``[B, Hq, D]``), ``seq`` the lengths (``int32 [B]``); :meth:`advance` writes
    the next step's values into them with device ops (no host->device copy), outside
    the timed region. Each layer's query drifts on its own:
    ``q_t = normalise(q_{t-1} + drift * noise / sqrt(D))``, from one first query ``q0``."""

    def __init__(self, cfg: GSAConfig, b: int, ctx: int, steps: int, dev, n_layers: int, dtype, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.bs = cfg.chunk_size
        self.m = math.ceil((ctx + steps + 2) / self.bs)
        self.nb = b * self.m
        self.table_host = torch.randperm(self.nb, generator=g)[: b * self.m].reshape(b, self.m).to(torch.int32)
        self.table = self.table_host.to(dev)
        self.b, self.ctx, self.dev = b, ctx, dev
        self.hq, self.d = cfg.num_attention_heads, cfg.head_dim
        self.q0 = torch.nn.functional.normalize(torch.randn(b, self.hq, self.d, generator=g), dim=-1)
        self.n_layers, self.seed = n_layers, seed
        self.qs = [torch.empty(b, self.hq, self.d, dtype=dtype, device=dev) for _ in range(n_layers)]
        self.seq = torch.full((b,), ctx, dtype=torch.int32, device=dev)
        self.gd = torch.Generator(device=dev)
        self.restart()

    def restart(self) -> None:
        """Back to the first query of the chain and the same noise sequence: every row (and mode)
        replays the same queries. (Without it the rows ran one after another on ONE chain, so each
        later row's queries had drifted further from the planted hot set: in the 2026-11-29 H200
        run the hit rate fell in run order at every batch, 0.854 -> 0.735 -> 0.697 -> 0.675 at B = 6,
        and graph / prefetch rows fetched more blocks than eager / on-demand for that reason.)"""
        self.q = self.q0.to(self.dev).expand(self.n_layers, -1, -1, -1).clone()
        self.gd.manual_seed(self.seed + 1)

    def lens(self, i: int) -> list:
        return [self.ctx + i] * self.b

    def advance(self, i: int, drift: float) -> None:
        noise = torch.randn(self.q.shape, generator=self.gd, device=self.dev) / math.sqrt(self.d)
        self.q = torch.nn.functional.normalize(self.q + drift * noise, dim=-1)
        for l, buf in enumerate(self.qs):
            buf.copy_(self.q[l])
        self.seq.fill_(self.ctx + i)


def plant_hot_blocks(hc: dict, w: Workload, gsa_rt: GSASparse, ratio: float, hot_frac: float, seed: int = 0) -> int:
    """Give every row a hot set, as real attention has: ``hot_frac`` of its budget of
    (non-forced) blocks get key codes equal to the row's first query's codes (per KV
    head, its group's first query head), so they keep the top scores while the query
    drifts; the rest of the selection churns among near-tied random codes. Returns
    the hot blocks per row. Without it, random codes make consecutive selections
    overlap by ~15% (far below real traces)."""
    bs = gsa_rt.config.chunk_size
    nb_row = math.ceil(w.ctx / bs)
    n_hot = int(hot_frac * math.ceil(ratio * nb_row))
    if n_hot < 1:
        return 0
    g = torch.Generator().manual_seed(seed)
    for l, cache in hc.items():
        hkv, group = cache.shape[1], w.hq // cache.shape[1]
        codes = ops.hash_encode(w.q0.to(cache.device), gsa_rt.weights(l))[:, ::group]  # [B, Hkv, C]
        for b in range(w.b):
            logical = torch.randperm(nb_row - 3, generator=g)[:n_hot] + 1  # not block 0 nor the last two
            phys = w.table_host[b, logical].long().to(cache.device)
            cache[phys] = codes[b][None, :, None, :].expand(n_hot, hkv, bs, -1)
    return n_hot


def timed_steps(w: Workload, args, dev, begin, body, graph: bool, on_timed=None) -> float:
    """Median seconds of one decode step over ``args.steps`` after ``args.warmup`` (steady state).

    A step is ``begin(i, graph)`` (host-side planning, e.g. ``begin_step``) then ``body()``
    (every timed layer). ``graph=False``: both eager, as an engine calls them per layer
    from Python. ``graph=True``: the warm-up steps run eager, then ``body`` is captured once
    in a CUDA graph and each timed step is ``begin(i, True)`` + a replay; the replays read
    the new queries and lengths from the static inputs. ``w.advance`` writes those before
    the clock starts; ``on_timed()`` runs once before the first timed step (counter reset).
    Starts with ``w.restart()``: the same query sequence for every call."""
    times, g = [], None
    w.restart()  # every row and mode sees the same query sequence (comparable hit rates and fetches)
    for i in range(args.warmup + args.steps):
        w.advance(i, args.drift)
        if i == args.warmup and on_timed is not None:
            on_timed()
        if graph and i == args.warmup:
            begin(i, True)  # (the warm-up ran the same graph-form calls eagerly: nothing compiles in capture)
            sync(dev)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                body()
        sync(dev)
        t0 = time.perf_counter()
        begin(i, graph)
        if g is not None:
            g.replay()
        else:
            body()
        sync(dev)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    del g
    return statistics.median(times)


def pcie_gbs(dev, gib: float) -> float:
    if dev.type == "cpu":
        return float("nan")
    src = torch.empty(int(gib * GIB), dtype=torch.uint8, pin_memory=True)
    dst = torch.empty_like(src, device=dev)
    dst.copy_(src, non_blocking=True)
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(3):
        dst.copy_(src, non_blocking=True)
    sync(dev)
    return 3 * src.numel() / (time.perf_counter() - t0) / 1e9


def kv_bytes_per_layer(cfg: GSAConfig, ctx: int, elem: int = 2) -> int:
    return 2 * ctx * cfg.num_key_value_heads * cfg.head_dim * elem


def memory_model(cfg: GSAConfig, args) -> dict:
    per_layer = kv_bytes_per_layer(cfg, args.context)
    n_dense = sum(1 for r in cfg.top_k_ratio_per_layer if r >= 1)
    n_sparse = cfg.num_hidden_layers - n_dense
    usable = (args.hbm_gib - args.weights_gib) * 0.9 * GIB
    dense_req = per_layer * cfg.num_hidden_layers
    codes = args.context * cfg.num_key_value_heads * cfg.code_bytes * n_sparse
    out = {"kv_gib_per_request": dense_req / GIB, "usable_hbm_gib": usable / GIB,
           "dense_max_batch": int(usable // dense_req), "n_dense_layers": n_dense}
    for frac in args.pool_fracs:
        off_req = per_layer * n_dense + per_layer * frac * n_sparse + codes
        out[f"offload_pool{frac:g}_gib_per_request"] = off_req / GIB
        out[f"offload_pool{frac:g}_max_batch"] = int(usable // off_req)
        out[f"offload_pool{frac:g}_host_gib_per_request"] = per_layer * n_sparse / GIB
    return out


def run_rows(cfg: GSAConfig, b: int, args, dev, dtype, dense_fits: bool, fracs) -> list:
    """Every row at batch ``b``, in each of ``args.modes`` (eager, graph); offload rows for the
    pool fractions ``fracs`` (those whose memory-model batch reaches ``b``)."""
    rows = []
    gsa_rt = GSASparse(cfg, dev, block_size=cfg.chunk_size)
    sparse_layers = [l for l, r in enumerate(cfg.top_k_ratio_per_layer) if r < 1][: args.timed_layers]
    hkv, d, bs = cfg.num_key_value_heads, cfg.head_dim, cfg.chunk_size
    n_dense = sum(1 for r in cfg.top_k_ratio_per_layer if r >= 1)
    n_sparse = cfg.num_hidden_layers - n_dense
    nl = len(sparse_layers)
    w = Workload(cfg, b, args.context, args.warmup + args.steps, dev, nl, dtype)
    max_len = args.context + args.warmup + args.steps + 1
    k = gsa_rt.begin_step([max_len] * b).plan.k  # the width a captured step needs (its largest selection)
    modes = [m for m in args.modes if m == "eager" or dev.type == "cuda"]

    def tok_s(t_dense, t_sparse):
        return b / (n_dense * t_dense + n_sparse * t_sparse)

    def measure(name, begin, body, mode, on_timed=None, per=1):
        try:
            return timed_steps(w, args, dev, begin, body, mode == "graph", on_timed) / per, None
        except Exception as e:  # a capture that fails: the row says why, the run goes on
            try:
                sync(dev)
            except Exception as e2:  # noqa: BLE001 (a broken capture can poison the context: say so)
                print(f"sync after the failure: {type(e2).__name__}: {e2}", flush=True)
            # with the exception it replaced: a capture that fails inside ends with capture_end's error
            # (e.g. "unjoined work"), and the first error is only in the context (2026-11-29 H200 run)
            why = chain(e)
            print(f"{name} {mode} B={b}: {why}", flush=True)
            return None, why[:300]

    # one dense layer's attention over the full KV on the device: every row's dense layers
    kc = torch.zeros(w.nb, bs, hkv, d, dtype=dtype, device=dev)
    vc = torch.zeros_like(kc)
    nothing = lambda i, graph: None  # noqa: E731
    t_dense, t_gsa = {}, {}
    for mode in modes:
        t, err = measure("dense_hbm", nothing, lambda: gsa_rt._attention_hot(0, w.qs[0], kc, vc, w.table, w.seq,
                                                                           None), mode)
        t_dense[mode] = t
        rows.append(dict(row="dense_hbm", mode=mode, batch=b, fits_hbm=dense_fits, error=err,
                         t_layer_ms=t and t * 1e3, tok_s=t and tok_s(t, t)))

    # dense reading host KV: copy a layer's whole KV host->device, then attend (eager; PCIe-bound)
    if b == args.batches[0] and "dense_host_streamed" not in args.skip_rows:
        hk = torch.zeros(w.nb, bs, hkv, d, dtype=dtype, pin_memory=dev.type != "cpu")

        def dense_stream():
            kc.copy_(hk, non_blocking=True)
            vc.copy_(hk, non_blocking=True)
            gsa_rt._attention_hot(0, w.qs[0], kc, vc, w.table, w.seq, None)
        t, err = measure("dense_host_streamed", nothing, dense_stream, "eager")
        rows.append(dict(row="dense_host_streamed", mode="eager", batch=b, error=err, t_layer_ms=t and t * 1e3,
                         tok_s=t and tok_s(t, t)))
        hk = None  # free the pinned copy

    # GSA with all KV on the device
    hc = {l: torch.randint(0, 256, gsa_rt.hash_cache_shape(w.nb), dtype=torch.uint8, device=dev)
          for l in sparse_layers}
    plant_hot_blocks(hc, w, gsa_rt, args.ratio, args.hot_frac)
    cur = {}

    def gsa_begin(i, graph):
        cur["st"] = gsa_rt.begin_step(w.lens(i), k=k if graph else None, graph=graph)

    def gsa_body():
        for j, l in enumerate(sparse_layers):
            gsa_rt.decode_attention(l, cur["st"], w.qs[j], kc, vc, w.table, w.seq, hc[l])
    for mode in modes:
        t, err = measure("gsa_hbm", gsa_begin, gsa_body, mode, per=nl)
        t_gsa[mode] = t
        rows.append(dict(row="gsa_hbm", mode=mode, batch=b, fits_hbm=dense_fits, error=err, t_layer_ms=t and t * 1e3,
                         tok_s=t and t_dense[mode] and tok_s(t_dense[mode], t)))
    kc = vc = None  # free the full device KV before the offload rows

    variants = [("offload_ondemand", dict(prefetch=None), modes), ("offload_prefetch", dict(prefetch="previous"), modes),
                ("offload_score", dict(prefetch=None, eviction="score"), modes),
                ("offload_lookahead", dict(prefetch="lookahead", lookahead=1.5), ["eager"]),
                ("cpu_topk_lag1", dict(prefetch="previous", selector="cpu", cpu_lag=1), ["eager"])]
    variants = [v for v in variants if v[0] not in args.skip_rows]
    for frac in fracs:
        made = None  # one OffloadedGSA per pool for on-demand / previous (pinned host KV is slow to allocate)
        for name, kw, vmodes in variants:
            if frac != args.pool_fracs[0] and name not in args.all_frac_rows:
                continue
            lag = kw.get("cpu_lag", 0)
            need = min_pool_blocks(gsa_rt, b, max_len, lag, kw.get("lookahead", 1.0) if kw["prefetch"] == "lookahead" else 1.0)
            pool = int(math.ceil(frac * w.nb))
            if pool < need and need <= 1.05 * pool:  # 1/8 of the KV at ratio 1/8: round up to a step's width
                pool = need
            shared = "selector" not in kw and kw["prefetch"] != "lookahead"
            try:
                if shared and made is not None and made.s == pool:
                    off = made
                else:
                    made = None
                    off = OffloadedGSA(gsa_rt, w.nb, pool, b, max_len, hkv, d, dtype, layers=sparse_layers,
                                       mover_mode=args.mover, **kw)
                    for l in sparse_layers:
                        codes = hc[l].cpu() if off.cpu_topk else hc[l]
                        (off.cpu_topk.codes if off.cpu_topk else off.hash_caches)[l].copy_(codes)
                    if shared:
                        made = off
            except ValueError as e:  # the pool cannot hold a step (e.g. lookahead at pool 1/8)
                rows.append(dict(row=name, batch=b, pool_frac=frac, skipped=str(e)))
                continue

            def off_begin(i, graph):
                cur["st"] = off.begin_step(w.lens(i), k=k if graph else None, block_table_host=w.table_host,
                                           graph=graph)

            sh = {}

            def off_body():
                for j, l in enumerate(sparse_layers):
                    extra = dict(block_table_host=w.table_host, seq_lens_host=sh["seq"]) if off.cpu_topk else {}
                    off.decode_attention(l, cur["st"], w.qs[j], w.table, w.seq, **extra)

            def reset_counters():  # count the timed steps only (the first step fills an empty pool)
                for m in off.maps.values():
                    m.reset_counters()
            for mode in vmodes:
                if off is made:
                    off.reset_residency(kw["prefetch"], kw.get("eviction", "lru"))  # cold pool per (variant, mode)
                if off.cpu_topk:
                    sh["seq"] = torch.tensor(w.lens(0), dtype=torch.int32)

                    def cpu_begin(i, graph):
                        sh["seq"] = torch.tensor(w.lens(i), dtype=torch.int32)
                        off_begin(i, graph)
                    begin = cpu_begin
                else:
                    begin = off_begin
                t, err = measure(name, begin, off_body, mode, reset_counters, per=nl)
                row = dict(row=name, mode=mode, batch=b, pool_frac=frac, pool_slots=pool, error=err,
                           mover=off.movers[sparse_layers[0]].mode, t_layer_ms=t and t * 1e3)
                if t is not None:
                    stt = off.stats()
                    fetched = (stt["fetched"] + stt["prefetched"]) / (args.steps * nl)
                    row.update(tok_s=t_dense[mode] and tok_s(t_dense[mode], t),
                               per_request_vs_gsa_hbm=t_gsa[mode] and t_gsa[mode] / t, hit_rate=stt["hit_rate"],
                               predicted_rate=stt["predicted_rate"], fetched_blocks_per_layer_step=fetched,
                               wanted_blocks_per_layer_step=stt["wanted"] / (args.steps * nl),
                               h2d_gbs=fetched * stt["block_bytes"] / t / 1e9,
                               cpu_fallbacks=off.cpu_topk.fallbacks if off.cpu_topk else None,
                               cpu_select_ms=statistics.median(off.cpu_topk.select_seconds) * 1e3
                               if off.cpu_topk and off.cpu_topk.select_seconds else None)
                rows.append(row)
            if off.cpu_topk:
                off.cpu_topk.close()
            off = None
        made = None
        empty_host_cache = getattr(torch._C, "_host_emptyCache", None)  # give pinned memory back
        if dev.type == "cuda" and empty_host_cache is not None:
            empty_host_cache()
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="toy sizes on CPU (seconds)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--context", type=int, default=131072)
    ap.add_argument("--ratio", type=float, default=0.125)
    ap.add_argument("--pool-fracs", type=float, nargs="+", default=[0.25, 0.125])
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="default: dense max, 2x, 4x of it")
    ap.add_argument("--timed-layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per row and mode (after --warmup)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["eager", "graph"], choices=["eager", "graph"],
                    help="eager: the layers called from Python; graph: the step captured once, replayed (CUDA)")
    ap.add_argument("--all-fracs", action="store_true", help="offload rows for every pool fraction whose "
                    "memory-model batch reaches B (default: only the largest such fraction)")
    ap.add_argument("--all-frac-rows", nargs="*", default=["offload_ondemand", "offload_prefetch", "offload_score"],
                    help="rows that run at pool fractions other than the first")
    ap.add_argument("--drift", type=float, default=0.2, help="relative query step per decode step")
    ap.add_argument("--hot-frac", type=float, default=0.75, help="hot share of each row's budget (plant_hot_blocks)")
    ap.add_argument("--threshold", type=int, default=2048, help="seq_len threshold of sparse rows (sizes the pool "
                    "minimum: a row just under it is dense)")
    ap.add_argument("--hbm-gib", type=float, default=None, help="default: the device's memory")
    ap.add_argument("--weights-gib", type=float, default=15.3, help="Qwen3-8B bf16 weights")
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--skip-rows", nargs="*", default=[], help="offload rows to leave out (e.g. cpu_topk_lag1 "
                    "where the C++ CPU backend is not built: its selection then runs on the reference)")
    ap.add_argument("--mover", default=None, choices=["staged", "uva"],
                    help="BlockMover mode (default: uva where the backend has the copy kernels, else staged)")
    ap.add_argument("--traces", nargs="+", default=[os.path.join(RESULTS, f"offload_traces_{t}.json") for t in
                                                     ("qwen_8k", "qwen_16k", "smollm2_4k_bs16")],
                    help="benchmarks/offload_traces.py outputs holding hit_rate_1_8 (the headline is the lowest "
                    "of those present)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.device = args.device or "cpu"
        args.context, args.steps, args.warmup, args.timed_layers = 2304, 2, 1, 2
        args.batches = args.batches or [1, 2]
        args.hbm_gib = args.hbm_gib or 1.0
        args.weights_gib = 0.0
        args.pool_fracs = [0.5, 0.25]
        args.threshold = 512
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16
    if args.hbm_gib is None:
        args.hbm_gib = (torch.get_device_module(dev).get_device_properties(dev).total_memory / GIB
                        if dev.type != "cpu" else 16.0)
    cfg = config(args.ratio, args.threshold)
    mem = memory_model(cfg, args)
    b_dense = max(mem["dense_max_batch"], 1)
    args.batches = batches = args.batches or sorted({b_dense, 2 * b_dense, 4 * b_dense,
                                                     mem[f"offload_pool{args.pool_fracs[0]:g}_max_batch"]})
    t0 = time.time()
    rows = []
    tag = "offload_smoke" if args.smoke else "offload_h200"
    base = os.path.join(args.out, tag)
    os.makedirs(args.out, exist_ok=True)
    pcie = pcie_gbs(dev, 1.0 if not args.smoke else 0.01)
    for b in batches:
        fit = sorted((f for f in args.pool_fracs if b <= mem[f"offload_pool{f:g}_max_batch"] or args.smoke),
                     reverse=True)
        fracs = [f for f in args.pool_fracs if f in fit] if args.all_fracs else fit[:1]
        print(f"batch {b}, pools {fracs} ... ({time.time() - t0:.0f} s)", flush=True)
        rows += run_rows(cfg, b, args, dev, dtype, b <= mem["dense_max_batch"] or args.smoke, fracs)
        res = dict(device=str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
                   smoke=args.smoke, args=vars(args), memory_model=mem, pcie_h2d_gbs=pcie, rows=rows,
                   seconds=time.time() - t0, mover=args.mover or "auto", counted_steps=args.steps,
                   complete=b == batches[-1])
        res.update(headline(res, args))
        write(res, base, plot_it=b == batches[-1])  # after every batch: a run cut short keeps its rows
    print(markdown(res))
    return res


def write(res: dict, base: str, plot_it: bool) -> None:
    with open(base + ".json", "w") as f:
        json.dump(res, f, indent=1, default=float)
    with open(base + ".md", "w") as f:
        f.write(markdown(res))
    if plot_it:
        plot(res, base + ".png")


def headline(res: dict, args) -> dict:
    """The issue's headline keys, from the best measured configuration (say which):

    per mode, the offload row (variant, pool, batch <= that pool's memory-model batch) with
    the highest tokens/s; ``throughput_gain_vs_dense`` = its tokens/s over dense at dense's
    largest fitting batch in the same mode; ``concurrency_gain`` = its batch over dense's
    (requests actually timed side by side; ``concurrency_gain_memory_model``: what its pool
    fraction allows); ``per_request_vs_gsa_in_hbm`` = GSA-in-HBM time over the best offload
    row's time at dense's batch, same mode. The top-level keys are those of the mode with the
    higher throughput gain (``headline_mode``)."""
    mem, rows = res["memory_model"], [r for r in res["rows"] if r.get("tok_s")]
    b_dense = max(mem["dense_max_batch"], 1)
    by_mode = {}
    for mode in args.modes:
        dense = [r for r in rows if r["row"] == "dense_hbm" and r["mode"] == mode and r["batch"] <= b_dense]
        best_dense = max(dense, key=lambda r: r["batch"]) if dense else None
        off = [r for r in rows if r["row"].startswith(("offload", "cpu_topk")) and r["mode"] == mode
               and r["batch"] <= mem[f"offload_pool{r['pool_frac']:g}_max_batch"]]
        if not best_dense or not off:
            continue
        top = max(off, key=lambda r: r["tok_s"])
        same_b = [r for r in off if r["batch"] == best_dense["batch"]]
        pr = max(same_b, key=lambda r: r["per_request_vs_gsa_hbm"] or 0) if same_b else None
        by_mode[mode] = dict(
            throughput_gain_vs_dense=top["tok_s"] / best_dense["tok_s"],
            concurrency_gain=top["batch"] / best_dense["batch"],
            concurrency_gain_memory_model=mem[f"offload_pool{top['pool_frac']:g}_max_batch"] / b_dense,
            per_request_vs_gsa_in_hbm=pr["per_request_vs_gsa_hbm"] if pr else None,
            config=f"{mode}: {top['row']}, pool {top['pool_frac']:g}, B = {top['batch']} ({top['tok_s']:.1f} tok/s) vs "
                   f"dense_hbm B = {best_dense['batch']} ({best_dense['tok_s']:.1f} tok/s); per request: "
                   + (f"{pr['row']} pool {pr['pool_frac']:g} at B = {pr['batch']}" if pr else "-"))
    mode = max(by_mode, key=lambda m: by_mode[m]["throughput_gain_vs_dense"]) if by_mode else None
    by_trace = {}
    for path in [args.traces] if isinstance(args.traces, str) else args.traces:
        if os.path.exists(path):
            with open(path) as f:
                by_trace[os.path.relpath(path)] = json.load(f).get("headline", {}).get("hit_rate_1_8")
    by_trace = {k: v for k, v in by_trace.items() if v is not None}
    traces = min(by_trace, key=by_trace.get) if by_trace else None
    hit = by_trace[traces] if traces else None
    top = by_mode.get(mode, {})
    return dict(
        concurrency_gain=top.get("concurrency_gain"),
        concurrency_gain_memory_model=top.get("concurrency_gain_memory_model"),
        throughput_gain_vs_dense=top.get("throughput_gain_vs_dense"),
        hit_rate_1_8=hit,
        hit_rate_1_8_source=f"{traces} (real decode traces; the lowest of {len(by_trace)})" if hit is not None
        else "not measured: run benchmarks/offload_traces.py first",
        hit_rate_1_8_by_trace=by_trace,
        per_request_vs_gsa_in_hbm=top.get("per_request_vs_gsa_in_hbm"),
        headline_mode=mode, headline_by_mode=by_mode,
        headline_notes=(top.get("config", "no offload row measured") + "; decode attention only"),
    )


if __name__ == "__main__":
    main()
