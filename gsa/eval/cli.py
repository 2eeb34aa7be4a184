"""``gsa eval``: run the accuracy harness and write benchmarks/results/accuracy_<tag>.*

Examples (docs/accuracy.md lists the runs behind the published numbers)::

    gsa eval --model smollm2 --parts grid e2e --prefix 4096 --eval-tokens 2048
    gsa eval --model smollm2 --parts passkey --lengths 2048 4096 8192 --depths 0.1 0.5 0.9
    gsa eval --model /path/to/hf-folder-or-model.gguf --parts grid multikey vartrack
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import torch

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``gsa eval`` arguments."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("--model", default="smollm2",
                        help="smollm2 = SmolLM2-135M-Instruct, qwen = Qwen2.5-Coder-0.5B-Instruct (`gsa data fetch` "
                             "first), or a path: a Hugging Face model folder (config.json, weights, tokenizer) or a "
                             ".gguf file (converted once into the cache)")
    parser.add_argument("--gsa-config", default=None,
                        help="GSA config JSON for the model (default: the shipped one for smollm2/qwen, else one "
                             "derived from the model's config: 128 random bits, 128-token blocks, ratio 0.3; "
                             "sliding-window layers are dense either way)")
    parser.add_argument("--parts", nargs="+", default=["grid", "e2e", "passkey"],
                        choices=["grid", "e2e", "passkey", "multikey", "vartrack"],
                        help="grid: selection quality vs the exact oracle and Quest over ratios x bits, plus code "
                             "diagnostics; e2e: teacher-forced agreement / KL / perplexity; passkey: retrieval at "
                             "--lengths x --depths; multikey / vartrack: RULER-style multi-retrieval tasks there")
    parser.add_argument("--prefix", type=int, default=4096, help="dense prefix tokens before the evaluated ones")
    parser.add_argument("--eval-tokens", type=int, default=2048, help="teacher-forced decode positions")
    parser.add_argument("--sample-every", type=int, default=32, help="grid: score every n-th decode position")
    parser.add_argument("--ratios", type=_fraction("--ratios", open_low=True), nargs="+", default=[0.3, 1 / 8, 1 / 16],
                        help="grid: kept fractions of blocks, each in (0, 1]")
    parser.add_argument("--bits", type=int, nargs="+", default=[64, 128, 256],
                        help="grid: hash bits R (multiples of 32)")
    parser.add_argument("--trained", action="store_true", help="also score trained weights (gsa train-hash bundles)")
    parser.add_argument("--mlp", type=int, nargs="*", default=[], metavar="DEPTH",
                        help="grid: also score spec-12 MLP codes of these depths (`gsa train-hash --method mlp "
                             "--depth D` bundles, named mlp<D>)")
    parser.add_argument("--e2e", nargs="+", default=["shipped", "r0.125-b128", "r0.0625-b128"],
                        help="e2e configs: 'shipped', 'dense' or 'r<ratio>-b<bits>[-trained|-mlp<D>][-centred][-bs<N>]"
                             "[-mean][-last<N>]' "
                             "(trained: `gsa train-hash` bundle; mlp<D>: `gsa train-hash --method mlp --depth D`; "
                             "centred: spec-13 key means from `gsa calibrate-centre`; mean: block-mean score; "
                             "last<N>: force blocks 0 and the N most recent, same budget)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192],
                        help="passkey: prompt lengths in tokens")
    parser.add_argument("--depths", type=_fraction("--depths"), nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9],
                        help="passkey: where the pass key sits, as fractions of the filler (0.1 = 10%%)")
    parser.add_argument("--passkey-configs", nargs="+", default=["shipped", "r0.125-b128", "r0.0625-b128"],
                        help="passkey configs, named as for --e2e")
    parser.add_argument("--task-configs", nargs="+", default=["shipped", "r0.125-b128", "quest-r0.125"],
                        help="multikey / vartrack configs, named as for --e2e, plus 'quest-r<ratio>[-bs<N>]' (the "
                             "Quest-style selection at the same budget, through the same paged path)")
    parser.add_argument("--prompts", type=int, default=1,
                        help="multikey / vartrack: prompts per length and depth; prompt j > 0 draws from seed "
                             "int(length + 1000 depth) + 100000 j (prompt 0 is the one-prompt runs' prompt)")
    parser.add_argument("--first-prompt", type=int, default=0,
                        help="multikey / vartrack: index j of the first prompt (with --prompts N: j .. j+N-1; "
                             "1 skips the prompt an earlier one-prompt run already scored)")
    parser.add_argument("--recall", action="store_true",
                        help="passkey: also measure attention-mass recall of every sparse decode step (host-side "
                             "softmax over all cached keys: slow at long contexts on CPU)")
    parser.add_argument("--skip-dense", action="store_true",
                        help="passkey: leave out the dense reference (it is deterministic: reuse an earlier run's "
                             "dense rows for the same lengths and depths)")
    parser.add_argument("--book", default="emma", help="Austen novel for the grid / e2e text")
    parser.add_argument("--tag", default=None, help="results name (None: the model name)")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the results JSON and plots")
    parser.add_argument("--device", default="cpu", help="torch device (cpu or cuda)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (None: torch's choice)")
    parser.add_argument("--block-size", type=int, default=None,
                        help="override the config's chunk_size (block size; None: the config's)")


def _named_config(cfg, name: str, model: str, shipped_threshold: bool = False):
    """A config by name (``--e2e``, ``--passkey-configs``, ``--task-configs``):

    * ``shipped``: the shipped config (seq-len threshold 1 unless ``shipped_threshold``);
    * ``dense``;
    * ``r<ratio>-b<bits>[-<extra>...]``: the shipped config with every sparse layer at
      that ratio and bits (seq-len threshold 1); extras, in any order:
      ``trained`` (the ``gsa train-hash`` linear bundle), ``mlp<D>`` (the spec-12 bundle
      of ``gsa train-hash --method mlp --depth D``), ``centred`` (spec-13 centred key
      codes: the key means ``gsa calibrate-centre`` wrote, turned into per-bit
      thresholds ``mu W`` for whatever linear weights the config uses), ``bs<N>`` (block
      size), ``mean`` (``chunk_repre_method = "mean"``, spec 4), ``last<N>``
      (``must_select_blocks = [0, -N, ..., -1]``: the first and the ``N`` most recent
      blocks forced, inside the same budget). A missing bundle is an error naming
      the command that makes it.
    * ``quest-r<ratio>[-bs<N>][-last<N>]``: the config of ``r<ratio>-b<the config's
      bits>[...]`` (its budget rule and forced blocks; the caller runs it with the
      Quest-style selector).

    ``model``: the bundle key (``smollm2``, ``qwen``, or a model path's folder/file name)."""
    from gsa.eval.centre import default_centre_bundle
    from gsa.eval.model import eval_config
    from gsa.eval.train import default_bundle
    if name.startswith("quest-"):
        rest = name[len("quest-"):].split("-")
        return _named_config(cfg, "-".join([rest[0], f"b{cfg.hash_bits}"] + rest[1:]), model, shipped_threshold)
    if name == "shipped":
        return eval_config(cfg, threshold=None if shipped_threshold else 1)
    if name == "dense":
        return eval_config(cfg, ratio=1.0)
    expected = ("expected 'shipped', 'dense', 'r<ratio>-b<bits>[-trained|-mlp<D>][-centred][-bs<N>]' or "
                "'quest-r<ratio>[-bs<N>]'")
    parts = name.split("-")
    try:
        ratio, bits = float(parts[0][1:]), int(parts[1][1:])
        assert parts[0][0] == "r" and parts[1][0] == "b"
    except (ValueError, IndexError, AssertionError):
        raise SystemExit(f"gsa eval: config name {name!r}: {expected}") from None
    hw, bs, centre, repre, forced = None, None, None, None, None
    for extra in parts[2:]:
        if extra == "trained" or (extra.startswith("mlp") and extra[3:].isdigit()):
            if hw is not None:
                raise SystemExit(f"gsa eval: config name {name!r}: two weight choices (trained / mlp<D>); pick one")
            if extra == "trained":
                hw, make = default_bundle(model, bits), f"gsa train-hash --model {model} --bits {bits}"
            else:
                depth = int(extra[3:])
                hw = default_bundle(model, bits, "mlp", depth)
                make = f"gsa train-hash --model {model} --method mlp --depth {depth} --bits {bits}"
            if not hw.is_file():
                raise SystemExit(f"gsa eval: {name} needs {hw}: run `{make}` first")
        elif extra == "centred":
            centre = default_centre_bundle(model)
            if not centre.is_file():
                raise SystemExit(f"gsa eval: {name} needs the key means {centre}: run "
                                 f"`gsa calibrate-centre --model {model} --gate {bits}` first")
        elif extra.startswith("bs") and extra[2:].isdigit():
            bs = int(extra[2:])
        elif extra == "mean":
            repre = "mean"
        elif extra.startswith("last") and extra[4:].isdigit() and int(extra[4:]) >= 1:
            forced = [0] + list(range(-int(extra[4:]), 0))
        else:
            raise SystemExit(f"gsa eval: config name {name!r}: unknown part {extra!r} "
                             "(expected 'trained', 'mlp<D>', 'centred', 'bs<N>', 'mean' or 'last<N>' with N >= 1)")
    c = eval_config(cfg, ratio=ratio, bits=bits, hash_weight=hw)
    if centre is not None:
        if c.hash_weight_type == "mlp":  # spec 13 thresholds a linear projection; an MLP learns its own offsets
            raise SystemExit(f"gsa eval: config name {name!r}: 'centred' applies to linear codes (spec 13), "
                             "not to MLP codes (spec 12)")
        c = c.replace(hash_centre=str(centre))
    if repre is not None:
        c = c.replace(chunk_repre_method=repre)
    if forced is not None:
        c = c.replace(must_select_blocks=forced)
    return c.replace(chunk_size=bs) if bs else c


def _fraction(flag: str, open_low: bool = False):
    """argparse type: a float in [0, 1] ((0, 1] with open_low). A depth of 10
    meaning 10% would otherwise put the passkey past the prompt and run for
    minutes measuring nothing."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag}: expected a number, got {text!r}")
        if not ((0 < v if open_low else 0 <= v) and v <= 1):
            lo = "(0" if open_low else "[0"
            raise argparse.ArgumentTypeError(f"{flag}: expected a fraction in {lo}, 1], got {text} (write 10% as 0.1)")
        return v
    return parse


def run(args) -> int:
    """Run ``gsa eval``; writes JSON, markdown and plots; returns 0."""
    from gsa.eval import assets, harness
    from gsa.eval.load import ModelSpecError
    from gsa.eval.model import load_model
    from gsa.eval.report import write_results
    from gsa.eval.train import default_bundle

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, tok, cfg = load_model(args.model, args.device, gsa_config=args.gsa_config, verbose=True)
    except (ModelSpecError, assets.AssetError) as e:
        print(f"gsa eval: --model {args.model}: {e}", file=sys.stderr)
        return 2
    if args.block_size:
        cfg = cfg.replace(chunk_size=args.block_size)
        print(f"[gsa eval] block size {cfg.chunk_size} tokens (--block-size)", flush=True)
    info = getattr(model, "gsa_eval_info", {})
    # a path names its bundles (gsa train-hash) and results by its folder / file name
    key = pathlib.Path(str(args.model)).name.replace(".gguf", "")
    tag = args.tag or key
    out_dir = pathlib.Path(args.out)
    weights = {"random": None}
    if args.trained:
        paths = {b: str(default_bundle(key, b)) for b in args.bits if default_bundle(key, b).is_file()}
        if paths:
            weights["trained"] = paths
    for depth in args.mlp:  # spec 12 bundles; the harness's eval_config reads their type from the bundle
        paths = {b: str(default_bundle(key, b, "mlp", depth)) for b in args.bits
                 if default_bundle(key, b, "mlp", depth).is_file()}
        if not paths:
            raise SystemExit(f"gsa eval: --mlp {depth} needs `gsa train-hash --model {args.model} --method mlp "
                             f"--depth {depth} --bits ...` first")
        weights[f"mlp{depth}"] = paths
    res = {"meta": {"model": args.model, "model_name": cfg.model_name, "book": args.book, "prefix": args.prefix,
                    "eval_tokens": args.eval_tokens, "sample_every": args.sample_every, "ratios": args.ratios,
                    "bits": args.bits, "weights": list(weights), "block_size": cfg.chunk_size,
                    "must_select_blocks": list(cfg.must_select_blocks), "device": args.device,
                    "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "seq_len_threshold": "1 (every decode step sparse) except passkey 'shipped' (2048)",
                    "model_source": info.get("source"), "sliding_layers": info.get("sliding_layers"),
                    "bos_ids": info.get("bos_ids"), "notes": info.get("notes"), "head_dim": cfg.head_dim,
                    "quest_eqbytes_allowance": {b: harness.quest_extra_fraction(b, cfg.head_dim, cfg.chunk_size)
                                                for b in args.bits}}}
    t0 = time.time()
    if "grid" in args.parts or "e2e" in args.parts:
        text = assets.austen_texts()[args.book]
        print(f"[gsa eval] grid: {args.prefix} prefix + {args.eval_tokens} tokens of {args.book}", flush=True)
        g = harness.selection_grid(model, tok, cfg, text, args.prefix, args.eval_tokens, args.ratios, args.bits,
                                   weights, sample_every=args.sample_every)
        res["grid"], res["dense_ppl"] = g["grid"], g["dense_ppl"]
        res["meta"]["sparse_layers"] = g["sparse_layers"]
        res["meta"]["grid_seconds"] = g["seconds"]
        write_results(res, out_dir, tag)
        if "e2e" in args.parts:
            cfgs = {n: _named_config(cfg, n, key) for n in args.e2e}
            res["e2e"] = {}
            for n, c in cfgs.items():
                res["e2e"].update(harness.end_to_end(model, g, {n: c}, args.prefix, args.eval_tokens))
                write_results(res, out_dir, tag)
        del g
    retrieval_parts = [p for p in ("passkey", "multikey", "vartrack") if p in args.parts]
    for part in retrieval_parts:
        names = args.passkey_configs if part == "passkey" else args.task_configs
        cfgs = {} if args.skip_dense else {"dense": _named_config(cfg, "dense", key)}
        for n in names:
            cfgs[n] = _named_config(cfg, n, key, shipped_threshold=True)
        selectors = {n: "quest" for n in cfgs if n.startswith("quest-")}
        res["meta"].setdefault("config_bundles", {}).update(
            {n: {"hash_weight": c.hash_weight, "hash_centre": c.hash_centre} for n, c in cfgs.items()
             if c.hash_weight or c.hash_centre})
        groups = {}
        for n, c in cfgs.items():  # one dense prefill per block size; other codes rehash its cached keys
            groups.setdefault(c.chunk_size, {})[n] = c
        res[part] = []
        for n in args.lengths:
            for d in args.depths:
                for grp in groups.values():
                    obs = harness.PagedRecall if args.recall else None
                    if part == "passkey":
                        res[part] += harness.passkey(model, tok, grp, [n], [d], seed=int(n + 1000 * d),
                                                     observer_factory=obs, selectors=selectors)
                    else:
                        for j in range(args.first_prompt, args.first_prompt + max(1, args.prompts)):
                            seed = int(n + 1000 * d) + 100000 * j
                            recs = harness.retrieval(model, tok, part, grp, [n], [d], seed=seed,
                                                     observer_factory=obs, selectors=selectors)
                            res[part] += [dict(r, prompt=j) for r in recs]
                            write_results(res, out_dir, tag)
                write_results(res, out_dir, tag)
    res["meta"]["total_seconds"] = time.time() - t0
    paths = write_results(res, out_dir, tag)
    for k, p in paths.items():
        print(f"{k}: {p}")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="gsa eval")
    add_arguments(ap)
    sys.exit(run(ap.parse_args()))
