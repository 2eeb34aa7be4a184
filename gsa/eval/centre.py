"""``gsa calibrate-centre``: per-head mean keys for centred codes (spec 13), and a
data-driven projection candidate (principal directions of the keys).

Centred codes hash a key as ``bit r = k @ W[:, r] > t[r]`` with ``t = mu @ W``, where
``mu`` is the layer's per-KV-head mean key: the same as ``sign((k - mu) @ W)``, so bits
are spent on what varies between keys instead of on the component they share (a bit
whose hyperplane misses the key cloud is constant and carries nothing). Queries are
hashed without a threshold: for a fixed query ``q``, ``q . (k - mu) = q . k - q . mu``
keeps the order of ``q . k`` over the keys.

1. Capture post-RoPE keys of every layer on calibration text (Shakespeare or an Austen
   novel other than the eval book Emma), like ``gsa train-hash``.
2. ``mu[l, h]`` = mean over the captured positions of layer ``l``'s key head ``h``
   (float64 sum, stored as float32). RoPE rotates keys by position, so ``mu`` is the
   mean over the positions calibrated on: calibrate on at least as many tokens as the
   contexts served.
3. Write ``layers.{l}.key_mean [Hkv, D]`` to a safetensors bundle (:func:`gsa.weights.save_key_means`);
   a config's ``hash_centre`` names it, and ``gsa.weights.load_hash_threshold`` turns it
   into ``t = mu @ W`` for whatever weights the config uses.

``--gate BITS``: centring does not help every head (docs/accuracy.md), so per scoring
layer and KV head the bundle stores ``alpha * mu`` with ``alpha`` in ``{0, 1/4, 1/2, 1}``
chosen on held-out calibration queries (the capture's last quarter) with the seeded
random weights at ``BITS`` bits (:func:`gate_key_means`; ``alpha = 0``: that head keeps
today's codes). Selection uses calibration text only.

``--pca``: also a bundle of data-driven projections, ``W[h] = [U_h | W_rand[h][:, D:]]``
with ``U_h`` the principal directions (eigenvectors of the centred key covariance,
largest first; the first ``min(R, D)``) and, when ``R > D``, the seeded random
projection's later column blocks; plus the key means (PCA directions are only
balanced on centred keys). Code diagnostics (near-constant bits, correlation of code
similarity with ``q . k``): :mod:`gsa.eval.metrics`.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time
from typing import Dict, Iterable, Optional

import torch

__all__ = ["key_means", "gate_key_means", "GATE_ALPHAS", "pca_projection", "pca_weights", "calibrate", "add_arguments", "run", "default_centre_bundle", "default_pca_bundle"]


def key_means(store: Dict[int, tuple], layers: Iterable[int]) -> Dict[int, torch.Tensor]:
    """``{layer: (q, k [T, Hkv, D])}`` -> ``{layer: float32 [Hkv, D]}`` mean key per head (float64 sum)."""
    return {l: store[l][1].double().mean(dim=0).to(torch.float32) for l in layers}


#: centring strengths tried per head by the gate (0: no threshold for that head)
GATE_ALPHAS = (0.0, 0.25, 0.5, 1.0)


def gate_key_means(store: Dict[int, tuple], means: Dict[int, torch.Tensor], weights: Dict[int, torch.Tensor],
                   alphas=GATE_ALPHAS, n_val: int = 64) -> tuple:
    """Per layer and KV head, the centring strength ``alpha`` in ``alphas`` whose threshold
    ``alpha * mu @ W`` gives the best held-out recall on the calibration capture
    (:func:`gsa.eval.train.head_recall`: queries from its last quarter, ratio 1/8,
    32-token blocks; ties keep the smaller ``alpha``). Returns ``({layer: alpha * mu
    [Hkv, D]}, {layer: [(alpha, recall at each alpha), ...] per head})``: the shrunk means
    to store (a head with ``alpha = 0`` keeps today's codes). Model selection happens on
    calibration text only, never on the eval text."""
    from gsa.eval.train import head_recall
    out, report = {}, {}
    for l, mu in means.items():
        q, k = store[l]
        q, k = q.float(), k.float()
        t, hkv = k.shape[0], k.shape[1]
        g = q.shape[1] // hkv
        split = 3 * t // 4
        pos = torch.arange(split, t, max(1, (t - split) // n_val))
        heads, rows = [], []
        for h in range(hkv):
            w = weights[l][h]
            qh, kh = q[:, h * g:(h + 1) * g], k[:, h]
            scores = [head_recall(qh, kh, w, pos, threshold=None if a == 0 else
                                  (a * mu[h].double() @ w.double()).float()) for a in alphas]
            best = max(range(len(alphas)), key=lambda i: (scores[i], -i))
            heads.append(alphas[best] * mu[h])
            rows.append((alphas[best], [round(s, 4) for s in scores]))
        out[l] = torch.stack(heads)
        report[l] = rows
    return out, report


def pca_projection(k: torch.Tensor, w_random: torch.Tensor) -> torch.Tensor:
    """One head: keys ``k [T, D]``, the seeded random projection ``w_random [D, R]`` ->
    ``float32 [D, R]``: the first ``min(R, D)`` columns are the principal directions of
    the centred keys (largest variance first, sign fixed so the largest entry is
    positive); columns ``D..R-1`` (``R > D``) are ``w_random``'s."""
    d, r = w_random.shape
    kc = k.double() - k.double().mean(dim=0)
    cov = kc.T @ kc / max(1, kc.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    u = evecs.flip(1)  # [D, D] largest first
    idx = u.abs().argmax(dim=0)
    u = u * torch.sign(u[idx, torch.arange(d)]).unsqueeze(0)
    m = min(r, d)
    out = w_random.clone().to(torch.float64)
    out[:, :m] = u[:, :m]
    return out.to(torch.float32)


def pca_weights(store: Dict[int, tuple], layers: Iterable[int], w_random: Dict[int, torch.Tensor]) -> Dict[int, torch.Tensor]:
    """``{layer: float32 [Hkv, D, R]}``: :func:`pca_projection` per KV head."""
    out = {}
    for l in layers:
        k = store[l][1]
        out[l] = torch.stack([pca_projection(k[:, h], w_random[l][h]) for h in range(k.shape[1])])
    return out


def default_centre_bundle(model: str) -> pathlib.Path:
    from gsa.eval.assets import cache_dir
    return cache_dir() / "hash_weights" / f"{model}-centre.safetensors"


def default_pca_bundle(model: str, bits: int) -> pathlib.Path:
    from gsa.eval.assets import cache_dir
    return cache_dir() / "hash_weights" / f"{model}-pca-b{bits}.safetensors"


def calibrate(cfg, store: Dict[int, tuple], out: pathlib.Path, text: str, n_tokens: int,
              pca_bits: Optional[int] = None, pca_out: Optional[pathlib.Path] = None, gate_bits: Optional[int] = None,
              log=print) -> Dict[str, pathlib.Path]:
    """Write the key-mean bundle (every captured layer) and, with ``pca_bits``, the PCA
    projection bundle (scoring layers; random elsewhere, so every layer is present).
    ``gate_bits``: store per head the shrunk mean :func:`gate_key_means` picks for the
    seeded random weights at that many bits (scoring layers; other layers: the plain mean)."""
    from gsa.eval.model import eval_config
    from gsa.weights import load_hash_weights, save_key_means, tensor_name
    layers = sorted(store)
    means = key_means(store, layers)
    meta = {"model_name": cfg.model_name, "num_hidden_layers": str(cfg.num_hidden_layers), "text": text,
            "tokens": str(n_tokens), "recipe": "per-KV-head mean of post-RoPE keys (gsa.eval.centre)"}
    sparse = [l for l, r in enumerate(cfg.top_k_ratio_per_layer) if r < 1 and l in store]
    if gate_bits:
        cfg_g = eval_config(cfg, bits=gate_bits, threshold=None)
        gated, report = gate_key_means(store, {l: means[l] for l in sparse},
                                       {l: load_hash_weights(cfg_g, l) for l in sparse})
        means.update(gated)
        meta.update(gated_for=f"random weights, seed {cfg_g.seed}, {gate_bits} bits",
                    gate_alphas=",".join(f"{l}:{h}:{a:g}" for l, rows in report.items() for h, (a, _) in enumerate(rows)))
        for l, rows in report.items():
            log(f"  layer {l}: alpha per head " + " ".join(f"{a:g}" for a, _ in rows))
    written = {"centre": save_key_means(out, means, meta)}
    if pca_bits:
        cfg_b = eval_config(cfg, bits=pca_bits, threshold=None)
        rnd = {l: load_hash_weights(cfg_b, l) for l in range(cfg.num_hidden_layers)}
        pca = pca_weights(store, sparse, rnd)
        extra = {tensor_name(l): pca.get(l, rnd[l]).contiguous() for l in range(cfg.num_hidden_layers)}
        written["pca"] = save_key_means(pca_out, key_means(store, layers), {**meta, "hash_bits": str(pca_bits),
                                                         "projection": "principal directions of centred keys"},
                                        extra=extra)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``gsa calibrate-centre`` arguments."""
    from gsa.eval.train import TRAIN_TEXTS
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "qwen"])
    parser.add_argument("--tokens", type=int, default=4096, help="calibration tokens (cover the positions served)")
    parser.add_argument("--text", default="shakespeare", choices=TRAIN_TEXTS,
                        help="calibration text: Shakespeare or an Austen novel other than Emma (the eval book)")
    parser.add_argument("--pca", type=int, default=None, metavar="BITS",
                        help="also write a PCA projection bundle with this many bits")
    parser.add_argument("--gate", type=int, default=None, metavar="BITS",
                        help="per head, keep the centring strength (0, 1/4, 1/2 or 1 times the mean) that scores "
                             "best on held-out calibration queries with the seeded random weights at BITS bits")
    parser.add_argument("--out", default=None, help="output folder (default: the cache's hash_weights/)")
    parser.add_argument("--threads", type=int, default=None)


def run(args) -> int:
    """Run ``gsa calibrate-centre``; prints the bundle paths and the config keys to use."""
    from gsa.eval import assets
    from gsa.eval.model import load_model
    from gsa.eval.train import capture
    if args.threads:
        torch.set_num_threads(args.threads)
    for flag in ("pca", "gate"):
        v = getattr(args, flag)
        if v is not None and (v <= 0 or v % 32):
            print(f"gsa calibrate-centre: --{flag}: expected a positive multiple of 32 bits, got {v}", file=sys.stderr)
            return 2
    model, tok, cfg = load_model(args.model)
    text = assets.shakespeare_text() if args.text == "shakespeare" else assets.austen_texts()[args.text]
    t0 = time.time()
    print(f"capturing keys on {args.tokens} tokens of {args.text} ...", flush=True)
    store = capture(model, tok, text, args.tokens)
    folder = pathlib.Path(args.out) if args.out else None
    out = folder / f"{args.model}-centre.safetensors" if folder else default_centre_bundle(args.model)
    pca_out = None
    if args.pca:
        pca_out = folder / f"{args.model}-pca-b{args.pca}.safetensors" if folder else default_pca_bundle(args.model, args.pca)
    written = calibrate(cfg, store, out, args.text, args.tokens, args.pca, pca_out, args.gate)
    print(f"key means -> {written['centre']}  (config: \"hash_centre\": \"{written['centre']}\")")
    if "pca" in written:
        print(f"PCA projections + key means -> {written['pca']}  (config: \"hash_weight_type\": \"file\", "
              f"\"hash_weight\" and \"hash_centre\": that path, \"hash_bits\": {args.pca})")
    print(f"done in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="gsa calibrate-centre")
    add_arguments(ap)
    sys.exit(run(ap.parse_args()))
