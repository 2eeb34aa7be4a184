"""Online pool policies (eviction + prefetch) on saved real decode traces: a search for 0.90 (CPU).

Issue 18's target is a pool hit rate >= 0.90 of the selected blocks at ratio 1/8 with a pool of
1/4 of the KV. This replays every variant below on the files ``offload_traces.py
--save-selections`` writes (per sparse layer the selection ``bool [steps, blocks]`` of every
decode step and every block's hash score ``float [steps, blocks]``) and reports, per variant,
the hit rate (selected blocks already resident when the step requests them, steps after the
first, summed over the layers) and the blocks copied per selected block (misses + prefetches:
the PCIe traffic). Every policy is ONLINE: after step ``t`` it may use the selections and the
block scores of steps ``<= t`` only (what the engine has when the step ends), never a later
selection. Pools are per layer, ``max(ceil(pool_frac * blocks), widest selection)`` slots, as
``offload_policy_replay.py`` sizes them, except the ``global_*`` rows (one pool of the same
total shared by the layers).

Predictors (``prio[t]``, higher = more likely selected at ``t + 1``):

* ``ema{d}``: the engine's score priority (:func:`gsa.offload.scores.update_priority`): per-row
  z-score of the block scores, ``prio = d * prio + (1 - d) * z``;
* ``logit``: a logistic model of "selected at ``t + 1``" on 13 features of steps ``<= t``
  (:func:`features`: z of the last three steps, z decayed at 0.5 / 0.7 / 0.9, selected at
  ``t`` / ``t - 1``, decayed selection counts, the z distance to the step's selection
  threshold and its decayed value, the max z of the last three steps), fitted on ANOTHER trace
  (``--fit-on``) and applied unchanged; ``mlp`` (``--mlp``): a small MLP on the same features,
  the same way (a non-linear combination).

Policies (hits counted before each step's request; misses are fetched on demand and evict
the lowest ``keep`` key outside the step's selection):

* ``evict`` (on demand only, ``keep = prio``): ``ema{d}`` is ``eviction="score"``;
* ``top``: after each step the pool becomes the step's selection plus the highest ``prio``
  (``offload_policy_replay.py``'s ``score_top``: any prefetch this predictor can drive);
* ``pf{m}``: ``evict`` plus a prefetch of at most ``m`` blocks per step of that target set;
* ``margin{x}``: ``evict`` plus a prefetch of the ``ceil(x * k)`` best-ranked blocks outside
  the selection (``k`` = selection width; the runners-up kept resident or prefetched);
* ``recency{b}``: ``keep = prio + b * (decayed selection count, 0.7)`` (recency and score),
  with the ``top`` prefetch of the same key;
* ``hyst{X}x{N}``: ``keep = prio``, but a block ranked within the best ``X * k`` by ``prio`` in any
  of the last ``N`` steps is evicted only after every other block (a block leaves only after it has
  ranked worse than ``X * k`` for ``N`` steps); on demand and with the ``top`` prefetch;
* ``split``: ``top`` with per-layer pool sizes (same total) chosen greedily on the ``--fit-on``
  trace's per-layer hit curves (a static per-layer budget);
* ``top_logit`` / ``top_mlp``, ``pf2_logit``, ``evict_logit``: the rows above with that predictor;
* ``global_logit`` / ``global_mlp``: ONE pool of the same total for all layers; after each step every layer
  keeps its selection and the remaining slots go to the (layer, block) pairs of highest
  fitted probability (a per-layer budget that adapts every step);
* ``global_rankcal{c}``: ``global_logit`` with the probability estimated online per layer and rank
  (``ema{0.7}`` rank outside the selection; an exponential average with weight ``c`` of how
  often the block at that rank was selected next): no fitted model.
* ``*_insample``: the logit rows fitted on the trace they are scored on: NOT online results,
  an optimistic bound of what these features can give.

Usage: python benchmarks/offload_policy_online.py TRACE.pt --fit-on OTHER.pt [--mlp] [--tag NAME]  (10-60 s)
Writes benchmarks/results/offload_policy_replay[_TAG]_online.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Dict, Optional, Tuple

import numpy as np
import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
RATIO = 0.125


def load(path: str, ratio: float = RATIO, pool_frac: float = 0.25) -> dict:
    """The trace's sparse layers at ``ratio``: ``sel {l: bool [T, N]}``, ``scores {l: float64
    [T, N]}``, ``slots {l: int}`` (the pool per layer at ``pool_frac``)."""
    d = torch.load(path, weights_only=False)
    if not d.get("scores"):
        raise ValueError(f"{path}: no block scores (re-run offload_traces.py --save-selections)")
    nblk = d["n_blocks_final"]
    layers = sorted(l for (r, l) in d["sel"] if abs(r - ratio) < 1e-9)
    sel = {l: d["sel"][(r, l)].numpy() for (r, l) in d["sel"] if abs(r - ratio) < 1e-9}
    slots = {l: max(math.ceil(pool_frac * nblk), int(sel[l].sum(1).max())) for l in layers}
    return dict(layers=layers, sel=sel, scores={l: d["scores"][l].double().numpy() for l in layers},
                slots=slots, nblk=nblk, source=os.path.basename(path))


def zscore(s: np.ndarray) -> np.ndarray:
    """Per-row z-score of the finite block scores (``-10`` where not finite), as update_priority."""
    fin = np.isfinite(s)
    n = np.maximum(fin.sum(1, keepdims=True), 1)
    v = np.where(fin, s, 0.0)
    mu = v.sum(1, keepdims=True) / n
    var = np.where(fin, (v - mu) ** 2, 0.0).sum(1, keepdims=True) / n
    return np.where(fin, (v - mu) / np.sqrt(np.maximum(var, 1e-12)), -10.0)


def ema(x: np.ndarray, d: float) -> np.ndarray:
    """``out[t] = d * out[t - 1] + (1 - d) * x[t]``, ``out[0] = x[0]`` (float ``[T, N]``)."""
    out = np.empty_like(x, dtype=np.float64)
    out[0] = x[0]
    for t in range(1, len(x)):
        out[t] = d * out[t - 1] + (1 - d) * x[t]
    return out


def features(sel: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``float [T, N, 13]``: what is known of each block after step t (see the module docstring)."""
    z = zscore(scores)
    zp, zpp = np.vstack([z[:1], z[:-1]]), np.vstack([z[:2], z[:-2]])
    s = sel.astype(np.float64)
    sp = np.vstack([s[:1], s[:-1]])
    k = int(sel.sum(1).max())
    thr = -np.sort(-z, 1)[:, k - 1: k]  # the k-th best z of the step
    return np.stack([z, zp, zpp, ema(z, .5), ema(z, .7), ema(z, .9), s, sp, ema(s, .7), ema(s, .9),
                     z - thr, ema(z - thr, .7), np.maximum(np.maximum(z, zp), zpp)], -1)


def fit_logit(tr: dict) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logistic regression of "selected at t + 1" on :func:`features` over every layer and step
    of ``tr``: returns ``(w [F + 1], mean [F], std [F])`` (standardised inputs, LBFGS)."""
    xs, ys = [], []
    for l in tr["layers"]:
        f = features(tr["sel"][l], tr["scores"][l])
        xs.append(f[:-1].reshape(-1, f.shape[-1]))
        ys.append(tr["sel"][l][1:].reshape(-1))
    x, y = torch.tensor(np.concatenate(xs)), torch.tensor(np.concatenate(ys), dtype=torch.float64)
    mu, sd = x.mean(0), x.std(0) + 1e-9
    xn = (x - mu) / sd
    w = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xn @ w[:-1] + w[-1], y)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), mu.numpy(), sd.numpy()


def logit(model, sel: np.ndarray, scores: np.ndarray) -> np.ndarray:
    w, mu, sd = model
    return ((features(sel, scores) - mu) / sd) @ w[:-1] + w[-1]


def fit_mlp(tr: dict, epochs: int = 300, seed: int = 0):
    """A small MLP (13 -> 32 -> 32 -> 1, ReLU; Adam, batches of 4096, seeded) of the same target
    as :func:`fit_logit`: whether a non-linear combination of the features predicts better.
    Returns a function ``(sel, scores) -> float64 [T, N]`` logits."""
    xs, ys = [], []
    for l in tr["layers"]:
        f = features(tr["sel"][l], tr["scores"][l])
        xs.append(f[:-1].reshape(-1, f.shape[-1]))
        ys.append(tr["sel"][l][1:].reshape(-1))
    x, y = torch.tensor(np.concatenate(xs)).float(), torch.tensor(np.concatenate(ys)).float()
    mu, sd = x.mean(0), x.std(0) + 1e-6
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 32), torch.nn.ReLU(), torch.nn.Linear(32, 32),
                              torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    xn = (x - mu) / sd
    for _ in range(epochs):
        perm = torch.randperm(len(xn), generator=gen)
        for i in range(0, len(xn), 4096):
            b = perm[i: i + 4096]
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(net(xn[b])[:, 0], y[b]).backward()
            opt.step()

    def predict(sel, scores):
        with torch.no_grad():
            return net((torch.tensor(features(sel, scores)).float() - mu) / sd)[..., 0].double().numpy()
    return predict


def replay(sel: np.ndarray, keep: np.ndarray, slots: int, pf: Optional[np.ndarray] = None,
           target: Optional[int] = None, limit: Optional[int] = None) -> np.ndarray:
    """One layer's pool of ``slots`` blocks over ``sel bool [T, N]``. At step t's request the
    misses evict the resident blocks outside the selection with the lowest ``keep[t]`` (ties:
    lower block id first). With ``pf float [T, N]``: after step t the target set is the
    selection plus the ``target - k_t`` best ``pf[t]`` outside it (``target`` default
    ``slots``); up to ``limit`` (None: all) of its non-resident blocks are fetched, best
    first, each evicting the lowest-``keep[t]`` resident block outside the target set (none
    left: stop). Returns ``int [4]``: hits, wanted, misses, prefetched (steps after the first)."""
    t_n, n = sel.shape
    res = np.zeros(n, bool)
    out = np.zeros(4, np.int64)
    ids = np.arange(n)
    for t in range(t_n):
        s = sel[t]
        miss = s & ~res
        if t:
            out[0] += (s & res).sum()
            out[1] += s.sum()
            out[2] += miss.sum()
        over = int(res.sum() + miss.sum() - slots)
        if over > 0:
            cand = ids[res & ~s]
            res[cand[np.lexsort((cand, keep[t][cand]))[:over]]] = False
        res |= s
        if pf is None or t + 1 >= t_n:
            continue
        want = (slots if target is None else target) - int(s.sum())
        if want > 0:
            out[3] += refill(res, s, pf[t], keep[t], slots, want, limit)
    return out


def refill(res: np.ndarray, s: np.ndarray, pf_t: np.ndarray, keep_t: np.ndarray, slots: int, want: int,
           limit: Optional[int] = None) -> int:
    """After a step that selected ``s bool [N]``: make the pool ``res bool [N]`` (in place) hold the
    selection plus the ``want`` best ``pf_t`` blocks outside it, fetching up to ``limit`` (None: all)
    non-resident ones best first, each evicting the lowest-``keep_t`` resident block outside that
    target set (ties: lower block id; none left: stop). Returns the number fetched."""
    ids = np.arange(res.shape[0])
    order = np.argsort(-np.where(s, -np.inf, pf_t), kind="stable")[:want]
    tgt = s.copy()
    tgt[order] = True
    fetch = [b for b in order if not res[b]][:limit]
    free = slots - int(res.sum())
    victims = ids[res & ~tgt]
    victims = victims[np.lexsort((victims, keep_t[victims]))]
    n_evict = min(max(len(fetch) - free, 0), len(victims))
    fetch = fetch[:free + n_evict]
    res[victims[:n_evict]] = False
    res[fetch] = True
    return len(fetch)


def hyst_keep(prio: np.ndarray, k: int, x: float, n_steps: int) -> np.ndarray:
    """``keep`` for ``hyst{X}x{N}``: ``prio`` plus 1e3 for blocks ranked better than ``X * k`` by
    ``prio`` in any of the last ``N`` steps (protected: evicted after every other block)."""
    rank = np.empty_like(prio)
    order = np.argsort(-prio, axis=1, kind="stable")
    np.put_along_axis(rank, order, np.arange(prio.shape[1], dtype=np.float64)[None].repeat(len(prio), 0), 1)
    good = rank < x * k
    prot = np.zeros_like(good)
    for t in range(len(prio)):
        prot[t] = good[max(0, t - n_steps + 1): t + 1].any(0)
    return prio + 1e3 * prot


def replay_global(tr: dict, prob: Dict[int, np.ndarray]) -> np.ndarray:
    """One pool of ``sum(slots)`` for all layers: after each step every layer keeps its selection
    and the rest goes to the highest ``prob[l][t]`` (layer, block) pairs; the step's misses are
    admitted first (the pool never holds more than one step's selections plus the prefetch).
    Returns hits, wanted, misses, prefetched summed over the layers."""
    ls = tr["layers"]
    s_all = np.stack([tr["sel"][l] for l in ls])  # [L, T, N]
    p_all = np.stack([prob[l] for l in ls])
    total = sum(tr["slots"].values())
    n_l, t_n, n = s_all.shape
    pool = np.zeros((n_l, n), bool)
    out = np.zeros(4, np.int64)
    for t in range(t_n):
        s = s_all[:, t]
        if t:
            out[0] += (s & pool).sum()
            out[1] += s.sum()
            out[2] += (s & ~pool).sum()
        if t + 1 == t_n:
            break
        pr = np.where(s, np.inf, p_all[:, t]).reshape(-1)
        new = np.zeros(n_l * n, bool)
        new[np.argsort(-pr, kind="stable")[:total]] = True
        new = new.reshape(n_l, n)
        out[3] += (new & ~(pool | s)).sum()
        pool = new
    return out


def rank_calibrated(tr: dict, decay: float, c: float) -> Dict[int, np.ndarray]:
    """``global_rankcal{c}``'s probabilities: per layer, the block at rank r (``ema{decay}``
    priority, outside the step's selection) gets ``p[r]``, an exponential average (weight
    ``c``) of how often the block at rank r was selected at the next step (online: ``p`` at step
    t uses outcomes up to step t). Starts at a linear ramp 0.5 -> 0."""
    out = {}
    for l in tr["layers"]:
        sel = tr["sel"][l]
        prio = ema(zscore(tr["scores"][l]), decay)
        t_n, n = sel.shape
        p = np.linspace(0.5, 0.0, n)
        prob = np.zeros((t_n, n))
        prev = None
        for t in range(t_n):
            if prev is not None:
                order, valid = prev
                obs = sel[t][order].astype(np.float64)
                p = np.where(valid, c * p + (1 - c) * obs, p)
            order = np.argsort(-np.where(sel[t], -np.inf, prio[t]), kind="stable")
            valid = ~sel[t][order]
            prob[t][order] = p
            prev = (order, valid)
        out[l] = prob
    return out


def greedy_split(curves: Dict[int, Dict[int, int]], total: int) -> Dict[int, int]:
    """Per-layer sizes of the same ``total``: from each layer's smallest size, one slot at a
    time to the layer whose hits grow most (``curves[l][size]`` = hits)."""
    alloc = {l: min(c) for l, c in curves.items()}
    for _ in range(total - sum(alloc.values())):
        gain = {l: (c[alloc[l] + 1] - c[alloc[l]]) if alloc[l] + 1 in c else -1 for l, c in curves.items()}
        alloc[max(gain, key=gain.get)] += 1
    return alloc


def variants(tr: dict, fit: Optional[dict], mlp: bool = False, mlp_seed: int = 0) -> Dict[str, np.ndarray]:
    """Every variant's counters on ``tr`` (``fit``: the trace the fitted rows learn from; ``mlp``:
    also the MLP rows, ~40 s)."""
    ls, sel, sl = tr["layers"], tr["sel"], tr["slots"]
    z = {l: zscore(tr["scores"][l]) for l in ls}
    pr = {d: {l: ema(z[l], d) for l in ls} for d in (0.0, 0.5, 0.6, 0.7, 0.8, 0.9)}
    rec = {l: ema(sel[l].astype(np.float64), 0.7) for l in ls}
    k = {l: int(sel[l].sum(1).max()) for l in ls}
    rows: Dict[str, np.ndarray] = {}

    def per_layer(name, fn):
        rows[name] = sum(fn(l) for l in ls)

    for d in (0.0, 0.5, 0.7, 0.8, 0.9):
        per_layer(f"evict_ema{d:g}", lambda l: replay(sel[l], pr[d][l], sl[l]))
    for d in (0.0, 0.5, 0.6, 0.7, 0.8, 0.9):
        per_layer(f"top_ema{d:g}", lambda l: replay(sel[l], pr[d][l], sl[l], pr[d][l]))
    for m in (1, 2, 4):
        per_layer(f"pf{m}_ema0.7", lambda l: replay(sel[l], pr[0.7][l], sl[l], pr[0.7][l], limit=m))
    for x in (0.25, 0.5):
        per_layer(f"margin{x:g}_ema0.7", lambda l: replay(
            sel[l], pr[0.7][l], sl[l], pr[0.7][l], target=min(sl[l], k[l] + math.ceil(x * k[l]))))
    for b in (0.25, 0.5, 1.0):
        per_layer(f"recency{b:g}_ema0.7", lambda l: replay(sel[l], pr[0.7][l] + b * rec[l], sl[l],
                                                          pr[0.7][l] + b * rec[l]))
    for x, n in ((1.5, 2), (1.5, 4), (2.0, 2), (2.0, 4)):
        per_layer(f"hyst{x:g}x{n}_ema0.7", lambda l: replay(sel[l], hyst_keep(pr[0.7][l], k[l], x, n), sl[l]))
        per_layer(f"hyst{x:g}x{n}_top_ema0.7", lambda l: replay(
            sel[l], hyst_keep(pr[0.7][l], k[l], x, n), sl[l], pr[0.7][l]))
    for c in (0.9, 0.95, 0.98):
        rows[f"global_rankcal{c:g}"] = replay_global(tr, rank_calibrated(tr, 0.7, c))
    rows["global_ema0.7"] = replay_global(tr, pr[0.7])  # uncalibrated across layers
    if fit is not None:
        model = fit_logit(fit)
        lg = {l: logit(model, sel[l], tr["scores"][l]) for l in ls}
        per_layer("evict_logit", lambda l: replay(sel[l], lg[l], sl[l]))
        per_layer("top_logit", lambda l: replay(sel[l], lg[l], sl[l], lg[l]))
        per_layer("pf2_logit", lambda l: replay(sel[l], lg[l], sl[l], lg[l], limit=2))
        rows["global_logit"] = replay_global(tr, lg)
        if mlp:
            net = fit_mlp(fit, seed=mlp_seed)
            mp = {l: net(sel[l], tr["scores"][l]) for l in ls}
            per_layer("top_mlp", lambda l: replay(sel[l], mp[l], sl[l], mp[l]))
            rows["global_mlp"] = replay_global(tr, mp)
        # static per-layer sizes from the fit trace's curves (top_ema0.7), scaled to this trace
        fz = {l: ema(zscore(fit["scores"][l]), 0.7) for l in fit["layers"]}
        curves = {l: {s: int(replay(fit["sel"][l], fz[l], s, fz[l])[0])
                      for s in range(int(fit["sel"][l].sum(1).max()), 2 * fit["slots"][l] + 1)}
                  for l in fit["layers"]}
        f_alloc = greedy_split(curves, sum(fit["slots"].values()))
        f_k = {l: int(fit["sel"][l].sum(1).max()) for l in fit["layers"]}
        extra = {l: f_alloc[l] - f_k[l] for l in ls}  # each layer's share of the slots above the selection
        budget = sum(sl.values()) - sum(k.values())
        raw = {l: extra[l] / max(sum(extra.values()), 1) * budget for l in ls}
        size = {l: k[l] + int(raw[l]) for l in ls}
        for l in sorted(ls, key=lambda l: int(raw[l]) - raw[l])[: sum(sl.values()) - sum(size.values())]:
            size[l] += 1
        per_layer("split_top_ema0.7", lambda l: replay(sel[l], pr[0.7][l], size[l], pr[0.7][l]))
        # NOT a valid online result (fitted on the trace it is scored on): how much these features
        # could give at most, the bound the 'why' in docs/offload_policies.md quotes
        own = fit_logit(tr)
        lo = {l: logit(own, sel[l], tr["scores"][l]) for l in ls}
        per_layer("top_logit_insample", lambda l: replay(sel[l], lo[l], sl[l], lo[l]))
        rows["global_logit_insample"] = replay_global(tr, lo)
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--fit-on", default=None, help="the trace the fitted rows (logit, split) learn from")
    ap.add_argument("--pool-frac", type=float, default=0.25)
    ap.add_argument("--mlp", action="store_true", help="also the top_mlp / global_mlp rows (~40 s)")
    ap.add_argument("--mlp-seed", type=int, default=0, help="the MLP's seed (its spread: run 0..4)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    tr = load(args.trace, pool_frac=args.pool_frac)
    fit = load(args.fit_on, pool_frac=args.pool_frac) if args.fit_on else None
    rows = variants(tr, fit, args.mlp, args.mlp_seed)
    res = dict(source=tr["source"], fit_on=fit["source"] if fit else None, ratio=RATIO, pool_frac=args.pool_frac,
               slots=tr["slots"][tr["layers"][0]], n_blocks=tr["nblk"],
               command="python benchmarks/offload_policy_online.py " + " ".join(
                   argv if argv is not None else sys.argv[1:]),
               rows={n: dict(hit=float(v[0] / v[1]), fetch=float((v[2] + v[3]) / v[1]), misses=int(v[2]),
                             prefetched=int(v[3]), wanted=int(v[1])) for n, v in rows.items()})
    base = os.path.join(args.out, "offload_policy_replay" + (f"_{args.tag}" if args.tag else "") + "_online")
    with open(base + ".json", "w") as fh:
        json.dump(res, fh, indent=1)
    md = [f"# Online pool policies at ratio {RATIO:g}, pool {args.pool_frac:g} ({res['source']})", "",
          f"{res['n_blocks']} blocks, {res['slots']} slots per layer; fitted rows learn from "
          f"{res['fit_on']}. Hit rate per selected block (steps after the first, summed over the layers) and "
          f"blocks copied per selected block (misses + prefetches). Command: `{res['command']}`", "",
          "| policy | hit | copied | of which prefetched |", "|---|---|---|---|"]
    for n, v in res["rows"].items():
        md.append(f"| {n} | {v['hit']:.4f} | {v['fetch']:.3f} | {v['prefetched'] / v['wanted']:.3f} |")
    with open(base + ".md", "w") as fh:
        fh.write("\n".join(md) + "\n")
    print("\n".join(md))
    return res


if __name__ == "__main__":
    main()
