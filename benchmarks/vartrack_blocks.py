"""Why a sparse config loses vartrack names: which blocks hold the chain's definition
lines, and whether GSA / Quest / the oracle read them at each decode step and layer
(gsa/eval/needle_blocks.py; docs/accuracy.md, "Why GSA loses vartrack names at 90 %
depth"; issue 17).

Builds the same vartrack prompt as ``gsa eval --parts vartrack`` for one length and
depth (seed ``int(length + 1000 * depth)``, as the CLI), one dense prefill, then greedy
decoding per config with a :class:`~gsa.eval.needle_blocks.NeedleBlocks` observer.
Writes ``<out>/accuracy_<tag>.json`` (default tag ``<model>-vartrack-blocks<K>k-d<depth %>``:
answers, per-needle summaries over all steps and at step 0, step 0's rows or with
``--all-rows`` every row) and ``.md`` (the tables), and prints the tables::

    python benchmarks/vartrack_blocks.py --model qwen --length 8192 --depth 0.9 \\
        --configs r0.125-b128 r0.125-b128-mean quest-r0.125      # -> accuracy_qwen-vartrack-blocks8k-d90.*
"""
from __future__ import annotations

import argparse
import json
import pathlib
import random
import re
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from gsa.eval import cli, harness  # noqa: E402
from gsa.eval import needle_blocks as NB  # noqa: E402
from gsa.eval import tasks as T  # noqa: E402


def needle_labels(prompt) -> dict:
    """Label -> sentence for the chain hops (``c0 NAME`` holds the value) and the
    distractor chain (``x0 NAME`` ...), from a vartrack :class:`TaskPrompt`."""
    chain, dist = list(prompt.expected), list(prompt.info["distractor_names"])
    out = {}
    for _, sentence in prompt.needles:
        name = re.search(r"VAR ([A-Z]{5}) =", sentence).group(1)
        label = f"c{chain.index(name)} {name}" if name in chain else f"x{dist.index(name)} {name}"
        out[label] = sentence
    return dict(sorted(out.items()))


def _cell(r: dict) -> str:
    if r["forced"]:
        return "F"
    return "/".join(f"{k[0]}{r[f'{k}_rank']}{'*' if r[f'{k}_sel'] else ''}" for k in NB.SELECTORS)


def tables(res: dict) -> str:
    """Markdown: per config, the per-needle summary (all steps, step 0) and the step-0 layer table."""
    lines = [f"# vartrack needle blocks: {res['meta']['tag']}", "",
             f"{res['meta']['tokens']} tokens, depth {res['meta']['depth']:.0%}, {res['meta']['block_size']}-token "
             f"blocks ({res['meta']['n_blocks']}), expected {res['meta']['expected']}", "",
             "Needle blocks: " + ", ".join(f"{k}: {v}" for k, v in res["meta"]["needle_blocks"].items()), "",
             "Cells of the layer table: F = forced; else g/q/o = rank of the block among the non-forced blocks "
             "by GSA / Quest / oracle (1 = first pick), * = inside the budget.", ""]
    for name, rec in res["configs"].items():
        lines += [f"## {name} ({rec['selector']}): score {rec['score']:.2f}, answer {rec['answer']!r}", ""]
        for which in ("all_steps", "step0"):
            lines += [f"{which}: share of (step, layer) rows where each selector reads the needle block; median "
                      "non-forced rank; mean mass share", "",
                      "| needle | blocks | forced | free | run read | gsa read | quest read | oracle read | gsa rank | "
                      "quest rank | oracle rank | mass |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for label, d in rec[which].items():
                lines.append(f"| {label} | {d['blocks']} | {d['forced']:.2f} | {d['free']:.0f} | {d['run_read']:.2f} | "
                             f"{d['gsa_read']:.2f} | {d['quest_read']:.2f} | {d['oracle_read']:.2f} | "
                             f"{d['gsa_rank_median']} | {d['quest_rank_median']} | {d['oracle_rank_median']} | "
                             f"{d['mass']:.4f} |")
            lines.append("")
        labels = list(rec["step0"])
        lines += ["step 0 per layer:", "", "| layer | " + " | ".join(labels) + " |",
                  "|---" * (len(labels) + 1) + "|"]
        by = {}
        for r in rec["rows"]:
            if r["step"] == 0:
                by.setdefault(r["layer"], {}).setdefault(r["needle"], []).append(_cell(r))
        for layer in sorted(by):
            lines.append(f"| {layer} | " + " | ".join(" ".join(by[layer].get(l, ["-"])) for l in labels) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen")
    ap.add_argument("--length", type=int, default=8192)
    ap.add_argument("--depth", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=None,
                    help="prompt seed (None: int(length + 1000 * depth), gsa eval's first prompt)")
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--configs", nargs="+", default=["r0.125-b128", "quest-r0.125"],
                    help="gsa eval --task-configs names (one block size)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--all-rows", action="store_true",
                    help="keep every step's rows in the JSON (default: step 0's; 8K x 3 configs is ~5 MB with all)")
    ap.add_argument("--tag", default=None)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from gsa.eval.model import load_model
    model, tok, cfg = load_model(args.model, args.device)
    cfg = cfg.replace(chunk_size=args.block_size)
    key = pathlib.Path(str(args.model)).name.replace(".gguf", "")
    cfgs = {n: cli._named_config(cfg, n, key, shipped_threshold=True) for n in args.configs}
    selectors = {n: ("quest" if n.startswith("quest-") else "gsa") for n in cfgs}
    seed = args.seed if args.seed is not None else int(args.length + 1000 * args.depth)
    prompt = T.make_prompt("vartrack", tok, args.length, args.depth, random.Random(seed))
    labels = needle_labels(prompt)
    spans = dict(zip(labels, NB.token_spans(tok, prompt.ids, list(labels.values()))))
    bs = args.block_size
    first = next(iter(cfgs.values()))
    obs = NB.NeedleBlocks(first, spans)
    t0 = time.time()
    recs = harness._decode_configs(model, tok, cfgs, prompt.ids, T.max_new_tokens("vartrack"), lambda: obs, selectors)
    tag = args.tag or f"{key}-vartrack-blocks{args.length // 1024}k-d{round(args.depth * 100)}"
    res = {"meta": {"tag": tag, "model": args.model, "tokens": int(prompt.ids.shape[0]), "depth": args.depth,
                    "seed": seed, "block_size": bs, "n_blocks": -(-int(prompt.ids.shape[0]) // bs),
                    "expected": prompt.expected, "value": prompt.info["value"],
                    "needle_blocks": {k: sorted({s // bs, (e - 1) // bs}) for k, (s, e) in spans.items()},
                    "needle_tokens": spans, "seconds": None}, "configs": {}}
    for rec in recs:
        part = obs.by_config[rec["config"]]
        sc = T.score("vartrack", rec["answer"], prompt.expected)
        res["configs"][rec["config"]] = {"selector": rec["selector"], "answer": rec["answer"], "score": sc,
                                         "blocks_read": rec["blocks_read"], "all_steps": NB.summarise(part),
                                         "step0": NB.summarise(part, step=0),
                                         "rows": part if args.all_rows else [r for r in part if r["step"] == 0]}
    res["meta"]["seconds"] = time.time() - t0
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"accuracy_{tag}.json").write_text(json.dumps(res, indent=1))
    md = tables(res)
    (out / f"accuracy_{tag}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
