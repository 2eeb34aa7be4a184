"""GSA vs Quest at equal bytes, over training seeds: table and plot from
``benchmarks/mlp_codes_study.py`` JSONs (docs/accuracy.md, *GSA vs Quest at equal bytes*).

Each study JSON is one model and one code width ``R`` (``meta.bits``) on one set of eval
rows. Per block size it holds the oracle, Quest at the same blocks, Quest at ``R``'s bytes
(``bs=B/quest_eqbytes_b{R}``: blocks rounded up, the harness's rule; ``..._exact_b{R}``:
unrounded, the fractional block read with that probability) and every GSA code. Codes
whose names differ only by a seed suffix (``_s0``, ``_s1``, ...) are one group: the table
gives their mean, min..max and count, and the margin of the group's mean and of its worst
seed over Quest at equal bytes (both rules).

    python benchmarks/accuracy_equal_bytes_report.py benchmarks/results/accuracy_smollm2-eqbytes-b64.json \\
        benchmarks/results/accuracy_smollm2-eqbytes-b32.json --out benchmarks/results/accuracy_eqbytes-smollm2

writes ``<out>.md`` and ``<out>.png`` (no plot, with a printed reason, without matplotlib).
"""
from __future__ import annotations

import os
import pathlib
import re
import statistics
import sys
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run as a script or loaded from its path
from codes_study_report import report_main, study_commands  # noqa: E402

__all__ = ["groups", "rows", "markdown", "plot", "main"]

_SEED = re.compile(r"_s\d+$")


def groups(names: Sequence[str]) -> Dict[str, List[str]]:
    """Selector names -> ``{group: [names]}``; ``x_s0``, ``x_s1`` form group ``x``, in first-seen order."""
    out: Dict[str, List[str]] = {}
    for n in names:
        out.setdefault(_SEED.sub("", n), []).append(n)
    return out


def rows(results: Sequence[dict]) -> List[dict]:
    """One dict per (model, bits, block size): peers and ``gsa: {group: (mean, min, max, n)}``."""
    out = []
    for res in results:
        m, ov = res["meta"], res["overall"]
        # GSA selector names: meta.selectors (studies with --repre; mean_<name> = block mean), else --weights
        names = m.get("selectors") or [w.partition("=")[0] for w in m["weights"]]
        for bs in m["block_sizes"]:
            r = m["bits"]
            row = {"model": m["model"], "bits": r, "block_size": bs, "rows": (m["prefix"], m["eval_tokens"], m["sample_every"]),
                   "oracle": ov[f"bs={bs}/oracle"], "quest": ov[f"bs={bs}/quest"],
                   "quest_up": ov.get(f"bs={bs}/quest_eqbytes_b{r}", ov.get(f"bs={bs}/quest_eqbytes")),
                   "quest_exact": ov.get(f"bs={bs}/quest_eqbytes_exact_b{r}"), "gsa": {}}
            for g, members in groups([n for n in names if f"bs={bs}/gsa_{n}" in ov]).items():
                v = [ov[f"bs={bs}/gsa_{n}"] for n in members]
                row["gsa"][g] = (statistics.fmean(v), min(v), max(v), len(v))
            out.append(row)
    return out


def _f(x: Optional[float], sign: bool = False) -> str:
    return "-" if x is None else (f"{x:+.4f}" if sign else f"{x:.4f}")


def markdown(results: Sequence[dict], title: str) -> str:
    """Table: per (model, bits, block) and GSA group, mean (min..max, n seeds) and the margins over Quest."""
    lines = [f"# {title}", "",
             "Mean attention-mass recall at the studies' ratio over sampled decode rows, query heads and sparse "
             "layers. Quest eq. bytes: Quest given the KV the byte difference between its per-block min/max and "
             "an R-bit code buys, rounded up to whole blocks (the harness's rule) or exact (the fractional block "
             "read with that probability). Margin: GSA group mean (worst seed) minus Quest at equal bytes.", "",
             "| model | R | block | oracle | Quest same blocks | Quest eq. bytes (up) | Quest eq. bytes (exact) "
             "| GSA code | mean (min..max, seeds) | x oracle | margin vs up: mean (worst) | vs exact: mean (worst) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows(results):
        for g, (mean, lo, hi, n) in r["gsa"].items():
            spread = f"{mean:.4f}" if n == 1 else f"{mean:.4f} ({lo:.4f}..{hi:.4f}, {n})"
            mu = None if r["quest_up"] is None else (mean - r["quest_up"], lo - r["quest_up"])
            me = None if r["quest_exact"] is None else (mean - r["quest_exact"], lo - r["quest_exact"])
            pair = lambda p: "-" if p is None else (f"{p[0]:+.4f}" if n == 1 else f"{p[0]:+.4f} ({p[1]:+.4f})")  # noqa: E731
            lines.append(f"| {r['model']} | {r['bits']} | {r['block_size']} | {_f(r['oracle'])} | {_f(r['quest'])} | "
                         f"{_f(r['quest_up'])} | {_f(r['quest_exact'])} | {g} | {spread} | {mean / r['oracle']:.3f} | "
                         f"{pair(mu)} | {pair(me)} |")
    lines.append("")
    lines += study_commands(results, with_model=True)
    return "\n".join(lines) + "\n"


def plot(results: Sequence[dict], path: pathlib.Path, title: str) -> Optional[pathlib.Path]:
    """One panel per model: per (R, block) the GSA groups (bars, min..max whiskers) against
    Quest at equal bytes (rounded up: red tick; exact: black tick) and the oracle (grey tick)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("accuracy_equal_bytes_report: matplotlib not installed; no plot", file=sys.stderr)
        return None
    rs = rows(results)
    models = list(dict.fromkeys(r["model"] for r in rs))
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        mr = sorted((r for r in rs if r["model"] == model), key=lambda r: (r["block_size"], r["bits"]))
        names = list(dict.fromkeys(g for r in mr for g in r["gsa"]))
        width = 0.8 / max(1, len(names))
        for i, g in enumerate(names):
            xs, ys, err = [], [], [[], []]
            for j, r in enumerate(mr):
                if g in r["gsa"]:
                    mean, lo, hi, _ = r["gsa"][g]
                    xs.append(j + (i - (len(names) - 1) / 2) * width)
                    ys.append(mean)
                    err[0].append(mean - lo)
                    err[1].append(hi - mean)
            ax.bar(xs, ys, width, yerr=err, capsize=2, label=f"GSA {g}")
        for j, r in enumerate(mr):
            for key, colour, lbl in (("oracle", "grey", "oracle"), ("quest_up", "red", "Quest eq. bytes (rounded up)"),
                                     ("quest_exact", "black", "Quest eq. bytes (exact)")):
                if r[key] is not None:
                    ax.hlines(r[key], j - 0.45, j + 0.45, colors=colour, linewidth=1.6 if key != "oracle" else 1.0,
                              linestyles="solid" if key != "oracle" else "dashed", label=lbl if j == 0 else None)
        ax.set_xticks(range(len(mr)), [f"R {r['bits']}, bs {r['block_size']}" for r in mr], fontsize=8)
        vals = [v for r in mr for v in [r["oracle"], r["quest_up"]] + [g[1] for g in r["gsa"].values()] if v is not None]
        ax.set_ylim(min(vals) - 0.03, max(vals) + 0.02)
        ax.set_ylabel("attention-mass recall")
        ax.set_title(f"{model}: {title}", fontsize=9)
        ax.legend(fontsize=6, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    return report_main(argv, __doc__, markdown, plot, "GSA vs Quest at equal bytes, ratio 1/8")


if __name__ == "__main__":
    sys.exit(main())
