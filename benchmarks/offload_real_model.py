"""GSA offload driving a real model (CPU): greedy passkey decoding through
``gsa.eval.model.PagedRun`` with the sparse layers' attention served by
:class:`gsa.offload.OffloadedGSA` (host KV, a device pool that is just another
CPU tensor here), against the same decoding with all KV in one cache (GSASparse).

Prefill once (dense, the KV written to both the run's cache and the offload's host
KV and hash codes), then per variant greedy decoding of ``--max-new`` tokens:
GSA in one cache; offload at the minimum pool (on demand, eviction every step);
offload with a 1/4 pool and prefetch "previous"; 1/4 pool with "lookahead";
CPU top-k lag 0 and lag 1. Reports the answers, whether the tokens equal the
GSA run's, and the pool counters.

Usage: python benchmarks/offload_real_model.py [--context 4096] [--ratio 0.125] [--block-size 16]
Writes benchmarks/results/offload_real_model.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gsa.eval import metrics as M  # noqa: E402
from gsa.eval.model import PagedRun, _forward, eval_config, load_model  # noqa: E402
from gsa.offload import OffloadedGSA, min_pool_blocks  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


class OffloadedRun(PagedRun):
    """PagedRun whose offloaded layers decode through OffloadedGSA (prefill stays dense)."""

    off: OffloadedGSA = None

    def attend(self, layer, q, k, v, scale):
        if self.off is None or layer not in self.off.layers or q.shape[0] != 1:
            return super().attend(layer, q, k, v, scale)
        slots = self._slots(1)
        self.off.write_kv(layer, slots, k.to(self.dtype), v.to(self.dtype))
        seq = torch.tensor([self.pos + 1], dtype=torch.int32)
        return self.off.decode_attention(layer, self.step, q, self.block_table, seq, scale,
                                         block_table_host=self.block_table, seq_lens_host=seq)

    def decode(self, token: int) -> torch.Tensor:
        """PagedRun.decode with the step planned by the offload (it plans GSASparse's too)."""
        if self.off is None:
            return super().decode(token)
        self.step = self.off.begin_step([self.pos + 1], block_table_host=self.block_table)
        logits = _forward(self.model, self, torch.tensor([token], device=self.device), self.pos)
        self.pos += 1
        return logits


def attach(run: OffloadedRun, pool_blocks, **kw) -> OffloadedGSA:
    """An OffloadedGSA over ``run``'s config, loaded with its prefilled KV and codes."""
    off = OffloadedGSA(run.gsa, run.nb, pool_blocks, 1, run.nb * run.bs, run.hkv, run.d, run.dtype, **kw)
    off.load_prefilled({l: (run.k_cache[l], run.v_cache[l]) for l in off.layers}, run.hash_caches)
    run.off = off
    return off


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "qwen"])
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--ratio", type=float, default=0.125)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--depth", type=float, default=0.5)
    ap.add_argument("--max-new", type=int, default=10)
    args = ap.parse_args(argv)
    model, tok, cfg = load_model(args.model)
    cfg = eval_config(cfg.replace(chunk_size=args.block_size), ratio=args.ratio)
    key = 48151
    ids = M.passkey_prompt(tok, args.context, args.depth, key)
    run = OffloadedRun(model, cfg, max_tokens=ids.shape[0] + args.max_new + 1)
    t0 = time.time()
    first = run.prefill(ids)
    snap = run.snapshot()
    print(f"prefill {ids.shape[0]} tokens: {time.time() - t0:.0f}s", flush=True)
    stop = [tok.eos_token_id] if tok.eos_token_id is not None else []
    need = min_pool_blocks(run.gsa, 1, run.nb * run.bs)
    quarter = max(math.ceil(run.nb / 4), need)
    variants = [("gsa_one_cache", None, {}),
                ("offload_min_pool_ondemand", need, dict(prefetch=None)),
                ("offload_pool_1_4_previous", quarter, dict(prefetch="previous")),
                ("offload_pool_1_4_lookahead", max(quarter, min_pool_blocks(run.gsa, 1, run.nb * run.bs, 0, 1.5)),
                 dict(prefetch="lookahead", lookahead=1.5)),
                ("cpu_topk_lag0", quarter, dict(selector="cpu", cpu_lag=0)),
                ("cpu_topk_lag1", max(quarter, min_pool_blocks(run.gsa, 1, run.nb * run.bs, 1)),
                 dict(selector="cpu", cpu_lag=1))]
    rows, ref = [], None
    for name, pool, kw in variants:
        run.restore(snap)
        run.off = None
        off = attach(run, pool, **kw) if pool else None
        t1 = time.time()
        new = run.generate(first, args.max_new, stop)
        ans = tok.decode(new, skip_special_tokens=True)
        ref = new if ref is None else ref
        row = dict(variant=name, pool_slots=pool, host_blocks=run.nb, answer=ans, found=M.passkey_found(ans, key),
                   same_tokens_as_gsa=new == ref, seconds=time.time() - t1)
        if off is not None:
            row.update({k: v for k, v in off.stats().items() if k != "block_bytes"})
            if off.cpu_topk:
                row["cpu_fallbacks"] = off.cpu_topk.fallbacks
                off.cpu_topk.close()
        rows.append(row)
        print(json.dumps(row), flush=True)
    res = dict(model=args.model, args=vars(args), prompt_tokens=int(ids.shape[0]), passkey=key, rows=rows)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "offload_real_model.json"), "w") as f:
        json.dump(res, f, indent=1)
    md = [f"# GSA offload on {args.model} (CPU): passkey at {ids.shape[0]} tokens, depth {args.depth}, ratio "
          f"{args.ratio}, {args.block_size}-token blocks ({run.nb} blocks)", "",
          "| variant | pool slots | answer | found | same tokens as GSA | hit rate | predicted | fetched | prefetched |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['variant']} | {r['pool_slots'] or '-'} | {r['answer'].strip()!r} | {r['found']} | "
                  f"{r['same_tokens_as_gsa']} | {r.get('hit_rate', float('nan')):.3f} | "
                  f"{r.get('predicted_rate', float('nan')):.3f} | {r.get('fetched', '-')} | {r.get('prefetched', '-')} |")
    with open(os.path.join(RESULTS, "offload_real_model.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
