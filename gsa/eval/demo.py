"""The real-model demo (``gsa demo``): SmolLM2-135M-Instruct answers a passkey
question hidden in ~4K tokens of filler, once with dense attention and once with
GSA's shipped config in the decode path. Prints the answers, attention-mass
recall of GSA's selections, blocks read per decode step (sparse layers apart
from dense ones), and times (a whole decode step over all layers; the recall
observer's own time is left out).

    python -m gsa.eval.demo            # CPU, a few minutes on 2 cores
    python -m gsa.eval.demo --device cuda
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``gsa demo`` arguments."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("--tokens", type=int, default=4096, help="prompt length in tokens (filler around the pass key)")
    parser.add_argument("--depth", type=float, default=0.4,
                        help="where the pass key hides, as a fraction of the prompt (0 = start, 1 = end)")
    parser.add_argument("--passkey", type=int, default=68239, help="the number hidden in the prompt")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device for the model and the GSA ops (cpu or cuda)")
    parser.add_argument("--max-new", type=int, default=8, help="tokens to generate for each answer")
    parser.add_argument("--strict", action="store_true", help="exit 1 when GSA's answer misses the pass key")


def run(args) -> int:
    """Run the demo; returns 0 (1 on a missing asset, or with ``--strict`` when GSA misses the key)."""
    from tqdm.auto import tqdm
    from gsa.dispatch import resolve
    from gsa.eval import metrics as M
    from gsa.eval.assets import AssetError
    from gsa.eval.harness import PagedRecall
    from gsa.eval.model import PagedRun, eval_config, load_model

    try:
        model, tok, cfg = load_model("smollm2", args.device)
    except AssetError as e:
        print(f"gsa demo: {e}", file=sys.stderr)
        return 1
    dev = torch.device(args.device)
    ids = M.passkey_prompt(tok, args.tokens, args.depth, args.passkey)
    sparse_layers = sum(r < 1 for r in cfg.top_k_ratio_per_layer)
    print(f"model {cfg.model_name} on {dev}; prompt {ids.shape[0]} tokens, pass key {args.passkey} at "
          f"{args.depth:.0%} depth; GSA config: {cfg.hash_bits}-bit {cfg.hash_weight_type} hashes, block "
          f"{cfg.chunk_size}, ratio {min(cfg.top_k_ratio_per_layer)} on {sparse_layers}/{cfg.num_hidden_layers} "
          f"layers, forced blocks {list(cfg.must_select_blocks)}, sparse from {cfg.gpu_seq_len_threshold} tokens")
    print("backends: " + ", ".join(f"{op}={resolve(op, dev.type).name}" for op in
                                   ("hash_encode_and_cache", "hamming_dist_top_k", "kv_select", "paged_decode_attention")))
    run_ = PagedRun(model, cfg, max_tokens=ids.shape[0] + args.max_new + 1)
    bar = tqdm(total=ids.shape[0], desc="prefill (dense, hashing keys)", unit="tok")
    t0 = time.time()
    first = run_.prefill(ids.to(dev), chunk=1024, progress=bar.update)
    bar.close()
    t_prefill = time.time() - t0
    snap = run_.snapshot()
    stop = [tok.eos_token_id] if tok.eos_token_id is not None else []
    ok = {}
    for name, c in (("dense", eval_config(cfg, ratio=1.0)), ("GSA", cfg)):
        run_.restore(snap, c)
        rec = PagedRecall(run_.attn.get)
        observer_s = [0.0]  # the recall observer's own time, left out of the decode time

        def observe(*a, _rec=rec):
            t = time.time()
            _rec(*a)
            observer_s[0] += time.time() - t

        run_.observer = observe if name == "GSA" else None
        t1 = time.time()
        new = []
        logits = first
        for _ in tqdm(range(args.max_new), desc=f"decode ({name})", unit="tok"):
            tokid = int(torch.argmax(logits))
            new.append(tokid)
            if tokid in stop:
                break
            logits = run_.decode(tokid)
        dt = time.time() - t1 - observer_s[0]
        ans = tok.decode(new, skip_special_tokens=True).strip()
        ok[name] = M.passkey_found(ans, args.passkey)
        total = -(-ids.shape[0] // cfg.chunk_size)
        blocks = sum(run_.blocks_read) / max(1, len(run_.blocks_read))
        line = (f"{name:5s}: answer {ans!r} -> {'FOUND' if ok[name] else 'missed'}; {dt / max(1, len(new)):.2f} s/token "
                f"(whole decode step, all layers{'; recall observer excluded' if name == 'GSA' else ''}); ")
        if name == "GSA" and run_.sparse_blocks_read:
            sb = sum(run_.sparse_blocks_read) / len(run_.sparse_blocks_read)
            line += (f"blocks read per sparse layer {sb:.1f} of {total} ({sparse_layers} sparse layers; the "
                     f"{cfg.num_hidden_layers - sparse_layers} dense ones read all; mean over all layers {blocks:.1f})")
        else:
            line += f"blocks read per layer {blocks:.1f} of {total}"
        if name == "GSA":
            line += (f"; attention-mass recall {rec.acc.overall('mass_recall'):.3f} (mean over sparse layers and steps, "
                     f"worst layer {min(rec.acc.per_layer('mass_recall').values(), default=float('nan')):.3f})")
        print(line)
    print(f"prefill {t_prefill:.1f} s ({ids.shape[0] / t_prefill:.0f} tok/s)")
    return 1 if (args.strict and not ok.get("GSA")) else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="gsa demo")
    add_arguments(ap)
    sys.exit(run(ap.parse_args()))
