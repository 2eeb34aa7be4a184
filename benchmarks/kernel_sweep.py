"""Launch-choice sweep of the Triton decode kernels on one GPU (issue 12, item 3).

Times every variant of the kernels a decode step runs, each replayed from a CUDA
graph (GPU time only), at the engine-step shapes (B=16, Hq=32, Hkv=8, D=128,
R=128, bs=128, bf16; 32K and 128K), and writes the fastest as the device's
tuning file (``cuda_ops/tuning.py``):

* block scores (``_block_score_hs_kernel``): warps, unrolled head loop, bit-plane
  query folding (``planes``); code bytes per second;
* selection (``_select_kernel`` with ``kv_select`` fused): search fan-out, the radix
  select (``select.radix``: digit widths) and warps, on score keys of both methods (and
  uniform int32 keys, reported only); a variant whose output differs is never chosen;
* the hot path's whole selection (``select_blocks``) in two launches or one
  (``fuse``: the last score program of each row selects; with and without a
  register cap), for the best score launch with and without bit planes; then the
  hot path's selection program (query hash first) with and without PDL;
* paged decode attention, dense and 1/8-sparse tables: tile, warps, stages,
  programs per SM; SDPA on contiguous KV as the baseline;
* ``hash_encode_and_cache`` at 64K tokens: weight split hoisting, tile, warps,
  programs per SM, bit packing by matmul; against copy bandwidth.

Every variant computes the same result (tests/test_triton_gpu.py checks each,
and this script compares every score and selection variant's output with the
SWAR kernel and the two-launch selection on the device; a variant that differs
is reported and never chosen); this only picks launches. Output: ``DIR/kernel_sweep.json`` (every timing),
``DIR/kernel_sweep.md`` and ``DIR/<device>.json`` (the tuning file to commit under
``cuda_ops/tuning/``).

    python benchmarks/kernel_sweep.py --out DIR
    python benchmarks/kernel_sweep.py --out DIR --parts score   # selection kernels only
    python benchmarks/kernel_sweep.py --out DIR --parts select  # the selection kernel alone (search, warps)
    python benchmarks/kernel_sweep.py --out DIR --parts hash16  # hash.prec16 vs the bf16 split (reported only)
    python benchmarks/kernel_sweep.py --out DIR --parts hasht   # hash.transposed vs the shipped hash launch
    python benchmarks/kernel_sweep.py --out DIR --parts stages  # the score launch's num_stages

With ``--parts`` the tuning file written keeps the committed file's choices for the
kernels not swept.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_triton, engine_step: shared timers

B, HQ, HKV, D, R, BS = 16, 32, 8, 128, 128, 128
CONTEXTS = (32768, 131072)


def graph_ms(fn, reps=100):
    """Median ms of ``fn`` replayed from a CUDA graph, after one eager call (compiles)."""
    from bench_triton import gbench

    fn()
    torch.cuda.synchronize()
    return gbench(fn, reps)


def copy_tbs():
    from engine_step import copy_tbs as measure

    return measure()


def progress(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# The 06:24 / 06:35 UTC sweeps also swept lop3 off (no difference: ptxas fuses the logic)
# and 16-byte `wide` loads (slower everywhere); `planes` always unrolls its head loop.
SCORE_GRID = dict(lop3=(True,), wide=(False,), unroll=(False, True), num_warps=(1, 2, 4), planes=(False, True),
                  blocks=(1, 2, 4))
# the tuning of 2026-11-29 12:02 (fifth session's file), the "before" column of the table
SCORE_BEFORE = dict(lop3=True, wide=False, unroll=False, num_warps=2, planes=False, blocks=1)


def score_variants():
    for combo in itertools.product(*SCORE_GRID.values()):
        v = dict(zip(SCORE_GRID, combo))
        if not (v["planes"] and not v["unroll"]):
            yield v


def _inputs(ctx, gen):
    m = ctx // BS
    nb = B * m
    cache = torch.randint(0, 256, (nb, HKV, BS, R // 8), device="cuda", generator=gen,
                          dtype=torch.int32).to(torch.uint8)
    table = torch.randperm(nb, device="cuda", generator=gen).reshape(B, m).to(torch.int32)
    seq = torch.full((B,), ctx, dtype=torch.int32, device="cuda")
    q = torch.randint(0, 256, (B, HQ, R // 8), device="cuda", generator=gen, dtype=torch.int32).to(torch.uint8)
    return m, cache, table, seq, q


def sweep_score_select(res, gen):
    """Score kernel launches, the selection kernel's fan-out, and the whole hot-path
    selection (``select_blocks``: scores, selection, kv_select) with and without
    the fused one-launch kernel, for the best score launch with and without bit planes."""
    from cuda_ops import scoring
    from kernel_sweep_select import best_select, pick_selection, select_rows

    out = res.setdefault("score", {})
    sel = res.setdefault("select", {})
    ops_ = res.setdefault("op", {})
    data = {ctx: _inputs(ctx, gen) for ctx in CONTEXTS}
    forced, fs = scoring._forced_args([0, -2, -1])
    for ctx, (m, cache, table, seq, q) in data.items():
        keys = torch.empty(B, m, dtype=torch.int32, device="cuda")
        nbytes = B * m * BS * HKV * (R // 8)
        rows = out.setdefault(str(ctx), [])
        ref = scoring.block_score_keys(q, cache, table, seq, "max", path="swar").clone()
        for v in score_variants():
            keys.fill_(-7)
            try:
                ms = graph_ms(lambda: scoring.block_score_keys(q, cache, table, seq, "max", keys=keys, path="hs", **v))
                rows.append(dict(v, ms=ms, tbs=nbytes / ms / 1e9, same=bool(torch.equal(keys, ref))))
            except Exception as e:  # a launch that does not compile: recorded, never chosen
                rows.append(dict(v, ms=float("inf"), tbs=0.0, same=False, error=f"{type(e).__name__}: {str(e)[:160]}"))
        bad = [r for r in rows if not r["same"]]
        progress(f"score {ctx}: best {max(r['tbs'] for r in rows if r['same']):.2f} TB/s"
                 + (f"; DIFFERENT KEYS (never chosen): {bad}" if bad else ""))
        # selection + fused kv_select on those keys, budget 1/8
        select_rows(sel.setdefault(str(ctx), []), ctx, q, cache, table, seq, gen)
    # the hot path's selection as one unit (select_blocks: scores, selection, kv_select), in
    # two launches or one (fused), for the best 128K score launch with and without bit planes,
    # with the selection kernel's best variant without radix select and its best with it (their
    # warps and prefetch set as knobs, read at launch)
    big = out[str(CONTEXTS[-1])]
    svars = [v for v in (best_select(res, radix=False), best_select(res, radix=True)) if v] or [None]
    for ctx, (m, cache, table, seq, q) in data.items():
        k = m // 8
        nbytes = B * m * BS * HKV * (R // 8)
        keys = torch.empty(B, m, dtype=torch.int32, device="cuda")
        budgets = torch.full((B,), k, dtype=torch.int32, device="cuda")
        tab = torch.empty(B, k, dtype=torch.int32, device="cuda")
        lens = torch.empty(B, dtype=torch.int32, device="cuda")
        counter = torch.zeros(B, dtype=torch.int32, device="cuda")
        orows = ops_.setdefault(str(ctx), [])
        want = {}
        for method in ("max", "mean"):  # the SWAR scores and the selection kernel: the result to match
            scoring.block_score_keys(q, cache, table, seq, method, keys=keys, path="swar")
            scoring._launch_select(keys, seq, budgets, table, k, BS, forced, fs, tab, lens, None, None, 0, None, 1,
                                   radix=False, prefetch=False)
            want[method] = (tab.clone(), lens.clone())
        for planes in (False, True):
            ok = [r for r in big if r["planes"] == planes and r["same"]]
            if not ok:
                continue
            v = {x: min(ok, key=lambda r: r["ms"])[x] for x in SCORE_GRID}
            # the fused kernel's selection part needs more registers than scoring: also capped at
            # what the plain score kernel uses (ptxas, sm_90: 64 without planes, 128 with)
            for (fuse, cap), sv in itertools.product(((False, 0), (True, 0), (True, 128 if planes else 64)), svars):
                if fuse and (not scoring.fused_select_ok(m, v["num_warps"]) or v["blocks"] > 1):
                    continue
                knobs = {"select": {x: sv[x] for x in ("fanout", "num_warps", "prefetch")}} if sv else {}
                bits = sv["radix"] if sv else 0
                for method in ("max", "mean"):
                    run = lambda: scoring.select_blocks(  # noqa: E731
                        q, cache, table, seq, budgets, k, [0, -2, -1], method, 0, 1.0, 0, keys, tab, lens,
                        counter=counter, fuse=fuse, maxnreg=cap, radix=bits, path="hs", **v)
                    row = dict(v, fuse=fuse, maxnreg=cap, method=method, radix=bits,
                               prefetch=sv["prefetch"] if sv else False)
                    try:
                        with tuned(knobs):
                            ms = graph_ms(run)
                            # once more after the replays: a counter left non-zero would select nothing now
                            tab.fill_(-7)
                            lens.fill_(-7)
                            run()
                        same = bool(torch.equal(tab, want[method][0]) and torch.equal(lens, want[method][1]))
                        row.update(ms=ms, tbs=nbytes / ms / 1e9, same=same)
                    except Exception as e:  # a launch that does not compile: recorded, never chosen
                        row.update(ms=float("inf"), tbs=0.0, same=False, error=f"{type(e).__name__}: {str(e)[:160]}")
                    orows.append(row)
        progress(f"select_blocks {ctx}: " + ", ".join(
            f"planes={r['planes']}/fuse={r['fuse']}/cap={r['maxnreg']}/radix={r['radix']}/{r['method']}: "
            f"{r['ms'] * 1e3:.1f}us" + ("" if r["same"] else " DIFFERENT RESULT OR ERROR (never chosen)")
            for r in orows))
    res["selection_choice"] = pick_selection(res)  # kernel_sweep_select.py
    sweep_pdl(res, data, gen)
    del data


class tuned:
    """Temporarily set knobs in the device's (cached) tuning dict: the hot path reads them."""

    def __init__(self, knobs):
        from cuda_ops import tuning

        self.d = tuning.load(torch.device("cuda"))
        self.knobs = knobs

    def __enter__(self):
        self.saved = {k: dict(self.d.get(k, {})) for k in self.knobs}
        for k, v in self.knobs.items():
            self.d.setdefault(k, {}).update(v)

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            self.d[k] = v


def sweep_pdl(res, data, gen):
    """The hot path's selection program (query hash, then scores + selection) with the chosen
    selection launches, with and without PDL (the score kernel starts while the query hash
    runs, prefetches its codes and waits before reading the query codes); output checked
    against the program without PDL and without fusion."""
    from cuda_ops.hotpath import TritonHotPath
    from kernel_sweep_select import choose_select_kernel

    ch = res["selection_choice"]
    rows = res.setdefault("pdl", {})
    w = torch.linalg.qr(torch.randn(HKV, D, R, device="cuda", generator=gen))[0].contiguous()
    for ctx, (m, cache, table, seq, _) in data.items():
        k = m // 8
        nbytes = B * m * BS * HKV * (R // 8)
        q = torch.randn(B, HQ, D, device="cuda", generator=gen).to(torch.bfloat16)
        budgets = torch.full((B,), k, dtype=torch.int32, device="cuda")
        outs = {}
        crow = rows.setdefault(str(ctx), [])
        for name, pdl, fuse in (("plain", False, False), ("chosen", False, ch["fuse"]), ("chosen+pdl", True, ch["fuse"])):
            bufs = (torch.empty(B, HQ, R // 8, dtype=torch.uint8, device="cuda"),
                    torch.empty(B, m, dtype=torch.int32, device="cuda"),
                    torch.empty(B, k, dtype=torch.int32, device="cuda"), torch.empty(B, dtype=torch.int32, device="cuda"))
            # "plain": the binary search with plain loads; the chosen rows: the chosen selection kernel
            rdx = choose_select_kernel(res, bool(ch.get("radix"))) if name != "plain" else dict(radix=False,
                                                                                                prefetch=False)
            knobs = dict(score=dict(ch["score"], pdl=pdl),
                         select=dict(fuse=fuse, fuse_maxnreg=ch["fuse_maxnreg"], **rdx))
            row = dict(variant=name, pdl=pdl, fuse=fuse)
            try:
                with tuned(knobs):
                    prog = TritonHotPath().select_program(q, w, cache, table, seq, budgets, k, [0, -2, -1], "max", 0,
                                                          *bufs)
                run = lambda: prog(q, table, seq, budgets)  # noqa: E731
                ms = graph_ms(run)
                bufs[2].fill_(-7)
                bufs[3].fill_(-7)
                run()
                torch.cuda.synchronize()
                outs[name] = (bufs[2].clone(), bufs[3].clone())
                same = name == "plain" or (torch.equal(outs[name][0], outs["plain"][0])
                                           and torch.equal(outs[name][1], outs["plain"][1]))
                row.update(ms=ms, tbs=nbytes / ms / 1e9, same=bool(same), launches=len(prog.launches))
            except Exception as e:
                row.update(ms=float("inf"), tbs=0.0, same=False, error=f"{type(e).__name__}: {str(e)[:160]}")
            crow.append(row)
        progress(f"select program {ctx}: " + ", ".join(
            f"{r['variant']}: {r['ms'] * 1e3:.1f}us" + ("" if r["same"] else " DIFFERENT RESULT OR ERROR") for r in crow))


# First run (06:24 UTC) also swept block_n 32/128, 8 warps and 4 stages: 64 / 4 / 2-3 won everywhere.
# The fifth session's sweeps chose 64 / 4 / 2 / 32 / 512; `fuse` (the reduction in the split kernel) is new.
ATTN_GRID = dict(block_n=(64,), num_warps=(4,), num_stages=(2, 3), per_sm=(16, 32, 64), min_tokens=(256, 512),
                 fuse=(False, True))


def sweep_attention(res, gen):
    from cuda_ops import attention

    out = res.setdefault("attention", {})
    for ctx in CONTEXTS:
        m = ctx // BS
        nb = B * m
        kc = torch.randn(nb, BS, HKV, D, device="cuda", dtype=torch.bfloat16, generator=gen)
        vc = torch.randn(nb, BS, HKV, D, device="cuda", dtype=torch.bfloat16, generator=gen)
        table = torch.randperm(nb, device="cuda", generator=gen).reshape(B, m).to(torch.int32)
        q = torch.randn(B, HQ, D, device="cuda", dtype=torch.bfloat16, generator=gen)
        seq = torch.full((B,), ctx, dtype=torch.int32, device="cuda")
        k8 = m // 8
        sparse_table = table[:, torch.randperm(m, device="cuda", generator=gen)[:k8].sort().values].contiguous()
        sparse_seq = torch.full((B,), k8 * BS, dtype=torch.int32, device="cuda")
        # SDPA baseline: contiguous KV [B, Hkv, ctx, D] (GQA expanded by enable_gqa)
        kd = torch.randn(B, HKV, ctx, D, device="cuda", dtype=torch.bfloat16, generator=gen)
        vd = torch.randn(B, HKV, ctx, D, device="cuda", dtype=torch.bfloat16, generator=gen)
        q4 = q.unsqueeze(2)
        sdpa = graph_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q4, kd, vd, enable_gqa=True))
        del kd, vd
        kv_bytes = 2 * B * ctx * HKV * D * 2
        c = out.setdefault(str(ctx), {"sdpa_ms": sdpa, "sdpa_tbs": kv_bytes / sdpa / 1e9, "rows": []})
        o = torch.empty_like(q)
        want = {}
        for name, tb, sl in (("dense", table, seq), ("sparse_1/8", sparse_table, sparse_seq)):
            want[name] = attention.paged_decode_attention(q, kc, vc, tb, sl, None, fuse=False).float()
        for bn, nw, ns, ps, mt, fu in itertools.product(*ATTN_GRID.values()):
            row = dict(block_n=bn, num_warps=nw, num_stages=ns, per_sm=ps, min_tokens=mt, fuse=fu)
            try:
                for name, tb, sl in (("dense", table, seq), ("sparse_1/8", sparse_table, sparse_seq)):
                    work = {}
                    row[name + "_ms"] = graph_ms(lambda: attention.paged_decode_attention(
                        q, kc, vc, tb, sl, None, block_n=bn, num_warps=nw, num_stages=ns, per_sm=ps,
                        min_tokens=mt, out=o, work=work, fuse=fu), reps=60)
                    # after the replays: a counter left non-zero would leave the output stale
                    o.fill_(float("nan"))
                    attention.paged_decode_attention(q, kc, vc, tb, sl, None, block_n=bn, num_warps=nw,
                                                     num_stages=ns, per_sm=ps, min_tokens=mt, out=o, work=work,
                                                     fuse=fu)
                    err = (o.float() - want[name]).abs().max().item()
                    if not err <= 2e-2:  # bf16 output; split choices change the summation order only
                        row["error"] = f"{name}: max abs difference {err} from the two-launch default"
            except Exception as e:  # a launch that does not fit (shared memory): recorded, skipped
                row["error"] = f"{type(e).__name__}: {str(e)[:160]}"
            c["rows"].append(row)
        ok = [r for r in c["rows"] if "error" not in r]
        best = min(ok, key=lambda r: r["dense_ms"])
        progress(f"attention {ctx}: SDPA {sdpa:.4f} ms, best dense {best['dense_ms']:.4f} ms ({best})")
        del kc, vc


def choose(res):
    """The tuning file's knobs for the kernels swept: the fastest variant of each kernel
    (attention: the smallest sum over contexts of dense and sparse time relative to each
    case's best)."""
    knobs = {}
    big = str(CONTEXTS[-1])
    if "score" in res:
        knobs.update(choose_selection(res))
    elif "select" in res:  # the selection kernel alone (--parts select): its search and warps
        from kernel_sweep_select import choose_select_kernel

        knobs["select"] = choose_select_kernel(res)
    if "attention" in res:
        knobs["attention"] = choose_attention(res, big)
    if "mla" in res:
        nw, j, p2, once = _best_variant(
            res["mla"], lambda r: (r["num_warps"], r.get("blocks", 1), r.get("pow2", False), r.get("once", False)),
            lambda r, rows: r["ms"])
        knobs["score_planes"] = {"num_warps": nw, "blocks": j, "pow2": p2, "reduce_once": once}
    if "hash_decode" in res:
        knobs.setdefault("hash", {})["decode_block_c"] = _best_variant(res["hash_decode"], lambda r: r["block_c"],
                                                                       lambda r, rows: r["us"])
    if "score_occupancy" in res:  # relative to each context's fastest: 32K and 128K weigh the same
        nw, cap, planes, j = _best_variant(
            res["score_occupancy"], lambda r: (r["num_warps"], r["maxnreg"], r["planes"], r["blocks"]),
            lambda r, rows: r["ms"] / min(x["ms"] for x in rows if "ms" in x))
        knobs.setdefault("score", {}).update(num_warps=nw, maxnreg=cap, planes=planes, blocks=j, unroll=planes)
    if "score_stages" in res:  # relative to each context's fastest: 32K and 128K weigh the same
        knobs.setdefault("score", {})["num_stages"] = _best_variant(
            res["score_stages"], lambda r: r["num_stages"], lambda r, rows: r["ms"] / min(x["ms"] for x in rows))
    if "hash" in res:
        h = min([r for r in res["hash"] if "error" not in r and r["same"]], key=lambda r: r["ms"])
        knobs.setdefault("hash", {}).update({k: h[k] for k in ("hoist", "block_m", "num_warps", "per_sm", "pack_dot")})
        knobs["hash"].update({k: h.get(k, d) for k, d in (("num_stages", 1), ("prefetch", True), ("transposed", False))})
    return knobs


def _best_variant(cases, key, cost):
    """``cases``: rows per case (context or shape), each row a variant with ``same`` (its output equals
    the reference's). The variant ``key(row)`` that is correct in every case with the smallest summed
    ``cost(row, rows of its case)``."""
    tot = {}
    for rows in cases.values():
        for r in rows:
            if r.get("same"):  # a row with an error has no result
                tot.setdefault(key(r), []).append(cost(r, rows))
    return min((v for v in tot if len(tot[v]) == len(cases)), key=lambda v: sum(tot[v]))


def choose_selection(res):
    from kernel_sweep_select import choose_select_kernel

    knobs = {}
    ch = res["selection_choice"]
    pdl_ok = all(any(r["variant"] == v and r["same"] for r in rows)
                 for rows in res["pdl"].values() for v in ("chosen", "chosen+pdl"))
    pdl_gain = [min(r["ms"] for r in rows if r["variant"] == "chosen" and r["same"])
                - min(r["ms"] for r in rows if r["variant"] == "chosen+pdl" and r["same"])
                for rows in res["pdl"].values()] if pdl_ok else []
    knobs["score"] = dict(ch["score"], pdl=bool(pdl_gain) and sum(pdl_gain) > 0)
    # radix on or off as the whole selection's rows chose it (they ran the best radix variant)
    knobs["select"] = dict(choose_select_kernel(res, bool(ch.get("radix", 0))), fuse=ch["fuse"],
                           fuse_maxnreg=ch["fuse_maxnreg"])
    return knobs


def choose_attention(res, big):
    cases = []
    for ctx, c in res["attention"].items():
        ok = [r for r in c["rows"] if "error" not in r]
        for name in ("dense_ms", "sparse_1/8_ms"):
            cases.append((ctx, name, min(r[name] for r in ok)))
    cfgs = [r for r in res["attention"][big]["rows"] if "error" not in r]

    def cost(r):
        total = 0.0
        for ctx, name, lo in cases:
            match = [x for x in res["attention"][ctx]["rows"] if "error" not in x and all(
                x[k] == r[k] for k in ATTN_GRID)]
            total += (match[0][name] / lo) if match else 1e9
        return total

    a = min(cfgs, key=cost)
    return {k: a[k] for k in ATTN_GRID}


def main(out_dir: str, parts) -> None:
    import triton

    from cuda_ops import tuning

    os.makedirs(out_dir, exist_ok=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    name = torch.cuda.get_device_name()
    res = dict(device=name, torch=torch.__version__, triton=triton.__version__,
               when=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    from timing import flush_mode

    res["flush"] = flush_mode()  # how L2 was emptied before each timed call (benchmarks/timing.py)
    res["copy_tbs"] = copy_tbs()
    progress(f"{name}: copy {res['copy_tbs']:.2f} TB/s")
    if "score" in parts:
        sweep_score_select(res, gen)
    elif "select" in parts:
        from kernel_sweep_select import sweep_select

        sweep_select(res, gen)
    if "attention" in parts:
        sweep_attention(res, gen)
    if "hash" in parts:
        from kernel_sweep_hash import sweep_hash

        sweep_hash(res, gen, res["copy_tbs"])
    if "mla" in parts:
        from kernel_sweep_scores import sweep_mla

        sweep_mla(res, gen, res["copy_tbs"])
    if "hashdec" in parts:
        from kernel_sweep_hash import sweep_hash_decode

        sweep_hash_decode(res, gen)
    if "stages" in parts:
        from kernel_sweep_scores import sweep_score_stages

        sweep_score_stages(res, gen)
    if "occupancy" in parts:
        from kernel_sweep_scores import sweep_score_occupancy

        sweep_score_occupancy(res, gen)
    if "hasht" in parts:
        from kernel_sweep_hash import sweep_hash_transposed

        sweep_hash_transposed(res, gen, res["copy_tbs"])
    if "hash16" in parts:  # measured and reported, never chosen (it changes in-band bits)
        from kernel_sweep_hash import sweep_hash_prec16

        sweep_hash_prec16(res, gen, res["copy_tbs"])
    with open(os.path.join(out_dir, "kernel_sweep.json"), "w") as f:
        json.dump(res, f, indent=1)
    # a partial run (--parts) keeps the committed file's choices for the kernels it did not sweep
    knobs = {}
    if set(parts) != {"score", "attention", "hash", "mla", "hashdec"} and os.path.exists(tuning.device_file(name)):
        with open(tuning.device_file(name)) as f:
            knobs = json.load(f).get("knobs", {})
    for kernel, vals in choose(res).items():  # per kernel: a partial sweep keeps the file's other knobs
        knobs.setdefault(kernel, {}).update(vals)
    res["knobs"] = knobs
    with open(os.path.join(out_dir, "kernel_sweep.json"), "w") as f:
        json.dump(res, f, indent=1)
    tfile = os.path.join(out_dir, os.path.basename(tuning.device_file(name)))
    with open(tfile, "w") as f:
        json.dump({"device": name, "source": "benchmarks/kernel_sweep.py", "when": res["when"],
                   "parts": list(parts), "knobs": knobs}, f, indent=1)
    from kernel_sweep_report import markdown

    with open(os.path.join(out_dir, "kernel_sweep.md"), "w") as f:
        f.write(markdown(res))
    progress(f"wrote {tfile}: {knobs}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--parts", default="score,attention,hash,mla,hashdec")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("kernel_sweep.py needs a CUDA GPU")
    main(a.out, a.parts.split(","))
