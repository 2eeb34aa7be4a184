"""The equal-bytes arithmetic behind "GSA vs Quest at equal bytes" (docs/accuracy.md,
*Why 128-token blocks are out of reach*), for the eval rows of the codes studies.

Per token and KV head (fp16 KV, head dim ``D``): the KV is ``4 D`` bytes, a GSA code
``R / 8`` bytes, Quest's per-block channel min and max ``4 D / bs`` bytes. At equal
bytes Quest may read ``a = (R / (32 D) - 1 / bs) * n_blocks`` blocks more than GSA's
budget (:func:`gsa.eval.harness.quest_extra_fraction`). This prints, per block size and
code width, the bytes, ``a`` over the rows, and per row group the block count, GSA's
budget at the ratio (spec 8, the same :class:`gsa.policy.GSAPolicy` the studies use),
its forced and free blocks, and Quest's extra blocks rounded up (the harness's rule),
rounded down and exact. No model is loaded: it is the arithmetic only.

    python benchmarks/accuracy_equal_bytes_budgets.py --head-dim 64 --prefix 2048 --eval-tokens 2048 \\
        --sample-every 64 --block-sizes 16 32 128 --bits 32 64 128 256
"""
from __future__ import annotations

import argparse
import math
import pathlib
import sys
from collections import Counter

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rows_table(head_dim: int, seq_lens: np.ndarray, bs: int, bits: list, ratio: float, must_select: list) -> list:
    """One dict per distinct ``(n_blocks -> budget)`` group of ``seq_lens`` at block size ``bs``."""
    from gsa.config import GSAConfig
    from gsa.eval.harness import quest_extra_fraction
    from gsa.policy import GSAPolicy

    cfg = GSAConfig(model_name="arith", num_hidden_layers=2, num_attention_heads=1, num_key_value_heads=1,
                    head_dim=head_dim, hash_bits=32, chunk_size=bs, top_k_ratio_per_layer=[1.0, ratio],
                    must_select_blocks=list(must_select), gpu_seq_len_threshold=1)
    pol = GSAPolicy(cfg, "cpu")
    nb = pol.n_blocks(seq_lens)
    bud = np.maximum(pol.sparse_budget(1, nb), pol.n_forced(nb))
    nf = pol.n_forced(nb)
    out = []
    for (b, n_lo, n_hi), cnt in sorted(Counter((int(bb), int(nb[bud == bb].min()), int(nb[bud == bb].max()))
                                               for bb in bud).items()):
        row = {"rows": cnt, "n_blocks": (n_lo, n_hi), "budget": b, "forced": int(nf[bud == b][0]),
               "free": b - int(nf[bud == b][0])}
        for r in bits:
            a = quest_extra_fraction(r, head_dim, bs)
            row[r] = (a * n_lo, a * n_hi, math.ceil(a * n_lo), math.ceil(a * n_hi), math.floor(a * n_lo),
                      math.floor(a * n_hi))
        out.append(row)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--prefix", type=int, default=2048)
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument("--sample-every", type=int, default=64)
    ap.add_argument("--ratio", type=float, default=0.125)
    ap.add_argument("--block-sizes", type=int, nargs="+", default=[16, 32, 128])
    ap.add_argument("--bits", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--must-select", type=int, nargs="+", default=[0, -2, -1])
    args = ap.parse_args(argv)
    d = args.head_dim
    # decode rows of the studies: query at position p sees p + 1 tokens
    seq = np.arange(args.prefix, args.prefix + args.eval_tokens, args.sample_every, dtype=np.int64) + 1
    print(f"D = {d}: KV {4 * d} bytes per token and KV head; rows: seq_len {seq[0]}..{seq[-1]} every "
          f"{args.sample_every} ({len(seq)} rows); ratio {args.ratio}; forced {args.must_select}\n")
    for bs in args.block_sizes:
        tab = rows_table(d, seq, bs, args.bits, args.ratio, args.must_select)
        if len(tab) > 4:  # many budget steps: one group for all rows
            lo, hi = tab[0], tab[-1]
            tab = [{"rows": len(seq), "n_blocks": (lo["n_blocks"][0], hi["n_blocks"][1]),
                    "budget": f"{lo['budget']}..{hi['budget']}", "free": f"{lo['free']}..{hi['free']}",
                    **{r: (lo[r][0], hi[r][1], lo[r][2], hi[r][3], lo[r][4], hi[r][5]) for r in args.bits}}]
        print(f"## {bs}-token blocks: Quest metadata {4 * d / bs:g} bytes per token and head")
        print("| R | GSA code bytes | allowance, blocks per block | " + " | ".join(
            f"n_blocks {r['n_blocks'][0]}-{r['n_blocks'][1]} (GSA budget {r['budget']}, {r['free']} free; "
            f"{r['rows']} rows): Quest extra blocks exact / rounded up / down" for r in tab) + " |")
        print("|---" * (3 + len(tab)) + "|")
        for r in args.bits:
            a = r / (32 * d) - 1 / bs
            rng = lambda u, v: f"{u}" if u == v else f"{u}..{v}"  # noqa: E731
            cells = [f"{row[r][0]:+.2f}..{row[r][1]:+.2f} / {rng(row[r][2], row[r][3])} / {rng(row[r][4], row[r][5])}"
                     for row in tab]
            frac = f"{a:+.5f} ({'+' if a > 0 else '-'}1/{abs(1 / a):.4g})" if a else "0"
            print(f"| {r} | {r / 8:g} | {frac} | " + " | ".join(cells) + " |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
