"""``gsa demo``: a synthetic but structured decode workload on a model config.

Keys are Gaussian noise except in a few *planted* blocks per row, whose keys
lean towards that row's query direction (per KV head), so the true attention
mass sits in known blocks. For each available backend the demo runs the
:class:`~gsa.sparse.GSASparse` path end to end on a few of the config's
scoring layers (cache the keys' codes, plan the step, select, sparse paged
attention) and prints:

* recall: the fraction of planted blocks the selection kept;
* attention error: ``||sparse - dense|| / ||dense||`` of the decode output;
* the same error for the oracle selection of equal size (blocks ranked by
  true attention mass), the floor any selection of that size can reach;
* whether the selection is bit-identical to the reference backend's;
* time of the selection and of sparse vs dense attention.

MLA configs attend in MQA form (one latent head, ``D = kv_lora_rank +
qk_rope_head_dim``, values = keys), which is enough to measure selection quality.
(The evaluation issue turns ``gsa demo`` into a real-model run.)
"""
from __future__ import annotations

import argparse
import time
from typing import Dict, List

import torch

__all__ = ["add_arguments", "run", "make_workload"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="Qwen3-4B", help="shipped config name (see `gsa configs`)")
    parser.add_argument("--config", default=None, help="a config JSON file (overrides --model)")
    parser.add_argument("--batch", type=int, default=4, help="decode rows")
    parser.add_argument("--seq-len", type=int, default=4096, help="tokens per row (rows vary by up to -25%%)")
    parser.add_argument("--layers", type=int, default=2, help="how many scoring layers to run")
    parser.add_argument("--planted", type=int, default=4, help="relevant blocks planted per row")
    parser.add_argument("--strength", type=float, default=0.35, help="how strongly planted keys align with the query")
    parser.add_argument("--backends", default=None, help="comma-separated backends (default: every available one)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)


def _progress(iterable, total: int, desc: str):
    try:
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=False)
    except ImportError:  # plain fallback
        def gen():
            for i, x in enumerate(iterable):
                print(f"{desc}: {i + 1}/{total}", flush=True)
                yield x
        return gen()


def make_workload(cfg, batch: int, seq_len: int, planted: int, strength: float, dtype, device, seed: int) -> Dict:
    """Paged K/V caches with planted relevant blocks and the matching queries.

    Returns a dict: ``k_cache, v_cache [NB, bs, Hkv, D]`` (MLA: ``Hkv = 1``,
    ``D = L + P``), ``q [B, Hq, D]``, ``block_table int32 [B, M]``, ``seq_lens
    int32 [B]``, ``seq_host`` (list), ``planted`` (per row, logical block ids),
    ``slots``/``keys`` for caching (all tokens, row after row).
    """
    g = torch.Generator().manual_seed(seed)
    bs = cfg.chunk_size
    hkv = 1 if cfg.is_mla else cfg.num_key_value_heads
    d = cfg.kv_lora_rank + cfg.qk_rope_head_dim if cfg.is_mla else cfg.head_dim
    hq = cfg.num_attention_heads
    lens = [max(1, seq_len - int(torch.randint(0, max(1, seq_len // 4), (1,), generator=g))) if b else seq_len
            for b in range(batch)]
    m = (max(lens) + bs - 1) // bs
    nb = batch * m + 1
    perm = torch.randperm(nb, generator=g)
    table = perm[: batch * m].reshape(batch, m).to(torch.int32)
    k_cache = torch.randn(nb, bs, hkv, d, generator=g)
    v_cache = k_cache.clone() if cfg.is_mla else torch.randn(nb, bs, hkv, d, generator=g)
    direction = torch.nn.functional.normalize(torch.randn(batch, hkv, d, generator=g), dim=-1)
    q = direction.repeat_interleave(hq // hkv, dim=1) * d ** 0.5 + 0.3 * torch.randn(batch, hq, d, generator=g)
    planted_ids: List[List[int]] = []
    for b in range(batch):
        n_blocks = (lens[b] + bs - 1) // bs
        # forced blocks (first, last two) are selected anyway: plant elsewhere
        pool = torch.arange(1, max(2, n_blocks - 2))
        pick = pool[torch.randperm(len(pool), generator=g)[:planted]].sort().values.tolist()
        planted_ids.append(pick)
        for blk in pick:
            phys = int(table[b, blk])
            k_cache[phys] += strength * d ** 0.5 * direction[b]
    slots, keys = [], []
    for b in range(batch):
        tok = torch.arange(lens[b])
        phys = table[b].long()[tok // bs]
        slots.append(phys * bs + tok % bs)
        keys.append(k_cache[phys, tok % bs])
    return {
        "k_cache": k_cache.to(dtype).to(device), "v_cache": v_cache.to(dtype).to(device),
        "q": q.to(dtype).to(device), "block_table": table.to(device),
        "seq_lens": torch.tensor(lens, dtype=torch.int32, device=device), "seq_host": lens,
        "planted": planted_ids, "slots": torch.cat(slots).to(device), "keys": torch.cat(keys).to(dtype).to(device),
        "num_blocks": nb,
    }


def oracle_selection(cfg, w: Dict, n_sel: List[int], k: int):
    """The best selection of the same size: per row the ``n_sel`` blocks holding the
    most true attention mass (summed over heads), forced blocks first.
    Returns ``(indices int32 [B, k], n_sel int32 [B])`` for ``kv_select``."""
    from gsa.reference import forced_block_mask

    bs, (b, hq, d) = cfg.chunk_size, w["q"].shape
    hkv = w["k_cache"].shape[2]
    k_cache, table, q_all = w["k_cache"].cpu(), w["block_table"].cpu(), w["q"].cpu()  # outside any step: host is fine
    rows = []
    for r in range(b):
        n_blocks = (w["seq_host"][r] + bs - 1) // bs
        keys = k_cache[table[r, :n_blocks].long()].float().reshape(-1, hkv, d)[: w["seq_host"][r]]
        qr = q_all[r].float().reshape(hkv, hq // hkv, d)
        probs = torch.softmax(torch.einsum("kgd,tkd->kgt", qr, keys) / d ** 0.5, dim=-1).sum(dim=(0, 1))
        mass = torch.zeros(n_blocks * bs).index_add_(0, torch.arange(len(probs)), probs).reshape(n_blocks, bs).sum(1)
        forced = forced_block_mask(torch.tensor([n_blocks]), n_blocks, cfg.must_select_blocks)[0]
        mass = torch.where(forced, torch.full_like(mass, float("inf")), mass)
        top = torch.topk(mass, n_sel[r]).indices.sort().values
        rows.append(torch.cat([top, torch.full((k - len(top),), -1)]))
    return torch.stack(rows).to(torch.int32).to(w["q"].device), torch.tensor(n_sel, dtype=torch.int32, device=w["q"].device)


def _now(device: torch.device) -> float:
    """Wall time after the device's queued work is done (timings of async devices)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize()  # type: ignore[attr-defined]
    return time.perf_counter()


def _split_mla(cfg, x: torch.Tensor):
    return x[..., : cfg.kv_lora_rank], x[..., cfg.kv_lora_rank:]


def run(args: argparse.Namespace) -> int:
    from gsa.config import GSAConfig
    from gsa.dispatch import backend_report, use_backend
    from gsa.sparse import GSASparse
    from gsa import ops

    cfg = GSAConfig.load(args.config) if args.config else GSAConfig.for_model(args.model)
    # the demo is about selection quality: make every long-enough row sparse
    cfg = cfg.replace(gpu_seq_len_threshold=1, gpu_concurrency_threshold=1, npu_seq_len_threshold=1,
                      npu_concurrency_threshold=1)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    report = backend_report()
    if args.backends:
        names = [n.strip() for n in args.backends.split(",") if n.strip()]
    else:
        names = [n for n, r in report.items() if r["available"]
                 and (device.type in r["devices"] or "*" in r["devices"])]
    if "reference" in names:
        names = ["reference"] + [n for n in names if n != "reference"]
    gs = GSASparse(cfg, device)
    layers = list(gs.scoring_layers[: max(1, args.layers)])
    w = make_workload(cfg, args.batch, args.seq_len, args.planted, args.strength, dtype, device, args.seed)
    kind = "MLA" if cfg.is_mla else "GQA"
    print(f"gsa demo: {cfg.model_name} ({kind}), {args.batch} rows x ~{args.seq_len} tokens, block {cfg.chunk_size}, "
          f"{args.planted} planted blocks/row, layers {layers}, {args.dtype} on {device}")
    with use_backend("reference"):
        dense = ops.paged_decode_attention(w["q"], w["k_cache"], w["v_cache"], w["block_table"], w["seq_lens"])
    results, ref_sel, oracle_err = [], {}, None
    for name in names:
        with use_backend(name):
            caches = gs.allocate_hash_caches(w["num_blocks"])
            t_sel = t_att = t_dense = 0.0
            recall, err, same = [], [], True
            for layer in _progress(layers, len(layers), f"{name}"):
                if cfg.is_mla:
                    c_kv, k_pe = _split_mla(cfg, w["keys"][:, 0])
                    gs.cache_keys(layer, caches[layer], w["slots"], c_kv, k_pe)
                    q_hash, q_rope = _split_mla(cfg, w["q"])
                else:
                    gs.cache_keys(layer, caches[layer], w["slots"], w["keys"])
                    q_hash, q_rope = w["q"], None
                step = gs.begin_step(w["seq_host"])
                t0 = _now(device)
                table, lens = gs.select(layer, step, w["block_table"], w["seq_lens"], caches[layer], q_hash, q_rope)
                t1 = _now(device)
                out = ops.paged_decode_attention(w["q"], w["k_cache"], w["v_cache"], table, lens)
                t2 = _now(device)
                ops.paged_decode_attention(w["q"], w["k_cache"], w["v_cache"], w["block_table"], w["seq_lens"])
                t3 = _now(device)
                t_sel += t1 - t0
                t_att += t2 - t1
                t_dense += t3 - t2
                for b in range(args.batch):
                    chosen = set(table[b, : int(step.plan.n_sel[layer][b])].tolist())
                    hits = sum(int(w["block_table"][b, blk]) in chosen for blk in w["planted"][b])
                    recall.append(hits / max(1, len(w["planted"][b])))
                err.append(float((out.float() - dense.float()).norm() / dense.float().norm()))
                if oracle_err is None:  # once: the error of the best selection of the same size
                    with use_backend("reference"):
                        idx, ns = oracle_selection(cfg, w, step.plan.n_sel[layer].tolist(), step.plan.k)
                        o_tab, o_len = ops.kv_select(idx, ns, w["block_table"], w["seq_lens"], cfg.chunk_size)
                        o_out = ops.paged_decode_attention(w["q"], w["k_cache"], w["v_cache"], o_tab, o_len)
                    oracle_err = float((o_out.float() - dense.float()).norm() / dense.float().norm())
                if name == "reference":
                    ref_sel[layer] = (table.clone(), lens.clone())
                elif layer in ref_sel:
                    same &= torch.equal(ref_sel[layer][0].cpu(), table.cpu()) and torch.equal(ref_sel[layer][1].cpu(), lens.cpu())
        n = len(layers)
        results.append([name, f"{sum(recall) / len(recall):.3f}", f"{sum(err) / len(err):.4f}",
                        "yes" if name == "reference" or same else "NO",
                        f"{1e3 * t_sel / n:.1f}", f"{1e3 * t_att / n:.1f}", f"{1e3 * t_dense / n:.1f}"])
    from gsa.cli import _print_table

    plan = step.plan
    kept = float(sum(plan.n_sel[layers[-1]])) / float(sum(plan.n_blocks))
    print(f"blocks kept: {kept:.1%} (k = {plan.k}, budgets {plan.budgets[layers[-1]].tolist()}); "
          f"attention error of the oracle selection of the same size (top blocks by true attention mass): "
          f"{oracle_err:.4f}")
    _print_table(["backend", "recall", "attn_rel_err", "same_as_ref", "select_ms", "sparse_attn_ms", "dense_attn_ms"], results)
    skipped = [n for n, r in report.items() if n not in names]
    if skipped:
        print("not run: " + "; ".join(f"{n} ({report[n]['reason']})" for n in skipped))
    return 0
