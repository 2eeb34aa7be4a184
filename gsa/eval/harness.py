"""The accuracy harness: selection quality, teacher-forced end-to-end quality and
passkey retrieval (docs/accuracy.md; CLI: ``gsa eval``, :mod:`gsa.eval.cli`).

* :func:`selection_grid`: one dense teacher-forced pass over ``prefix + N``
  Austen tokens; at sampled decode positions of every sparse layer, every
  selector of the grid (GSA per ratio x bits x weights, the oracle, Quest at the
  same budget and at the same bytes read) is scored against the exact attention.
* :func:`end_to_end`: the same tokens through the sparse decode rule for a few
  configs; next-token agreement, mean KL and perplexity against the dense pass.
* :func:`passkey`: prompts with a hidden number, dense prefill, then greedy
  decoding through the paged GSA decode path (:class:`~gsa.eval.model.PagedRun`).
"""
from __future__ import annotations

import math
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from gsa import ops
from gsa.config import GSAConfig
from gsa.eval import metrics as M
from gsa.eval import selectors as S
from gsa.eval.model import PagedRun, TeacherForcedRun, eval_config
from gsa.policy import GSAPolicy
from gsa.weights import load_hash_weights

__all__ = ["selection_grid", "end_to_end", "passkey", "make_select", "quest_extra_fraction", "PagedRecall"]


def quest_extra_fraction(bits: int, head_dim: int, block_size: int) -> float:
    """Extra KV fraction Quest may read to match GSA's bytes (fp16 KV): per token and
    KV head GSA reads ``bits/8`` code bytes, Quest ``4 D / bs`` (min and max per
    block); the KV itself is ``4 D`` bytes. -> ``bits/(32 D) - 1/bs``."""
    return bits / (32 * head_dim) - 1 / block_size


class _NoBar:
    """Stand-in progress bar when tqdm (the ``eval`` extra) is not installed."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # a bar is cosmetic: the `test` extra alone must run the harness
        return _NoBar()
    return tqdm(total=total, desc=desc, leave=False)


def make_select(cfg: GSAConfig) -> Callable:
    """A :class:`TeacherForcedRun` selector applying ``cfg``'s decode rule per layer
    (dense layers -> ``None``; reusing layers take their source's selection)."""
    policy = GSAPolicy(cfg, "cpu")
    cache: Dict[int, torch.Tensor] = {}

    def select(layer, q, k_all, pos0):
        lp = policy.layer(layer)
        if lp.dense:
            return None
        if lp.reuse_source >= 0:
            return cache[lp.reuse_source]
        w = load_hash_weights(cfg, layer)
        seq = torch.arange(pos0 + 1, pos0 + q.shape[0] + 1)
        sel = S.gsa_select(policy, layer, ops.hash_encode(q, w), ops.hash_encode(k_all, w), seq)
        cache[layer] = sel
        return sel

    return select


def _tokens(tok, text: str, n: int) -> torch.Tensor:
    ids = tok(text[: n * 8], add_special_tokens=False).input_ids
    if len(ids) < n:
        raise ValueError(f"text too short: {len(ids)} tokens, need {n}")
    return torch.tensor(ids[:n], dtype=torch.long)


def selection_grid(model, tok, cfg: GSAConfig, text: str, prefix_len: int, n_eval: int,
                   ratios: Sequence[float], bits: Sequence[int], weights: Dict[str, Optional[Dict[int, str]]],
                   sample_every: int = 16, chunk: int = 512) -> dict:
    """Dense teacher-forced pass; selector metrics at every ``sample_every``-th decode
    position of the shipped config's sparse layers. ``weights``: name -> ``{bits:
    bundle path}`` (``None``: the seeded random weights). Returns a dict with the
    dense logits of the ``n_eval`` positions (``"dense_logits"``), the token ids and
    per-layer / overall metrics (``"grid"``)."""
    ids = _tokens(tok, text, prefix_len + n_eval + 1)
    mc = model.config
    d = getattr(mc, "head_dim", None) or mc.hidden_size // mc.num_attention_heads
    scale = d ** -0.5
    bs = cfg.chunk_size
    sparse_layers = [l for l, r in enumerate(cfg.top_k_ratio_per_layer) if r < 1]
    policies = {r: GSAPolicy(eval_config(cfg, ratio=r), "cpu") for r in ratios}
    wcfgs = {(name, b): eval_config(cfg, bits=b, hash_weight=(paths or {}).get(b)) for name, paths in weights.items()
             for b in bits if paths is None or b in paths}
    acc = M.Accumulator()

    def observer(layer, q, k_all, v_all, pos0):
        if pos0 < prefix_len or layer not in sparse_layers:
            return
        rows = [i for i in range(q.shape[0]) if (pos0 + i - prefix_len) % sample_every == 0]
        if not rows:
            return
        qs = q[rows]
        seq = torch.tensor([pos0 + i + 1 for i in rows])
        mass = S.block_mass(S.dense_probs(qs, k_all, seq, scale), bs)
        codes = {}
        for (name, b), wc in wcfgs.items():
            w = load_hash_weights(wc, layer)
            codes[(name, b)] = (ops.hash_encode(qs, w), ops.hash_encode(k_all, w))
        for r, pol in policies.items():
            _, _, forced = S.budgets_for(pol, layer, seq)
            orc = S.oracle_select(pol, layer, mass, seq)
            acc.add(f"oracle/r={r:.4g}/mass_recall", layer, M.mass_recall(mass, orc))
            quest = S.quest_select(pol, layer, qs, k_all, seq, scale)
            acc.add(f"quest/r={r:.4g}/mass_recall", layer, M.mass_recall(mass, quest))
            acc.add(f"quest/r={r:.4g}/block_recall", layer, M.block_recall(quest, orc, forced))
            for b in bits:
                qb = S.quest_select(pol, layer, qs, k_all, seq, scale, budget_add=quest_extra_fraction(b, d, bs))
                acc.add(f"quest_eqbytes/r={r:.4g}/b={b}/mass_recall", layer, M.mass_recall(mass, qb))
                acc.add(f"quest_eqbytes/r={r:.4g}/b={b}/block_recall", layer, M.block_recall(qb, orc, forced))
                for name in weights:
                    if (name, b) not in codes:
                        continue
                    qc, kc = codes[(name, b)]
                    sel = S.gsa_select(pol, layer, qc, kc, seq, check_rows=1)
                    acc.add(f"gsa/{name}/r={r:.4g}/b={b}/mass_recall", layer, M.mass_recall(mass, sel))
                    acc.add(f"gsa/{name}/r={r:.4g}/b={b}/block_recall", layer, M.block_recall(sel, orc, forced))

    run = TeacherForcedRun(model, select=None, observer=None, block_size=bs)
    t0 = time.time()
    bar = _progress(prefix_len + n_eval, "dense prefix + eval")
    for c0 in range(0, prefix_len, 2048):
        run.feed(ids[c0:min(prefix_len, c0 + 2048)], logits="last")
        bar.update(min(prefix_len, c0 + 2048) - c0)
    prefix_run = run.fork()
    run.observer = observer
    logits = []
    for c0 in range(prefix_len, prefix_len + n_eval, chunk):
        c1 = min(prefix_len + n_eval, c0 + chunk)
        logits.append(run.feed(ids[c0:c1]))
        bar.update(c1 - c0)
    bar.close()
    dense_logits = torch.cat(logits)
    targets = ids[prefix_len + 1: prefix_len + n_eval + 1]
    grid = {name: {"overall": acc.overall(name), "per_layer": acc.per_layer(name)} for name in acc.names()}
    return {"ids": ids, "prefix_run": prefix_run, "dense_logits": dense_logits,
            "dense_ppl": M.perplexity(dense_logits, targets), "grid": grid, "seconds": time.time() - t0,
            "sample_every": sample_every, "sparse_layers": sparse_layers}


def end_to_end(model, grid_result: dict, cfgs: Dict[str, GSAConfig], prefix_len: int, n_eval: int,
               chunk: int = 512) -> Dict[str, dict]:
    """Each config's sparse decode rule over the grid's tokens (teacher-forced),
    against the dense logits: ``{name: {kl, agreement, ppl, seconds}}``."""
    ids = grid_result["ids"]
    dense = grid_result["dense_logits"].float()
    targets = ids[prefix_len + 1: prefix_len + n_eval + 1]
    out = {}
    for name, cfg in cfgs.items():
        t0 = time.time()
        run = grid_result["prefix_run"].fork(select=make_select(cfg), block_size=cfg.chunk_size)
        parts = []
        for c0 in range(prefix_len, prefix_len + n_eval, chunk):
            c1 = min(prefix_len + n_eval, c0 + chunk)
            parts.append(run.feed(ids[c0:c1]))
        lg = torch.cat(parts)
        res = M.kl_and_agreement(dense, lg)
        res["ppl"] = M.perplexity(lg, targets)
        res["seconds"] = time.time() - t0
        out[name] = res
        print(f"  e2e {name}: agreement {res['agreement']:.4f} KL {res['kl']:.5f} ppl {res['ppl']:.3f} "
              f"({res['seconds']:.0f}s)", flush=True)
    return out


def passkey(model, tok, cfgs: Dict[str, GSAConfig], lengths: Sequence[int], depths: Sequence[float],
            max_new: int = 8, seed: int = 0, observer_factory: Optional[Callable] = None) -> List[dict]:
    """Passkey retrieval through the paged decode path. For each length and depth:
    one dense prefill, then greedy decoding once per config (restored from a
    snapshot of the prefill). ``cfgs`` must share hash bits and weights (one
    hash cache is filled during prefill). Returns one record per (length, depth, config)."""
    import random
    rng = random.Random(seed)
    names = list(cfgs)
    base = cfgs[names[0]]
    # the prefill must fill a hash cache for every layer any config scores
    union = [min(c.top_k_ratio_per_layer[l] for c in cfgs.values()) for l in range(base.num_hidden_layers)]
    fill_cfg = base.replace(top_k_ratio_per_layer=[0.5 if r < 1 else 1.0 for r in union])
    records = []
    stop = [tok.eos_token_id] if tok.eos_token_id is not None else []
    for n in lengths:
        for depth in depths:
            key = rng.randint(10000, 99999)
            ids = M.passkey_prompt(tok, n, depth, key)
            run = PagedRun(model, fill_cfg, max_tokens=ids.shape[0] + max_new + 1)
            t0 = time.time()
            first = run.prefill(ids)
            t_prefill = time.time() - t0
            snap = run.snapshot()
            for name in names:
                obs = observer_factory() if observer_factory else None
                run.restore(snap, cfgs[name])
                run.observer = obs
                t1 = time.time()
                new = run.generate(first, max_new, stop)
                ans = tok.decode(new, skip_special_tokens=True)
                rec = {"length": int(ids.shape[0]), "target_length": n, "depth": depth, "config": name,
                       "passkey": key, "answer": ans.strip(), "found": M.passkey_found(ans, key),
                       "blocks_read": (sum(run.blocks_read) / len(run.blocks_read)) if run.blocks_read else None,
                       "n_blocks": math.ceil(ids.shape[0] / base.chunk_size),
                       "prefill_s": t_prefill, "decode_s": time.time() - t1}
                if obs is not None and hasattr(obs, "summary"):
                    rec.update(obs.summary())
                records.append(rec)
                print(f"  passkey n={n} depth={depth:.0%} {name}: {rec['found']} ({ans.strip()!r})", flush=True)
    return records


class PagedRecall:
    """A :class:`PagedRun` observer: attention-mass recall of each decode step's
    selection (dense softmax of the step's query over every cached key, mass
    inside the selected blocks, mean over heads), per layer."""

    def __init__(self):
        self.acc = M.Accumulator()

    def __call__(self, layer, step, q, k_cache, v_cache, table, seq_lens, sparse_table, sparse_lens):
        bs = k_cache.shape[1]
        n = int(seq_lens[0])
        nblk = math.ceil(n / bs)
        phys = table[0, :nblk].long()
        keys = k_cache[phys].reshape(nblk * bs, *k_cache.shape[2:])[:n]
        # instrumentation, not the decode step: scored on the host whatever the run's device
        probs = S.dense_probs(q.cpu(), keys.cpu(), seq_lens.long().cpu(), q.shape[-1] ** -0.5)  # [1, Hq, n]
        mass = S.block_mass(probs, bs)  # [1, Hq, nblk]
        n_sel = math.ceil(int(sparse_lens[0]) / bs)
        chosen = set(sparse_table[0, :n_sel].tolist())
        sel = torch.tensor([[int(p) in chosen for p in phys.tolist()]])
        self.acc.add("mass_recall", layer, M.mass_recall(mass, sel))

    def summary(self) -> dict:
        return {"mass_recall": self.acc.overall("mass_recall"),
                "mass_recall_min_layer": min(self.acc.per_layer("mass_recall").values(), default=None)}
