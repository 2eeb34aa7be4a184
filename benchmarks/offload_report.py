"""The GSA offload benchmark's markdown table and plot (benchmarks/offload_bench.py writes them)."""
from __future__ import annotations

import json
from fractions import Fraction


def markdown(res: dict) -> str:
    keys = ["concurrency_gain", "throughput_gain_vs_dense", "hit_rate_1_8", "per_request_vs_gsa_in_hbm"]
    out = [f"# GSA offload benchmark ({res['device']}{', smoke' if res['smoke'] else ''})", "",
           "| headline | value |", "|---|---|"]
    out += [f"| {k} | {res[k] if not isinstance(res[k], float) else round(res[k], 3)} |" for k in keys]
    out += ["", f"memory model: {json.dumps({k: round(v, 2) for k, v in res['memory_model'].items()})}",
            f"PCIe host->device: {res['pcie_h2d_gbs']:.1f} GB/s", "",
            f"headline configuration ({res.get('headline_mode')}): {res.get('headline_notes')}", "",
            "| row | mode | batch | pool | ms/layer | tok/s | hit | predicted | H2D GB/s | vs GSA-HBM | CPU select ms |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v, p=3: "-" if v is None else (f"{v:.{p}f}" if isinstance(v, float) else str(v))  # noqa: E731
    for r in res["rows"]:
        if "skipped" in r or r.get("error"):
            why = " ".join((r.get("skipped") or r.get("error")).split())  # one table line (errors span lines)
            out.append(f"| {r['row']} | {r.get('mode', '-')} | {r['batch']} | {f(r.get('pool_frac'))} | "
                       f"{'skipped' if 'skipped' in r else 'error'}: {why[:240]} | | | | | | |")
            continue
        out.append(f"| {r['row']} | {r['mode']} | {r['batch']} | {f(r.get('pool_frac'))} | {f(r['t_layer_ms'])} | "
                   f"{f(r.get('tok_s'), 1)} | "
                   f"{f(r.get('hit_rate'))} | {f(r.get('predicted_rate'))} | {f(r.get('h2d_gbs'), 2)} | "
                   f"{f(r.get('per_request_vs_gsa_hbm'))} | {f(r.get('cpu_select_ms'))} |")
    return "\n".join(out) + "\n"


def plot(res: dict, path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    names = sorted({(r["row"], r["mode"]) for r in res["rows"] if r.get("tok_s")})
    for n, mode in names:
        pts = sorted((r["batch"], r["tok_s"]) for r in res["rows"] if (r["row"], r.get("mode")) == (n, mode)
                     and r.get("tok_s"))
        if pts:
            ax.plot(*zip(*pts), marker="o" if mode == "graph" else "x", linestyle="-" if mode == "graph" else ":",
                    label=f"{n} ({mode})")
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("decode-attention tokens/s (model)")
    ax.set_yscale("log")
    ax.set_title(f"GSA offload, {res['args']['context']} tokens, ratio {Fraction(res['args']['ratio']).limit_denominator(64)}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
