"""Config study for small ratios: block size x forced blocks x selector, on a real model.

Why: at ratio 1/8 with 128-token blocks and three forced blocks, SmolLM2's
attention-mass recall stays below 0.9 even for the exact oracle
(docs/accuracy.md). This script measures, on one dense pass of the model over
Austen text, how block size (``chunk_size``) and ``must_select_blocks`` move the
oracle, GSA (random and trained projections) and the Quest-style peer (same
blocks, and same bytes read), using the harness's selectors
(:mod:`gsa.eval.selectors`: the GSA selection is ``gsa.ops.hash_encode`` codes,
checked row-wise against ``gsa.ops.hamming_dist_top_k``).

Every decode step is sparse here (seq-len threshold 1); rows are every
``--sample-every``-th position after the prefix, in every sparse layer of the
shipped config.

    python benchmarks/accuracy_block_study.py --model smollm2 --ratios 0.125 \\
        --block-sizes 16 32 64 128 --forced 0,-2,-1 0,-1 --bits 64 128 256 --trained

Writes ``benchmarks/results/accuracy_block_study_<model>.{json,md,png}``.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch

from gsa import ops
from gsa.eval import metrics as M
from gsa.eval import selectors as S
from gsa.eval.harness import quest_extra_fraction
from gsa.eval.model import eval_config
from gsa.policy import GSAPolicy
from gsa.weights import load_hash_weights


def _forced(text: str) -> list:
    try:
        return [int(x) for x in text.split(",") if x != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--forced: expected comma-separated block indices like 0,-2,-1, got {text!r}")


def study(store: dict, cfg, prefix: int, n_eval: int, every: int, ratios, block_sizes, forced_sets, bits,
          bundles: dict, attn: dict = None) -> dict:
    """``store``: ``{layer: (q [T, Hq, D], k [T, Hkv, D])}`` captured post-RoPE;
    ``attn``: ``{layer: LayerAttention}`` (the model's scale and softcap; default
    ``D**-0.5``, none). Returns ``{name: {"overall": x, "per_layer": {l: x}}}`` with
    names ``{selector}/r=../bs=../forced=..[/b=..]``."""
    from tqdm.auto import tqdm
    sparse = [l for l, r in enumerate(cfg.top_k_ratio_per_layer) if r < 1]
    d = cfg.head_dim
    pos = torch.arange(prefix, prefix + n_eval, every)
    seq = pos + 1
    acc = M.Accumulator()
    weights = {("random", b): eval_config(cfg, bits=b) for b in bits}
    weights.update({("trained", b): eval_config(cfg, bits=b, hash_weight=p) for b, p in bundles.items()})
    jobs = [(l, bs) for l in sparse for bs in block_sizes]
    for l, bs in tqdm(jobs, desc="layers x block sizes"):
        q, k = store[l]
        q, k = q[pos].float().contiguous(), k[: int(seq.max())].float().contiguous()
        scale, cap = (attn[l].scale, attn[l].softcap) if attn and l in attn else (d ** -0.5, None)
        mass = S.block_mass(S.dense_probs(q, k, seq, scale, cap), bs)
        codes = {key: (ops.hash_encode(q, load_hash_weights(wc, l)), ops.hash_encode(k, load_hash_weights(wc, l)))
                 for key, wc in weights.items()}
        for r in ratios:
            for fs in forced_sets:
                pol = GSAPolicy(eval_config(cfg, ratio=r).replace(chunk_size=bs, must_select_blocks=list(fs)), "cpu")
                tag = f"r={r:.4g}/bs={bs}/forced={','.join(map(str, fs))}"
                acc.add(f"oracle/{tag}", l, M.mass_recall(mass, S.oracle_select(pol, l, mass, seq)))
                acc.add(f"quest/{tag}", l, M.mass_recall(mass, S.quest_select(pol, l, q, k, seq, scale)))
                for b in bits:
                    qb = S.quest_select(pol, l, q, k, seq, scale, budget_add=quest_extra_fraction(b, d, bs))
                    acc.add(f"quest_eqbytes/{tag}/b={b}", l, M.mass_recall(mass, qb))
                for (name, b), (qc, kc) in codes.items():
                    sel = S.gsa_select(pol, l, qc, kc, seq, check_rows=1)
                    acc.add(f"gsa_{name}/{tag}/b={b}", l, M.mass_recall(mass, sel))
    return {n: {"overall": acc.overall(n), "per_layer": acc.per_layer(n)} for n in acc.names()}


def _markdown(res: dict, meta: dict) -> str:
    lines = [f"# Block-size / forced-block study: {meta['model_name']}", "",
             f"{meta['prefix']}-token prefix of {meta['book']}, decode rows every {meta['sample_every']} positions "
             f"over {meta['eval_tokens']} tokens, sparse layers {meta['sparse_layers'][0]}..{meta['sparse_layers'][-1]}; "
             "mean attention-mass recall (dense softmax mass inside the selected blocks). "
             "Quest same bytes: Quest's KV budget moved by the signed allowance bits/(32 D) - 1/bs of the blocks "
             "(rounded up, never below the forced blocks): more blocks where its min/max metadata is cheaper than "
             "GSA's code, fewer where it costs more (harness.quest_extra_fraction).", ""]
    if meta.get("head_dim"):
        lines += ["Allowance (fraction of the blocks): " + "; ".join(
            f"bs {bs}: " + ", ".join(f"{b} bits {quest_extra_fraction(b, meta['head_dim'], bs):+.2%}" for b in meta["bits"])
            for bs in meta["block_sizes"]), ""]
    lines += [
             "| ratio | block size | forced | oracle | Quest (same blocks) | " +
             " | ".join(f"GSA-{b} random | GSA-{b} trained | Quest same bytes as GSA-{b}" for b in meta["bits"]) + " |",
             "|---|---|---|---|---|" + "---|---|---|" * len(meta["bits"])]
    g = lambda n: res.get(n, {}).get("overall")  # noqa: E731
    f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    for r in meta["ratios"]:
        for bs in meta["block_sizes"]:
            for fs in meta["forced"]:
                tag = f"r={r:.4g}/bs={bs}/forced={','.join(map(str, fs))}"
                cells = [f(g(f"oracle/{tag}")), f(g(f"quest/{tag}"))]
                for b in meta["bits"]:
                    cells += [f(g(f"gsa_random/{tag}/b={b}")), f(g(f"gsa_trained/{tag}/b={b}")),
                              f(g(f"quest_eqbytes/{tag}/b={b}"))]
                lines.append(f"| {r:.4g} | {bs} | {fs} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(res: dict, meta: dict, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    r = meta["ratios"][0]
    b = 128 if 128 in meta["bits"] else meta["bits"][0]
    fig, axes = plt.subplots(1, len(meta["forced"]), figsize=(5.5 * len(meta["forced"]), 4), squeeze=False)
    for ax, fs in zip(axes[0], meta["forced"]):
        fstr = ",".join(map(str, fs))
        for name, label in [("oracle", "oracle"), (f"gsa_random/*/b={b}", f"GSA-{b} random"),
                            (f"gsa_trained/*/b={b}", f"GSA-{b} trained"), ("quest", "Quest same blocks"),
                            (f"quest_eqbytes/*/b={b}", f"Quest same bytes as GSA-{b}")]:
            ys = []
            for bs in meta["block_sizes"]:
                tag = f"r={r:.4g}/bs={bs}/forced={fstr}"
                key = name.replace("*", tag) if "*" in name else f"{name}/{tag}"
                ys.append(res.get(key, {}).get("overall"))
            if any(y is not None for y in ys):
                ax.plot(meta["block_sizes"], [float("nan") if y is None else y for y in ys], marker="o", label=label)
        ax.axhline(0.9, color="grey", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(meta["block_sizes"], [str(x) for x in meta["block_sizes"]])
        ax.set_xlabel("block size (tokens)")
        ax.set_ylabel("mean attention-mass recall")
        ax.set_title(f"ratio {r:.4g}, forced blocks {fstr}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2",
                    help="smollm2, qwen, or a path to a Hugging Face model folder or a .gguf file")
    ap.add_argument("--gsa-config", default=None, help="GSA config JSON (default: shipped / derived, see gsa eval)")
    ap.add_argument("--book", default="emma")
    ap.add_argument("--prefix", type=int, default=4096)
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument("--sample-every", type=int, default=64)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.125])
    ap.add_argument("--block-sizes", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--forced", type=_forced, nargs="+", default=[[0, -2, -1], [0, -1]])
    ap.add_argument("--bits", type=int, nargs="+", default=[128])
    ap.add_argument("--trained", action="store_true", help="also GSA with the gsa train-hash bundles")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    for r in args.ratios:
        if not 0 < r < 1:
            ap.error(f"--ratios: expected fractions in (0, 1), got {r}")
    from gsa.eval import assets
    from gsa.eval.load import ModelSpecError
    from gsa.eval.model import attention_params, load_model
    from gsa.eval.train import capture, default_bundle
    if args.threads:
        torch.set_num_threads(args.threads)
    bundles = {}
    if args.trained:
        bundles = {b: str(default_bundle(args.model, b)) for b in args.bits if default_bundle(args.model, b).is_file()}
        missing = [b for b in args.bits if b not in bundles]
        if missing:
            print(f"note: no trained bundle for bits {missing} (run gsa train-hash --bits ...); random only there")
    try:
        model, tok, cfg = load_model(args.model, gsa_config=args.gsa_config, verbose=True)
    except (ModelSpecError, assets.AssetError) as e:
        ap.error(f"--model {args.model}: {e}")
    attn = attention_params(model)
    t0 = time.time()
    print(f"dense pass over {args.prefix + args.eval_tokens} tokens of {args.book} ...", flush=True)
    store = capture(model, tok, assets.austen_texts()[args.book], args.prefix + args.eval_tokens)
    res = study(store, cfg, args.prefix, args.eval_tokens, args.sample_every, args.ratios, args.block_sizes,
                args.forced, args.bits, bundles, attn)
    meta = {"model": args.model, "model_name": cfg.model_name, "book": args.book, "prefix": args.prefix,
            "eval_tokens": args.eval_tokens, "sample_every": args.sample_every, "ratios": args.ratios,
            "block_sizes": args.block_sizes, "forced": args.forced, "bits": args.bits, "trained_bundles": bundles,
            "sparse_layers": [l for l, r in enumerate(cfg.top_k_ratio_per_layer) if r < 1], "head_dim": cfg.head_dim,
            "scale": {l: a.scale for l, a in attn.items()},
            "threads": torch.get_num_threads(), "torch": torch.__version__, "seconds": round(time.time() - t0, 1),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"accuracy_block_study_{pathlib.Path(str(args.model)).name.replace('.gguf', '')}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": res}, indent=1))
    stem.with_suffix(".md").write_text(_markdown(res, meta))
    _plot(res, meta, stem.with_suffix(".png"))
    print(_markdown(res, meta))
    print(f"wrote {stem}.{{json,md,png}} in {meta['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
