"""Markdown table and plot for ``benchmarks/mlp_codes_study.py`` results.

The study writes one JSON per bit width (``--out X.json``: ``overall`` holds
``bs=<N>/oracle``, ``bs=<N>/quest``, ``bs=<N>/quest_eqbytes``, ``bs=<N>/gsa_<name>`` and
``bs=<N>/gsa_<name>/block_recall``, each a mean attention-mass or block recall). This
script puts one or more of them (e.g. the 128- and 256-bit runs) in one table, one row
per (bits, block size), every selector's mass recall with its multiple of the oracle's,
and one grouped bar plot:

    python benchmarks/codes_study_report.py benchmarks/results/accuracy_qwen-codes-mlp2-600-b128.json \\
        benchmarks/results/accuracy_qwen-codes-mlp2-600-b256.json --out benchmarks/results/accuracy_qwen-codes-mlp2-600

writes ``<out>.md`` and ``<out>.png`` (the plot is skipped, with a printed reason, when
matplotlib is missing).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import List, Optional, Sequence

__all__ = ["study_rows", "markdown", "plot", "main"]

_PEERS = (("oracle", "oracle"), ("quest", "Quest same blocks"), ("quest_eqbytes", "Quest same bytes"),
          ("quest_exact", "Quest exact bytes"))  # the last only in runs with mlp_codes_study's exact rows


def _variants(res: dict) -> List[str]:
    """GSA selector names in the order the study was given them (``--weights``)."""
    names = [w.partition("=")[0] for w in res["meta"]["weights"]]
    return [n for n in names if any(k.endswith(f"/gsa_{n}") for k in res["overall"])]


def study_rows(results: Sequence[dict], tol: float = 1e-6) -> List[dict]:
    """One dict per (bits, block size) of each result: ``{"bits", "block_size", "oracle",
    "quest", "quest_eqbytes", "gsa": {name: (mass, mass / oracle, block_recall)}}``. Runs
    that measured the same rows (same bits and block size, oracle and Quest values within
    ``tol``: fp32 sums differ by ~1e-8 between thread counts) share one dict, their selectors merged (a later run's value wins for a repeated name)."""
    rows = []
    for res in results:
        ov, bits = res["overall"], res["meta"]["bits"]
        for bs in res["meta"]["block_sizes"]:
            orc = ov[f"bs={bs}/oracle"]
            gsa = {}
            for n in _variants(res):
                m = ov[f"bs={bs}/gsa_{n}"]
                gsa[n] = (m, m / orc, ov.get(f"bs={bs}/gsa_{n}/block_recall"))
            row = {"bits": bits, "block_size": bs, "oracle": orc, "quest": ov[f"bs={bs}/quest"],
                   "quest_eqbytes": ov[f"bs={bs}/quest_eqbytes"],
                   "quest_exact": ov.get(f"bs={bs}/quest_eqbytes_exact_b{bits}"), "gsa": gsa}
            same = [r for r in rows if (r["bits"], r["block_size"]) == (bits, bs)
                    and all(abs(r[k] - row[k]) < tol for k in ("oracle", "quest", "quest_eqbytes"))]
            if same:  # another run on the same rows (equal oracle and Quest): one row, its selectors added
                same[0]["gsa"].update(gsa)
            else:
                rows.append(row)
    return rows


def markdown(results: Sequence[dict], title: str) -> str:
    """The table (mass recall, ``x oracle`` and block recall in brackets) plus each run's command."""
    rows = study_rows(results)
    names = list(dict.fromkeys(n for r in rows for n in r["gsa"]))
    head = "| bits | block | " + " | ".join(lbl for _, lbl in _PEERS) + " | " + " | ".join(f"GSA {n}" for n in names) + " |"
    lines = [f"# {title}", "", "Mean attention-mass recall over sampled decode rows, query heads and sparse "
             "layers; GSA cells: mass recall (x oracle; block recall vs the oracle's free picks). "
             "Quest same bytes: Quest given the KV its smaller metadata saves at this code width "
             "(whole blocks, rounded up); Quest exact bytes: the same allowance without rounding "
             "(the fractional block read with that probability; gsa.eval.selectors.quest_equal_bytes_recall).", "",
             head, "|---|---|" + "---|" * (len(_PEERS) + len(names))]
    for r in rows:
        peers = " | ".join("-" if r[k] is None else f"{r[k]:.4f}" for k, _ in _PEERS)
        cells = []
        for n in names:
            if n not in r["gsa"]:
                cells.append("-")
                continue
            m, x, br = r["gsa"][n]
            cells.append(f"{m:.4f} ({x:.3f} x; {'-' if br is None else f'{br:.3f}'})")
        lines.append(f"| {r['bits']} | {r['block_size']} | {peers} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += study_commands(results)
    return "\n".join(lines) + "\n"


def study_commands(results: Sequence[dict], with_model: bool = False) -> List[str]:
    """One markdown line per study result: the command that made it, its time and date."""
    out = []
    for res in results:
        m = res["meta"]
        who = f"{m['model']}, {m['bits']} bits" if with_model else f"{m['bits']} bits"
        out.append(f"- {who}: `python benchmarks/mlp_codes_study.py {' '.join(m['argv'])}` "
                   f"({m['seconds']} s, {m['threads']} threads, {m['date']})")
    return out


def plot(results: Sequence[dict], path: pathlib.Path, title: str) -> Optional[pathlib.Path]:
    """Grouped bars: one group per (bits, block size), one bar per selector; None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("codes_study_report: matplotlib not installed; no plot", file=sys.stderr)
        return None
    rows = study_rows(results)
    names = [k for k, _ in _PEERS] + list(dict.fromkeys(n for r in rows for n in r["gsa"]))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(rows) * len(names) / 4), 4))
    for i, n in enumerate(names):
        vals = [(float("nan") if r[n] is None else r[n]) if n in r else r["gsa"].get(n, (float("nan"),))[0]
                for r in rows]
        ax.bar([j + (i - (len(names) - 1) / 2) * width for j in range(len(rows))], vals, width,
               label=n if n in dict(_PEERS) else f"GSA {n}")
    ax.set_xticks(range(len(rows)), [f"{r['bits']} bits, bs {r['block_size']}" for r in rows])
    for j, r in enumerate(rows):  # the issue-17 target: 0.97 x the oracle's recall
        ax.hlines(0.97 * r["oracle"], j - 0.45, j + 0.45, colors="k", linestyles="dashed", linewidth=0.8,
                  label="0.97 x oracle" if j == 0 else None)
    lo = min(min(r["oracle"], r["quest"], *(v[0] for v in r["gsa"].values())) for r in rows)
    hi = max(max(r["oracle"], r["quest_eqbytes"], *(v[0] for v in r["gsa"].values())) for r in rows)
    ax.set_ylim(max(0.0, lo - 0.05), min(1.0, hi + 0.04))
    ax.set_ylabel("attention-mass recall")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report_main(argv, description, markdown_fn, plot_fn, default_title) -> int:
    """The command line of this script and ``accuracy_equal_bytes_report.py``: study JSON files in,
    ``STEM.md`` and ``STEM.png`` out. ``default_title``: a string, or a function of the results."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="mlp_codes_study.py JSON files")
    ap.add_argument("--out", required=True, help="output stem: writes STEM.md and STEM.png")
    ap.add_argument("--title", default=None)
    args = ap.parse_args(argv)
    results = [json.loads(pathlib.Path(p).read_text()) for p in args.results]
    title = args.title or (default_title(results) if callable(default_title) else default_title)
    stem = pathlib.Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    md = pathlib.Path(f"{stem}.md")
    md.write_text(markdown_fn(results, title))
    print(md)
    png = plot_fn(results, pathlib.Path(f"{stem}.png"), title)
    if png:
        print(png)
    return 0


def _title(results) -> str:
    m = results[0]["meta"]
    return (f"{m['model']}: codes vs oracle and Quest, ratio {m['ratio']}, "
            f"{m['book']} {m['prefix']}+{m['eval_tokens']} tokens")


def main(argv=None) -> int:
    return report_main(argv, __doc__, markdown, plot, _title)


if __name__ == "__main__":
    sys.exit(main())
