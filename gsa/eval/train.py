"""``gsa train-hash``: learn hash projections with HATA's learning-to-hash recipe.

1. Capture post-RoPE queries and keys of every layer from a dense pass of the
   model over training text (Shakespeare by default: disjoint from the Austen
   text the harness evaluates on).
2. Per layer and per KV head, learn ``W [D, R]`` (started from the seeded random
   projection) with a relaxed sign ``c(x) = tanh(beta * x W / sigma)`` (``beta``
   annealed upward so the relaxation approaches the sign) and three losses:

   * similarity: for each sampled query, a softmax over the keys it can see of
     ``tau * <c(q), c(k)> / R`` is pulled toward the query's top-attended keys
     (their exact attention, renormalised); every other key is pushed away by the
     normalisation. The query's code is the sum over its group's heads, as in
     the GSA score (spec 4).
   * bit balance: every bit's mean over the keys (and queries) is pushed to 0.
   * decorrelation: ``|| W_n^T W_n - I ||^2`` on the column-normalised projection.

3. Save one safetensors bundle in :mod:`gsa.weights`' naming (``layers.{l}.hash_weight``
   ``[Hkv, D, R]``); layers that never score keep their random projection.
   A config with ``hash_weight_type: "file"`` and ``hash_weight: <bundle>`` loads it.
"""
from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time
from typing import Dict, Optional

import torch

__all__ = ["capture", "train_head", "train_hash", "add_arguments", "run"]


def capture(model, tok, text: str, n_tokens: int) -> Dict[int, tuple]:
    """Dense pass over the first ``n_tokens`` tokens of ``text``; returns
    ``{layer: (q float32 [T, Hq, D], k float32 [T, Hkv, D])}`` (post-RoPE)."""
    from gsa.eval.model import TeacherForcedRun
    ids = torch.tensor(tok(text[: n_tokens * 8], add_special_tokens=False).input_ids[:n_tokens])
    store: Dict[int, tuple] = {}

    def obs(layer, q, k_all, v_all, pos0):
        qs = store.get(layer, (None,))[0]
        store[layer] = (q.float() if qs is None else torch.cat([qs, q.float()]), k_all.float())

    run = TeacherForcedRun(model, observer=obs)
    for c0 in range(0, ids.shape[0], 1024):
        run.feed(ids[c0:c0 + 1024], logits="last")
    return store


def train_head(q: torch.Tensor, k: torch.Tensor, w0: torch.Tensor, steps: int = 40, n_queries: int = 96,
               top: int = 32, lr: float = 1e-2, tau: float = 8.0, balance: float = 0.1, decor: float = 0.1,
               seed: int = 0) -> torch.Tensor:
    """One KV head: ``q [T, G, D]`` (its group's query heads), ``k [T, D]``, start
    ``w0 [D, R]`` -> trained ``float32 [D, R]``. Queries are sampled from the second
    half of the text (they see >= T/2 keys)."""
    gen = torch.Generator().manual_seed(seed)
    t, g, d = q.shape
    r = w0.shape[1]
    pos = torch.randint(t // 2, t, (n_queries,), generator=gen)
    qs = q[pos]  # [N, G, D]
    scale = d ** -0.5
    logits = torch.einsum("ngd,td->ngt", qs, k) * scale
    causal = torch.arange(t).unsqueeze(0) <= pos.unsqueeze(1)  # [N, T]
    probs = torch.softmax(logits.masked_fill(~causal.unsqueeze(1), -math.inf), dim=-1).sum(dim=1)  # [N, T]
    topv, topi = probs.topk(top, dim=1)
    target = torch.zeros_like(probs).scatter_(1, topi, topv)
    target = target / target.sum(dim=1, keepdim=True)
    sigma_k = (k @ w0).std().clamp(min=1e-6)
    sigma_q = (qs.reshape(-1, d) @ w0).std().clamp(min=1e-6)
    w = torch.nn.Parameter(w0.clone())
    opt = torch.optim.Adam([w], lr=lr)
    eye = torch.eye(r)
    for step in range(steps):
        beta = 1.0 + 9.0 * step / max(1, steps - 1)
        ck = torch.tanh(beta * (k @ w) / sigma_k)  # [T, R]
        cq = torch.tanh(beta * (qs @ w) / sigma_q).sum(dim=1)  # [N, R]: group sum, as the GSA score
        sim = cq @ ck.T / (r * g)
        logp = torch.log_softmax((tau * sim).masked_fill(~causal, -math.inf), dim=1)
        l_sim = -(target * logp.masked_fill(~causal, 0)).sum(dim=1).mean()
        l_bal = ck.mean(dim=0).pow(2).mean() + torch.tanh(beta * (qs.reshape(-1, d) @ w) / sigma_q).mean(dim=0).pow(2).mean()
        wn = w / w.norm(dim=0, keepdim=True)
        l_dec = (wn.T @ wn - eye).pow(2).sum() / r
        loss = l_sim + balance * l_bal + decor * l_dec
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach().float()


def train_hash(model, tok, cfg, text: str, bits: int, out: pathlib.Path, n_tokens: int = 1024,
               steps: int = 40, captured: Optional[dict] = None, log=print) -> pathlib.Path:
    """Train every scoring layer's ``[Hkv, D, R]`` projection at ``bits`` bits and save a bundle."""
    from safetensors.torch import save_file
    from gsa.eval.model import eval_config
    from gsa.weights import load_hash_weights, tensor_name

    cfg_b = eval_config(cfg, bits=bits, threshold=None)
    store = captured if captured is not None else capture(model, tok, text, n_tokens)
    hkv, d = cfg.num_key_value_heads, cfg.head_dim
    t0 = time.time()
    sparse = [l for l, r in enumerate(cfg.top_k_ratio_per_layer) if r < 1]
    tensors = {tensor_name(l): load_hash_weights(cfg_b, l).clone().contiguous() for l in range(cfg.num_hidden_layers)}
    trained = []
    out.parent.mkdir(parents=True, exist_ok=True)
    for l in sparse:
        q, k = store[l]
        g = q.shape[1] // hkv
        w0 = tensors[tensor_name(l)]
        tensors[tensor_name(l)] = torch.stack([
            train_head(q[:, h * g:(h + 1) * g], k[:, h], w0[h], steps=steps, seed=l * 131 + h) for h in range(hkv)
        ]).contiguous()
        trained.append(l)
        # saved after every layer: an interrupted run still leaves a usable bundle
        # (untrained layers keep the seeded random projection; metadata lists the trained ones)
        save_file(tensors, str(out), metadata={
            "format": "gsa-hash-weights", "model_name": cfg.model_name, "num_hidden_layers": str(cfg.num_hidden_layers),
            "hash_bits": str(bits), "recipe": "HATA learning-to-hash (gsa.eval.train)",
            "trained_layers": ",".join(map(str, trained)), "steps": str(steps)})
        log(f"  layer {l}: trained {hkv} heads ({time.time() - t0:.0f}s)")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``gsa train-hash`` arguments."""
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "qwen"])
    parser.add_argument("--bits", type=int, nargs="+", default=[128], help="hash bits (one bundle each)")
    parser.add_argument("--tokens", type=int, default=1024, help="training tokens of Shakespeare to capture")
    parser.add_argument("--steps", type=int, default=40, help="optimiser steps per layer and KV head")
    parser.add_argument("--out", default=None, help="output folder (default: the cache's hash_weights/)")
    parser.add_argument("--threads", type=int, default=None)


def default_bundle(model: str, bits: int) -> pathlib.Path:
    """Where ``gsa train-hash`` saves by default (the harness looks here)."""
    from gsa.eval.assets import cache_dir
    return cache_dir() / "hash_weights" / f"{model}-b{bits}.safetensors"


def run(args) -> int:
    """Run ``gsa train-hash``; prints the bundle paths."""
    from gsa.eval import assets
    from gsa.eval.model import load_model
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok, cfg = load_model(args.model)
    text = assets.shakespeare_text()
    print(f"capturing q/k on {args.tokens} Shakespeare tokens ...", flush=True)
    store = capture(model, tok, text, args.tokens)
    for b in args.bits:
        out = pathlib.Path(args.out) / f"{args.model}-b{b}.safetensors" if args.out else default_bundle(args.model, b)
        print(f"training {b}-bit projections -> {out}", flush=True)
        train_hash(model, tok, cfg, text, b, out, args.tokens, args.steps, captured=store)
        print(out)
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="gsa train-hash")
    add_arguments(ap)
    sys.exit(run(ap.parse_args()))
