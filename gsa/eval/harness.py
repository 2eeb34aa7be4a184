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

from gsa.config import GSAConfig
from gsa.eval import metrics as M
from gsa.eval import selectors as S
from gsa.eval.model import PagedRun, TeacherForcedRun, eval_config
from gsa.policy import GSAPolicy
from gsa.hash_codes import key_codes, query_codes

__all__ = ["selection_grid", "end_to_end", "passkey", "retrieval", "make_select", "quest_extra_fraction", "PagedRecall",
           "print_code_quality", "hash_signature"]


def quest_extra_fraction(bits: int, head_dim: int, block_size: int) -> float:
    """The signed equal-bytes allowance: the KV fraction Quest reads beyond GSA's
    budget so both read the same bytes (fp16 KV). Per token and KV head GSA reads
    ``bits/8`` code bytes, Quest ``4 D / bs`` (fp16 min and max per channel and block);
    the KV itself is ``4 D`` bytes. -> ``bits/(32 D) - 1/bs``.

    Negative when Quest's metadata costs more than the code (e.g. D 256, 32-token
    blocks, 128 bits: 32 vs 16 bytes per token and head, -1/64): at equal bytes
    Quest then reads *fewer* KV blocks than GSA. :func:`gsa.eval.selectors.quest_select`
    turns it into blocks (rounded up, never below the forced blocks)."""
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
        seq = torch.arange(pos0 + 1, pos0 + q.shape[0] + 1)
        sel = S.gsa_select(policy, layer, query_codes(cfg, layer, q), key_codes(cfg, layer, k_all), seq)
        cache[layer] = sel
        return sel

    return select


def _tokens(tok, text: str, n: int) -> torch.Tensor:
    """``n`` token ids: the tokenizer's BOS (when it adds one) then ``text``."""
    from gsa.eval.load import encode_text
    return encode_text(tok, text, n)


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
    d = cfg.head_dim or getattr(mc, "head_dim", None) or mc.hidden_size // mc.num_attention_heads
    bs = cfg.chunk_size
    sparse_layers = [l for l, r in enumerate(cfg.top_k_ratio_per_layer) if r < 1]
    policies = {r: GSAPolicy(eval_config(cfg, ratio=r), "cpu") for r in ratios}
    wcfgs = {(name, b): eval_config(cfg, bits=b, hash_weight=(paths or {}).get(b)) for name, paths in weights.items()
             for b in bits if paths is None or b in paths}
    acc = M.Accumulator()
    holder = {}

    def observer(layer, q, k_all, v_all, pos0):
        if pos0 < prefix_len or layer not in sparse_layers:
            return
        rows = [i for i in range(q.shape[0]) if (pos0 + i - prefix_len) % sample_every == 0]
        if not rows:
            return
        attn = holder["run"].attn[layer]  # the model's own softmax scale and softcap for this layer
        qs = q[rows]
        seq = torch.tensor([pos0 + i + 1 for i in rows])
        mass = S.block_mass(S.dense_probs(qs, k_all, seq, attn.scale, attn.softcap), bs)
        codes = {}
        for (name, b), wc in wcfgs.items():
            codes[(name, b)] = (query_codes(wc, layer, qs), key_codes(wc, layer, k_all))
            # code quality (cheap): near-constant bits over the keys, and how code similarity tracks q.k
            acc.add(f"codes/{name}/b={b}/const_bits", layer, M.near_constant_bits(codes[(name, b)][1]).mean())
            acc.add(f"codes/{name}/b={b}/pearson", layer,
                    M.code_similarity_pearson(qs, k_all, codes[(name, b)][0], codes[(name, b)][1], seq))
        for r, pol in policies.items():
            _, _, forced = S.budgets_for(pol, layer, seq)
            orc = S.oracle_select(pol, layer, mass, seq)
            acc.add(f"oracle/r={r:.4g}/mass_recall", layer, M.mass_recall(mass, orc))
            quest = S.quest_select(pol, layer, qs, k_all, seq, attn.scale)
            acc.add(f"quest/r={r:.4g}/mass_recall", layer, M.mass_recall(mass, quest))
            acc.add(f"quest/r={r:.4g}/block_recall", layer, M.block_recall(quest, orc, forced))
            for b in bits:
                qb = S.quest_select(pol, layer, qs, k_all, seq, attn.scale, budget_add=quest_extra_fraction(b, d, bs))
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
    holder["run"] = run
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
    print_code_quality(grid)
    return {"ids": ids, "prefix_run": prefix_run, "dense_logits": dense_logits,
            "dense_ppl": M.perplexity(dense_logits, targets), "grid": grid, "seconds": time.time() - t0,
            "sample_every": sample_every, "sparse_layers": sparse_layers}


def print_code_quality(grid: dict) -> None:
    """Print the per-layer code diagnostics of a grid (``codes/<weights>/b=<bits>/...``)."""
    keys = sorted({n.rsplit("/", 1)[0] for n in grid if n.startswith("codes/")})
    for key in keys:
        cb, pr = grid.get(f"{key}/const_bits"), grid.get(f"{key}/pearson")
        if not cb or not pr:
            continue
        per = ", ".join(f"{l}: {cb['per_layer'][l]:.2f}/{pr['per_layer'][l]:.2f}" for l in cb["per_layer"])
        print(f"  {key[6:]}: near-constant bits {cb['overall']:.3f}, Pearson(code sim, q.k) {pr['overall']:.3f}; "
              f"per layer (const/Pearson) {per}", flush=True)


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


def hash_signature(c: GSAConfig) -> tuple:
    """What decides the key codes a config writes (bits, weights and their type and
    seed, spec-13 key means): configs that agree can share one hash cache."""
    return (c.hash_bits, c.hash_weight_type, c.hash_weight, c.seed, c.hash_centre)


def passkey(model, tok, cfgs: Dict[str, GSAConfig], lengths: Sequence[int], depths: Sequence[float],
            max_new: int = 8, seed: int = 0, observer_factory: Optional[Callable] = None,
            selectors: Optional[Dict[str, str]] = None) -> List[dict]:
    """Passkey retrieval through the paged decode path. For each length and depth:
    one dense prefill, then greedy decoding once per config (restored from a
    snapshot of the prefill). ``cfgs`` must share the block size; a config whose
    codes differ from the first one's (bits, weights, key means) rehashes the
    prefill's cached keys (:meth:`PagedRun.restore`); ``selectors``: config name -> ``"gsa"``
    (default) or ``"quest"`` (the Quest-style selection at the same budget).
    Returns one record per (length, depth, config)."""
    import random
    rng = random.Random(seed)
    records = []
    for n in lengths:
        for depth in depths:
            key = rng.randint(10000, 99999)
            ids = M.passkey_prompt(tok, n, depth, key)
            for rec in _decode_configs(model, tok, cfgs, ids, max_new, observer_factory, selectors):
                rec.update({"target_length": n, "depth": depth, "passkey": key,
                            "found": M.passkey_found(rec["answer"], key)})
                records.append(rec)
                print(f"  passkey n={n} depth={depth:.0%} {rec['config']}: {rec['found']} ({rec['answer']!r})",
                      flush=True)
    return records


def retrieval(model, tok, task: str, cfgs: Dict[str, GSAConfig], lengths: Sequence[int], depths: Sequence[float],
              seed: int = 0, observer_factory: Optional[Callable] = None,
              selectors: Optional[Dict[str, str]] = None) -> List[dict]:
    """A multi-retrieval task of :mod:`gsa.eval.tasks` (``"multikey"`` or ``"vartrack"``)
    through the paged decode path, as :func:`passkey`: one record per (length, depth,
    config) with ``score`` in [0, 1] (``found``: score 1)."""
    import random
    from gsa.eval import tasks as T
    rng = random.Random(seed)
    records = []
    for n in lengths:
        for depth in depths:
            prompt = T.make_prompt(task, tok, n, depth, rng)
            for rec in _decode_configs(model, tok, cfgs, prompt.ids, T.max_new_tokens(task), observer_factory,
                                       selectors):
                sc = T.score(task, rec["answer"], prompt.expected)
                rec.update({"task": task, "target_length": n, "depth": depth, "expected": prompt.expected,
                            "score": sc, "found": sc == 1.0})
                records.append(rec)
                print(f"  {task} n={n} depth={depth:.0%} {rec['config']}: score {sc:.2f} ({rec['answer'][:40]!r}, "
                      f"expected {prompt.expected})", flush=True)
    return records


def _decode_configs(model, tok, cfgs: Dict[str, GSAConfig], ids: torch.Tensor, max_new: int,
                    observer_factory: Optional[Callable], selectors: Optional[Dict[str, str]]) -> List[dict]:
    """One dense prefill of ``ids [T]``, then greedy decoding per config from its snapshot."""
    names = list(cfgs)
    base = cfgs[names[0]]
    if len({c.chunk_size for c in cfgs.values()}) > 1:
        raise ValueError(f"_decode_configs: configs {names} must share one block size (the paged KV layout), got "
                         f"{sorted({c.chunk_size for c in cfgs.values()})}")
    # the prefill must fill a hash cache for every layer any config scores
    union = [min(c.top_k_ratio_per_layer[l] for c in cfgs.values()) for l in range(base.num_hidden_layers)]
    fill_cfg = base.replace(top_k_ratio_per_layer=[0.5 if r < 1 else 1.0 for r in union], top_k_index_reuse=None)
    stop = [tok.eos_token_id] if tok.eos_token_id is not None else []
    run = PagedRun(model, fill_cfg, max_tokens=ids.shape[0] + max_new + 1)
    t0 = time.time()
    first = run.prefill(ids)
    t_prefill = time.time() - t0
    snap = run.snapshot()
    out = []
    for name in names:
        obs = observer_factory() if observer_factory else None
        if obs is not None and hasattr(obs, "attn_of"):
            obs.attn_of = run.attn.get
        # a config with other key codes (bits, weights, key means) rehashes the prefill's cached keys
        run.restore(snap, cfgs[name], selector=(selectors or {}).get(name, "gsa"),
                    rehash=hash_signature(cfgs[name]) != hash_signature(fill_cfg))
        if obs is not None and hasattr(obs, "on_config"):  # an observer that scores with the run's config
            obs.on_config(name, cfgs[name], run.selector)
        run.observer = obs
        t1 = time.time()
        new = run.generate(first, max_new, stop)
        rec = {"length": int(ids.shape[0]), "config": name, "selector": run.selector,
               "answer": tok.decode(new, skip_special_tokens=True).strip(),
               "blocks_read": (sum(run.blocks_read) / len(run.blocks_read)) if run.blocks_read else None,
               "n_blocks": math.ceil(ids.shape[0] / base.chunk_size), "prefill_s": t_prefill,
               "decode_s": time.time() - t1}
        if obs is not None and hasattr(obs, "summary"):
            rec.update(obs.summary())
        out.append(rec)
    return out


class PagedRecall:
    """A :class:`PagedRun` observer: attention-mass recall of each decode step's
    selection (dense softmax of the step's query over every cached key, mass
    inside the selected blocks, mean over heads), per layer."""

    def __init__(self, attn_of: Optional[Callable] = None):
        self.acc = M.Accumulator()
        self.attn_of = attn_of  # layer -> LayerAttention (the run's .attn.get): the model's scale / softcap

    def __call__(self, layer, step, q, k_cache, v_cache, table, seq_lens, sparse_table, sparse_lens):
        bs = k_cache.shape[1]
        n = int(seq_lens[0])
        nblk = math.ceil(n / bs)
        phys = table[0, :nblk].long()
        keys = k_cache[phys].reshape(nblk * bs, *k_cache.shape[2:])[:n]
        # instrumentation, not the decode step: scored on the host whatever the run's device
        attn = self.attn_of(layer) if self.attn_of is not None else None
        scale, cap = (attn.scale, attn.softcap) if attn is not None else (q.shape[-1] ** -0.5, None)
        probs = S.dense_probs(q.cpu(), keys.cpu(), seq_lens.long().cpu(), scale, cap)  # [1, Hq, n]
        mass = S.block_mass(probs, bs)  # [1, Hq, nblk]
        n_sel = math.ceil(int(sparse_lens[0]) / bs)
        chosen = set(sparse_table[0, :n_sel].tolist())
        sel = torch.tensor([[int(p) in chosen for p in phys.tolist()]])
        self.acc.add("mass_recall", layer, M.mass_recall(mass, sel))

    def summary(self) -> dict:
        return {"mass_recall": self.acc.overall("mass_recall"),
                "mass_recall_min_layer": min(self.acc.per_layer("mass_recall").values(), default=None)}
