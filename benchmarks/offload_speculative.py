"""Speculative (InfiniGen-style) prefetch of a layer's blocks on saved real decode traces (CPU).

Issue 18 overlaps layer ``l``'s block fetch with layer ``l - 1``'s compute. Every online policy
in docs/offload_policies.md predicts step ``t``'s selection from steps ``< t`` (ceiling ~0.895 at
16K, ratio 1/8, pool 1/4). Here the predictor sees the *current* step: layer ``l``'s query
speculated from the residual stream while layer ``l - 1`` runs (``offload_traces.py
--speculative``: ``in_prev`` = layer ``l - 1``'s input, ``attn_prev`` = its post-attention state;
hashed and block-scored exactly as the real query; ``spec_scores`` in the trace file).

Replayed per sparse layer, one pool of ``max(ceil(pool_frac * blocks), widest selection)``
slots (as ``offload_policy_online.load`` sizes it), at step ``t``:

1. **speculative prefetch** (steps ``t >= 1``): the target set is the ``N_t = ceil(f * k_t)``
   best blocks by the speculative score (forced blocks first, ties to the lower id, as
   ``gsa.eval.selectors.select_top`` ranks; ``k_t`` = the step's selection width, known from
   the length before the selection runs; at most ``slots``); its non-resident blocks are fetched,
   each evicting the resident block outside the target with the lowest score priority known
   before the step (``ema0.7`` of the real block scores up to ``t - 1``: the engine's
   ``eviction="score"`` key);
2. **the real selection**: hits = its blocks resident now (steps ``t >= 1``); misses are fetched on
   demand, evicting outside the selection by the priority including step ``t``'s scores;
3. with ``+top`` (the best past-step policy, ``offload_policy_online``'s ``top_ema0.7``): after the
   step the pool is refilled to the selection plus the highest-priority blocks.

Rows: ``lru`` (the engine default, :func:`offload_traces.rates` driving
:class:`gsa.offload.ResidencyMap`), ``score`` (on-demand score eviction) and ``top`` (past-step
prefetch) as references, ``spec_{in_prev|attn_prev|in_prev2}_x{f}`` and the same ``+top``, for ``f``
in ``--factors`` (1, 1.25, 1.5); ``spec_{var}_mix{w}_x1``: the prefetch target ranked by the
speculative score's z-score plus ``w`` times the score priority known before the step (``--mixes``
0.25, 1: hand-set on the 8K trace); ``oracle_x1`` prefetches the real selection (the bound: every
miss is a block that did not fit). Per row: hit rate, blocks copied per selected block
(misses + prefetches: host->device traffic; on-demand LRU copies ``1 - hit``), of which
prefetched. Per variant: the recall of the speculative top-``k_t`` (and of the wider
top-``N_t``) against the real selection, all blocks and forced blocks left out, beside the
recall of the past-step predictors (previous selection, ``ema0.7`` priority of ``t - 1``).

Usage: python benchmarks/offload_speculative.py TRACE.pt [--ratios 0.125 0.3 0.0625]
       [--pool-fracs 0.25] [--factors 1 1.25 1.5] [--tag NAME]   (seconds to a minute)
Writes benchmarks/results/offload_speculative[_TAG].{json,md}.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, Optional

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import offload_eviction_replay as OER  # noqa: E402
import offload_policy_online as OPO  # noqa: E402
import offload_traces as OT  # noqa: E402

RESULTS = os.path.join(HERE, "results")
DECAY = 0.7  # the engine's score_decay (eviction="score")


def spec_rank(scores: np.ndarray, forced: np.ndarray) -> np.ndarray:
    """A ranking key ``float [T, N]`` (higher first) that orders blocks as ``select_top`` does:
    forced blocks first, then by score; blocks past the row's length (``-inf``) last."""
    return np.where(forced, np.inf, scores)


def top_n(key: np.ndarray, n: int) -> np.ndarray:
    """``bool [N]``: the ``n`` highest entries of ``key [N]`` that are not ``-inf``, ties to the lower id."""
    order = np.argsort(-key, kind="stable")[:max(n, 0)]
    out = np.zeros(key.shape, bool)
    out[order[np.isfinite(key[order]) | (key[order] > 0)]] = True
    return out


def replay(sel: np.ndarray, keep: np.ndarray, slots: int, spec: Optional[np.ndarray] = None,
           spec_n: Optional[np.ndarray] = None, post: Optional[np.ndarray] = None) -> np.ndarray:
    """One layer's pool of ``slots`` blocks over ``sel bool [T, N]`` (the step order above).

    ``keep float [T, N]``: the eviction priority known after step ``t`` (higher = kept; the
    prefetch before step ``t`` uses ``keep[t - 1]``, the misses of step ``t`` use ``keep[t]``).
    ``spec float [T, N]``: the speculative ranking key of step ``t`` (``spec_rank``), ``spec_n
    int [T]`` how many of its best blocks to prefetch before step ``t`` (``t >= 1``).
    ``post float [T, N]``: after step ``t`` the pool becomes the selection plus the best
    ``post[t]`` outside it (``offload_policy_online.replay``'s ``pf``; ``None``: no refill).
    Returns ``int [4]``: hits, wanted, misses, prefetched (steps ``t >= 1``; a refill after step
    ``t`` is counted when ``t + 1 < T``, as offload_policy_online counts it). Victims are always
    the lowest ``keep`` first, ties to the lower block id."""
    t_n, n = sel.shape
    res = np.zeros(n, bool)
    ids = np.arange(n)
    out = np.zeros(4, np.int64)

    def evict(protect: np.ndarray, count: int, key: np.ndarray) -> int:
        cand = ids[res & ~protect]
        cand = cand[np.lexsort((cand, key[cand]))][:max(count, 0)]
        res[cand] = False
        return len(cand)

    for t in range(t_n):
        s = sel[t]
        if spec is not None and t >= 1:
            tgt = top_n(spec[t], min(int(spec_n[t]), slots))
            fetch = ids[tgt & ~res]  # best first: the target is fetched whole when it fits
            fetch = fetch[np.argsort(-spec[t][fetch], kind="stable")]
            free = slots - int(res.sum())
            made = evict(tgt, len(fetch) - free, keep[t - 1]) if len(fetch) > free else 0
            fetch = fetch[:free + made]
            res[fetch] = True
            out[3] += len(fetch)
        miss = s & ~res
        if t:
            out[0] += int((s & res).sum())
            out[1] += int(s.sum())
            out[2] += int(miss.sum())
        over = int(res.sum() + miss.sum() - slots)
        if over > 0:
            evict(s, over, keep[t])
        res |= s
        if post is not None and t + 1 < t_n:
            want = slots - int(s.sum())
            if want > 0:
                out[3] += OPO.refill(res, s, post[t], keep[t], slots, want)
    return out


def recall(pred_key: np.ndarray, n: np.ndarray, sel: np.ndarray, forced: np.ndarray) -> np.ndarray:
    """Over steps ``t >= 1``: ``int [4]`` = (selected blocks among the top ``n[t]`` of
    ``pred_key[t]``, selected blocks, the same two without the forced blocks)."""
    out = np.zeros(4, np.int64)
    for t in range(1, len(sel)):
        p = top_n(pred_key[t], int(n[t]))
        out += [(p & sel[t]).sum(), sel[t].sum(), (p & sel[t] & ~forced[t]).sum(), (sel[t] & ~forced[t]).sum()]
    return out


def load_trace(path: str, ratio: float, pool_frac: float) -> dict:
    """``offload_policy_online.load`` plus the speculative scores, the forced masks ``bool [T, N]``
    and the selection sets ``offload_traces.rates`` replays."""
    tr = OPO.load(path, ratio=ratio, pool_frac=pool_frac)
    d = torch.load(path, weights_only=False)
    if not d.get("spec_scores"):
        raise ValueError(f"{path}: no spec_scores (re-run offload_traces.py with --speculative)")
    t_n = next(iter(tr["sel"].values())).shape[0]
    forced = np.zeros((t_n, tr["nblk"]), bool)
    for t, f in enumerate(d["forced"]):
        forced[t, sorted(f)] = True
    tr["forced"], tr["forced_sets"] = forced, d["forced"]
    tr["spec"] = {v: {l: s[l].double().numpy() for l in tr["layers"]} for v, s in d["spec_scores"].items()}
    tr["pool_frac"] = pool_frac
    return tr


def evaluate(tr: dict, factors=(1.0, 1.25, 1.5), mixes=(0.25, 1.0)) -> dict:
    """Every row (module docstring) on one loaded trace: ``{"rows": {name: counters},
    "recall": {name: counters}}``, counters summed over the sparse layers."""
    ls, sel, sl, forced = tr["layers"], tr["sel"], tr["slots"], tr["forced"]
    prio = {l: OPO.ema(OPO.zscore(tr["scores"][l]), DECAY) for l in ls}
    k = {l: sel[l].sum(1) for l in ls}
    rows: Dict[str, np.ndarray] = {}
    rec: Dict[str, np.ndarray] = {}
    worst: Dict[str, tuple] = {}  # row -> (lowest per-layer hit rate, its layer)

    def per_layer(name, fn, into=rows):
        got = {l: fn(l) for l in ls}
        into[name] = sum(got.values())
        if into is rows:
            worst[name] = min((float(v[0] / max(v[1], 1)), l) for l, v in got.items())

    # references: the engine's LRU (ResidencyMap), score eviction, the 'top' past-step prefetch
    def lru(l):
        seqs = OT.sequences([torch.from_numpy(sel[l])], tr["nblk"])
        r = OT.rates(seqs, seqs, tr["nblk"], [tr["pool_frac"]])
        wanted = sum(len(s) for s in seqs[1:])
        hits = round(r[f"pool_hit_{tr['pool_frac']:g}"] * wanted)
        return np.array([hits, wanted, wanted - hits, 0], np.int64)

    per_layer("lru", lru)
    per_layer("score", lambda l: replay(sel[l], prio[l], sl[l]))
    per_layer("top", lambda l: replay(sel[l], prio[l], sl[l], post=prio[l]))
    per_layer("oracle_x1", lambda l: replay(sel[l], prio[l], sl[l], spec_rank(sel[l].astype(float), forced),
                                            k[l]))
    past = {l: np.vstack([prio[l][:1], prio[l][:-1]]) for l in ls}  # the priority known before step t
    for var, sc in tr["spec"].items():
        key = {l: spec_rank(sc[l], forced) for l in ls}
        for f in factors:
            n = {l: np.ceil(f * k[l]).astype(np.int64) for l in ls}
            per_layer(f"spec_{var}_x{f:g}", lambda l: replay(sel[l], prio[l], sl[l], key[l], n[l]))
            per_layer(f"spec_{var}_x{f:g}+top", lambda l: replay(sel[l], prio[l], sl[l], key[l], n[l], post=prio[l]))
            per_layer(f"spec_{var}_top{f:g}k", lambda l: recall(key[l], n[l], sel[l], forced), rec)
        for w in mixes:  # the speculative z-score plus w x the past-step priority (both known before step t)
            mix = {l: spec_rank(np.where(np.isfinite(sc[l]), OPO.zscore(sc[l]) + w * past[l], -np.inf), forced)
                   for l in ls}
            per_layer(f"spec_{var}_mix{w:g}_x1", lambda l: replay(sel[l], prio[l], sl[l], mix[l], k[l]))
            per_layer(f"spec_{var}_mix{w:g}_top1k", lambda l: recall(mix[l], k[l], sel[l], forced), rec)
    # past-step predictors of the same step, for comparison (what the earlier policies see)
    real = {l: spec_rank(tr["scores"][l], forced) for l in ls}
    per_layer("real_scores_topk (= the selection?)", lambda l: recall(real[l], k[l], sel[l], forced), rec)
    prev_sel = {l: np.vstack([sel[l][:1], sel[l][:-1]]).astype(float) for l in ls}
    per_layer("prev_selection", lambda l: recall(spec_rank(np.where(prev_sel[l] > 0, 1.0, -np.inf), forced),
                                                 k[l], sel[l], forced), rec)
    for f in factors:
        per_layer(f"past_ema{DECAY:g}_top{f:g}k",
                  lambda l: recall(spec_rank(past[l], forced), np.ceil(f * k[l]).astype(np.int64), sel[l], forced),
                  rec)
    return dict(rows=rows, recall=rec, worst=worst)


def summarise(ev: dict) -> dict:
    rows = {n: dict(hit=float(v[0] / v[1]), copied=float((v[2] + v[3]) / v[1]), prefetched=float(v[3] / v[1]),
                    misses=int(v[2]), wanted=int(v[1]), worst_layer_hit=ev["worst"][n][0],
                    worst_layer=int(ev["worst"][n][1])) for n, v in ev["rows"].items()}
    rec = {n: dict(recall=float(v[0] / v[1]), recall_unforced=float(v[2] / max(v[3], 1)))
           for n, v in ev["recall"].items()}
    return dict(rows=rows, recall=rec)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.125, 0.3, 0.0625])
    ap.add_argument("--pool-fracs", type=float, nargs="+", default=[0.25])
    ap.add_argument("--factors", type=float, nargs="+", default=[1.0, 1.25, 1.5])
    ap.add_argument("--mixes", type=float, nargs="*", default=[0.25, 1.0],
                    help="weights w of the spec_*_mix rows: prefetch rank = z(speculative score) + w x past priority")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    res = dict(source=os.path.basename(args.trace), command="python benchmarks/offload_speculative.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), cases={})
    for r in args.ratios:
        for pf in args.pool_fracs:
            tr = load_trace(args.trace, r, pf)
            s = summarise(evaluate(tr, args.factors, args.mixes))
            s.update(ratio=r, pool_frac=pf, n_blocks=tr["nblk"], slots=tr["slots"][tr["layers"][0]],
                     steps=int(next(iter(tr["sel"].values())).shape[0]), layers=tr["layers"])
            res["cases"][f"r{r:g}_p{pf:g}"] = s
            print(f"ratio {r:g} pool {pf:g}: " + ", ".join(f"{n} {v['hit']:.4f}" for n, v in s["rows"].items()),
                  flush=True)
    base = os.path.join(args.out, "offload_speculative" + (f"_{args.tag}" if args.tag else ""))
    os.makedirs(args.out, exist_ok=True)
    OER.write_results(base, res, markdown)
    return res


def markdown(res: dict) -> str:
    out = [f"# Speculative prefetch on a real decode trace ({res['source']})", "",
           f"Command: `{res['command']}`. Hit rate = selected blocks resident at the selection (steps after "
           "the first, summed over the sparse layers); copied = blocks copied host->device per selected block "
           "(misses + prefetches); recall = selected blocks among the predictor's top blocks (all / forced left out).",
           ""]
    for name, c in res["cases"].items():
        out += [f"## ratio {c['ratio']:g}, pool {c['pool_frac']:g} ({c['slots']} slots per layer of "
                f"{c['n_blocks']} blocks, {c['steps']} steps, {len(c['layers'])} sparse layers)", "",
                "| policy | hit | copied | of which prefetched | worst layer's hit (layer) |", "|---|---|---|---|---|"]
        for n, v in c["rows"].items():
            out.append(f"| {n} | {v['hit']:.4f} | {v['copied']:.3f} | {v['prefetched']:.3f} | "
                       f"{v['worst_layer_hit']:.3f} ({v['worst_layer']}) |")
        out += ["", "| predictor | recall | recall, forced left out |", "|---|---|---|"]
        for n, v in c["recall"].items():
            out.append(f"| {n} | {v['recall']:.4f} | {v['recall_unforced']:.4f} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    main()
