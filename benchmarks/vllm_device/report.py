"""Merge vllm_e2e.jsonl rows into benchmarks/results/vllm_e2e_h200.{json,md,png}.

    python benchmarks/vllm_device/report.py ROWS.jsonl [...] --out benchmarks/results/vllm_e2e_h200

Rows with ``"superseded"`` set are kept in the JSON (history) and left out of the table.
"""
import argparse
import json

UCM = {"note": "UCM GSA, published, non-offload, DeepSeek-R1-Distill-Qwen-32B on 2xH20, 120K: ~48 -> ~70 tok/s",
       "gain": 70 / 48}


def _tags(r: dict) -> str:
    """`` [variant, backend]`` after the config: a run's label and a backend other than the default."""
    tags = [t for t in (r.get("variant"), r.get("backend")) if t and t not in ("FLASH_ATTN", "FLASH_ATTN_MLA")]
    return f" [{', '.join(tags)}]" if tags else ""


def _median_cell(r) -> str:
    """Steady-state throughput from the median decode step, and the first steps' times (rows since
    per-step timing; older rows have only the mean over the whole decode)."""
    if not r.get("decode_tok_s_median"):
        return "-"
    return f"{r['decode_tok_s_median']:.0f} ({', '.join(f'{x:.0f}' for x in r.get('first_steps_ms', []))})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rows", nargs="+")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rows = []
    for p in a.rows:
        rows += [json.loads(l) for l in open(p) if l.strip()]
    live = [r for r in rows if not r.get("superseded") and r.get("decode_tok_s")]
    # dense of the same lease (``session``) first, else the newest dense of that shape (rows are in run order)
    dense = {(r["model"], r["context"], r["batch"], r["cudagraph_mode"]): r["decode_tok_s"]
             for r in live if r["config"] == "dense"}
    dense.update({(r["model"], r["context"], r["batch"], r["cudagraph_mode"], r["session"]): r["decode_tok_s"]
                  for r in live if r["config"] == "dense" and r.get("session")})
    full = {(r["model"], r["context"], r["batch"], r["config"]): r["decode_tok_s"]
            for r in live if r["cudagraph_mode"] == "FULL_AND_PIECEWISE"}
    for r in live:
        key = (r["model"], r["context"], r["batch"])
        d = dense.get(key + (r["cudagraph_mode"], r.get("session"))) or dense.get(key + (r["cudagraph_mode"],)) or \
            dense.get(key + ("FULL_AND_PIECEWISE", r.get("session"))) or dense.get(key + ("FULL_AND_PIECEWISE",))
        r["vs_dense"] = r["decode_tok_s"] / d if d else None
        f = full.get((r["model"], r["context"], r["batch"], r["config"]))
        r["vs_full"] = r["decode_tok_s"] / f if (f and r["cudagraph_mode"] != "FULL_AND_PIECEWISE") else None
    out = {"rows": rows, "ucm_reference": UCM}
    with open(a.out + ".json", "w") as f:
        json.dump(out, f, indent=1)
    L = [f"# vLLM {live[0]['vllm']} end to end on the {live[0]['device']} (torch {live[0]['torch']})", "",
         "Dummy-weight models (`load_format=\"dummy\"`), token-id prompts, FLASH_ATTN (FA3), block size 128, greedy, "
         "128 new tokens after the prompt; decode tok/s = batch x 127 / decode time (engine stepped by hand, prefill "
         "excluded); median-step tok/s = batch / the median step (the steady state; a first step far above it is a "
         "one-time cost, e.g. Triton compiling a launch shape at a PIECEWISE run's first decode step). `vs dense`: against dense in the same cudagraph mode (FULL's when that mode has no dense row); "
         "`vs FULL`: the same config under FULL_AND_PIECEWISE. `same tokens as dense`: all generated ids equal "
         "(a weak signal with dummy weights: their greedy outputs repeat two tokens; prompts are drawn per engine "
         "in run order, so a row from an engine with other earlier runs, such as the diagnostic ones, was given "
         "other prompts than the dense row and can differ for that reason alone; a row is compared with every dense row of its shape and `yes` means it equals one of them). `commit`: the code measured.", "",
         "| model | context | batch | cudagraph mode (kept) | config | decode tok/s | ms/step | median-step tok/s (first steps, ms) | vs dense | vs FULL | same tokens as dense | sparse steps | commit |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    # every dense row's ids per shape: an engine's prompts depend on its earlier runs, so a GSA row is
    # compared with each dense row of its shape ("yes": it equals one of them)
    dense_sha = {}
    for r in live:
        if r["config"] == "dense":
            dense_sha.setdefault((r["model"], r["context"], r["batch"]), set()).add(r["tokens_sha"])
    for r in sorted(live, key=lambda r: (r["model"], r["context"], r["cudagraph_mode"], r["config"] != "dense", r["config"])):
        st = r.get("gsa_stats") or {}
        same = dense_sha.get((r["model"], r["context"], r["batch"]))
        vs_d = "" if r["vs_dense"] is None else f"{r['vs_dense']:.2f}x"
        vs_f = "" if r["vs_full"] is None else f"{r['vs_full']:.2f}x"
        same_tok = "" if same is None or r["config"] == "dense" else ("yes" if r["tokens_sha"] in same else "no")
        L.append(f"| {r['model']} | {r['context'] // 1024}K | {r['batch']} | {r['cudagraph_mode_kept']} | {r['config']}{_tags(r)} | "
                 f"{r['decode_tok_s']:.0f} | {r['ms_per_step']:.2f} | {_median_cell(r)} | {vs_d} | {vs_f} | {same_tok} | "
                 f"{st.get('sparse_steps', '')}/{st.get('steps', '')} | {r.get('commit') or 'earlier session'} |")
    checks = [r for r in rows if r.get("capture_check")]
    bad = [r for r in rows if r.get("started") is False]
    L += ["", "Reference check of a sparse layer's output (layer 10, PIECEWISE, eager attention): " +
          "; ".join(f"{r['context'] // 1024}K: max abs err {r['capture_check']['max_abs_err']:.1e}, table and lengths equal "
                    f"the reference selection: {r['capture_check']['reference_table_equal'] and r['capture_check']['reference_lens_equal']}"
                    for r in checks), "",
          "A bad GSA config at start-up: " + "; ".join(r["error"] for r in bad), "",
          f"Published reference: {UCM['note']} ({UCM['gain']:.2f}x)."]
    hosts = [r for r in rows if r.get("host") and r["host"].get("thread_cpu_ms_median") is not None]
    if hosts:
        L += ["", "Host time during decode (rows that recorded it): the engine thread's CPU time per step against the "
              "step's wall time (medians). CPU close to wall: the step is the host's own work (host-bound); wall well "
              "above CPU: the host waits for the GPU. gc: garbage collections during the run's decode steps.", "",
              "| model | context x batch | mode | config | median step ms | thread CPU ms/step | CPU / wall | gc (generation: count, ms) | commit |",
              "|---|---|---|---|---|---|---|---|---|"]
        for r in hosts:
            h = r["host"]
            gcs = ", ".join(f"{g}: {v['n']}, {v['ms']:.0f}" for g, v in sorted(h.get("gc", {}).items())) or "-"
            L.append(f"| {r['model']} | {r['context'] // 1024}K x {r['batch']} | {r['cudagraph_mode_kept']} | {r['config']} | "
                     f"{r['step_ms_median']:.2f} | {h['thread_cpu_ms_median']:.2f} | "
                     f"{h['thread_cpu_ms_median'] / r['step_ms_median']:.2f} | {gcs} | {r.get('commit') or ''} |")
    for r in (r for r in rows if r.get("profile_top")):
        L += ["", f"Host-time profile (cProfile over the decode steps; its own overhead inflates Python-heavy "
              f"entries): {r['model']}, {r['context'] // 1024}K x {r['batch']}, {r['cudagraph_mode']}, {r['config']}, "
              f"{r['ms_per_step']:.2f} ms/step. Top functions by cumulative time per decode step:", "",
              "| function | calls/step | own us/step | cumulative us/step |", "|---|---|---|---|"]
        L += [f"| `{n}` | {c:g} | {o:.0f} | {t:.0f} |" for n, c, o, t in r["profile_top"]["by_cum"][:25]]
    with open(a.out + ".md", "w") as f:
        f.write("\n".join(L) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in live if r["context"] >= 16384})
    fig, axes = plt.subplots(1, len(models), figsize=(7.5 * len(models), 4.2), squeeze=False)
    cfgs = ["dense", "0.3", "1/8", "1/16"]
    w = 0.18
    for ax, m in zip(axes[0], models):
        mine = [r for r in live if r["model"] == m and r["context"] >= 16384]
        runs = sorted({(r["context"], r["batch"]) for r in mine})
        for i, c in enumerate(cfgs):
            vals = [max((r["decode_tok_s"] for r in mine if r["config"] == c and (r["context"], r["batch"]) == x
                         and r["cudagraph_mode"] == "FULL_AND_PIECEWISE"), default=0) for x in runs]
            ax.bar([j + (i - 1.5) * w for j in range(len(runs))], vals, w, label=f"{c} (FULL, best run)")
        pts = [(j - 0.5 * w, r["decode_tok_s"]) for j, x in enumerate(runs) for r in mine
               if r["config"] == "1/8" and (r["context"], r["batch"]) == x and r["cudagraph_mode"] == "PIECEWISE"]
        if pts:
            ax.scatter(*zip(*pts), color="black", marker="x", zorder=3, label="1/8 PIECEWISE (each run, mean step)")
        med = [(j - 0.5 * w, r["decode_tok_s_median"]) for j, x in enumerate(runs) for r in mine
               if r["config"] == "1/8" and (r["context"], r["batch"]) == x and r["cudagraph_mode"] == "PIECEWISE"
               and r.get("decode_tok_s_median")]
        if med:
            ax.scatter(*zip(*med), facecolors="none", edgecolors="black", marker="o", zorder=3,
                       label="1/8 PIECEWISE (median step)")
        ax.set_xticks(range(len(runs)), [f"{c // 1024}K, B={b}" for c, b in runs])
        ax.set_ylabel("decode tokens/s")
        ax.set_title(f"vLLM {live[0]['vllm']}, {m} shape (dummy weights), {live[0]['device']}", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(a.out + ".png", dpi=120)
    print(a.out + ".{json,md,png}")


if __name__ == "__main__":
    main()
