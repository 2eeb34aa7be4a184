"""Check named configs' hash codes on a device against the CPU before a long run.

``python -m gsa.eval.codes_check --model qwen --device cuda r0.125-b128-centred r0.125-b128-mlp1``
prints, on stdout, the names whose key and query codes on ``--device`` agree with the
CPU's (same ops, same config, fresh random post-RoPE-like inputs) on at least
``--min-agree`` of the bits, and on stderr one line per name: the agreement, or why the
name was left out (a missing bundle, an op that fails on the device). Spec 2 / 12 let
bits differ where a projection is within rounding of 0, so the default bar is 0.999,
not equality. ``benchmarks/device_long_tasks.sh`` uses it so that a config whose kernel
is broken on the device is dropped with a logged reason instead of ending the whole run.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Tuple

import torch

__all__ = ["code_agreement", "main"]


def code_agreement(cfg, device: str, tokens: int = 300, queries: int = 4, seed: int = 0) -> Tuple[float, float]:
    """Share of equal key and query code bits, ``device`` vs CPU, on the first scoring
    layer of ``cfg``: keys ``[tokens, Hkv, D]`` and queries ``[queries, Hq, D]`` drawn
    with a shared offset (as real keys have one). Returns ``(keys, queries)`` in [0, 1]."""
    from gsa.eval.selectors import unpack_signs
    from gsa.hash_codes import key_codes, query_codes
    layer = next(l for l, r in enumerate(cfg.top_k_ratio_per_layer) if r < 1)
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(tokens, cfg.num_key_value_heads, cfg.head_dim, generator=g) * 3 + 1
    q = torch.randn(queries, cfg.num_attention_heads, cfg.head_dim, generator=g) * 3
    out = []
    for fn, x in ((key_codes, k), (query_codes, q)):
        a = unpack_signs(fn(cfg, layer, x.to(device)).cpu())
        b = unpack_signs(fn(cfg, layer, x))
        out.append(float((a == b).float().mean()))
    return out[0], out[1]


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gsa.eval.codes_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen", choices=["smollm2", "qwen"],
                    help="packaged model whose shipped config (and bundles) the names refer to")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--min-agree", type=float, default=0.999)
    ap.add_argument("names", nargs="*", help="config names as for gsa eval --passkey-configs")
    args = ap.parse_args(argv)
    from gsa.config import GSAConfig
    from gsa.eval.cli import _named_config
    from gsa.eval.load import PACKAGED
    base = GSAConfig.for_model(PACKAGED[args.model])
    keep = []
    for name in args.names:
        try:
            cfg = _named_config(base, name, args.model)
            kq = code_agreement(cfg, args.device)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - one line per name; the caller goes on without it
            print(f"[codes_check] {name} on {args.device}: LEFT OUT: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        ok = min(kq) >= args.min_agree
        print(f"[codes_check] {name} on {args.device}: key / query code bits equal to the CPU's: "
              f"{kq[0]:.4f} / {kq[1]:.4f} -> {'kept' if ok else 'LEFT OUT'}", file=sys.stderr)
        if ok:
            keep.append(name)
    print(" ".join(keep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
