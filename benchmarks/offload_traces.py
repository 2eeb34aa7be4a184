"""Prefetch hit rates and the cost of a one-step selection lag, on real decode traces (CPU).

A ``gsa eval`` model (SmolLM2-135M or Qwen2.5-Coder-0.5B) reads ``--context``
tokens of Jane Austen densely, then ``--n-eval`` more tokens teacher-forced
(each position is one decode step). At every step and sparse layer we take the
GSA selection (the shipped config with the sparse layers at each ``--ratios``
value; ``gsa.eval.selectors.gsa_select``, checked against
``gsa.ops.hamming_dist_top_k``) and measure, over all steps after the first:

* ``prev_overlap``: the fraction of the step's selected blocks that the same
  layer selected at the previous step (the "previous" prefetch predictor);
* ``lookahead_overlap``: the same for a selection ``--lookahead`` times wider;
* ``pool_hit_{f}``: hits of a device pool holding a fraction ``f`` of the blocks
  (at least one selection), driven through :class:`gsa.offload.ResidencyMap`
  (the engine's own eviction: least recent, then fewest uses);
* the same three with ``_unforced``: counting only blocks that are not forced
  (``must_select_blocks``) at that step;
* ``mass_recall`` / ``mass_recall_lag1``: attention mass (exact softmax) inside
  the exact selection and inside the lagged one (the previous step's selection
  made valid for the new length by :func:`gsa.offload.merge_lagged`, as the CPU
  top-k mode with ``cpu_lag=1`` does);
* with ``--e2e``: next-token agreement and KL vs dense of GSA and of GSA with
  the lag, teacher-forced over the same tokens (ratio ``--e2e-ratio``).

Usage: python benchmarks/offload_traces.py [--model smollm2|qwen] [--context 4096] [--n-eval 256]
       [--block-size 128] [--ratios 0.3 0.125 0.0625] [--e2e] [--tag NAME] [--save-selections] [--speculative]
Writes benchmarks/results/offload_traces[_TAG].{json,md} (``--save-selections``: also the
selection sequences and every step's block scores (``scores``: ``float32 [steps, blocks]`` per
sparse layer, the ranking all ratios share), ``..._selections.pt``, so eviction policies can be
replayed offline with :func:`rates` and benchmarks/offload_policy_replay.py); the JSON's headline
``hit_rate_1_8`` (pool hit at ratio 1/8, the first pool fraction) is what
benchmarks/offload_bench.py reports (the lowest among its ``--traces``).
``--speculative`` (implies ``--save-selections``; the other outputs are unchanged) also scores,
at every step and sparse layer, InfiniGen-style speculative queries of the layer built from
earlier hidden states of the same forward (benchmarks/offload_speculative_query.py) with the
layer's hash weights and the same block score, saved as ``spec_scores[variant][layer]``
(``float32 [steps, blocks]``) for benchmarks/offload_speculative.py.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gsa import ops  # noqa: E402
from gsa.eval import metrics as M  # noqa: E402
from gsa.eval import selectors as S  # noqa: E402
from gsa.eval.model import TeacherForcedRun, eval_config, load_model  # noqa: E402
from gsa.offload import ResidencyMap, merge_lagged  # noqa: E402
from gsa.policy import GSAPolicy  # noqa: E402
from gsa.weights import load_hash_weights  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _speculative():
    """benchmarks/offload_speculative_query.py (--speculative), also when this file is loaded by path."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    import offload_speculative_query
    return offload_speculative_query


def lagged_rows(policy: GSAPolicy, layer: int, prev: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
    """``prev bool [N, NBLK]`` (row i: the selection of step i-1) -> the lagged
    selection valid at lengths ``seq [N]``, ``bool [N, NBLK]`` (merge_lagged)."""
    n, nblk = prev.shape
    n_blocks, bud, _ = S.budgets_for(policy, layer, seq)
    k0 = int(prev.sum(1).max())
    idx = torch.full((n, max(k0, 1)), -1, dtype=torch.int32)
    for i in range(n):
        b = prev[i].nonzero()[:, 0]
        idx[i, : b.numel()] = b.to(torch.int32)
    merged, _ = merge_lagged(idx, n_blocks.numpy(), bud.numpy(), policy.config.must_select_blocks, k0)
    out = torch.zeros(n, nblk, dtype=torch.bool)
    for i in range(n):
        m = merged[i][merged[i] >= 0].long()
        out[i, m] = True
    return out


class Tracer:
    """Observer for TeacherForcedRun: selections and mass recalls per (ratio, layer)."""

    def __init__(self, cfg, ratios, lookahead, start, scale, spec=None):
        self.cfg, self.start, self.scale = cfg, start, scale
        self.spec = spec  # SpeculativeQueries (--speculative) or None
        self.bs = cfg.chunk_size
        self.pols = {r: GSAPolicy(eval_config(cfg, ratio=r), "cpu") for r in ratios}
        self.wide = {r: GSAPolicy(eval_config(cfg, ratio=min(r * lookahead, 1.0)), "cpu") for r in ratios}
        self.sparse = [l for l, r in enumerate(cfg.top_k_ratio_per_layer) if r < 1]
        self.sel: Dict[tuple, List[torch.Tensor]] = {}
        self.wsel: Dict[tuple, List[torch.Tensor]] = {}
        self.scores: Dict[int, List[torch.Tensor]] = {}  # layer -> block scores [n, nblk] per chunk
        # --speculative: variant -> layer -> block scores of the speculative query [n, nblk] per chunk
        self.spec_scores: Dict[str, Dict[int, List[torch.Tensor]]] = {}
        self.acc = M.Accumulator()

    def __call__(self, layer, q, k_all, v_all, pos0):
        if pos0 < self.start or layer not in self.sparse:
            return
        seq = torch.arange(pos0 + 1, pos0 + q.shape[0] + 1)
        w = load_hash_weights(self.cfg, layer)
        qc, kc = ops.hash_encode(q, w), ops.hash_encode(k_all, w)
        mass = S.block_mass(S.dense_probs(q, k_all, seq, self.scale), self.bs)
        self.scores.setdefault(layer, []).append(block_scores(qc, kc, seq, self.bs))
        if self.spec is not None:  # the same hash weights, key codes and block score as the real query
            for var in _speculative().VARIANTS:
                sq = ops.hash_encode(self.spec.query(layer, var).to(q.dtype), w)
                self.spec_scores.setdefault(var, {}).setdefault(layer, []).append(block_scores(sq, kc, seq, self.bs))
        for r, pol in self.pols.items():
            sel = S.gsa_select(pol, layer, qc, kc, seq, check_rows=1)
            wide = S.gsa_select(self.wide[r], layer, qc, kc, seq, check_rows=0)
            hist = self.sel.setdefault((r, layer), [])
            prev = torch.zeros_like(sel)
            if hist:
                last = hist[-1][-1]
                prev[0, : last.shape[0]] = last
            prev[1:] = sel[:-1]
            self.acc.add(f"r={r:.4g}/mass_recall", layer, M.mass_recall(mass, sel)[1 if not hist else 0:])
            lag = lagged_rows(pol, layer, prev, seq)
            self.acc.add(f"r={r:.4g}/mass_recall_lag1", layer, M.mass_recall(mass, lag)[1 if not hist else 0:])
            hist.append(sel)
            self.wsel.setdefault((r, layer), []).append(wide)


def block_scores(q_codes: torch.Tensor, k_codes: torch.Tensor, seq: torch.Tensor, bs: int) -> torch.Tensor:
    """The block scores every GSA selection ranks (chunk_repre_method 'max', as
    ``S.gsa_select`` computes them; independent of the ratio): ``q_codes uint8 [N, Hq, C]``,
    ``k_codes uint8 [S, Hkv, C]``, ``seq int64 [N]`` -> ``float32 [N, NBLK]``, higher = nearer
    (``-inf`` past the row's length). Saved so eviction/prefetch policies that rank blocks by
    score can be replayed offline."""
    n, hq, c = q_codes.shape
    hkv = k_codes.shape[1]
    qs = S.unpack_signs(q_codes).reshape(n, hkv, hq // hkv, c * 8).sum(dim=2)
    tok = torch.einsum("nhr,shr->ns", qs, S.unpack_signs(k_codes))
    return S._block_max(tok, seq, bs).float()


def pad_steps(chunks: List[torch.Tensor], nblk: int) -> torch.Tensor:
    """Selection chunks ``bool [n_i, nblk_i]`` -> ``bool [sum n_i, nblk]`` (zero padded)."""
    out = []
    for c in chunks:
        out.append(torch.nn.functional.pad(c, (0, nblk - c.shape[1])))
    return torch.cat(out)


def sequences(chunks: List[torch.Tensor], nblk: int) -> List[set]:
    out = []
    for c in chunks:
        for row in c:
            out.append(set(row.nonzero()[:, 0].tolist()))
    return out


def rates(sel: List[set], wide: List[set], nblk_final: int, pool_fracs, forced: List[set] = None) -> dict:
    """Overlaps and pool hits of a selection sequence (steps after the first). ``forced``:
    the forced blocks of each step; the ``*_unforced`` rates leave them out (they are
    selected every step, so they inflate the hit rates of short contexts)."""
    forced = forced or [set() for _ in sel]
    out = {"wanted": sum(len(s) for s in sel[1:])}
    for tag, skip in (("", [set()] * len(sel)), ("_unforced", forced)):
        cur = [s - f for s, f in zip(sel, skip)]
        wanted = max(sum(len(s) for s in cur[1:]), 1)
        out["prev_overlap" + tag] = sum(len(s & p) for s, p in zip(cur[1:], sel[:-1])) / wanted
        out["lookahead_overlap" + tag] = sum(len(s & p) for s, p in zip(cur[1:], wide[:-1])) / wanted
    widest = max(len(s) for s in sel)
    for f in pool_fracs:
        slots = max(math.ceil(f * nblk_final), widest)
        m = ResidencyMap(nblk_final, slots)
        hits = {"": 0, "_unforced": 0}
        for t, s in enumerate(sel):
            resident = m.resident()
            if t:  # cold start excluded, as for the overlaps
                hits[""] += sum(bool(resident[b]) for b in s)
                hits["_unforced"] += sum(bool(resident[b]) for b in s - forced[t])
            m.request(torch.tensor(sorted(s)), t + 1)
        for tag, skip in (("", [set()] * len(sel)), ("_unforced", forced)):
            out[f"pool_hit_{f:g}{tag}"] = hits[tag] / max(sum(len(s - k) for s, k in zip(sel[1:], skip[1:])), 1)
        out[f"pool_slots_{f:g}"] = slots
    return out


def forced_sets(cfg, context: int, n: int) -> List[set]:
    """The forced blocks of decode steps at positions ``context .. context + n - 1``."""
    out = []
    for t in range(n):
        nb = math.ceil((context + t + 1) / cfg.chunk_size)
        out.append({m if m >= 0 else nb + m for m in cfg.must_select_blocks} & set(range(nb)))
    return out


def lagged_selector(cfg):
    """A TeacherForcedRun selector: GSA with the previous position's selection (lag 1)."""
    pol = GSAPolicy(cfg, "cpu")
    last: Dict[int, torch.Tensor] = {}

    def select(layer, q, k_all, pos0):
        if pol.layer(layer).dense:
            return None
        w = load_hash_weights(cfg, layer)
        seq = torch.arange(pos0 + 1, pos0 + q.shape[0] + 1)
        sel = S.gsa_select(pol, layer, ops.hash_encode(q, w), ops.hash_encode(k_all, w), seq, check_rows=0)
        prev = torch.zeros_like(sel)
        if layer in last:
            prev[0, : last[layer].shape[0]] = last[layer]
        else:
            prev[0] = sel[0]
        prev[1:] = sel[:-1]
        last[layer] = sel[-1]
        return lagged_rows(pol, layer, prev, seq)

    return select


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "qwen"])
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--n-eval", type=int, default=256)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.125, 0.0625])
    ap.add_argument("--pool-fracs", type=float, nargs="+", default=[0.25, 0.125])
    ap.add_argument("--lookahead", type=float, default=1.5)
    ap.add_argument("--block-size", type=int, default=None, help="default: the shipped config's chunk_size")
    ap.add_argument("--e2e", action="store_true")
    ap.add_argument("--e2e-ratio", type=float, default=0.125)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--tag", default="")
    ap.add_argument("--save-selections", action="store_true",
                    help="also write the per-step selections (bool [steps, blocks] per ratio and layer) as .pt")
    ap.add_argument("--speculative", action="store_true",
                    help="also score speculative queries of each sparse layer "
                         "(benchmarks/offload_speculative_query.py: from layer l-1's input, its post-attention state "
                         "and layer l-2's input) and save their block scores as "
                         "'spec_scores' in the --save-selections file (needed: implies it)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    from gsa.eval.assets import austen_text
    from gsa.eval.harness import _tokens
    model, tok, cfg = load_model(args.model)
    if args.block_size:
        cfg = cfg.replace(chunk_size=args.block_size)
    mc = model.config
    d = getattr(mc, "head_dim", None) or mc.hidden_size // mc.num_attention_heads
    ids = _tokens(tok, austen_text(), args.context + args.n_eval + 1)
    t0 = time.time()
    run = TeacherForcedRun(model, block_size=cfg.chunk_size)
    for c0 in range(0, args.context, 2048):
        run.feed(ids[c0:min(args.context, c0 + 2048)], logits="last")
    prefix = run.fork()
    spec = None
    if args.speculative:
        spec = _speculative().SpeculativeQueries(model)
        args.save_selections = True
    tracer = Tracer(cfg, args.ratios, args.lookahead, args.context, d ** -0.5, spec=spec)
    run.observer = tracer
    dense = []
    for c0 in range(args.context, args.context + args.n_eval, args.chunk):
        dense.append(run.feed(ids[c0:min(args.context + args.n_eval, c0 + args.chunk)]))
    dense = torch.cat(dense)
    if spec is not None:
        spec.close()  # the e2e forks below need no speculative queries
    nblk = math.ceil((args.context + args.n_eval) / cfg.chunk_size)
    per = {}
    for r in args.ratios:
        layers = {}
        for l in tracer.sparse:
            layers[l] = rates(sequences(tracer.sel[(r, l)], nblk), sequences(tracer.wsel[(r, l)], nblk), nblk,
                              args.pool_fracs, forced_sets(cfg, args.context, args.n_eval))
        w = sum(v["wanted"] for v in layers.values())
        agg = {k: sum(v[k] * v["wanted"] for v in layers.values()) / w
               for k in layers[tracer.sparse[0]] if k != "wanted" and not k.startswith("pool_slots")}
        agg["mass_recall"] = tracer.acc.overall(f"r={r:.4g}/mass_recall")
        agg["mass_recall_lag1"] = tracer.acc.overall(f"r={r:.4g}/mass_recall_lag1")
        per[f"{r:.4g}"] = {"overall": agg, "per_layer": layers}
        print(f"ratio {r:.4g}: " + ", ".join(f"{k} {v:.3f}" for k, v in agg.items()), flush=True)
    e2e = None
    if args.e2e:
        from gsa.eval.harness import make_select
        targets = ids[args.context + 1: args.context + args.n_eval + 1]
        ecfg = eval_config(cfg, ratio=args.e2e_ratio)
        e2e = {}
        for name, sel in (("gsa", make_select(ecfg)), ("gsa_lag1", lagged_selector(ecfg))):
            r2 = prefix.fork(select=sel, block_size=cfg.chunk_size)
            lg = torch.cat([r2.feed(ids[c0:min(args.context + args.n_eval, c0 + args.chunk)])
                            for c0 in range(args.context, args.context + args.n_eval, args.chunk)])
            e2e[name] = M.kl_and_agreement(dense.float(), lg)
            e2e[name]["ppl"] = M.perplexity(lg, targets)
            print(f"e2e {name}: {e2e[name]}", flush=True)
    key = f"{0.125:.4g}"
    res = dict(model=args.model, args=vars(args), block_size=cfg.chunk_size, n_blocks_final=nblk,
               dense_ppl=M.perplexity(dense, ids[args.context + 1: args.context + args.n_eval + 1]),
               ratios=per, e2e=e2e, seconds=time.time() - t0,
               headline={"hit_rate_1_8": per[key]["overall"][f"pool_hit_{args.pool_fracs[0]:g}"] if key in per else None,
                         "prev_overlap_1_8": per[key]["overall"]["prev_overlap"] if key in per else None})
    tag = f"_{args.tag}" if args.tag else ""
    os.makedirs(RESULTS, exist_ok=True)
    base = os.path.join(RESULTS, f"offload_traces{tag}")
    if args.save_selections:
        pad = lambda chunks: torch.cat([torch.nn.functional.pad(c, (0, nblk - c.shape[1]), value=-math.inf)  # noqa: E731
                                        for c in chunks])
        extra = {}
        if spec is not None:  # variant -> layer -> float32 [steps, blocks], as 'scores'
            extra["spec_scores"] = {v: {l: pad(tracer.spec_scores[v][l]) for l in tracer.sparse}
                                    for v in tracer.spec_scores}
        torch.save(dict(context=args.context, n_eval=args.n_eval, n_blocks_final=nblk, block_size=cfg.chunk_size,
                        forced=forced_sets(cfg, args.context, args.n_eval),
                        sel={(r, l): pad_steps(tracer.sel[(r, l)], nblk) for r in args.ratios for l in tracer.sparse},
                        wide={(r, l): pad_steps(tracer.wsel[(r, l)], nblk) for r in args.ratios for l in tracer.sparse},
                        scores={l: pad(tracer.scores[l]) for l in tracer.sparse}, **extra),
                   base + "_selections.pt")
    with open(base + ".json", "w") as f:
        json.dump(res, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(markdown(res))
    print(markdown(res))


def markdown(res: dict) -> str:
    a = res["args"]
    out = [f"# Offload prefetch on real decode traces ({res['model']}, {a['context']} + {a['n_eval']} tokens, "
           f"{res['block_size']}-token blocks, {res['n_blocks_final']} blocks)", "",
           f"headline: {json.dumps(res['headline'])}", ""]
    keys = list(next(iter(res["ratios"].values()))["overall"].keys())
    out += ["| ratio | " + " | ".join(k.replace("_", " ") for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r, v in res["ratios"].items():
        out.append(f"| {r} | " + " | ".join(f"{v['overall'][k]:.3f}" for k in keys) + " |")
    if res.get("e2e"):
        out += ["", f"end to end at ratio {a['e2e_ratio']} (teacher-forced, vs dense; dense ppl {res['dense_ppl']:.3f}):", "",
                "| selector | agreement | KL | ppl |", "|---|---|---|---|"]
        for n, e in res["e2e"].items():
            out.append(f"| {n} | {e['agreement']:.4f} | {e['kl']:.5f} | {e['ppl']:.3f} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
