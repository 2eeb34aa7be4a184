"""Screen MLP-code training choices (spec 12, ``gsa.eval.train_mlp``) on one capture.

``gsa train-hash --method mlp`` captures the model's queries and keys on every call
(minutes on a CPU); a screen of training options (target, steps, temperature,
learning rate, depth, bits, tokens) only needs that capture once. This script
captures (or loads) it, trains each variant in turn with
:func:`gsa.eval.train_mlp.train_mlp_hash` exactly as the CLI would, and records the
held-out scores the trainer computes on the last quarter of the training text:
token level (share of each query's top-32 keys its code ranks in the top 1/8) and
block level (share of the exact attention mass inside the blocks GSA's selection
picks at ratio 1/8, forced blocks included). The eval-text numbers come from
``benchmarks/mlp_codes_study.py`` on the saved bundles.

    python benchmarks/mlp_codes_train_study.py --model qwen --text prideprejudice --tokens 8192 \\
        --cache /tmp/qwen-pp-8192.pt --out-dir /tmp/mlp-screen --json benchmarks/results/accuracy_qwen-mlp-screen.json \\
        --variant top150:depth=1,steps=150,target=top --variant block150:depth=1,steps=150,target=block \\
        --variant topblock150:depth=1,steps=150,target=top+block,use_tokens=4096

A variant is ``NAME:key=value,...`` with keys of ``train_mlp_hash`` (``depth``,
``steps``, ``target``, ``tau``, ``lr``, ``block_weight``, ``queries``, ``hidden``, ``repre``, ...)
plus ``bits`` (default 128) and ``use_tokens`` (train on the first N captured tokens;
default all); ``target`` defaults to ``top+block``, as in the CLI. Bundles go to
``OUT_DIR/NAME.safetensors``.
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

_STR_KEYS = {"target", "repre"}


def parse_variant(spec: str) -> tuple:
    """``"NAME:k=v,k=v"`` -> ``(name, {k: int | float | str})``; a bad spec is an error naming it."""
    name, _, rest = spec.partition(":")
    if not name:
        raise SystemExit(f"--variant {spec!r}: expected NAME:key=value,...")
    kw = {}
    for item in filter(None, rest.split(",")):
        k, eq, v = item.partition("=")
        if not eq:
            raise SystemExit(f"--variant {spec!r}: {item!r} is not key=value")
        if k in _STR_KEYS:
            kw[k] = v
        else:
            try:
                kw[k] = int(v)
            except ValueError:
                kw[k] = float(v)
    return name, kw


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen")
    ap.add_argument("--text", default="prideprejudice")
    ap.add_argument("--tokens", type=int, default=8192, help="tokens to capture")
    ap.add_argument("--cache", default=None, help="capture file: loaded if present, else written")
    ap.add_argument("--variant", action="append", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--json", default=None, help="append-safe results file (rewritten with all variants run so far)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [parse_variant(v) for v in args.variant]

    from gsa.eval import assets
    from gsa.eval.model import load_model
    from gsa.eval.train import capture
    from gsa.eval.train_mlp import train_mlp_hash

    model, tok, cfg = load_model(args.model)
    cache = pathlib.Path(args.cache) if args.cache else None
    t0 = time.time()
    if cache is not None and cache.is_file():
        store = torch.load(cache)
        print(f"loaded capture {cache}", flush=True)
    else:
        text = assets.shakespeare_text() if args.text == "shakespeare" else assets.austen_texts()[args.text]
        store = capture(model, tok, text, args.tokens)
        print(f"captured {args.tokens} tokens of {args.text} ({time.time() - t0:.0f}s)", flush=True)
        if cache is not None:
            torch.save(store, cache)
    del model
    out_dir = pathlib.Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath = pathlib.Path(args.json) if args.json else None
    rows = json.loads(jpath.read_text())["variants"] if jpath is not None and jpath.is_file() else []
    for name, kw in variants:
        kw = dict(kw)
        bits = int(kw.pop("bits", 128))
        n = int(kw.pop("use_tokens", 0)) or next(iter(store.values()))[0].shape[0]
        sub = {l: (q[:n], k[:n]) for l, (q, k) in store.items()}
        t1 = time.time()
        res = train_mlp_hash(cfg, sub, bits, out_dir / f"{name}.safetensors", log=lambda *a: None, **kw)
        mean = lambda d, i: sum(v[i] for v in d.values()) / len(d)  # noqa: E731
        row = {"name": name, "bits": bits, "tokens": n, **kw,
               "heldout_top_recall": {"random": mean(res["heldout"], 0), "mlp": mean(res["heldout"], 1)},
               "heldout_block_recall": {"random": mean(res["heldout_block"], 0), "mlp": mean(res["heldout_block"], 1)},
               "final_loss": res["final_loss"], "seconds": round(time.time() - t1, 1),
               "bundle": str(out_dir / f"{name}.safetensors")}
        print(f"{name}: held-out token recall random {row['heldout_top_recall']['random']:.4f} "
              f"mlp {row['heldout_top_recall']['mlp']:.4f}; block mass recall random "
              f"{row['heldout_block_recall']['random']:.4f} mlp {row['heldout_block_recall']['mlp']:.4f} "
              f"({row['seconds']} s)", flush=True)
        rows = [r for r in rows if r["name"] != name] + [row]
        if jpath is not None:
            jpath.parent.mkdir(parents=True, exist_ok=True)
            jpath.write_text(json.dumps({"meta": {
                "model": args.model, "text": args.text, "captured_tokens": args.tokens,
                "metric": "held-out (last quarter of the training tokens) token / block recall at 1/8, "
                          "gsa.eval.train_mlp.heldout_top_recall / heldout_block_recall",
                "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
                "variants": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
