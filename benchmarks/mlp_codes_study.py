"""Random HATA vs trained HATA vs MLP codes (spec 12) on a real model: attention-mass
recall of each selector at one ratio and several block sizes, against the exact
oracle and the Quest-style bound (same blocks and equal bytes), in ONE dense
teacher-forced pass (the harness's selectors and metrics; docs/accuracy.md,
section "MLP codes").

    python benchmarks/mlp_codes_study.py --model smollm2 --prefix 2048 --eval-tokens 512 \\
        --block-sizes 128 32 --ratio 0.125 --bits 128 \\
        --weights random hata=PATH mlp1=PATH mlp3=PATH --out benchmarks/results/accuracy_smollm2-mlp-codes.json

``--weights``: ``random`` (the seeded spec-10 projection), ``name=bundle`` (a
``gsa train-hash`` bundle, linear or MLP: the bundle's metadata says which) or
``name=centre:BUNDLE`` (spec-13 centred codes: the seeded random projection with the
key means of a ``gsa calibrate-centre`` bundle, e.g. ``centred=centre:~/.cache/gsa/
hash_weights/qwen-centre.safetensors``).

Quest's equal-bytes allowance is the harness's signed rule
(:func:`gsa.eval.harness.quest_extra_fraction`, blocks rounded up in Quest's favour:
``bs=B/quest_eqbytes``) and every selector and metric uses the model's own softmax
scale (``run.attn``), as ``gsa eval``'s grid does. Beside it, per code width in
``--quest-bits`` (default: ``--bits``), the same allowance without rounding
(:func:`gsa.eval.selectors.quest_equal_bytes_recall`): ``bs=B/quest_eqbytes_b{R}``
(rounded up), ``..._floor_b{R}`` (rounded down: Quest never reads more bytes than GSA)
and ``..._exact_b{R}`` (the fractional extra block read with probability equal to its
fraction: exactly GSA's bytes on average).

``--repre max mean`` scores every code with each block score of spec 4
(``chunk_repre_method``): ``max`` (the default; keys ``bs=B/gsa_<name>``) and ``mean``
(keys ``bs=B/gsa_mean_<name>``, checked row by row against ``gsa.ops.hamming_dist_top_k``
with ``mean`` like the max rows); ``meta.selectors`` lists every GSA selector name.

``--ceilings`` adds reference selectors that use no code (what a perfect similarity could
do under GSA's block rule, at GSA's budget): ``bs=B/ceiling_dot_{max,mean}`` score a token
by its exact ``q . k`` summed over the layer's query heads (spec 4's token score with the
code similarity replaced by the dot product), block max or mean; ``bs=B/ceiling_prob_max``
by its exact attention probability summed over the heads, block max (the oracle is the
block *sum* of the same).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--book", default="emma")
    ap.add_argument("--prefix", type=int, default=2048)
    ap.add_argument("--eval-tokens", type=int, default=512)
    ap.add_argument("--sample-every", type=int, default=16)
    ap.add_argument("--ratio", type=float, default=0.125)
    ap.add_argument("--bits", type=int, default=128)
    ap.add_argument("--block-sizes", type=int, nargs="+", default=[128, 32])
    ap.add_argument("--weights", nargs="+", default=["random"])
    ap.add_argument("--quest-bits", type=int, nargs="+", default=None,
                    help="code widths R for Quest's equal-bytes rows (default: --bits)")
    ap.add_argument("--repre", nargs="+", default=["max"], choices=["max", "mean"],
                    help="block scores (spec 4 chunk_repre_method) to select with; mean selectors are named mean_<name>")
    ap.add_argument("--ceilings", action="store_true",
                    help="also score code-free reference selectors (exact q.k or probabilities, block max / mean)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from gsa.eval import assets
    from gsa.eval import metrics as M
    from gsa.eval import selectors as S
    from gsa.eval.harness import _tokens, quest_extra_fraction
    from gsa.eval.model import TeacherForcedRun, eval_config, load_model
    from gsa.hash_codes import key_codes, query_codes
    quest_bits = args.quest_bits or [args.bits]
    from gsa.policy import GSAPolicy

    model, tok, cfg = load_model(args.model)
    d = cfg.head_dim
    variants = {}
    for spec in args.weights:
        name, _, path = spec.partition("=")
        if path.startswith("centre:"):  # spec 13: random projection, thresholds from the key means
            centre = pathlib.Path(path[len("centre:"):]).expanduser()
            if not centre.is_file():
                raise SystemExit(f"--weights {spec}: no such bundle (make it: gsa calibrate-centre --model "
                                 f"{args.model} --gate {args.bits})")
            variants[name] = eval_config(cfg, bits=args.bits).replace(hash_centre=str(centre))
        else:
            variants[name] = eval_config(cfg, bits=args.bits, hash_weight=path or None)
    sparse_layers = [l for l, r in enumerate(cfg.top_k_ratio_per_layer) if r < 1]
    policies = {bs: GSAPolicy(eval_config(cfg.replace(chunk_size=bs), ratio=args.ratio), "cpu")
                for bs in args.block_sizes}
    # one policy per (block size, block score); selector name prefix per block score
    repre_pol = {(bs, rp): GSAPolicy(eval_config(cfg.replace(chunk_size=bs, chunk_repre_method=rp), ratio=args.ratio), "cpu")
                 for bs in args.block_sizes for rp in args.repre}
    prefix = {"max": "", "mean": "mean_"}
    selectors = [prefix[rp] + n for rp in args.repre for n in variants]
    acc = M.Accumulator()
    code_s = {n: 0.0 for n in variants}

    def observer(layer, q, k_all, v_all, pos0):
        if pos0 < args.prefix or layer not in sparse_layers:
            return
        rows = [i for i in range(q.shape[0]) if (pos0 + i - args.prefix) % args.sample_every == 0]
        if not rows:
            return
        qs = q[rows].contiguous()
        seq = torch.tensor([pos0 + i + 1 for i in rows])
        attn = run.attn[layer]  # the model's own softmax scale and softcap for this layer
        scale = attn.scale
        probs = S.dense_probs(qs, k_all, seq, scale, attn.softcap)
        codes = {}
        for name, wc in variants.items():
            t0 = time.time()
            codes[name] = (query_codes(wc, layer, qs), key_codes(wc, layer, k_all.contiguous()))
            code_s[name] += time.time() - t0
        for bs, pol in policies.items():
            mass = S.block_mass(probs, bs)
            _, _, forced = S.budgets_for(pol, layer, seq)
            orc = S.oracle_select(pol, layer, mass, seq)
            acc.add(f"bs={bs}/oracle", layer, M.mass_recall(mass, orc))
            n_blocks = torch.as_tensor(pol.n_blocks(seq.numpy()))
            qsc = S.quest_scores(qs, k_all, bs, scale).cpu()
            quest = S.quest_select_extra(pol, layer, qsc, seq, torch.zeros_like(n_blocks))
            acc.add(f"bs={bs}/quest", layer, M.mass_recall(mass, quest))
            for r in sorted(set(quest_bits) | {args.bits}):
                a = quest_extra_fraction(r, d, bs)
                qb = S.quest_select_extra(pol, layer, qsc, seq, torch.ceil(a * n_blocks.double()).long())
                acc.add(f"bs={bs}/quest_eqbytes_b{r}", layer, M.mass_recall(mass, qb))
                if r == args.bits:
                    acc.add(f"bs={bs}/quest_eqbytes", layer, M.mass_recall(mass, qb))
                floor, exact = S.quest_equal_bytes_recall(pol, layer, qsc, mass, seq, a)
                acc.add(f"bs={bs}/quest_eqbytes_floor_b{r}", layer, floor)
                acc.add(f"bs={bs}/quest_eqbytes_exact_b{r}", layer, exact)
            if args.ceilings:  # code-free references at GSA's budget (module docstring)
                n_, hq_, _ = qs.shape
                hkv_ = k_all.shape[1]
                dot = torch.einsum("nkgd,skd->ns", qs.float().reshape(n_, hkv_, hq_ // hkv_, d), k_all.float())
                _, bud, _ = S.budgets_for(pol, layer, seq)
                for tag, tok_s, how in (("dot_max", dot, "max"), ("dot_mean", dot, "mean"),
                                        ("prob_max", probs.sum(dim=1), "max")):
                    sel = S.select_top(S.block_scores(tok_s, seq, bs, how), n_blocks, bud, forced)
                    acc.add(f"bs={bs}/ceiling_{tag}", layer, M.mass_recall(mass, sel))
            for rp in args.repre:
                for name, (qc, kc) in codes.items():
                    sel = S.gsa_select(repre_pol[(bs, rp)], layer, qc, kc, seq, check_rows=1)
                    sname = prefix[rp] + name
                    acc.add(f"bs={bs}/gsa_{sname}", layer, M.mass_recall(mass, sel))
                    acc.add(f"bs={bs}/gsa_{sname}/block_recall", layer, M.block_recall(sel, orc, forced))

    text = assets.austen_texts()[args.book]
    ids = _tokens(tok, text, args.prefix + args.eval_tokens)
    run = TeacherForcedRun(model, select=None, observer=None)
    t0 = time.time()
    for c0 in range(0, args.prefix, 1024):
        run.feed(ids[c0:min(args.prefix, c0 + 1024)], logits="last")
    run.observer = observer
    for c0 in range(args.prefix, args.prefix + args.eval_tokens, 256):
        run.feed(ids[c0:min(args.prefix + args.eval_tokens, c0 + 256)], logits="last")
        print(f"  {min(c0 + 256, args.prefix + args.eval_tokens) - args.prefix}/{args.eval_tokens} eval tokens ({time.time() - t0:.0f}s)", flush=True)
    names = sorted(acc.names())
    res = {"meta": {"model": args.model, "model_name": cfg.model_name, "book": args.book, "prefix": args.prefix,
                    "eval_tokens": args.eval_tokens, "sample_every": args.sample_every, "ratio": args.ratio,
                    "bits": args.bits, "quest_bits": sorted(set(quest_bits) | {args.bits}), "block_sizes": args.block_sizes, "weights": args.weights,
                    "repre": args.repre, "selectors": selectors,
                    "must_select_blocks": list(cfg.must_select_blocks), "sparse_layers": sparse_layers,
                    "metric": "attention-mass recall (mean over sampled decode positions, heads, sparse layers)",
                    "seconds": round(time.time() - t0, 1), "code_seconds": {k: round(v, 1) for k, v in code_s.items()},
                    "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "argv": sys.argv[1:] if argv is None else list(argv)},
           "overall": {n: acc.overall(n) for n in names},
           "per_layer": {n: acc.per_layer(n) for n in names}}
    for bs in args.block_sizes:
        orc = res["overall"][f"bs={bs}/oracle"]
        print(f"block size {bs}: oracle {orc:.4f}, quest {res['overall'][f'bs={bs}/quest']:.4f}, "
              f"quest same bytes {res['overall'][f'bs={bs}/quest_eqbytes']:.4f}")
        for tag in ("dot_max", "dot_mean", "prob_max"):
            if f"bs={bs}/ceiling_{tag}" in res["overall"]:
                print(f"  ceiling {tag}: {res['overall'][f'bs={bs}/ceiling_{tag}']:.4f}")
        for r in res["meta"]["quest_bits"]:
            ov = res["overall"]
            print(f"  quest at {r}-bit bytes: rounded up {ov[f'bs={bs}/quest_eqbytes_b{r}']:.4f}, "
                  f"down {ov[f'bs={bs}/quest_eqbytes_floor_b{r}']:.4f}, exact {ov[f'bs={bs}/quest_eqbytes_exact_b{r}']:.4f}")
        for name in selectors:
            v = res["overall"][f"bs={bs}/gsa_{name}"]
            print(f"  gsa {name:10s} {v:.4f}  ({v / orc:.3f} x oracle)")
    if args.out:
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1) + "\n")
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
