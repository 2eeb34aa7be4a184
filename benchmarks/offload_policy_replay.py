"""Pool policies on saved real decode-trace selections: hit rate and fetch traffic (CPU, seconds).

Input: ``offload_traces.py --save-selections`` output (per ratio and sparse layer the
selection of every decode step and its ``--lookahead``-wide selection, ``bool [steps,
blocks]``). One pool per layer and request of ``max(ceil(f * blocks), widest selection)``
slots, as offload_traces.py sizes it; rates over the steps after the first, per selected
block, summed over layers. Policies (a request's own blocks are never evicted):

* ``engine``: :class:`gsa.offload.ResidencyMap` itself (on demand; least recently selected,
  ties by fewest selections, then the lowest slot) -- the number the headline uses;
* ``lru``: the same order in plain Python (ties by block id instead of slot);
* ``lfu``: fewest selections first, then least recent;
* ``lrfu``: smallest decayed selection count ``sum 0.8^(t - t_use)`` (recency + frequency);
* ``lookahead``: ``lru`` plus a prefetch before each step of the previous step's wide
  selection (the runners-up by hash score: ``prefetch="lookahead"``), counted as traffic;
* ``union2``: ``lru`` plus a prefetch of the union of the last two selections;
* ``belady``: the offline optimum for on-demand fetching at that pool size;
* ``unbounded``: an infinite pool (only first-time selections miss).

With the block scores in the file (``offload_traces.py`` since 2026-11-29 saves every step's
block scores per layer; older files skip these rows):

* ``score``: the engine's score-aware eviction itself (``OffloadedGSA(eviction="score")``:
  :func:`gsa.offload.scores.update_priority` with decay ``--score-decay`` and
  :meth:`ResidencyMap.set_priority` before each request, the map evicting the lowest
  priority), on demand;
* ``score_now``: the same with decay 0 (only the step's own scores);
* ``score_pf{m}`` (``--score-prefetch``): ``score`` plus a prefetch, after each step, of up to
  ``m`` non-resident blocks with the highest priority (each replacing a lower-priority block
  outside the step's selection), counted as traffic (plain Python; not in the engine);
* ``score_top``: the pool made equal, after each step, to the step's selection plus the
  highest-priority blocks (``score_pf`` with no limit): what this predictor gives at most.

``fetch`` = blocks copied (misses + prefetches) per selected block: the PCIe traffic.
(More online variants at ratio 1/8, pool 1/4 -- fitted predictors, runner-up margins, hysteresis,
recency + score, per-layer budgets, one pool shared by the layers: ``offload_policy_online.py``.)
(The "previous" prediction is not a row: the last selection is still resident in a pool
one step wide, so it fetches nothing and the hits equal ``engine``'s; tested in
tests/test_offload_bench.py.)

Usage: python benchmarks/offload_policy_replay.py SELECTIONS.pt [--pool-fracs ...] [--tag NAME]
Writes benchmarks/results/offload_policy_replay[_TAG].{json,md}.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from offload_eviction_replay import as_sets, hits_belady, hits_engine, hits_unbounded, write_results  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gsa.offload import ResidencyMap  # noqa: E402
from gsa.offload.scores import new_priority, update_priority  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
POLICIES = ("engine", "lru", "lfu", "lrfu", "lookahead", "union2", "belady", "unbounded")
SCORE_POLICIES = ("score", "score_now", "score_top")  # plus score_pf{m}


def priorities(scores: torch.Tensor, decay: float) -> List[torch.Tensor]:
    """The engine's priority after each step: ``scores float [steps, blocks]`` (one request)."""
    prio = new_priority(scores.shape[1], "cpu")
    table = torch.arange(scores.shape[1], dtype=torch.int32)[None]
    out = []
    for row in scores:
        update_priority(prio, table, row[None].float(), decay)
        out.append(prio[:-1].clone())
    return out


def hits_score_engine(seq: List[set], scores: torch.Tensor, slots: int, decay: float) -> int:
    """Hits (steps after the first) of the engine's ResidencyMap with score-aware eviction,
    driven exactly as OffloadedGSA drives it (priority update, set_priority, request)."""
    nblk = scores.shape[1]
    m, prio = ResidencyMap(nblk, slots), new_priority(nblk, "cpu")
    table = torch.arange(nblk, dtype=torch.int32)[None]
    hits = 0
    for t, s in enumerate(seq):
        if t:
            resident = m.resident()
            hits += sum(bool(resident[b]) for b in s)
        update_priority(prio, table, scores[t][None].float(), decay)
        m.set_priority(prio)
        m.request(torch.tensor(sorted(s)), t + 1)
    return hits


def replay_score_prefetch(seq: List[set], prio: List[torch.Tensor], slots: int, limit: Optional[int]) -> Dict[str, int]:
    """Score-aware eviction (``prio[t]``: the priority after step t's scores) plus, after each
    step, a prefetch of up to ``limit`` (None: any number of) non-resident blocks of highest
    priority, each evicting the lowest-priority resident block outside the step's selection
    while that one ranks lower. Returns hits, wanted, misses, prefetched (steps after the first)."""
    res: set = set()
    out = dict(hits=0, wanted=0, misses=0, prefetched=0)
    for t, s in enumerate(seq):
        p = prio[t].tolist()
        if t:
            out["hits"] += len(s & res)
            out["wanted"] += len(s)
        new = s - res
        over = len(res) + len(new) - slots
        if over > 0:
            res -= {b for _, b in sorted((p[b], b) for b in res - s)[:over]}
        res |= new
        if t:
            out["misses"] += len(new)
        if t + 1 < len(seq):
            order = sorted((b for b in range(len(p)) if not math.isnan(p[b])), key=lambda b: (-p[b], b))
            cand = [b for b in order[:slots] if b not in res][:limit]
            for b in cand:
                if len(res) >= slots:
                    low = min(((p[x], x) for x in res - s), default=None)
                    if low is None or low[0] >= p[b]:
                        break
                    res.discard(low[1])
                res.add(b)
                out["prefetched"] += 1
    return out


def replay_pool(seq: List[set], slots: int, key: str = "lru", decay: float = 0.8,
                predict: Optional[Callable[[int], set]] = None) -> Dict[str, int]:
    """A pool of ``slots`` blocks over the selections ``seq``; ``predict(t)`` (t >= 1): blocks
    made resident before step ``t``'s request (recency of the step before). Returns hits,
    wanted (steps after the first), misses and prefetched blocks (steps after the first)."""
    res: Dict[int, list] = {}  # block -> [last_used, uses, decayed count]

    def order(b, st, now):
        lu, n, f = st
        return {"lru": (lu, n), "lfu": (n, lu), "lrfu": (f * decay ** (now - lu), lu)}[key] + (b,)

    def admit(blocks: set, now: int, stamp: int) -> int:
        miss = [b for b in blocks if b not in res]
        over = len(res) + len(miss) - slots
        if over > 0:
            for _, b in sorted((order(b, res[b], now), b) for b in res if b not in blocks)[:over]:
                del res[b]
        for b in miss:
            res[b] = [stamp, 0, 0.0]
        return len(miss)

    out = dict(hits=0, wanted=0, misses=0, prefetched=0)
    for t, s in enumerate(seq):
        now = t + 1
        if predict is not None and t:
            p = set(sorted(predict(t))[:slots])
            out["prefetched"] += admit(p, now, now - 1)
            for b in p:
                res[b][0] = max(res[b][0], now - 1)
        if t:
            out["hits"] += sum(1 for b in s if b in res)
            out["wanted"] += len(s)
        n = admit(s, now, now)
        if t:
            out["misses"] += n
        for b in s:
            st = res[b]
            st[2] = st[2] * decay ** (now - st[0]) + 1
            st[0], st[1] = now, st[1] + 1
    return out


def replay(data: dict, pool_fracs, ratios=None, score_decay: float = 0.7, score_prefetch=(2,)) -> dict:
    nblk = data["n_blocks_final"]
    scores = data.get("scores")
    pols = POLICIES + ((SCORE_POLICIES + tuple(f"score_pf{m}" for m in score_prefetch)) if scores else ())
    prio = {l: priorities(sc, score_decay) for l, sc in scores.items()} if scores else {}
    by_ratio: Dict[float, list] = {}
    for (r, l), sel in data["sel"].items():
        if ratios is None or any(abs(r - x) < 1e-9 for x in ratios):
            by_ratio.setdefault(r, []).append((as_sets(sel), as_sets(data["wide"][(r, l)]), l))
    out: Dict[str, dict] = {}
    for r, layers in sorted(by_ratio.items(), reverse=True):
        for f in pool_fracs:
            tot = {p: [0, 0] for p in pols}  # hits, copied blocks
            wanted = 0
            for seq, wide, l in layers:
                slots = max(math.ceil(f * nblk), max(len(s) for s in seq))
                w = sum(len(s) for s in seq[1:])
                wanted += w
                runs = {"lru": replay_pool(seq, slots), "lfu": replay_pool(seq, slots, "lfu"),
                        "lrfu": replay_pool(seq, slots, "lrfu"),
                        "lookahead": replay_pool(seq, slots, predict=lambda t: wide[t - 1]),
                        "union2": replay_pool(seq, slots, predict=lambda t: seq[t - 1] | seq[max(t - 2, 0)])}
                for p, o in runs.items():
                    tot[p][0] += o["hits"]
                    tot[p][1] += o["misses"] + o["prefetched"]
                on_demand = [("engine", hits_engine(seq, slots, nblk)), ("belady", hits_belady(seq, slots)),
                             ("unbounded", hits_unbounded(seq))]
                if scores:
                    on_demand += [("score", hits_score_engine(seq, scores[l], slots, score_decay)),
                                  ("score_now", hits_score_engine(seq, scores[l], slots, 0.0))]
                    for p, lim in [("score_top", None)] + [(f"score_pf{m}", m) for m in score_prefetch]:
                        o = replay_score_prefetch(seq, prio[l], slots, lim)
                        tot[p][0] += o["hits"]
                        tot[p][1] += o["misses"] + o["prefetched"]
                for p, h in on_demand:
                    tot[p][0] += h
                    tot[p][1] += w - h
            out[f"{r:.4g}/{f:g}"] = dict(ratio=r, pool_frac=f, slots_example=max(math.ceil(f * nblk), 1), **{
                p: dict(hit=h / max(wanted, 1), fetch=c / max(wanted, 1)) for p, (h, c) in tot.items()})
            print(f"ratio {r:.4g} pool {f:g}: " + ", ".join(
                f"{p} {v[0] / max(wanted, 1):.3f}" for p, v in tot.items()), flush=True)
    return out


def markdown(res: dict) -> str:
    pols = [p for p in next(iter(res["rows"].values())) if p not in ("ratio", "pool_frac", "slots_example")]
    out = [f"# Pool policies on real decode-trace selections ({res['source']})", "",
           f"{res['n_blocks_final']} blocks at the end; hit rate per selected block (steps after the first, summed "
           "over the sparse layers), in brackets the blocks copied per selected block (misses + prefetches). "
           "Command: `" + res["command"] + "`", "",
           "| ratio | pool | " + " | ".join(pols) + " |", "|---" * (2 + len(pols)) + "|"]
    for v in res["rows"].values():
        out.append(f"| {v['ratio']:.4g} | {v['pool_frac']:g} | " + " | ".join(
            f"{v[p]['hit']:.3f} ({v[p]['fetch']:.2f})" for p in pols) + " |")
    return "\n".join(out) + "\n"


def plot(res: dict, path: str, ratio: float = 0.125, target: float = 0.9) -> None:
    """Two panels at ``ratio``: hit rate against the pool fraction per policy, and hit rate
    against the blocks copied per selected block (PCIe traffic) at every pool fraction."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [v for v in res["rows"].values() if abs(v["ratio"] - ratio) < 1e-9]
    if not rows:
        return
    pols = [p for p in rows[0] if p not in ("ratio", "pool_frac", "slots_example")]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.8))
    for p in pols:
        style = dict(marker="o", lw=2) if p in ("engine", "score") else dict(marker=".", lw=1, alpha=0.7)
        if p in ("belady", "unbounded"):
            style = dict(ls="--", lw=1)
        a.plot([v["pool_frac"] for v in rows], [v[p]["hit"] for v in rows], label=p, **style)
        b.plot([v[p]["fetch"] for v in rows], [v[p]["hit"] for v in rows], label=p, **style)
    for ax in (a, b):
        ax.axhline(target, color="k", lw=0.8, ls=":")
        ax.set_ylabel("pool hit rate (per selected block)")
        ax.grid(alpha=0.3)
    a.set_xlabel("pool size (fraction of the KV blocks)")
    b.set_xlabel("blocks copied per selected block (misses + prefetches)")
    a.legend(fontsize=7, ncol=2)
    fig.suptitle(f"{res['source']}: ratio {ratio:g}, {res['n_blocks_final']} blocks (dotted: target {target})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("selections")
    ap.add_argument("--pool-fracs", type=float, nargs="+", default=[0.125, 0.1625, 0.25, 0.3125, 0.375])
    ap.add_argument("--ratios", type=float, nargs="+", default=None, help="default: every saved ratio")
    ap.add_argument("--score-decay", type=float, default=0.7, help="the score policies' decay (engine default 0.7)")
    ap.add_argument("--score-prefetch", type=int, nargs="*", default=[2], help="score_pf{m} rows: blocks per step")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    data = torch.load(args.selections, weights_only=False)
    cmd = "python benchmarks/offload_policy_replay.py " + " ".join(argv if argv is not None else sys.argv[1:])
    res = dict(source=os.path.basename(args.selections), n_blocks_final=data["n_blocks_final"], command=cmd,
               score_decay=args.score_decay,
               rows=replay(data, args.pool_fracs, args.ratios, args.score_decay, args.score_prefetch))
    base = os.path.join(args.out, "offload_policy_replay" + (f"_{args.tag}" if args.tag else ""))
    write_results(base, res, markdown)
    plot(res, base + ".png")
    return res


if __name__ == "__main__":
    main()
