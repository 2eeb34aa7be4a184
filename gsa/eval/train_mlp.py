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
* **Loss.** Per step, ``queries`` positions are drawn; each KV head scores
  ``positives`` random keys of each (query, head)'s top set plus ``negatives``
  random visible keys (labels from the full top sets) against every query of its group with
  ``alpha * <c(q), c(k)> / R + bias`` and a BCE on its sigmoid, positives
  up-weighted to balance the negatives (``pos_weight``). Adam.

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
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from gsa.eval.train import _SignSTE

__all__ = ["top_key_targets", "MLPStack", "train_mlp_hash", "heldout_top_recall"]


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


def _stack(store: Dict[int, tuple], layers: Sequence[int]):
    """``[len(layers) * H, T, D]`` stacks of queries and keys (layer-major, then head)."""
    qs = torch.cat([store[l][0].float().permute(1, 0, 2) for l in layers])
    ks = torch.cat([store[l][1].float().permute(1, 0, 2) for l in layers])
    return qs.contiguous(), ks.contiguous()


def train_mlp_hash(cfg, store: Dict[int, tuple], bits: int, out: pathlib.Path, depth: int = 3, hidden: int = 128,
                   steps: int = 300, queries: int = 8, positives: int = 4, negatives: int = 64, top: int = 32, edge: int = 128,
                   lr: float = 1e-3, alpha: float = 10.0, beta: float = 1.0, max_pos_weight: float = 30.0,
                   n_train: int = 1024, seed: int = 0, layers: Optional[Sequence[int]] = None, log=print) -> dict:
    """Train spec-12 encoders for ``cfg``'s scoring layers (or ``layers``) on captured
    ``store = {layer: (q [T, Hq, D], k [T, Hkv, D])}`` and save the bundle at ``out``.

    Training queries come from the first 3/4 of the captured positions, held-out ones
    from the last quarter; returns ``{"layers", "heldout": {layer: (random_hata, mlp)},
    "seconds"}`` where held-out scores are :func:`heldout_top_recall` (ratio 1/8)."""
    from gsa.eval.model import eval_config
    from gsa.eval.selectors import unpack_signs
    from gsa.weights import MLPHashWeights, load_hash_weights, save_mlp_hash_weights
    from gsa import ops

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
        loss = (loss * valid).sum() / valid.sum()
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
    heldout = {}
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
    mean_r = sum(v[0] for v in heldout.values()) / len(heldout)
    mean_m = sum(v[1] for v in heldout.values()) / len(heldout)
    save_mlp_hash_weights(out, per_layer, metadata={
        "model_name": cfg.model_name, "hash_bits": bits, "depth": depth, "hidden": hidden, "steps": steps,
        "recipe": "HashAttention-style: top-32 targets (edge 128), weighted BCE, sign STE, Adam (gsa.eval.train_mlp)",
        "trained_layers": ",".join(map(str, layers)),
        "heldout_top_recall_random_mlp": ",".join(f"{l}:{a:.4f}:{b:.4f}" for l, (a, b) in heldout.items())})
    secs = time.time() - t0
    log(f"  mlp{depth} b{bits}: held-out top-{top} recall at 1/8 of keys: random HATA {mean_r:.3f}, "
        f"MLP {mean_m:.3f} ({secs:.0f}s) -> {out}")
    return {"layers": layers, "heldout": heldout, "seconds": secs, "final_loss": float(loss.detach())}
