"""Which blocks hold a prompt's needles, and which selectors read them at each decode step
(docs/accuracy.md, "Why GSA loses vartrack names at 90 % depth"; issue 17).

A retrieval task hides sentences (the vartrack chain ``VAR X = ...``, its distractor
chain, multikey needles) in filler. When a sparse config answers worse than dense,
the question is whether the blocks holding those sentences were read. This module
answers it per decode step and layer, for the selection the run really made and for
three selectors scored on the same query and keys:

* ``gsa``: the config's code scores (:func:`gsa.eval.selectors.gsa_block_scores`,
  the config's bits / weights / ``chunk_repre_method`` / forced blocks);
* ``quest``: the Quest-style channel min/max bound (:func:`~gsa.eval.selectors.quest_scores`);
* ``oracle``: blocks by their exact attention mass summed over the layer's heads.

All three at the config's spec-8 budget with its forced blocks (spec 5). For each needle
block it records whether the block is forced, each selector's rank among the
non-forced blocks (1 = first pick; the block is selected when forced or its rank is at
most the free slots), and the block's share of the layer's true attention mass.

* :func:`token_spans`: sentences -> token spans ``[t0, t1)`` in a prompt's ids.
* :class:`NeedleBlocks`: a :class:`~gsa.eval.model.PagedRun` observer
  (``observer_factory`` of :func:`gsa.eval.harness.retrieval` / ``_decode_configs``).
* :func:`summarise`: the observer's rows -> per-needle selection rates and ranks.

The script ``benchmarks/vartrack_blocks.py`` runs it on the Qwen vartrack prompts.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from gsa.config import GSAConfig
from gsa.eval import selectors as S
from gsa.hash_codes import key_codes, query_codes
from gsa.policy import GSAPolicy

__all__ = ["token_spans", "NeedleBlocks", "summarise", "SELECTORS"]

SELECTORS = ("gsa", "quest", "oracle")


def token_spans(tok, ids: torch.Tensor, texts: Sequence[str]) -> List[Tuple[int, int]]:
    """Token span ``(t0, t1)`` (``ids[t0:t1]`` covers the text) of each of ``texts``
    (leading / trailing spaces ignored) in the prompt ``ids int64 [T]``: the first
    occurrence in the concatenation of the tokens' own decodings (so character
    offsets map back to tokens exactly). A text that is not found is an error."""
    import bisect
    pieces = [tok.decode([int(i)], skip_special_tokens=False, clean_up_tokenization_spaces=False)
              for i in ids.tolist()]
    starts, pos = [], 0
    for p in pieces:
        starts.append(pos)
        pos += len(p)
    text = "".join(pieces)
    out = []
    for t in texts:
        t = t.strip()
        c0 = text.find(t)
        if c0 < 0:
            raise ValueError(f"token_spans: text {t!r} not found in the prompt")
        c1 = c0 + len(t)
        out.append((bisect.bisect_right(starts, c0) - 1, bisect.bisect_left(starts, c1)))
    return out


def _ranks(scores: torch.Tensor, valid: torch.Tensor, forced: torch.Tensor) -> torch.Tensor:
    """``scores float [NBLK]`` -> ``int64 [NBLK]``: 1-based rank of each valid non-forced
    block in spec 5's order (score descending, ties to the smaller index); 0 for forced
    and invalid blocks."""
    s = scores.double().masked_fill(~valid | forced, -math.inf)
    order = torch.sort(s, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(1, s.numel() + 1)
    return torch.where(valid & ~forced, rank, torch.zeros_like(rank))


class NeedleBlocks:
    """PagedRun observer: for each decode step and sparse layer, the blocks of each
    needle and whether each selector (and the run itself) reads them.

    ``cfg``: the config the GSA scores use (the run's; a Quest run's config has the
    same bits, forced blocks and budget); ``spans``: label -> token span ``(t0, t1)``
    (:func:`token_spans`). :attr:`rows`: one dict per (step, layer, needle, block) with
    ``forced``, ``free`` (non-forced slots), ``<sel>_sel`` / ``<sel>_rank`` for
    ``gsa``, ``quest``, ``oracle``, ``run_sel`` (the run's own selection) and ``mass``
    (the block's share of the layer's exact attention mass, mean over heads).
    ``on_config(name, cfg, selector)`` (called by the harness before each config's
    decode) switches to that config's scores, resets the step count and starts a new
    row list (:attr:`by_config`: name -> rows)."""

    def __init__(self, cfg: GSAConfig, spans: Dict[str, Tuple[int, int]]):
        self.spans = dict(spans)
        self.attn_of = None  # set by the harness: layer -> LayerAttention (the model's scale / softcap)
        self.rows: List[dict] = []
        self.by_config: Dict[str, List[dict]] = {}
        self._set(cfg)

    def _set(self, cfg: GSAConfig) -> None:
        self.cfg, self.policy = cfg, GSAPolicy(cfg, "cpu")
        self._codes: Dict[int, torch.Tensor] = {}  # layer -> key codes of the first rows (keys never change)
        self._step, self._last_layer = -1, None

    def on_config(self, name: str, cfg: GSAConfig, selector: str) -> None:
        """A new config's decode: its scores, a fresh step count and row list
        (:attr:`by_config` keeps each config's rows)."""
        self._set(cfg)
        self.config_name, self.selector = name, selector
        self.rows = []
        self.by_config[name] = self.rows

    def _key_codes(self, layer: int, keys: torch.Tensor) -> torch.Tensor:
        have = self._codes.get(layer)
        m = 0 if have is None else have.shape[0]
        if m < keys.shape[0]:
            new = key_codes(self.cfg, layer, keys[m:])
            have = new if have is None else torch.cat([have, new])
            self._codes[layer] = have
        return have[:keys.shape[0]]

    def __call__(self, layer, step, q, k_cache, v_cache, table, seq_lens, sparse_table, sparse_lens):
        if self._last_layer is None or layer <= self._last_layer:
            self._step += 1
        self._last_layer = layer
        bs = k_cache.shape[1]
        n = int(seq_lens[0])
        nblk = math.ceil(n / bs)
        phys = table[0, :nblk].long()
        keys = k_cache[phys].reshape(nblk * bs, *k_cache.shape[2:])[:n].cpu()
        qc = q.cpu()
        attn = self.attn_of(layer) if self.attn_of is not None else None
        scale, cap = (attn.scale, attn.softcap) if attn is not None else (q.shape[-1] ** -0.5, None)
        seq = torch.tensor([n])
        _, bud, forced = S.budgets_for(self.policy, layer, seq)
        forced = forced[0, :nblk]
        mass = S.block_mass(S.dense_probs(qc, keys, seq, scale, cap), bs)[0]  # [Hq, nblk]
        scores = {"gsa": S.gsa_block_scores(self.cfg, query_codes(self.cfg, layer, qc), self._key_codes(layer, keys),
                                            seq)[0],
                  "quest": S.quest_scores(qc, keys, bs, scale)[0],
                  "oracle": mass.sum(dim=0)}
        valid = torch.ones(nblk, dtype=torch.bool)
        free = min(int(bud[0]), nblk) - int(forced.sum())  # slots left to the scores after the forced blocks
        ranks = {k: _ranks(v, valid, forced) for k, v in scores.items()}
        logical = {int(p): i for i, p in enumerate(phys.tolist())}
        n_read = math.ceil(int(sparse_lens[0]) / bs)
        run_sel = torch.zeros(nblk, dtype=torch.bool)
        run_sel[[logical[int(p)] for p in sparse_table[0, :n_read].tolist()]] = True
        share = mass.mean(dim=0)
        for label, (t0, t1) in self.spans.items():
            for b in range(t0 // bs, (t1 - 1) // bs + 1):
                if b >= nblk:
                    continue
                row = {"step": self._step, "layer": int(layer), "needle": label, "block": b, "n_blocks": nblk,
                       "forced": bool(forced[b]), "free": free, "run_sel": bool(run_sel[b]),
                       "mass": float(share[b])}
                for k in SELECTORS:
                    r = int(ranks[k][b])
                    row[f"{k}_rank"] = r
                    row[f"{k}_sel"] = bool(forced[b]) or r <= free
                self.rows.append(row)

    def summary(self) -> dict:
        """Per needle (JSON-friendly; the harness merges it into the answer's record)."""
        return {"needle_blocks": summarise(self.rows)}


def summarise(rows: Sequence[dict], step: Optional[int] = None) -> Dict[str, dict]:
    """:attr:`NeedleBlocks.rows` (optionally one decode ``step``) -> per needle: its
    blocks, the share of (step, layer, block) rows each selector and the run read it,
    the median non-forced rank per selector (forced rows left out; ``None`` if all are
    forced), the mean mass share, and ``free`` (median free slots)."""
    by: Dict[str, List[dict]] = {}
    for r in rows:
        if step is None or r["step"] == step:
            by.setdefault(r["needle"], []).append(r)
    out = {}
    for label, rs in by.items():
        d = {"blocks": sorted({r["block"] for r in rs}), "rows": len(rs),
             "forced": sum(r["forced"] for r in rs) / len(rs),
             "free": float(torch.tensor([float(r["free"]) for r in rs]).median()),
             "run_read": sum(r["run_sel"] for r in rs) / len(rs),
             "mass": sum(r["mass"] for r in rs) / len(rs)}
        for k in SELECTORS:
            d[f"{k}_read"] = sum(r[f"{k}_sel"] for r in rs) / len(rs)
            rk = [float(r[f"{k}_rank"]) for r in rs if not r["forced"]]
            d[f"{k}_rank_median"] = float(torch.tensor(rk).median()) if rk else None
        out[label] = d
    return out
