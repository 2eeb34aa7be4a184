"""The markdown report of ``kernel_sweep.py`` (its JSON result -> ``kernel_sweep.md``)."""
from __future__ import annotations

import json

from kernel_sweep import ATTN_GRID, B, BS, D, HKV, HQ, R, SCORE_BEFORE, SCORE_GRID


def _ctx(ctx) -> str:
    return f"{int(ctx) // 1024}K"


def _ms_tbs(r) -> str:
    return f"{r['ms'] * 1e3:.1f} ({r['tbs']:.2f})"


def _variant_table(title, case_col, cases, head, case_label, cell):
    """Lines of a table with one row per case (``cases``: rows per case, the same variants in the
    same order in each) and one column per variant (``head(row)``); a cell is ``cell(row)``, marked
    DIFFERENT where the variant's output differed from the reference."""
    first = next(iter(cases.values()))
    out = ["", title, "", f"| {case_col} | " + " | ".join(head(r) for r in first) + " |", "|---|" + "---|" * len(first)]
    for case, rows in cases.items():
        out.append(f"| {case_label(case)} | " + " | ".join(
            ("error" if "error" in r else cell(r) + ("" if r["same"] else " DIFFERENT")) for r in rows) + " |")
    return out


def _select_key(r):
    """(fan-out, radix width, prefetch, warps) of a selection row."""
    return r["fanout"], r.get("radix", 0), r.get("prefetch", False), r.get("num_warps", 0)


def _chosen_select(k):
    """The selection row key of the chosen ``select`` knobs."""
    s = k.get("select", {})
    return (s.get("fanout", 1), s.get("radix_bits", 8) if s.get("radix") else 0, s.get("prefetch", False),
            s.get("num_warps", 0))


def _select_table(res, k):
    """One line per selection variant, one column per (context, key set): us, DIFFERENT or error."""
    cases = [(ctx, m) for ctx, rows in res["select"].items() for m in dict.fromkeys(r["method"] for r in rows)]
    first = res["select"][cases[0][0]]
    variants = list(dict.fromkeys(_select_key(r) for r in first))
    out = ["", "Selection kernel (`_select_kernel`, kv_select gather fused; budget 1/8, forced [0, -2, -1]) by "
           "search (fan-out; radix digit width), prefetch and warps (0: by row width), us per context and key set "
           "(`int32`: uniform keys, reported only):", "",
           "| fan-out | radix | prefetch | warps | " + " | ".join(f"{_ctx(c)} {m}" for c, m in cases) + " |",
           "|---|---|---|---|" + "---|" * len(cases)]
    for v in variants:
        cells = []
        for ctx, m in cases:
            r = [x for x in res["select"][ctx] if x["method"] == m and _select_key(x) == v]
            if not r:
                cells.append("-")
            elif "error" in r[0]:
                cells.append("error")
            else:
                cells.append(f"{r[0]['ms'] * 1e3:.1f}" + ("" if r[0].get("same", True) else " DIFFERENT"))
        mark = " (chosen)" if v == _chosen_select(k) else ""
        out.append(f"| {v[0]} | {v[1] or 'off'}{mark} | {'yes' if v[2] else 'no'} | {v[3]} | " + " | ".join(cells)
                   + " |")
    return out


def markdown(res) -> str:
    k = res["knobs"]
    lines = [f"# Kernel launch sweep ({res['device']}, torch {res['torch']}, triton {res['triton']}, {res['when']})", "",
             f"B={B}, Hq={HQ}, Hkv={HKV}, D={D}, R={R}, bs={BS}, bf16; CUDA-graph replay medians. "
             f"Copy bandwidth {res['copy_tbs']:.2f} TB/s. Chosen: `{json.dumps(k)}`.", "",
             "| context | score kernel: 12:02 tuning TB/s | chosen TB/s | best bit-plane TB/s | select 1/8 binary us | "
             "chosen search and warps us |",
             "|---|---|---|---|---|---|"]
    for ctx in res.get("score", {}):
        rows = res["score"][ctx]
        d = [r for r in rows if all(r[x] == SCORE_BEFORE[x] for x in SCORE_BEFORE)][0]
        c = [r for r in rows if all(r[x] == k["score"][x] for x in SCORE_GRID)][0]
        pl = max((r["tbs"] for r in rows if r["planes"] and r["same"]), default=float("nan"))
        if not all(r["same"] for r in rows):
            lines.append(f"| {int(ctx) // 1024}K | score variants with DIFFERENT keys (never chosen): "
                         f"{[x for x in rows if not x['same']]} |||||")
        s1 = [r for r in res["select"][ctx] if r["fanout"] == 1 and r.get("num_warps", 0) == 0
              and r["method"] == "max" and not r.get("radix", 0)][0]
        sc = [r for r in res["select"][ctx] if _select_key(r) == _chosen_select(k) and r["method"] == "max"]
        lines.append(f"| {int(ctx) // 1024}K | {d['tbs']:.2f} | {c['tbs']:.2f} | {pl:.2f} | {s1['ms'] * 1e3:.1f} | "
                     f"{sc[0]['ms'] * 1e3:.1f} |" if sc else "| - |")
    if "op" in res:
        lines += ["", "Whole selection as the hot path runs it (`select_blocks`: scores, selection, kv_select; "
                  "budget 1/8, forced [0, -2, -1]), us (code TB/s):", "",
                  "| context | method | planes | fuse | fused register cap | radix | prefetch | score launch | us | "
                  "TB/s | same result |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        chosen = (k["score"]["planes"], k["select"]["fuse"], k["select"]["fuse_maxnreg"], _chosen_select(k)[1])
        for ctx, rows in res.get("op", {}).items():
            for r in rows:
                mark = " (chosen)" if (r["planes"], r["fuse"], r["maxnreg"], r.get("radix", 0)) == chosen else ""
                lines.append(f"| {int(ctx) // 1024}K | {r['method']} | {r['planes']} | {r['fuse']}{mark} | "
                             f"{r['maxnreg'] or '-'} | {r.get('radix', 0) or 'off'} | "
                             f"{'yes' if r.get('prefetch') else 'no'} | "
                             f"{r['num_warps']} warps, unroll={r['unroll']}, blocks={r.get('blocks', 1)} | "
                             f"{r['ms'] * 1e3:.1f} | {r['tbs']:.2f} | {'yes' if r['same'] else 'NO ' + r.get('error', '')} |")
        lines += ["", "Hot-path selection program (query hash + the above), `max`, with and without PDL "
                  f"(chosen: pdl={k['score']['pdl']}):", "", "| context | variant | launches | us | TB/s | same result |",
                  "|---|---|---|---|---|---|"]
        for ctx, rows in res.get("pdl", {}).items():
            for r in rows:
                lines.append(f"| {int(ctx) // 1024}K | {r['variant']} | {r.get('launches', '-')} | {r['ms'] * 1e3:.1f} | "
                             f"{r['tbs']:.2f} | {'yes' if r['same'] else 'NO ' + r.get('error', '')} |")
    if res.get("select"):
        lines += _select_table(res, k)
    if "attention" in res:
        lines += ["", "| context | SDPA ms | dense: fifth session's launch ms | chosen ms | dense/SDPA chosen | sparse 1/8 before | chosen |",
                  "|---|---|---|---|---|---|---|"]
        for ctx, c in res.get("attention", {}).items():
            ok = [r for r in c["rows"] if "error" not in r]
            old = [r for r in ok if (r["block_n"], r["num_warps"], r["num_stages"], r["per_sm"], r["min_tokens"],
                                     r.get("fuse", False)) == (64, 4, 2, 32, 512, False)]
            ch = [r for r in ok if all(r[x] == k["attention"][x] for x in ATTN_GRID)][0]
            o = old[0] if old else {"dense_ms": float("nan"), "sparse_1/8_ms": float("nan")}
            lines.append(f"| {int(ctx) // 1024}K | {c['sdpa_ms']:.4f} | {o['dense_ms']:.4f} | {ch['dense_ms']:.4f} | "
                         f"{c['sdpa_ms'] / ch['dense_ms']:.3f} | {o['sparse_1/8_ms']:.4f} | {ch['sparse_1/8_ms']:.4f} |")
    if "hash" in res:
        ok = [r for r in res["hash"] if "error" not in r]
        old = [r for r in ok if (r["hoist"], r["block_m"], r["num_warps"], r["per_sm"], r["pack_dot"],
                                 r.get("num_stages", 1)) == (False, 128, 4, 2, False, 1)]
        # the chosen row: every knob a hash row carries (the file's decode_block_c is swept elsewhere)
        best = [r for r in ok if all(r[x] == v for x, v in k["hash"].items() if x in r)][0]
        lines += ["", f"hash_encode_and_cache, 64K tokens: old launch {old[0]['ms']:.4f} ms "
                  f"({old[0]['frac_copy']:.1%} of copy) -> chosen {best['ms']:.4f} ms ({best['frac_copy']:.1%})."
                  if old else f"hash_encode_and_cache: chosen {best['ms']:.4f} ms ({best['frac_copy']:.1%})."]
    trows = [r for r in res.get("hash", []) if r.get("transposed") or r.get("shipped")]
    if trows:
        lines += ["", "hash_encode_and_cache, 64K tokens: the shipped launch vs `hash.transposed` (W^T @ x^T, weight in "
                  "registers, key tiles pipelined; `same`: codes equal the shipped launch's; bits differing from float64, "
                  "outside spec 2's band in brackets)", "",
                  "| kernel | rows | warps | stages | per SM | us | of copy | same | bits vs float64 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in trows:
            name = "transposed" if r.get("transposed") else "shipped"
            head = f"| {name} | {r['block_m']} | {r['num_warps']} | {r['num_stages']} | {r['per_sm']} |"
            if "error" in r:
                lines.append(f"{head} error: {r['error'][:80]} | | | |")
            else:
                bits = f"{r['bits_differ']} ({r['outside_band']})" if "bits" in r else "-"
                lines.append(f"{head} {r['ms'] * 1e3:.1f} | {r['frac_copy']:.1%} | {r['same']} | {bits} |")
    if "mla" in res:
        lines += _variant_table(
            "Group bit-plane score kernel at DeepSeek-V2-Lite's MLA codes (16 heads, 72 bytes with 8 rope "
            f"bytes, B={B}, `max`; chosen: {k.get('score_planes', {})}), us (TB/s of codes):", "context", res["mla"],
            lambda r: f"{r['num_warps']} w, {r.get('blocks', 1)} b, pow2 {r.get('pow2', False)}"
                      + (", once" if r.get("once") else ""), _ctx, _ms_tbs)
    if "hash_decode" in res:
        lines += _variant_table(
            "A decode step's hashing (16 rows), us per launch set, by code bytes per program "
            f"(chosen: {k.get('hash', {}).get('decode_block_c', '-')}):", "case", res["hash_decode"],
            lambda r: str(r["block_c"]), str, lambda r: f"{r['us']:.1f}")
    if "score_stages" in res:
        lines += _variant_table(
            "Harley-Seal score launch (the tuned knobs) by `num_stages`, us (TB/s of codes); chosen: "
            f"{k.get('score', {}).get('num_stages', '-')}:", "context", res["score_stages"],
            lambda r: str(r["num_stages"]), _ctx, _ms_tbs)
    if "score_occupancy" in res:
        sc = k.get("score", {})
        lines += _variant_table(
            "Harley-Seal score launch by warps, register cap (0: the compiler's), bit planes and blocks per "
            f"program, us (TB/s of codes); chosen: {sc.get('num_warps')} w, cap {sc.get('maxnreg', 0)}, planes "
            f"{sc.get('planes')}, {sc.get('blocks')} b:", "context", res["score_occupancy"],
            lambda r: f"{r['num_warps']} w, cap {r['maxnreg']}, {'planes' if r['planes'] else 'words'}, {r['blocks']} b",
            _ctx, _ms_tbs)
    if "hash16" in res:
        lines += ["", "hash_encode_and_cache, 64K tokens, bf16 split (default) vs `hash.prec16` (one fp16 product; "
                  "reported, never chosen): us, fraction of copy, bits differing from float64 (outside spec 2's band)", "",
                  "| prec16 | rows | warps | per SM | us | of copy | bits differing from float64 (outside the band) |",
                  "|---|---|---|---|---|---|---|"]
        for r in res["hash16"]:
            if "error" in r:
                lines.append(f"| {r['prec16']} | {r['block_m']} | {r['num_warps']} | {r['per_sm']} | error: "
                             f"{r['error']} | | |")
            else:
                lines.append(f"| {r['prec16']} | {r['block_m']} | {r['num_warps']} | {r['per_sm']} | {r['ms'] * 1e3:.1f} | "
                             f"{r['frac_copy']:.1%} | {r['bits_differ']} of {r['bits']} ({r['outside_band']}) |")
    return "\n".join(lines) + "\n"
