"""``gsa train-hash --method mlp``: learn spec-12 MLP hash encoders (HashAttention's recipe).

The LLM stays frozen: its post-RoPE queries and keys are captured once from a dense
pass over training text (:func:`gsa.eval.train.capture`; an Austen novel other than
the eval book Emma, or Shakespeare). Then, for every scoring layer at once (all
layers' heads are one batch of small matrix products, so a step costs one pass):

* **Targets.** For each training query (position ``p``, query head ``j``), its
  ``top`` keys (default 32) by the true logit ``q . k`` among the keys it can see,
  excluding the first and the last ``edge`` tokens (default 128: the sink and the
  local window, which every config selects anyway by ``must_select_blocks``).
* **Encoders.** One key MLP per KV head, one query MLP per query head (spec 12),
  ``D -> F -> .. -> R``, SiLU between layers. Codes are the exact signs in the
  forward pass, with the gradient of ``tanh`` (straight-through, as
  :class:`gsa.eval.train._SignSTE`).
* **Token loss** (``target="top"``). Per step, ``queries`` positions are drawn; each KV head scores
  ``positives`` random keys of each (query, head)'s top set plus ``negatives``
  random visible keys (labels from the full top sets) against every query of its group with
  ``alpha * <c(q), c(k)> / R + bias`` and a BCE on its sigmoid, positives
  up-weighted to balance the negatives (``pos_weight``). Adam.
* **Block loss** (``target="block"``, or ``"top+block"``, the default: the sum of both). What GSA
  selects is blocks, once per layer: a block's score is the best token's
  ``sum_h <sum_g c(q_hg), c(k_h)>`` (spec 4, ``chunk_repre_method "max"``). The block
  loss computes exactly that score (codes of every key the drawn queries see, the
  query code summed over the layer's query heads, divided by ``R Hq``), takes a soft
  block maximum (``logsumexp(kappa x) / kappa`` over the block's causal tokens, ``x =
  tau * score``) and fits a softmax over the query's *unforced* blocks to the exact
  attention mass per block summed over the layer's query heads (the oracle's
  ranking; ``must_select_blocks`` are left out of both, as selection forces them), by
  cross-entropy (:func:`block_loss`). Blocks of ``block`` tokens (32 by default, the
  size where codes differ most); exact masses use the softmax scale ``D ** -0.5`` (no
  softcap). Measured against ``"top"`` in docs/accuracy.md (*A block-level training target*):
  better block selection on Qwen and SmolLM2, at a few times the cost per step (every key the
  drawn queries see is encoded). ``repre="mean"`` trains for spec 4's other block score,
  ``chunk_repre_method "mean"`` (the block's mean token score, ``tau`` times it in the
  softmax); a bundle trained so is meant for configs with that block score
  (docs/accuracy.md, *128-token blocks at equal bytes*).

Initialisation: a 1-layer encoder starts as the seeded random HATA projection
(spec 10; query heads use their KV head's), so it starts from random-HATA codes;
deeper encoders start from PyTorch's default ``Linear`` init with the first layer
divided by the inputs' scale. The result is one safetensors bundle
(:func:`gsa.weights.save_mlp_hash_weights`); a config with
``hash_weight_type: "mlp"`` and ``hash_weight: <bundle>`` loads it.
"""
from __future__ import annotations

import math
import pathlib
import time
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from gsa.eval.train import _SignSTE

__all__ = ["top_key_targets", "block_mass_targets", "block_loss", "MLPStack", "train_mlp_hash",
           "heldout_top_recall", "heldout_block_recall", "TARGETS", "REPRES"]

TARGETS = ("top", "block", "top+block")
REPRES = ("max", "mean")  # spec 4 block scores (chunk_repre_method)
_MASKED = -1e4  # masked scores (|tau kappa score| <= 80 for the defaults)


def top_key_targets(q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor, top: int = 32,
                    edge: int = 128) -> torch.Tensor:
    """``q [T, Hq, D]``, ``k [T, Hkv, D]`` of one layer, query positions ``pos [N]``
    (each ``>= 2 * edge + top``) -> ``int64 [N, Hq, top]``: per query and head, the
    indices of its ``top`` keys by true logit among positions ``[edge, p - edge]``."""
    t, hq, d = q.shape
    hkv = k.shape[1]
    g = hq // hkv
    qs = q[pos].float().reshape(len(pos), hkv, g, d)
    logits = torch.einsum("nhgd,thd->nhgt", qs, k.float()).reshape(len(pos), hq, t)
    tok = torch.arange(t)
    allowed = (tok.unsqueeze(0) >= edge) & (tok.unsqueeze(0) <= (pos - edge).unsqueeze(1))  # [N, T]
    logits = logits.masked_fill(~allowed.unsqueeze(1), -math.inf)
    return logits.topk(top, dim=-1).indices


def block_mass_targets(q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor, block: int,
                       scale: Optional[float] = None, chunk: int = 128) -> torch.Tensor:
    """``q [T, Hq, D]``, ``k [T, Hkv, D]`` of one layer, query positions ``pos [N]`` ->
    ``float32 [N, ceil(T / block)]``: each query's exact softmax attention (scale
    ``D ** -0.5`` unless given) over keys ``0..p``, summed per block of ``block`` tokens
    and over the layer's ``Hq`` query heads (the oracle's block ranking; rows sum to Hq)."""
    t, hq, d = q.shape
    hkv = k.shape[1]
    g = hq // hkv
    scale = d ** -0.5 if scale is None else scale
    nblk = math.ceil(t / block)
    out = torch.empty(len(pos), nblk)
    kf = k.float()
    tok = torch.arange(t)
    for c0 in range(0, len(pos), chunk):
        p = pos[c0:c0 + chunk]
        qs = q[p].float().reshape(len(p), hkv, g, d)
        logits = torch.einsum("nhgd,thd->nhgt", qs, kf) * scale
        causal = (tok.unsqueeze(0) <= p.unsqueeze(1)).view(len(p), 1, 1, t)
        probs = torch.softmax(logits.masked_fill(~causal, -math.inf), dim=-1).sum(dim=(1, 2))  # [n, T]
        out[c0:c0 + chunk] = F.pad(probs, (0, nblk * block - t)).reshape(len(p), nblk, block).sum(dim=2)
    return out


def _block_masks(n_blocks: torch.Tensor, nblk: int, forced: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """``bool [P, NBLK]`` masks for queries with ``n_blocks [P]`` blocks: ``inside`` (the
    query's own blocks) and ``is_forced`` (spec 5's ``forced`` blocks among them; negative
    entries count from each query's last block)."""
    cols = torch.arange(nblk).unsqueeze(0)
    inside = cols < n_blocks.unsqueeze(1)
    is_forced = torch.zeros_like(inside)
    for m in forced:
        idx = torch.full_like(n_blocks, m) if m >= 0 else n_blocks + m
        is_forced |= cols == idx.unsqueeze(1)
    return inside, is_forced & inside


def block_loss(score: torch.Tensor, pos: torch.Tensor, mass: torch.Tensor, block: int,
               forced: Sequence[int] = (0, -2, -1), tau: float = 20.0, kappa: float = 4.0,
               repre: str = "max") -> torch.Tensor:
    """Block-level loss of GSA token scores: ``score [L, P, S]`` (the spec-4 token score
    of each query at positions ``pos [P]`` against keys ``0..S-1``, scaled to [-1, 1]),
    ``mass [L, P, NBLK >= ceil(S / block)]`` (:func:`block_mass_targets`) -> scalar.

    Per (layer, query): the block score for ``repre`` (spec 4's ``chunk_repre_method``):
    ``"max"``, the soft block maximum ``logsumexp(kappa tau s) / kappa`` over the block's
    causal tokens; ``"mean"``, ``tau`` times their mean (exact; ``kappa`` unused); then
    a log-softmax over the query's blocks that are neither
    past its position nor forced (``forced``: spec-5 ``must_select_blocks``, relative to
    its ``n_blocks = ceil((p + 1) / block)``), and the cross-entropy against its exact
    mass renormalised over the same blocks; mean over (layer, query). A query with
    fewer than two such blocks contributes nothing."""
    nl, p_, s = score.shape
    nblk = math.ceil(s / block)
    causal = torch.arange(s).unsqueeze(0) <= pos.unsqueeze(1)  # [P, S]
    # large finite, not -inf, for masked tokens: an all-masked block's logsumexp would
    # otherwise back-propagate NaN (exp(-inf - -inf)) even where its loss weight is 0
    if repre == "max":
        x = (tau * kappa * score).masked_fill(~causal.unsqueeze(0), _MASKED)
        x = F.pad(x, (0, nblk * block - s), value=_MASKED).reshape(nl, p_, nblk, block)
        bscore = torch.logsumexp(x, dim=3) / kappa  # [L, P, NBLK]
    elif repre == "mean":
        pad = (0, nblk * block - s)
        total = F.pad((tau * score).masked_fill(~causal.unsqueeze(0), 0.0), pad).reshape(nl, p_, nblk, block).sum(dim=3)
        count = F.pad(causal, pad).reshape(p_, nblk, block).sum(dim=2).clamp(min=1)  # [P, NBLK]
        bscore = total / count.unsqueeze(0)
    else:
        raise ValueError(f"block_loss: repre must be one of {REPRES}, got {repre!r}")
    n_blocks = (pos + block) // block  # ceil((p + 1) / block)
    inside, is_forced = _block_masks(n_blocks, nblk, forced)
    free = inside & ~is_forced  # [P, NBLK]
    ok = free.sum(dim=1) >= 2  # [P]
    free = free & ok.unsqueeze(1)
    tgt = mass[..., :nblk] * free
    tgt = tgt / tgt.sum(dim=2, keepdim=True).clamp(min=1e-12)
    logp = torch.log_softmax(bscore.masked_fill(~free, _MASKED), dim=2).masked_fill(~free, 0.0)
    n = (ok.sum() * nl).clamp(min=1)
    return -(tgt * logp).sum() / n


class MLPStack(torch.nn.Module):
    """``H`` independent MLPs ``D -> F -> .. -> R`` (SiLU between layers) as batched
    parameters ``w[i] [H, in_i, out_i]``, ``b[i] [H, out_i]``; ``forward(x [H, N, D])``
    -> ``[H, N, R]`` in fp32 (spec 12's arithmetic, the layout of its weight tensors)."""

    def __init__(self, heads: int, dim: int, hidden: int, bits: int, depth: int, in_scale: torch.Tensor,
                 init_linear: Optional[torch.Tensor] = None, gen: Optional[torch.Generator] = None):
        super().__init__()
        widths = [dim] + [hidden] * (depth - 1) + [bits]
        self.w = torch.nn.ParameterList()
        self.b = torch.nn.ParameterList()
        for i in range(depth):
            bound = 1 / math.sqrt(widths[i])
            w = (torch.rand(heads, widths[i], widths[i + 1], generator=gen) * 2 - 1) * bound
            b = (torch.rand(heads, widths[i + 1], generator=gen) * 2 - 1) * bound
            if i == 0:
                w = w / in_scale.view(-1, 1, 1)  # inputs of any scale start in SiLU's curved range
            self.w.append(torch.nn.Parameter(w))
            self.b.append(torch.nn.Parameter(b))
        if depth == 1 and init_linear is not None:  # start at the random HATA projection
            self.w[0].data.copy_(init_linear)
            self.b[0].data.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x
        for i, (w, b) in enumerate(zip(self.w, self.b)):
            a = torch.baddbmm(b.unsqueeze(1), a, w)
            if i < len(self.w) - 1:
                a = F.silu(a)
        return a


def _top_loss(kmlp, qmlp, bias, qs, ks, tgt, pick, pos, nl, hkv, g, t, d, bits, queries, positives, negatives,
              top, edge, alpha, beta, max_pos_weight, gen) -> torch.Tensor:
    """The ``target="top"`` BCE of one step (module docstring): ``positives`` of each
    (query, head)'s top keys plus ``negatives`` random visible keys, scored against
    every query of the KV head's group."""
    pos_keys = tgt[:, pick].reshape(nl, queries, hkv, g, top).permute(0, 2, 1, 3, 4)  # [nL, Hkv, P, G, top]
    # keys scored this step: `positives` of each (query, head)'s top keys, plus random visible keys
    sub = torch.rand(nl, hkv, queries, g, top, generator=gen).argsort(dim=-1)[..., :positives]
    some_pos = torch.gather(pos_keys, 4, sub).reshape(nl, hkv, -1)
    neg = torch.randint(edge, int(pos.max()) - edge + 1, (nl, hkv, negatives), generator=gen)
    kidx = torch.cat([some_pos, neg], dim=2).reshape(nl * hkv, -1)  # [B, K]
    kx = torch.gather(ks, 1, kidx.unsqueeze(-1).expand(-1, -1, d))  # [B, K, D]
    qx = qs[:, pos]  # [nL*Hq, P, D]
    ck = _SignSTE.apply(kmlp(kx), beta)  # [B, K, R]
    cq = _SignSTE.apply(qmlp(qx), beta).reshape(nl * hkv, g, queries, bits)  # [B, G, P, R]
    sim = torch.einsum("bgpr,bkr->bgpk", cq, ck) / bits
    # labels from the full top sets (a sampled key may be a positive of several queries)
    marks = torch.zeros(nl * hkv, g, queries, t, dtype=torch.bool)
    marks.scatter_(3, pos_keys.reshape(nl * hkv, queries, g, top).transpose(1, 2), True)
    label = torch.gather(marks, 3, kidx.view(nl * hkv, 1, 1, -1).expand(-1, g, queries, -1)).float()  # [B, G, P, K]
    valid = ((kidx.unsqueeze(1) >= edge) & (kidx.unsqueeze(1) <= (pos - edge).view(1, -1, 1))).unsqueeze(1)
    valid = valid.expand_as(label).float()
    n_pos = (label * valid).sum().clamp(min=1)
    pw = ((valid.sum() - n_pos) / n_pos).clamp(max=max_pos_weight)
    loss = F.binary_cross_entropy_with_logits(alpha * sim + bias, label, pos_weight=pw, reduction="none")
    return (loss * valid).sum() / valid.sum()


def _progress(total: int, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, leave=False)


def heldout_top_recall(codes_q: torch.Tensor, codes_k: torch.Tensor, targets: torch.Tensor, pos: torch.Tensor,
                       g: int, edge: int = 128, ratio: float = 0.125) -> float:
    """Share of the true top keys (``targets [N, Hq, top]``) that a query's code ranks in
    its top ``ratio`` of the allowed keys: ``codes_q [N, Hq, R]``, ``codes_k [T, Hkv, R]``
    (+-1 floats), one layer. A cheap, token-level check of an encoder on held-out queries."""
    n, hq, r = codes_q.shape
    t = codes_k.shape[0]
    kk = codes_k.repeat_interleave(g, dim=1)  # [T, Hq, R]
    sim = torch.einsum("nhr,thr->nht", codes_q, kk)
    tok = torch.arange(t)
    allowed = (tok.unsqueeze(0) >= edge) & (tok.unsqueeze(0) <= (pos - edge).unsqueeze(1))
    sim = sim.masked_fill(~allowed.unsqueeze(1), -math.inf)
    n_allowed = allowed.sum(dim=1)
    budget = torch.ceil(ratio * n_allowed.double()).long().clamp(min=1)  # [N]
    top_vals = sim.topk(int(budget.max()), dim=-1).values  # [N, Hq, max budget], descending
    kth = torch.gather(top_vals, 2, (budget - 1).view(-1, 1, 1).expand(n, hq, 1))  # the budget-th best score
    hit = torch.gather(sim, 2, targets) >= kth  # ties at the threshold count as kept (both encoders alike)
    return float(hit.float().mean())


def heldout_block_recall(codes_q: torch.Tensor, codes_k: torch.Tensor, mass: torch.Tensor, pos: torch.Tensor,
                         block: int, forced: Sequence[int] = (0, -2, -1), ratio: float = 0.125,
                         repre: str = "max") -> float:
    """Layer-level selection check on held-out queries: ``codes_q [N, Hq, R]``, ``codes_k
    [T, Hkv, R]`` (+-1 floats, one layer), exact block masses ``mass [N, NBLK]``
    (:func:`block_mass_targets`, summed over the ``Hq`` heads). Each query selects, as
    GSA does (spec 4 token score, block ``repre`` = max or mean over its causal tokens,
    spec 5/8 budget), its ``forced`` blocks plus
    the best others up to ``max(ceil(ratio * n_blocks), n_forced)`` blocks (ties to the
    smaller index); returns the mean share of the exact attention mass selected."""
    n, hq, r = codes_q.shape
    t, hkv, _ = codes_k.shape
    qsum = codes_q.reshape(n, hkv, hq // hkv, r).sum(dim=2)
    tok = torch.einsum("nhr,thr->nt", qsum, codes_k)
    causal = torch.arange(t).unsqueeze(0) <= pos.unsqueeze(1)
    nblk = math.ceil(t / block)
    pad = (0, nblk * block - t)
    if repre == "max":
        bmax = F.pad(tok.masked_fill(~causal, -math.inf), pad, value=-math.inf).reshape(n, nblk, block).amax(dim=2)
    elif repre == "mean":  # integer sums (exact), float32 division as spec 4
        total = F.pad(tok.double().masked_fill(~causal, 0.0), pad).reshape(n, nblk, block).sum(dim=2)
        count = F.pad(causal, pad).reshape(n, nblk, block).sum(dim=2)
        bmax = (total.float() / count.clamp(min=1).float()).masked_fill(count == 0, -math.inf)
    else:
        raise ValueError(f"heldout_block_recall: repre must be one of {REPRES}, got {repre!r}")
    n_blocks = (pos + block) // block
    cols = torch.arange(nblk).unsqueeze(0)
    inside, is_forced = _block_masks(n_blocks, nblk, forced)
    n_forced = is_forced.sum(dim=1)
    budget = torch.maximum(torch.ceil(ratio * n_blocks.double()).long(), n_forced)
    take = torch.minimum(budget, n_blocks) - n_forced
    sc = bmax.double().masked_fill(is_forced | ~inside, -math.inf)
    order = torch.sort(sc, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, cols.expand(n, -1).contiguous())
    picked = is_forced | ((rank < take.unsqueeze(1)) & inside)
    return float(((mass[:, :nblk] * picked).sum(dim=1) / mass[:, :nblk].sum(dim=1)).mean())


def _stack(store: Dict[int, tuple], layers: Sequence[int]):
    """``[len(layers) * H, T, D]`` stacks of queries and keys (layer-major, then head)."""
    qs = torch.cat([store[l][0].float().permute(1, 0, 2) for l in layers])
    ks = torch.cat([store[l][1].float().permute(1, 0, 2) for l in layers])
    return qs.contiguous(), ks.contiguous()


def train_mlp_hash(cfg, store: Dict[int, tuple], bits: int, out: pathlib.Path, depth: int = 3, hidden: int = 128,
                   steps: int = 300, queries: int = 8, positives: int = 4, negatives: int = 64, top: int = 32, edge: int = 128,
                   lr: float = 1e-3, alpha: float = 10.0, beta: float = 1.0, max_pos_weight: float = 30.0,
                   n_train: int = 1024, seed: int = 0, layers: Optional[Sequence[int]] = None,
                   target: str = "top+block", block: int = 32, tau: float = 20.0, kappa: float = 4.0,
                   block_weight: float = 1.0, repre: str = "max", log=print) -> dict:
    """Train spec-12 encoders for ``cfg``'s scoring layers (or ``layers``) on captured
    ``store = {layer: (q [T, Hq, D], k [T, Hkv, D])}`` and save the bundle at ``out``.

    ``target``: ``"top"`` (BCE on each query's top keys), ``"block"`` (the block loss,
    :func:`block_loss` with ``block``, ``tau``, ``kappa``, ``repre`` (the block score it is
    trained for: ``"max"``, GSA's default, or ``"mean"``) and the config's
    ``must_select_blocks``) or ``"top+block"`` (BCE + ``block_weight`` x block loss).
    Training queries come from the first 3/4 of the captured positions, held-out ones
    from the last quarter; returns ``{"layers", "heldout": {layer: (random_hata, mlp)}, "heldout_block": (the same),
    "seconds"}`` where held-out scores are :func:`heldout_top_recall` (ratio 1/8)."""
    from gsa.eval.model import eval_config
    from gsa.eval.selectors import unpack_signs
    from gsa.weights import MLPHashWeights, load_hash_weights, save_mlp_hash_weights
    from gsa import ops

    if target not in TARGETS:
        raise ValueError(f"train_mlp_hash: target must be one of {TARGETS}, got {target!r}")
    if repre not in REPRES:
        raise ValueError(f"train_mlp_hash: repre must be one of {REPRES}, got {repre!r}")
    for name, v, ok, want in (("block", block, isinstance(block, int) and block > 0, "a positive int"),
                              ("tau", tau, tau > 0, "> 0"), ("kappa", kappa, kappa > 0, "> 0"),
                              ("block_weight", block_weight, block_weight >= 0, ">= 0"),
                              ("queries", queries, isinstance(queries, int) and queries > 0, "a positive int")):
        if not ok:
            raise ValueError(f"train_mlp_hash: {name} must be {want}, got {v!r}")
    t0 = time.time()
    gen = torch.Generator().manual_seed(seed)
    hq, hkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    g = hq // hkv
    if layers is None:
        layers = [l for l in range(cfg.num_hidden_layers) if cfg.top_k_ratio_per_layer[l] < 1
                  and (cfg.top_k_index_reuse is None or cfg.top_k_index_reuse[l] < 0)]
    layers = list(layers)
    t = store[layers[0]][0].shape[0]
    lo = 2 * edge + top
    split = lo + 3 * (t - lo) // 4
    if split - lo < queries:
        raise ValueError(f"train-hash --method mlp: {t} captured tokens leave no training queries past "
                         f"2*edge+top = {lo}; capture more tokens")
    train_pos = torch.randint(lo, split, (n_train,), generator=gen)
    val_pos = torch.arange(split, t, max(1, (t - split) // 32))
    qs, ks = _stack(store, layers)  # [nL*Hq, T, D], [nL*Hkv, T, D]
    tgt = torch.stack([top_key_targets(store[l][0], store[l][1], train_pos, top, edge) for l in layers])  # [nL, N, Hq, top]
    use_top, use_block = target in ("top", "top+block"), target in ("block", "top+block")
    if use_block:  # exact per-block attention mass of every training query, summed over the layer's heads
        bmass = torch.stack([block_mass_targets(store[l][0], store[l][1], train_pos, block) for l in layers])
    cfg_b = eval_config(cfg, bits=bits, threshold=None)
    init = None
    if depth == 1:
        w0 = torch.cat([load_hash_weights(cfg_b, l) for l in layers])  # [nL*Hkv, D, R]
        init = (w0, w0.repeat_interleave(g, dim=0))
    kmlp = MLPStack(len(layers) * hkv, d, hidden, bits, depth, ks.std(dim=(1, 2)).clamp(min=1e-6),
                    None if init is None else init[0], gen)
    qmlp = MLPStack(len(layers) * hq, d, hidden, bits, depth, qs.std(dim=(1, 2)).clamp(min=1e-6),
                    None if init is None else init[1], gen)
    bias = torch.nn.Parameter(torch.zeros(len(layers) * hkv, 1, 1, 1))
    opt = torch.optim.Adam([*kmlp.parameters(), *qmlp.parameters(), bias], lr=lr)
    nl = len(layers)
    bar = _progress(steps, f"train mlp{depth} b{bits}")
    for step in range(steps):
        pick = torch.randint(0, n_train, (queries,), generator=gen)
        pos = train_pos[pick]  # [P]
        loss = torch.zeros(())
        if use_top:
            loss = loss + _top_loss(kmlp, qmlp, bias, qs, ks, tgt, pick, pos, nl, hkv, g, t, d, bits, queries, positives,
                                    negatives, top, edge, alpha, beta, max_pos_weight, gen)
        if use_block:
            s_max = int(pos.max()) + 1  # keys any drawn query sees
            ck = _SignSTE.apply(kmlp(ks[:, :s_max]), beta).reshape(nl, hkv, s_max, bits)
            cq = _SignSTE.apply(qmlp(qs[:, pos]), beta).reshape(nl, hkv, g, queries, bits).sum(dim=2)  # [nL, Hkv, P, R]
            score = torch.einsum("lhpr,lhsr->lps", cq, ck) / (bits * hkv * g)  # spec-4 token score in [-1, 1]
            lb = block_loss(score, pos, bmass[:, pick], block, cfg.must_select_blocks, tau, kappa, repre)
            loss = loss + (block_weight if use_top else 1.0) * lb
        opt.zero_grad()
        loss.backward()
        opt.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        elif step % 50 == 0 or step == steps - 1:
            log(f"  step {step}: loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    if bar is not None:
        bar.close()
    # per-layer tensors (layer-major head blocks) -> the bundle
    per_layer: Dict[int, MLPHashWeights] = {}
    for i, l in enumerate(layers):
        kw = tuple(w.detach()[i * hkv:(i + 1) * hkv].contiguous() for w in kmlp.w)
        kb = tuple(b.detach()[i * hkv:(i + 1) * hkv].contiguous() for b in kmlp.b)
        qw = tuple(w.detach()[i * hq:(i + 1) * hq].contiguous() for w in qmlp.w)
        qb = tuple(b.detach()[i * hq:(i + 1) * hq].contiguous() for b in qmlp.b)
        per_layer[l] = MLPHashWeights(kw, kb, qw, qb)
    # held-out check: the exact ops' codes (spec 12 and spec 2) on the last quarter's queries
    heldout, heldout_block = {}, {}
    for l in layers:
        q, k = store[l][0].float(), store[l][1].float()
        vt = top_key_targets(q, k, val_pos, top, edge)
        m = per_layer[l]
        mq = unpack_signs(ops.mlp_hash_encode(q[val_pos].contiguous(), m.query_weights, m.query_biases))
        mk = unpack_signs(ops.mlp_hash_encode(k.contiguous(), m.key_weights, m.key_biases))
        w = load_hash_weights(cfg_b, l)
        rq = unpack_signs(ops.hash_encode(q[val_pos].contiguous(), w))
        rk = unpack_signs(ops.hash_encode(k.contiguous(), w))
        heldout[l] = (heldout_top_recall(rq, rk, vt, val_pos, g, edge), heldout_top_recall(mq, mk, vt, val_pos, g, edge))
        vm = block_mass_targets(q, k, val_pos, block)
        heldout_block[l] = (heldout_block_recall(rq, rk, vm, val_pos, block, cfg.must_select_blocks, repre=repre),
                            heldout_block_recall(mq, mk, vm, val_pos, block, cfg.must_select_blocks, repre=repre))
    mean_r = sum(v[0] for v in heldout.values()) / len(heldout)
    mean_m = sum(v[1] for v in heldout.values()) / len(heldout)
    mean_br = sum(v[0] for v in heldout_block.values()) / len(heldout_block)
    mean_bm = sum(v[1] for v in heldout_block.values()) / len(heldout_block)
    save_mlp_hash_weights(out, per_layer, metadata={
        "model_name": cfg.model_name, "hash_bits": bits, "depth": depth, "hidden": hidden, "steps": steps,
        "recipe": ("HashAttention-style: top-32 targets (edge 128), weighted BCE, sign STE, Adam (gsa.eval.train_mlp)"
                   if target == "top" else f"gsa.eval.train_mlp target={target}: block loss (block {block}, tau {tau}, "
                   f"kappa {kappa}{', weight %g' % block_weight if use_top else ''}, block score {repre}), sign STE, Adam, lr {lr}"),
        "target": target, "block_repre": repre,
        "trained_layers": ",".join(map(str, layers)),
        "heldout_top_recall_random_mlp": ",".join(f"{l}:{a:.4f}:{b:.4f}" for l, (a, b) in heldout.items()),
        "heldout_block_recall_random_mlp": ",".join(f"{l}:{a:.4f}:{b:.4f}" for l, (a, b) in heldout_block.items())})
    secs = time.time() - t0
    log(f"  mlp{depth} b{bits}: held-out top-{top} recall at 1/8 of keys: random HATA {mean_r:.3f}, "
        f"MLP {mean_m:.3f}; block mass recall at 1/8 ({block}-token blocks, block {repre}): random {mean_br:.3f}, MLP {mean_bm:.3f} "
        f"({secs:.0f}s) -> {out}")
    return {"layers": layers, "heldout": heldout, "heldout_block": heldout_block, "seconds": secs,
            "final_loss": float(loss.detach())}
