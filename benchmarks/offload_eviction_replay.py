"""Replay saved real decode-trace selections through pool eviction policies (CPU, seconds).

Input: ``offload_traces.py --save-selections`` output (``..._selections.pt``: per
ratio and sparse layer the selection of every decode step, ``bool [steps,
blocks]``). For each pool fraction ``f`` (``max(ceil(f * blocks), widest
selection)`` slots, as offload_traces.py sizes it) and each policy, the pool hit
rate over the steps after the first (the first fills an empty pool), per
selected block, summed over layers:

* ``engine``: :class:`gsa.offload.ResidencyMap` itself (least recently selected,
  ties by fewest selections, then the lowest slot);
* ``lfu``: fewest selections first, ties by least recent (the same two keys in
  the other order);
* ``score``: the engine's order, but blocks inside the step's ``--lookahead``-wide
  selection (saved by offload_traces.py: the runners-up by hash score) go last, a
  stand-in for evicting by score;
* ``belady``: the offline optimum for a pool of that size (evict the resident
  block whose next selection is farthest away): no online policy can beat it;
* ``unbounded``: an infinite pool: only first-time selections miss (the
  compulsory misses), the ceiling of any pool.

What it answers: how far the engine's eviction is from the best any eviction
could do at that pool size, and how much of the miss rate is compulsory.

Usage: python benchmarks/offload_eviction_replay.py SELECTIONS.pt [--pool-fracs 0.25 0.125] [--tag NAME]
Writes benchmarks/results/offload_eviction_replay[_TAG].{json,md}.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gsa.offload import ResidencyMap  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def as_sets(sel: torch.Tensor) -> List[set]:
    """``bool [steps, blocks]`` -> the selected block ids of each step."""
    return [set(row.nonzero()[:, 0].tolist()) for row in sel]


def hits_engine(seq: List[set], slots: int, nblk: int) -> int:
    """Hits (steps after the first) of the engine's ResidencyMap."""
    m = ResidencyMap(nblk, slots)
    hits = 0
    for t, s in enumerate(seq):
        if t:
            resident = m.resident()
            hits += sum(bool(resident[b]) for b in s)
        m.request(torch.tensor(sorted(s)), t + 1)
    return hits


def _replay_evicting(seq: List[set], slots: int, evict_order, on_use) -> int:
    """Hits (steps after the first) of a pool of ``slots`` blocks that, when a step's
    misses overflow it, evicts resident blocks not in the step in ascending
    ``evict_order(t, block, state)`` (``state``: what ``on_use`` last stored for the
    block); after each step ``on_use(t, block, state or None)`` gives every selected
    block its new state. The one loop the keyed policies and the optimum share."""
    res: Dict[int, object] = {}  # resident block -> its state
    hits = 0
    for t, s in enumerate(seq):
        if t:
            hits += sum(1 for b in s if b in res)
        over = len(res) + sum(1 for b in s if b not in res) - slots
        if over > 0:
            for _, b in sorted((evict_order(t, b, res[b]), b) for b in res if b not in s)[:over]:
                del res[b]
        for b in s:
            res[b] = on_use(t, b, res.get(b))
    return hits


def hits_keyed(seq: List[set], slots: int, key, wide: List[set] = None) -> int:
    """Hits of a policy that evicts the resident block (not in the request) with the
    smallest ``key(block, last_used, uses, in_wide)`` (``in_wide``: the block is in
    ``wide[t]``, the step's wide selection; False without ``wide``); ties by block id."""
    def order(t, b, st):
        return key(b, st[0], st[1], wide is not None and b in wide[t])
    return _replay_evicting(seq, slots, order, lambda t, b, st: (t + 1, (st[1] if st else 0) + 1))


def hits_belady(seq: List[set], slots: int) -> int:
    """Hits of the offline optimum: evict the blocks whose next selection is farthest."""
    nxt: List[Dict[int, int]] = [dict() for _ in seq]  # step t: block -> next step > t that selects it
    upcoming: Dict[int, int] = {}
    for t in range(len(seq) - 1, -1, -1):
        nxt[t] = {b: upcoming.get(b, math.inf) for b in seq[t]}
        for b in seq[t]:
            upcoming[b] = t
    # farthest next use first (ties: the larger block id first, as a descending sort of (next, block))
    return _replay_evicting(seq, slots, lambda t, b, nu: (-nu, -b), lambda t, b, st: nxt[t][b])


def hits_unbounded(seq: List[set]) -> int:
    seen, hits = set(), 0
    for t, s in enumerate(seq):
        if t:
            hits += len(s & seen)
        seen |= s
    return hits


POLICIES = ("engine", "lfu", "score", "belady", "unbounded")


def replay(data: dict, pool_fracs) -> dict:
    nblk = data["n_blocks_final"]
    out: Dict[str, dict] = {}
    by_ratio: Dict[float, list] = {}
    for (r, l), sel in data["sel"].items():
        by_ratio.setdefault(r, []).append((l, as_sets(sel), as_sets(data["wide"][(r, l)])))
    for r, layers in sorted(by_ratio.items(), reverse=True):
        tot = {f"{p}_{f:g}": 0 for p in POLICIES for f in pool_fracs}
        wanted = 0
        for _, seq, wide in layers:
            wanted += sum(len(s) for s in seq[1:])
            widest = max(len(s) for s in seq)
            unb = hits_unbounded(seq)
            for f in pool_fracs:
                slots = max(math.ceil(f * nblk), widest)
                tot[f"engine_{f:g}"] += hits_engine(seq, slots, nblk)
                tot[f"lfu_{f:g}"] += hits_keyed(seq, slots, lambda b, lu, n, w: (n, lu))
                tot[f"score_{f:g}"] += hits_keyed(seq, slots, lambda b, lu, n, w: (w, lu, n), wide)
                tot[f"belady_{f:g}"] += hits_belady(seq, slots)
                tot[f"unbounded_{f:g}"] += unb
        out[f"{r:.4g}"] = {k: v / max(wanted, 1) for k, v in tot.items()}
        print(f"ratio {r:.4g}: " + ", ".join(f"{k} {v:.3f}" for k, v in out[f"{r:.4g}"].items()), flush=True)
    return out


def markdown(res: dict) -> str:
    fr = res["pool_fracs"]
    out = [f"# Pool eviction on real decode-trace selections ({res['source']})", "",
           f"{res['n_blocks_final']} blocks at the end; hit rate per selected block over the steps after the "
           "first, summed over the sparse layers. belady = the offline optimum at that pool size, unbounded = "
           "an infinite pool (only first-time selections miss).", "",
           "| ratio | " + " | ".join(f"{p} pool {f:g}" for f in fr for p in POLICIES) + " |",
           "|---" * (1 + len(fr) * len(POLICIES)) + "|"]
    for r, v in res["ratios"].items():
        out.append(f"| {r} | " + " | ".join(f"{v[f'{p}_{f:g}']:.3f}" for f in fr for p in POLICIES) + " |")
    return "\n".join(out) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("selections")
    ap.add_argument("--pool-fracs", type=float, nargs="+", default=[0.25, 0.125])
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    data = torch.load(args.selections, weights_only=False)
    res = dict(source=os.path.basename(args.selections), n_blocks_final=data["n_blocks_final"],
               pool_fracs=args.pool_fracs, ratios=replay(data, args.pool_fracs))
    base = os.path.join(RESULTS, "offload_eviction_replay" + (f"_{args.tag}" if args.tag else ""))
    write_results(base, res, markdown)
    return res


def write_results(base: str, res: dict, markdown) -> None:
    """A replay's results: ``base.json`` (``res``) and ``base.md`` (``markdown(res)``), the
    markdown also printed (offload_eviction_replay, offload_policy_replay, offload_speculative)."""
    text = markdown(res)
    with open(base + ".json", "w") as fh:
        json.dump(res, fh, indent=1)
    with open(base + ".md", "w") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
