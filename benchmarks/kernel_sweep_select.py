"""Selection-kernel sweep of ``kernel_sweep.py`` (``_select_kernel`` with the ``kv_select`` gather fused):
the threshold search (the binary search, the ``FANOUT``-ary one, the radix select of ``select.radix`` at
each digit width) by the selection program's warps, on the block keys of the default score launch for
both methods, plus uniform int32 keys (the widest key range: the radix search's most rounds; reported,
never chosen on). Runs inside the ``score`` part and alone as ``--parts select``. Same rules as the main
sweep: CUDA-graph replay medians, every variant's table and lengths compared with the binary search's, a
differing variant reported and never chosen. Also the whole selection's choice (``pick_selection``:
planes, fuse, register cap, radix, over the ``select_blocks`` rows of the ``score`` part).
"""
from __future__ import annotations

import itertools

import torch

from kernel_sweep import BS, CONTEXTS, SCORE_GRID, _best_variant, _inputs, graph_ms, progress

SELECT_WARPS = (0, 1, 2, 4, 8)  # 0: by row width (select_num_warps: 4 up to 2048 blocks, no second compile)
SELECT_RADIX = (5, 8)  # digit widths of the radix-select search (topk_kernels._radix_threshold); 6, 7 also work
SELECT_PREFETCH = (False, True)  # select.prefetch: the row's loads first (topk_kernels._select_row)
# FANOUT-ary comparison search: lost to the binary search on the H200 over warps 1-8 (2026-11-29), so timed
# once each at the default warps without prefetch, for the record
SELECT_FANOUT = (4, 8)
# key sets the selection rows run on: the default score launch's keys of both methods, and uniform
# int32 keys (the widest range: the radix search's most rounds; reported, never chosen on)
SELECT_KEYS = ("max", "mean", "int32")
SELECT_CHOICE_KEYS = ("max", "mean")


def select_variants(m):
    """(fan-out, radix digit width (0: off), prefetch, warps) of the selection kernel for an
    ``M``-wide row: the binary search and each radix width with and without prefetch over the
    warps grid, then each fan-out the row admits (default warps, no prefetch)."""
    from cuda_ops import scoring
    from cuda_ops.launch import next_pow2

    grid = [(1, bits, pre, nw) for bits, pre, nw in itertools.product((0,) + SELECT_RADIX, SELECT_PREFETCH,
                                                                      SELECT_WARPS)]
    return grid + [(f, 0, False, 0) for f in SELECT_FANOUT if scoring.select_fanout(next_pow2(m), f) == f]


def _key(r):
    """A selection row's variant: (fan-out, radix width, prefetch, warps); older rows lack the last three."""
    return r["fanout"], r.get("radix", 0), r.get("prefetch", False), r.get("num_warps", 0)


def select_rows(rows, ctx, q, cache, table, seq, gen):
    """Time the selection kernel (``kv_select`` gather fused; budget 1/8, forced [0, -2, -1]) on this
    context's block keys (``SELECT_KEYS``) for every ``select_variants``; each row
    records whether its table and lengths equal the binary search's (``same``). Appends to ``rows``."""
    from cuda_ops import scoring

    b, m = table.shape
    dev = table.device
    forced, fs = scoring._forced_args([0, -2, -1])
    k = max(m // 8, 1)
    keys = torch.empty(b, m, dtype=torch.int32, device=dev)
    budgets = torch.full((b,), k, dtype=torch.int32, device=dev)
    tab = torch.empty(b, k, dtype=torch.int32, device=dev)
    lens = torch.empty(b, dtype=torch.int32, device=dev)
    start = len(rows)
    for method in SELECT_KEYS:
        if method == "int32":
            keys.copy_(torch.randint(-2 ** 31, 2 ** 31, (b, m), generator=gen, dtype=torch.int64, device=dev))
        else:
            scoring.block_score_keys(q, cache, table, seq, method, keys=keys)
        scoring._launch_select(keys, seq, budgets, table, k, BS, forced, fs, tab, lens, None, None, 0, None, 1,
                               radix=False, prefetch=False)  # the binary search: the result every variant must give
        want = (tab.clone(), lens.clone())
        for fan, bits, pre, nw in select_variants(m):
            def run(fan=fan, bits=bits, pre=pre, nw=nw):
                scoring._launch_select(keys, seq, budgets, table, k, BS, forced, fs, tab, lens, None, None, 0, None,
                                       fan, nw or None, radix=bits, prefetch=pre)
            row = dict(method=method, fanout=fan, radix=bits, prefetch=pre, num_warps=nw)
            try:
                ms = graph_ms(run)
                tab.fill_(-7)
                lens.fill_(-7)
                run()
                row.update(ms=ms, same=bool(torch.equal(tab, want[0]) and torch.equal(lens, want[1])))
            except Exception as e:  # a launch that does not compile: recorded, never chosen
                row.update(ms=float("inf"), same=False, error=f"{type(e).__name__}: {str(e)[:160]}")
            rows.append(row)
    new = rows[start:]
    bad = [r for r in new if not r["same"]]
    for method in SELECT_KEYS:
        mine = [r for r in new if r["method"] == method and r["same"]]
        if mine:
            plain = [r["ms"] for r in mine if _key(r) == (1, 0, False, 0)]
            fast = min(mine, key=lambda r: r["ms"])
            progress(f"select {ctx} {method}: binary search {plain[0] * 1e3 if plain else float('nan'):.1f}us, "
                     f"best {fast['ms'] * 1e3:.1f}us (fan-out {fast['fanout']}, radix {fast['radix']}, "
                     f"prefetch {fast['prefetch']}, {fast['num_warps']} warps)")
    if bad:
        progress(f"select {ctx}: DIFFERENT RESULT OR ERROR (never chosen): {bad}")


def sweep_select(res, gen):
    """The selection kernel alone (``--parts select``): ``select_rows`` at every context, on the
    keys of the default score launch."""
    sel = res.setdefault("select", {})
    for ctx in CONTEXTS:
        m, cache, table, seq, q = _inputs(ctx, gen)
        select_rows(sel.setdefault(str(ctx), []), ctx, q, cache, table, seq, gen)
        del cache


def _select_cases(res):
    """The selection rows per (context, key set) the choice weighs (``SELECT_CHOICE_KEYS``)."""
    cases = {}
    for ctx, rows in res["select"].items():
        for r in rows:
            if r.get("method", "max") in SELECT_CHOICE_KEYS:
                cases.setdefault((ctx, r.get("method", "max")), []).append(dict(r, same=r.get("same", True)))
    return cases


def best_select(res, radix=None):
    """The selection kernel's fastest variant correct on every (context, key set) of the choice,
    by summed time: ``{"fanout", "radix" (digit width, 0: off), "prefetch", "num_warps"}``; ``radix``: True /
    False restricts to radix variants / the others; None if no variant qualifies."""
    if not res.get("select"):
        return None
    cases = {c: [r for r in rows if radix is None or bool(r.get("radix", 0)) == radix]
             for c, rows in _select_cases(res).items()}
    try:
        fan, bits, pre, nw = _best_variant(cases, _key, lambda r, rows: r["ms"])
    except ValueError:  # no variant correct in every case
        return None
    return dict(fanout=fan, radix=bits, prefetch=pre, num_warps=nw)


def choose_select_kernel(res, radix=None):
    """``select`` knobs of the selection kernel: the fastest correct variant (``radix``: True /
    False: the fastest radix / other variant, e.g. when the whole-selection rows decided)."""
    v = best_select(res, radix)
    if v is None and radix is not None:
        v = best_select(res)
    if v is None:
        raise ValueError("no selection variant gave the binary search's result in every case")
    knobs = {"fanout": v["fanout"], "num_warps": v["num_warps"], "radix": bool(v["radix"]), "prefetch": v["prefetch"]}
    if v["radix"]:
        knobs["radix_bits"] = v["radix"]
    return knobs


def _op_combo(r):
    return r["planes"], r["fuse"], r["maxnreg"], r.get("radix", 0)


def pick_selection(res):
    """(planes, fuse, maxnreg, radix width) of the ``select_blocks`` rows with the smallest sum over
    contexts and methods of time relative to each case's best (rows with a different result excluded)."""
    lo = {}
    for ctx, rows in res["op"].items():
        for r in rows:
            if r["same"]:
                lo[(ctx, r["method"])] = min(lo.get((ctx, r["method"]), 1e9), r["ms"])

    def cost(combo):
        total = 0.0
        for (ctx, method), best_ms in lo.items():
            match = [r for r in res["op"][ctx] if r["same"] and r["method"] == method
                     and _op_combo(r) == combo]
            total += (match[0]["ms"] / best_ms) if match else 1e9
        return total

    combos = {_op_combo(r) for rows in res["op"].values() for r in rows if r["same"]}
    planes, fuse, cap, radix = min(combos, key=cost)
    best = min([r for r in res["score"][str(CONTEXTS[-1])] if r["planes"] == planes and r["same"]],
               key=lambda r: r["ms"])
    return dict(score={k: best[k] for k in SCORE_GRID}, fuse=fuse, fuse_maxnreg=cap, radix=radix)
