"""Write harness results: JSON, a markdown table and PNG plots (benchmarks/results/)."""
from __future__ import annotations

import json
import pathlib
from typing import Dict, List, Optional

__all__ = ["write_results", "plot_retrieval_summary", "RETRIEVAL_PARTS"]


def _fmt(x, nd=3):
    return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def _code_rows(grid: Dict[str, dict]) -> List[str]:
    """Per-layer code diagnostics: near-constant bits and Pearson(code similarity, q.k)."""
    keys = sorted({n.rsplit("/", 1)[0] for n in grid if n.startswith("codes/")})
    if not keys:
        return []
    layers = sorted({int(l) for k in keys for l in grid.get(f"{k}/pearson", {}).get("per_layer", {})})
    lines = ["| codes | overall | " + " | ".join(f"L{l}" for l in layers) + " |", "|---|---|" + "---|" * len(layers)]
    for k in keys:
        for what, label in (("const_bits", "near-constant bits"), ("pearson", "Pearson(sim, q.k)")):
            v = grid.get(f"{k}/{what}")
            if v is None:
                continue
            pl = {int(l): x for l, x in v["per_layer"].items()}
            lines.append(f"| {k[6:]} {label} | {_fmt(v['overall'], 2)} | "
                         + " | ".join(_fmt(pl.get(l), 2) for l in layers) + " |")
    return lines


def _task_rows(records: List[dict]) -> List[str]:
    lines = ["| tokens | depth | config | selector | score | answer | expected | blocks read / total |",
             "|---|---|---|---|---|---|---|---|"]
    for p in records:
        lines.append(f"| {p['length']} | {p['depth']:.0%} | {p['config']} | {p.get('selector', 'gsa')} | "
                     f"{p['score']:.2f} | {p['answer'][:40]!r} | {p['expected']} | "
                     f"{_fmt(p['blocks_read'], 1)} / {p['n_blocks']} |")
    return lines


RETRIEVAL_PARTS = ("passkey", "multikey", "vartrack")


def _score(p: dict) -> float:
    return float(p.get("score", float(p["found"])))


def _retrieval_summary_rows(res: dict) -> List[str]:
    """One row per (part, config): the summed score over depths at each length, ``s/n``."""
    parts = [p for p in RETRIEVAL_PARTS if res.get(p)]
    if not parts:
        return []
    lens = sorted({r["target_length"] for p in parts for r in res[p]})
    lines = ["| task | config | " + " | ".join(str(n) for n in lens) + " |", "|---|---|" + "---|" * len(lens)]
    for part in parts:
        for c in dict.fromkeys(r["config"] for r in res[part]):
            cells = []
            for n in lens:
                rows = [r for r in res[part] if r["config"] == c and r["target_length"] == n]
                cells.append(f"{sum(_score(r) for r in rows):g}/{len(rows)}" if rows else "-")
            lines.append(f"| {part} | {c} | " + " | ".join(cells) + " |")
    return lines


def plot_retrieval_summary(res: dict, path: pathlib.Path) -> Optional[pathlib.Path]:
    """One figure, one panel per retrieval part present (passkey, multikey, vartrack):
    mean score over depths vs prompt length, a line per config. ``None`` without
    matplotlib or retrieval results."""
    parts = [p for p in RETRIEVAL_PARTS if res.get(p)]
    if not parts:
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(parts), figsize=(5 * len(parts), 4), squeeze=False)
    for ax, part in zip(axes[0], parts):
        lens = sorted({r["target_length"] for r in res[part]})
        for c in dict.fromkeys(r["config"] for r in res[part]):
            ys = []
            for n in lens:
                rows = [r for r in res[part] if r["config"] == c and r["target_length"] == n]
                ys.append(sum(_score(r) for r in rows) / len(rows) if rows else None)
            ax.plot(lens, ys, marker="o", label=c)
        ax.set_title(part)
        ax.set_xlabel("prompt tokens")
        ax.set_ylabel("mean score over depths")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _grid_rows(grid: Dict[str, dict], ratios, bits, weights, allowance=None) -> List[str]:
    lines = ["| ratio | selector | bits | mass recall | block recall vs oracle |", "|---|---|---|---|---|"]
    for r in ratios:
        key = f"r={r:.4g}"
        o = grid.get(f"oracle/{key}/mass_recall", {}).get("overall")
        lines.append(f"| {r:.4g} | oracle (exact attention mass) | - | {_fmt(o)} | 1.000 |")
        q = grid.get(f"quest/{key}/mass_recall", {}).get("overall")
        qb = grid.get(f"quest/{key}/block_recall", {}).get("overall")
        lines.append(f"| {r:.4g} | Quest-style, same blocks | - | {_fmt(q)} | {_fmt(qb)} |")
        for b in bits:
            q = grid.get(f"quest_eqbytes/{key}/b={b}/mass_recall", {}).get("overall")
            qb = grid.get(f"quest_eqbytes/{key}/b={b}/block_recall", {}).get("overall")
            a = (allowance or {}).get(b, (allowance or {}).get(str(b)))
            extra = f" ({a:+.1%} of the blocks)" if a is not None else ""
            lines.append(f"| {r:.4g} | Quest-style, same bytes as GSA-{b}{extra} | - | {_fmt(q)} | {_fmt(qb)} |")
            for w in weights:
                m = grid.get(f"gsa/{w}/{key}/b={b}/mass_recall", {}).get("overall")
                br = grid.get(f"gsa/{w}/{key}/b={b}/block_recall", {}).get("overall")
                if m is not None:
                    lines.append(f"| {r:.4g} | GSA {w} | {b} | {_fmt(m)} | {_fmt(br)} |")
    return lines


def write_results(res: dict, out_dir: pathlib.Path, tag: str) -> Dict[str, pathlib.Path]:
    """``res``: the dict built by :mod:`gsa.eval.cli` (``meta``, ``grid``, ``e2e``,
    ``passkey``). Writes ``accuracy_{tag}.json``, ``accuracy_{tag}.md`` and plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"accuracy_{tag}.json", "md": out_dir / f"accuracy_{tag}.md"}
    paths["json"].write_text(json.dumps(res, indent=1, default=str))
    meta = res.get("meta", {})
    md = [f"# GSA accuracy: {tag}", "", "```", json.dumps(meta, indent=1, default=str), "```", ""]
    if res.get("grid"):
        md += ["## Selection quality (dense teacher-forced pass, sampled decode steps, sparse layers)", ""]
        md += _grid_rows(res["grid"], meta.get("ratios", []), meta.get("bits", []), meta.get("weights", []),
                         meta.get("quest_eqbytes_allowance")) + [""]
        code = _code_rows(res["grid"])
        if code:
            md += ["## Code quality per sparse layer (near-constant bits: > 90 % one value over the keys; "
                   "Pearson: code similarity vs q.k over the keys a query sees)", ""] + code + [""]
    if res.get("e2e"):
        md += ["## End to end, teacher-forced against dense", "",
               "| config | next-token agreement | mean KL (nats) | perplexity | seconds |", "|---|---|---|---|---|"]
        md.append(f"| dense | 1.000 | 0 | {_fmt(res.get('dense_ppl'))} | - |")
        for name, r in res["e2e"].items():
            md.append(f"| {name} | {_fmt(r['agreement'], 4)} | {_fmt(r['kl'], 5)} | {_fmt(r['ppl'])} | {r['seconds']:.0f} |")
        md.append("")
    if res.get("passkey"):
        md += ["## Passkey retrieval (paged GSA decode path)", "",
               "| tokens | depth | config | found | answer | blocks read / total | mass recall (worst layer) |",
               "|---|---|---|---|---|---|---|"]
        for p in res["passkey"]:
            rec = (f"{_fmt(p['mass_recall'])} ({_fmt(p.get('mass_recall_min_layer'))})"
                   if p.get("mass_recall") is not None else "-")
            md.append(f"| {p['length']} | {p['depth']:.0%} | {p['config']} | {'yes' if p['found'] else 'NO'} | "
                      f"{p['answer'][:24]!r} | {_fmt(p['blocks_read'], 1)} / {p['n_blocks']} | {rec} |")
        md.append("")
    summary = _retrieval_summary_rows(res)
    if summary:
        md += ["## Retrieval summary (score summed over depths / prompts, per config and length)", ""] + summary + [""]
    for task in ("multikey", "vartrack"):
        if res.get(task):
            md += [f"## {task} (RULER-style, paged decode path)", ""] + _task_rows(res[task]) + [""]
    paths["md"].write_text("\n".join(md))
    try:
        paths.update(_plots(res, out_dir, tag))
    except ImportError:
        pass
    return paths


def _plots(res: dict, out_dir: pathlib.Path, tag: str) -> Dict[str, pathlib.Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    meta, grid = res.get("meta", {}), res.get("grid") or {}
    ratios, bits, weights = meta.get("ratios", []), meta.get("bits", []), meta.get("weights", [])
    if grid and ratios:
        fig, axes = plt.subplots(1, len(ratios), figsize=(5 * len(ratios), 4), squeeze=False)
        for ax, r in zip(axes[0], ratios):
            key = f"r={r:.4g}"
            for name, style in ([(f"oracle/{key}/mass_recall", "k-"), (f"quest/{key}/mass_recall", "r--")]
                                + [(f"gsa/{w}/{key}/b={b}/mass_recall", None) for w in weights for b in bits]):
                if name not in grid:
                    continue
                pl = grid[name]["per_layer"]
                xs = sorted(int(l) for l in pl)
                label = name.replace(f"/{key}", "").replace("/mass_recall", "")
                ax.plot(xs, [pl[l] if l in pl else pl[str(l)] for l in xs], style or "-", label=label, marker=".")
            ax.set_title(f"attention-mass recall per layer, ratio {r:.4g}")
            ax.set_xlabel("layer")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        out["png_layers"] = out_dir / f"accuracy_{tag}_recall_per_layer.png"
        fig.savefig(out["png_layers"], dpi=90)
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(6, 4))
        for w in weights:
            for b in bits:
                ys = [grid.get(f"gsa/{w}/r={r:.4g}/b={b}/mass_recall", {}).get("overall") for r in ratios]
                if any(y is not None for y in ys):
                    ax.plot(ratios, ys, marker="o", label=f"GSA {w} {b} bits")
        ax.plot(ratios, [grid.get(f"oracle/r={r:.4g}/mass_recall", {}).get("overall") for r in ratios], "k-", marker="s", label="oracle")
        ax.plot(ratios, [grid.get(f"quest/r={r:.4g}/mass_recall", {}).get("overall") for r in ratios], "r--", marker="^", label="Quest-style (same blocks)")
        ax.set_xscale("log")
        ax.set_xlabel("top-k ratio (sparse layers)")
        ax.set_ylabel("mean attention-mass recall")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        out["png_ratio"] = out_dir / f"accuracy_{tag}_recall_vs_ratio.png"
        fig.savefig(out["png_ratio"], dpi=90)
        plt.close(fig)
    for part, what in (("passkey", "passkey accuracy"), ("multikey", "multikey mean score"),
                       ("vartrack", "vartrack mean score")):
        if not res.get(part):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        confs = sorted({p["config"] for p in res[part]})
        lens = sorted({p["target_length"] for p in res[part]})
        for c in confs:
            acc = []
            for n in lens:
                rows = [p for p in res[part] if p["config"] == c and p["target_length"] == n]
                acc.append(sum(p.get("score", float(p["found"])) for p in rows) / len(rows) if rows else None)
            ax.plot(lens, acc, marker="o", label=c)
        ax.set_xlabel("prompt tokens")
        ax.set_ylabel(f"{what} (over depths)")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        out[f"png_{part}"] = out_dir / f"accuracy_{tag}_{part}.png"
        fig.savefig(out[f"png_{part}"], dpi=90)
        plt.close(fig)
    return out
