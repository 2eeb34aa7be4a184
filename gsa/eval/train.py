"""``gsa train-hash``: learn hash projections with HATA's learning-to-hash recipe.

1. Capture post-RoPE queries and keys of every layer from a dense pass of the
   model over training text (Shakespeare by default, or an Austen novel other
   than the harness's eval book Emma: always disjoint from the eval text).
2. Per layer and per KV head, learn ``W [D, R]`` (started from the seeded random
   projection): codes are the exact signs in the forward pass, with the gradient
   of ``tanh(beta x)`` (straight-through), and three losses:

   * similarity: for each sampled query, a softmax over the key blocks it can see
     of the (soft) block maximum of ``tau * <c(q), c(k)> / (R G)`` is fitted to the
     query's exact attention mass per block: its top-attended keys are pulled
     toward its code, the rest pushed away. The query's code is the sum over its
     group's heads, as in the GSA score (spec 4); blocks, because GSA selects blocks.
   * bit balance: every bit's mean over the keys (and queries) is pushed to 0.
   * decorrelation: ``|| W_n^T W_n - I ||^2`` on the column-normalised projection.

3. Validate each head on held-out queries of the training text (the last
   quarter) and, by default, keep the trained projection only where it beats
   the random one there.
4. Save one safetensors bundle in :mod:`gsa.weights`' naming (``layers.{l}.hash_weight``
   ``[Hkv, D, R]``); layers that never score keep their random projection.
   A config with ``hash_weight_type: "file"`` and ``hash_weight: <bundle>`` loads it.

Train on at least as many tokens as the positions the bundle will serve (default
8192): Qwen bundles trained on 4096 tokens gained +0.10 on held-out training text
and nothing on Emma at positions 4K-6K; trained on 8192 they beat random there.

History: the first recipe (plain ``tanh`` relaxation, token-level targets, 40
steps at lr 1e-2) made selection worse than random on every layer tried; see
docs/accuracy.md for what this one measures.
"""
from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time
from typing import Dict, Optional

import torch
import torch.nn.functional as F

__all__ = ["capture", "train_head", "head_recall", "train_hash", "add_arguments", "run"]


def capture(model, tok, text: str, n_tokens: int) -> Dict[int, tuple]:
    """Dense pass over the first ``n_tokens`` tokens of ``text``; returns
    ``{layer: (q float32 [T, Hq, D], k float32 [T, Hkv, D])}`` (post-RoPE)."""
    from gsa.eval.model import TeacherForcedRun
    from gsa.eval.load import encode_text
    ids = encode_text(tok, text, n_tokens)  # after the tokenizer's BOS when it adds one, as the harness
    store: Dict[int, tuple] = {}

    def obs(layer, q, k_all, v_all, pos0):
        qs = store.get(layer, (None,))[0]
        store[layer] = (q.float() if qs is None else torch.cat([qs, q.float()]), k_all.float())

    run = TeacherForcedRun(model, observer=obs)
    for c0 in range(0, ids.shape[0], 1024):
        run.feed(ids[c0:c0 + 1024], logits="last")
    return store


class _SignSTE(torch.autograd.Function):
    """Forward: the exact code sign (+-1, ``x >= 0`` -> +1 as the hash's bit rule);
    backward: the gradient of ``tanh(beta x)``. Training sees the codes it will be
    judged on; a plain ``tanh`` relaxation at low ``beta`` is nearly linear, and
    its optimum (``W W^T`` reshaped to fit a softmax) is not the sign code's."""

    @staticmethod
    def forward(ctx, x, beta):
        ctx.save_for_backward(x)
        ctx.beta = beta
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        t = torch.tanh(ctx.beta * x)
        return grad * ctx.beta * (1 - t * t), None


def _targets(q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor, block: int):
    """Exact attention of queries ``q [N, G, D]`` at positions ``pos [N]`` over
    ``k [T, D]``: ``(token probs [N, T] (mean over the group), block mass [N, NBLK],
    causal bool [N, T], block valid bool [N, NBLK])``."""
    t, d = k.shape
    logits = torch.einsum("ngd,td->ngt", q, k) * d ** -0.5
    causal = torch.arange(t).unsqueeze(0) <= pos.unsqueeze(1)
    probs = torch.softmax(logits.masked_fill(~causal.unsqueeze(1), -math.inf), dim=-1).mean(dim=1)
    nblk = math.ceil(t / block)
    mass = F.pad(probs, (0, nblk * block - t)).reshape(len(pos), nblk, block).sum(dim=2)
    bvalid = (torch.arange(nblk) * block).unsqueeze(0) <= pos.unsqueeze(1)
    return probs, mass, causal, bvalid


def train_head(q: torch.Tensor, k: torch.Tensor, w0: torch.Tensor, steps: int = 150, n_queries: int = 256,
               block: int = 32, lr: float = 1e-3, tau: float = 20.0, beta: float = 3.0, balance: float = 0.05,
               decor: float = 0.05, query_range: Optional[tuple] = None, seed: int = 0) -> torch.Tensor:
    """One KV head: ``q [T, G, D]`` (its group's query heads), ``k [T, D]``, start
    ``w0 [D, R]`` -> trained ``float32 [D, R]``.

    Similarity loss (block level, as selection is): for each sampled query, a
    softmax over the key blocks it can see of a soft block maximum of
    ``tau * <c(q), c(k)> / (R G)`` is fitted to the query's exact attention mass per
    block (cross-entropy): top-attended blocks are pulled toward the query's code,
    the rest pushed away. Codes use :class:`_SignSTE`. Plus HATA's bit balance
    (each bit's mean over keys and queries -> 0) and decorrelation
    (``|| W_n^T W_n - I ||^2`` of the column-normalised projection). Queries are
    sampled from positions ``query_range`` (default ``[T/4, T)``)."""
    gen = torch.Generator().manual_seed(seed)
    t, g, d = q.shape
    r = w0.shape[1]
    lo, hi = query_range or (t // 4, t)
    pos = torch.randint(lo, hi, (n_queries,), generator=gen)
    qs = q[pos]  # [N, G, D]
    _, target, causal, bvalid = _targets(qs, k, pos, block)
    nblk = target.shape[1]
    sigma_k = (k @ w0).std().clamp(min=1e-6)
    sigma_q = (qs.reshape(-1, d) @ w0).std().clamp(min=1e-6)
    w = torch.nn.Parameter(w0.clone())
    opt = torch.optim.Adam([w], lr=lr)
    eye = torch.eye(r)
    for _ in range(steps):
        ck = _SignSTE.apply((k @ w) / sigma_k, beta)  # [T, R]
        cq_all = _SignSTE.apply((qs @ w) / sigma_q, beta)  # [N, G, R]
        sim = cq_all.sum(dim=1) @ ck.T / (r * g)  # [N, T]: the GSA token score, scaled to [-1, 1]
        x = F.pad((tau * sim).masked_fill(~causal, -math.inf), (0, nblk * block - t), value=-math.inf)
        bscore = torch.logsumexp(4 * x.reshape(len(pos), nblk, block), dim=2) / 4  # soft block max
        logp = torch.log_softmax(bscore.masked_fill(~bvalid, -math.inf), dim=1)
        l_sim = -(target * logp.masked_fill(~bvalid, 0)).sum(dim=1).mean()
        l_bal = ck.mean(dim=0).pow(2).mean() + cq_all.reshape(-1, r).mean(dim=0).pow(2).mean()
        wn = w / w.norm(dim=0, keepdim=True)
        l_dec = (wn.T @ wn - eye).pow(2).sum() / r
        loss = l_sim + balance * l_bal + decor * l_dec
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach().float()


def head_recall(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, pos: torch.Tensor, block: int = 32,
                ratio: float = 0.125, threshold: Optional[torch.Tensor] = None) -> float:
    """Validation score of one head's projection ``w [D, R]``: mean attention mass
    (``q [T, G, D]``, ``k [T, D]``, queries at ``pos [N]``) inside the top
    ``ceil(ratio * n_blocks)`` blocks ranked by the exact GSA score (``gsa.ops.hash_encode``
    codes, block max) -- the selection metric of the harness, for one head, no forced blocks.
    ``threshold [R]``: spec 13's key threshold (keys only), or ``None``."""
    from gsa import ops
    from gsa.eval.selectors import unpack_signs
    _, mass, causal, bvalid = _targets(q[pos], k, pos, block)
    qc = unpack_signs(ops.hash_encode(q[pos].contiguous(), w.contiguous())).sum(dim=1)  # [N, R]
    kc = unpack_signs(ops.hash_encode(k.contiguous(), w.contiguous(), threshold))  # [T, R]
    tok = (qc @ kc.T).masked_fill(~causal, -math.inf)
    nblk = mass.shape[1]
    bmax = F.pad(tok, (0, nblk * block - tok.shape[1]), value=-math.inf).reshape(len(pos), nblk, block).amax(dim=2)
    n_valid = bvalid.sum(dim=1)
    budget = torch.ceil(ratio * n_valid.double()).long().clamp(min=1)
    order = torch.sort(bmax.double(), dim=1, descending=True, stable=True).indices
    take = torch.arange(nblk).unsqueeze(0) < budget.unsqueeze(1)
    picked = torch.zeros_like(bvalid).scatter_(1, order, take)
    return float((mass * picked).sum(dim=1).mean())


def train_hash(model, tok, cfg, text: str, bits: int, out: pathlib.Path, n_tokens: int = 8192,
               steps: int = 150, captured: Optional[dict] = None, gate: bool = True, log=print) -> pathlib.Path:
    """Train every scoring layer's ``[Hkv, D, R]`` projection at ``bits`` bits and save a bundle.

    Queries from the middle half of the captured text (positions ``[T/4, 3T/4)``,
    each seeing every earlier key) train; the last quarter validates
    (:func:`head_recall`, ratio 1/8, 32-token blocks). With ``gate`` a head
    keeps its trained projection only where that beats the random one on
    validation (model selection on training text, never on the eval text); the
    bundle's metadata lists the kept heads and both scores."""
    from safetensors.torch import save_file
    from gsa.eval.model import eval_config
    from gsa.weights import load_hash_weights, tensor_name

    cfg_b = eval_config(cfg, bits=bits, threshold=None)
    store = captured if captured is not None else capture(model, tok, text, n_tokens)
    hkv, d = cfg.num_key_value_heads, cfg.head_dim
    t0 = time.time()
    sparse = [l for l, r in enumerate(cfg.top_k_ratio_per_layer) if r < 1]
    tensors = {tensor_name(l): load_hash_weights(cfg_b, l).clone().contiguous() for l in range(cfg.num_hidden_layers)}
    trained, kept, scores = [], [], []
    out.parent.mkdir(parents=True, exist_ok=True)
    for l in sparse:
        q, k = store[l]
        q, k = q.float(), k.float()
        t = q.shape[0]
        g = q.shape[1] // hkv
        split = 3 * t // 4
        val_pos = torch.arange(split, t, max(1, (t - split) // 64))
        w0 = tensors[tensor_name(l)]
        heads = []
        for h in range(hkv):
            qh, kh = q[:, h * g:(h + 1) * g], k[:, h]
            w = train_head(qh, kh, w0[h], steps=steps, query_range=(t // 4, split), seed=l * 131 + h)
            s_rnd, s_trn = head_recall(qh, kh, w0[h], val_pos), head_recall(qh, kh, w, val_pos)
            use = (not gate) or s_trn > s_rnd
            heads.append(w if use else w0[h])
            scores.append(f"{l}:{h}:{s_rnd:.4f}:{s_trn:.4f}")
            if use:
                kept.append(f"{l}:{h}")
        tensors[tensor_name(l)] = torch.stack(heads).contiguous()
        trained.append(l)
        # saved after every layer: an interrupted run still leaves a usable bundle
        # (untrained layers keep the seeded random projection; metadata lists the trained ones)
        save_file(tensors, str(out), metadata={
            "format": "gsa-hash-weights", "model_name": cfg.model_name, "num_hidden_layers": str(cfg.num_hidden_layers),
            "hash_bits": str(bits), "recipe": "HATA learning-to-hash, sign STE, block loss (gsa.eval.train)",
            "trained_layers": ",".join(map(str, trained)), "steps": str(steps), "gated": str(gate),
            "kept_heads": ",".join(kept), "val_recall_random_trained": ",".join(scores)})
        last = scores[-hkv:]
        log(f"  layer {l}: val recall random/trained per head "
            + " ".join(f"{float(x.split(':')[2]):.3f}/{float(x.split(':')[3]):.3f}" for x in last)
            + f" ({time.time() - t0:.0f}s)")
    return out


TRAIN_TEXTS = ["shakespeare", "prideprejudice", "sensesensibility", "persuasion", "mansfieldpark",
               "northangerabbey"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``gsa train-hash`` arguments."""
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "qwen"])
    parser.add_argument("--bits", type=int, nargs="+", default=[128], help="hash bits (one bundle each)")
    parser.add_argument("--tokens", type=int, default=8192,
                        help="training tokens to capture; cover the positions you will serve: projections "
                             "of RoPE'd keys trained on 4096 tokens did not transfer to positions 4K-6K")
    parser.add_argument("--steps", type=int, default=150, help="optimiser steps per layer and KV head")
    parser.add_argument("--text", default="shakespeare", choices=TRAIN_TEXTS,
                        help="training text: Shakespeare or an Austen novel other than Emma (the eval book)")
    parser.add_argument("--no-gate", action="store_true",
                        help="keep every trained head, even where it loses to random on validation")
    parser.add_argument("--out", default=None, help="output folder (default: the cache's hash_weights/)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--method", default="hata", choices=["hata", "mlp"],
                        help="hata: linear projections (spec 2); mlp: HashAttention-style key/query MLP encoders "
                             "(spec 12, gsa.eval.train_mlp; all scoring layers train together, --steps in total)")
    parser.add_argument("--depth", type=int, default=3, choices=[1, 2, 3], help="mlp: layers per encoder")
    parser.add_argument("--hidden", type=int, default=128, help="mlp: hidden width F")
    parser.add_argument("--lr", type=float, default=1e-3, help="mlp: Adam learning rate")
    parser.add_argument("--top", type=int, default=32, help="mlp: positives per query (its top keys by true logit)")
    parser.add_argument("--edge", type=int, default=128,
                        help="mlp: the first and last EDGE tokens of a query's context are never targets")
    parser.add_argument("--target", default="top+block", choices=["top", "block", "top+block"],
                        help="mlp: what the codes are fitted to. top: BCE on each query's top keys (HashAttention); "
                             "block: GSA's own block score (best token of the layer's summed code similarity) fitted "
                             "by a softmax over the unforced blocks to the exact attention mass per block, summed over "
                             "the layer's query heads (gsa.eval.train_mlp.block_loss); top+block (default): both. "
                             "1-layer codes, 128 bits, 32-token blocks at 1/8: top+block 0.786 vs top 0.776 mass "
                             "recall on Qwen, 0.840 vs 0.824 on SmolLM2 (docs/accuracy.md)")
    parser.add_argument("--block", type=int, default=32, help="mlp, block target: block size of the loss")
    parser.add_argument("--tau", type=float, default=20.0, help="mlp, block target: softmax temperature on scores in [-1, 1]")
    parser.add_argument("--block-weight", type=float, default=1.0, help="mlp, top+block: weight of the block loss")
    parser.add_argument("--queries", type=int, default=8, help="mlp: query positions drawn per step")
    parser.add_argument("--block-repre", default="max", choices=["max", "mean"],
                        help="mlp, block target: the block score (spec 4 chunk_repre_method) the codes are trained "
                             "for; use the bundle with a config of the same chunk_repre_method")


def default_bundle(model: str, bits: int, method: str = "hata", depth: int = 3) -> pathlib.Path:
    """Where ``gsa train-hash`` saves by default (the harness looks here)."""
    from gsa.eval.assets import cache_dir
    tag = "" if method == "hata" else f"mlp{depth}-"
    return cache_dir() / "hash_weights" / f"{model}-{tag}b{bits}.safetensors"


def run(args) -> int:
    """Run ``gsa train-hash``; prints the bundle paths."""
    from gsa.eval import assets
    from gsa.eval.model import load_model
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok, cfg = load_model(args.model)
    text = assets.shakespeare_text() if args.text == "shakespeare" else assets.austen_texts()[args.text]
    print(f"capturing q/k on {args.tokens} tokens of {args.text} ...", flush=True)
    store = capture(model, tok, text, args.tokens)
    method = getattr(args, "method", "hata")
    depth = getattr(args, "depth", 3)
    for b in args.bits:
        out = default_bundle(args.model, b, method, depth)
        if args.out:
            out = pathlib.Path(args.out) / out.name
        if method == "mlp":
            from gsa.eval.train_mlp import train_mlp_hash
            print(f"training {b}-bit {depth}-layer MLP encoders -> {out}", flush=True)
            train_mlp_hash(cfg, store, b, out, depth=depth, hidden=args.hidden, steps=args.steps, lr=args.lr,
                           top=args.top, edge=args.edge, target=getattr(args, "target", "top+block"),
                           block=getattr(args, "block", 32), tau=getattr(args, "tau", 20.0),
                           block_weight=getattr(args, "block_weight", 1.0), queries=getattr(args, "queries", 8),
                           repre=getattr(args, "block_repre", "max"))
        else:
            print(f"training {b}-bit projections -> {out}", flush=True)
            train_hash(model, tok, cfg, text, b, out, args.tokens, args.steps, captured=store, gate=not args.no_gate)
        print(out)
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="gsa train-hash")
    add_arguments(ap)
    sys.exit(run(ap.parse_args()))
