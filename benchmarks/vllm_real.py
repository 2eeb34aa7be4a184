"""Real weights on a real vLLM engine, dense vs GSA (issue 13): Qwen2.5-Coder-0.5B-Instruct.

One engine per process (``run``), then ``report`` compares the runs:

    python benchmarks/vllm_real.py run --config dense  --out DIR [options]
    python benchmarks/vllm_real.py run --config ratio1 --out DIR      # GSA on, every layer ratio 1
    python benchmarks/vllm_real.py run --config full   --out DIR      # sparse path, every block kept
    python benchmarks/vllm_real.py run --config 1/8    --out DIR      # the shipped layers at 1/8
    python benchmarks/vllm_real.py report DIR/vllm_real_*.json --out benchmarks/results/vllm_real_cpu

Configs (all from the shipped Qwen2.5-Coder-0.5B config: 128-token blocks, layers 0, 1 and
23 dense, must-select blocks first / last two; ``gpu_seq_len_threshold`` 1024 so that every
decode row of these prompts is planned):

* ``dense``: GSA off (the plugin registered, inert);
* ``ratio1``: GSA on, ratio 1 in every layer: must equal ``dense`` token for token;
* ``full``: GSA on, the sparse layers at 0.99999: hashing, selection and the rebuilt
  metadata run on every decode step but keep every block: must equal ``dense`` too;
* ``1/8``: the sparse layers at 0.125: the sparse path is taken (counters) and the
  passkeys must be found.

Prompts (same token ids in every run): two equality prompts (a passkey prompt and a
chat-templated question about one of this repo's source files, ``--eq-tokens`` long),
greedy ``--eq-new`` tokens; then one passkey prompt per (``--lengths``, ``--depths``),
greedy 8 tokens (``gsa.eval.metrics.passkey_prompt`` / ``passkey_found``). The model
folder: ``--model-dir`` or ``gsa.eval.assets.qwen_coder_hf_dir()`` (converted once from
the GGUF; ``$GSA_CACHE_DIR``). Writes ``DIR/vllm_real_<config>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: our counters are visible
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
CONFIGS = ("dense", "ratio1", "full", "1/8")
PASSKEYS = [68239, 40517, 92814, 15372, 77461, 30958, 58126, 84603, 21795]
EQ_SOURCE = "gsa/config.py"  # a file of this repo: the context of the second equality prompt


def gsa_config(name: str) -> dict:
    """The inline GSA config of run ``name`` (``None`` for dense)."""
    from gsa.config import GSAConfig

    cfg = GSAConfig.for_model(MODEL).to_dict()
    old = cfg["top_k_ratio_per_layer"]
    if name == "ratio1":
        ratios = [1.0] * len(old)
    else:
        r = {"full": 0.99999, "1/8": 0.125}[name]
        ratios = [1.0 if x >= 1 else r for x in old]
    cfg.update(top_k_ratio_per_layer=ratios, gpu_seq_len_threshold=1024)
    return cfg


def prompts(tok, eq_tokens: int, lengths, depths):
    """``(equality prompts, passkey prompts)``: token-id lists plus what each asks."""
    from gsa.eval.metrics import passkey_prompt

    eq = [dict(kind="passkey", ids=passkey_prompt(tok, eq_tokens, 0.3, 55017).tolist())]
    src = (ROOT / EQ_SOURCE).read_text()
    src_ids = tok(src, add_special_tokens=False).input_ids[: max(64, eq_tokens - 120)]
    msgs = [{"role": "user", "content": "Here is a Python module:\n```python\n" + tok.decode(src_ids)
             + "\n```\nExplain in a few sentences what this module is for."}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    eq.append(dict(kind="code", ids=tok(text, add_special_tokens=False).input_ids))
    pk, i = [], 0
    for n in lengths:
        for d in depths:
            key = PASSKEYS[i % len(PASSKEYS)]
            i += 1
            pk.append(dict(length=n, depth=d, key=key, ids=passkey_prompt(tok, n, d, key).tolist()))
    return eq, pk


def run(args) -> None:
    import torch
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    import gsa.integrations.vllm as gv
    from gsa.eval.metrics import passkey_found

    gv.register()  # in-process: also when the entry point is not installed (the device machine)
    model_dir = args.model_dir
    if not model_dir:
        from gsa.eval.assets import qwen_coder_hf_dir

        model_dir = str(qwen_coder_hf_dir())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    eq, pk = prompts(tok, args.eq_tokens, args.lengths, args.depths)
    longest = max(len(p["ids"]) for p in eq + pk)
    cuda = torch.cuda.is_available()
    kw = dict(model=model_dir, dtype=args.dtype, max_model_len=min(32768, longest + 64), block_size=128, seed=0,
              enable_prefix_caching=False, max_num_seqs=max(4, len(pk)),
              max_num_batched_tokens=args.batched_tokens)
    if cuda:
        kw.update(gpu_memory_utilization=args.mem, attention_config={"backend": "FLASH_ATTN"},
                  compilation_config={"cudagraph_mode": args.mode})
    else:
        kw.update(enforce_eager=True)
    if args.config != "dense":
        kw["additional_config"] = {"gsa": {"config": gsa_config(args.config), "log_every": 0}}
    t0 = time.perf_counter()
    llm = LLM(**kw)
    init_s = time.perf_counter() - t0
    cc = llm.llm_engine.vllm_config.compilation_config
    rt = gv.current_runtime()
    if (rt is None) != (args.config == "dense"):
        raise SystemExit(f"GSA runtime {'missing' if rt is None else 'present'} for config {args.config}")
    out = dict(config=args.config, vllm=vllm.__version__, torch=torch.__version__,
               device=torch.cuda.get_device_name() if cuda else "cpu", model=MODEL, model_dir=model_dir,
               dtype=args.dtype, block_size=128, cudagraph_mode=str(cc.cudagraph_mode) if cuda else "none (CPU)",
               gsa=kw.get("additional_config", {}).get("gsa", {}).get("config"), init_s=round(init_s, 1))
    if rt is not None and args.capture_layer is not None:
        rt.enable_capture(args.capture_layer)

    def gen(items, n):
        sp = SamplingParams(max_tokens=n, temperature=0.0)
        t = time.perf_counter()
        res = llm.generate([TokensPrompt(prompt_token_ids=p["ids"]) for p in items], sp, use_tqdm=False)
        return [list(r.outputs[0].token_ids) for r in res], time.perf_counter() - t

    toks, secs = gen(eq, args.eq_new)
    out["equality"] = [dict(kind=p["kind"], prompt_tokens=len(p["ids"]), token_ids=t, text=tok.decode(t))
                       for p, t in zip(eq, toks)]
    out["equality_s"] = round(secs, 1)
    if rt is not None:
        out["equality_stats"] = pick(rt.stats())
        rt.reset_stats()
    toks, secs = gen(pk, 8)
    out["passkey"] = []
    for p, t in zip(pk, toks):
        ans = tok.decode(t)
        out["passkey"].append(dict(length=p["length"], prompt_tokens=len(p["ids"]), depth=p["depth"], key=p["key"],
                                   answer=ans, found=passkey_found(ans, p["key"]), token_ids=t))
    out["passkey_s"] = round(secs, 1)
    if rt is not None:
        out["passkey_stats"] = pick(rt.stats())
        if rt.captured is not None:
            out["capture_check"] = check_capture(rt.captured, rt.config)
    os.makedirs(args.out, exist_ok=True)
    path = pathlib.Path(args.out) / f"vllm_real_{args.config.replace('/', '_')}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"[real] {args.config}: init {init_s:.0f}s, equality {out['equality_s']}s, passkey {out['passkey_s']}s; "
          f"found {sum(p['found'] for p in out['passkey'])}/{len(out['passkey'])}; "
          f"stats {out.get('passkey_stats')}; capture {out.get('capture_check')} -> {path}", flush=True)


def pick(st: dict) -> dict:
    return {k: st[k] for k in ("steps", "sparse_steps", "sparse_rows", "decode_rows", "layer_selections",
                               "blocks_read_fraction") if k in st}


def check_capture(c: dict, cfg) -> dict:
    """The captured sparse layer's output vs ``gsa.reference`` sparse attention on the same
    table, and that table vs the reference selection from the captured hash cache
    (:func:`gsa.integrations.vllm.capture_check.check_capture`), with the lengths."""
    from gsa.integrations.vllm.capture_check import check_capture as shared

    out = shared(c, cfg, cfg.chunk_size)
    out["output_ok"] = out["max_abs_err"] < 2e-2
    out.update(dense_lens=c["seq_lens"].tolist(), sparse_lens=c["sparse_seq_lens"].tolist())
    return out


def first_difference(a, b):
    """Index of the first generated token where ``a`` and ``b`` differ (``None``: equal)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def report(args) -> None:
    loaded = {}
    for p in args.files:
        d = json.loads(pathlib.Path(p).read_text())
        loaded[d["config"]] = d
    runs = {n: loaded[n] for n in CONFIGS if n in loaded}
    if "dense" not in runs:
        raise SystemExit("report: the dense run is missing")
    dense = runs["dense"]
    rows, ok = [], True
    for name in CONFIGS:
        d = runs.get(name)
        if d is None:
            continue
        eq = [a["token_ids"] == b["token_ids"] for a, b in zip(d["equality"], dense["equality"])]
        pk_eq = [a["token_ids"] == b["token_ids"] for a, b in zip(d["passkey"], dense["passkey"])]
        found = [p["found"] for p in d["passkey"]]
        st = d.get("passkey_stats") or {}
        first_diff = [first_difference(a["token_ids"], b["token_ids"]) for a, b in zip(d["equality"], dense["equality"])]
        row = dict(config=name, equality_equal_dense=eq, equality_first_difference=first_diff,
                   passkey_tokens_equal_dense=pk_eq, passkey_found=found,
                   passkey_stats=st, capture_check=d.get("capture_check"), init_s=d["init_s"],
                   equality_s=d["equality_s"], passkey_s=d["passkey_s"], cudagraph_mode=d["cudagraph_mode"])
        if name in ("ratio1", "full"):
            ok &= all(eq) and all(pk_eq)
        if name == "1/8":
            ok &= all(found) and st.get("sparse_steps", 0) > 0
            cc = d.get("capture_check")
            ok &= cc is None or (cc["output_ok"] and cc["reference_table_equal"] and cc["reference_lens_equal"])
        rows.append(row)
    meta = {k: dense[k] for k in ("vllm", "torch", "device", "model", "dtype", "block_size")}
    meta["passkeys"] = [dict(length=p["length"], prompt_tokens=p["prompt_tokens"], depth=p["depth"], key=p["key"])
                        for p in dense["passkey"]]
    meta["equality_prompts"] = [dict(kind=e["kind"], prompt_tokens=e["prompt_tokens"], new=len(e["token_ids"]))
                                for e in dense["equality"]]
    out = dict(meta=meta, ok=bool(ok), rows=rows,
               answers={n: [p["answer"] for p in d["passkey"]] for n, d in runs.items()})
    base = pathlib.Path(args.out)
    base.with_suffix(".json").write_text(json.dumps(out, indent=1))
    lines = [f"# vLLM with real weights: {meta['model']} ({meta['device']})", "",
             f"vLLM {meta['vllm']}, torch {meta['torch']}, {meta['dtype']}, block size {meta['block_size']}, greedy; "
             f"made by `benchmarks/vllm_real.py` (commands in docs/vllm.md). Overall: **{'PASS' if ok else 'FAIL'}**.", "",
             "Equality prompts: " + ", ".join(f"{e['kind']} ({e['prompt_tokens']} tokens, {e['new']} new)"
                                               for e in meta["equality_prompts"]) + ".", "",
             "| config | equality prompts = dense (first differing token) | passkey tokens = dense | passkeys found | "
             "sparse steps / steps | blocks read | cudagraph mode | engine start s | equality + passkey s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        st = r["passkey_stats"]
        frac = st.get("blocks_read_fraction")
        diffs = ", ".join("-" if x is None else str(x) for x in r["equality_first_difference"])
        lines.append(f"| {r['config']} | {sum(r['equality_equal_dense'])}/{len(r['equality_equal_dense'])} ({diffs}) | "
                     f"{sum(r['passkey_tokens_equal_dense'])}/{len(r['passkey_tokens_equal_dense'])} | "
                     f"{sum(r['passkey_found'])}/{len(r['passkey_found'])} | "
                     f"{st.get('sparse_steps', '-')} / {st.get('steps', '-')} | "
                     f"{'-' if frac is None else f'{100 * frac:.1f}%'} | {r['cudagraph_mode']} | {r['init_s']} | "
                     f"{r['equality_s']} + {r['passkey_s']} |")
    lines += ["", "Passkeys (prompt tokens, depth, key) and answers:", "",
              "| prompt tokens | depth | key | " + " | ".join(runs) + " |", "|---|---|---|" + "---|" * len(runs)]
    for i, p in enumerate(meta["passkeys"]):
        lines.append(f"| {p['prompt_tokens']} | {p['depth']} | {p['key']} | "
                     + " | ".join(repr(runs[n]["passkey"][i]["answer"].strip())[:40] for n in runs) + " |")
    for r in rows:
        if r["capture_check"]:
            c = r["capture_check"]
            lines += ["", f"{r['config']}: layer {c['layer']}'s kernel output on our sparse table vs "
                      f"`gsa.reference.paged_decode_attention`: max abs error {c['max_abs_err']:.2e} over "
                      f"{c['rows']} rows; table = reference selection: {c['reference_table_equal']}, lengths: "
                      f"{c['reference_lens_equal']} (dense {c['dense_lens']} -> sparse {c['sparse_lens']} tokens)."]
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not ok:
        raise SystemExit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--config", choices=CONFIGS, required=True)
    r.add_argument("--out", default=os.environ.get("OUT", "/tmp/vllm_real"))
    r.add_argument("--model-dir", default=None)
    r.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192])
    r.add_argument("--depths", type=float, nargs="+", default=[0.5])
    r.add_argument("--eq-tokens", type=int, default=2048)
    r.add_argument("--eq-new", type=int, default=32)
    r.add_argument("--dtype", default="bfloat16")
    r.add_argument("--mode", default="FULL_AND_PIECEWISE", help="cudagraph_mode (GPU)")
    r.add_argument("--mem", type=float, default=0.85, help="gpu_memory_utilization (GPU)")
    r.add_argument("--batched-tokens", type=int, default=8192, help="max_num_batched_tokens")
    r.add_argument("--capture-layer", type=int, default=None,
                   help="check this sparse layer's output against the reference (eager steps only)")
    p = sub.add_parser("report")
    p.add_argument("files", nargs="+")
    p.add_argument("--out", required=True, help="output path without suffix (.json and .md are written)")
    args = ap.parse_args()
    run(args) if args.cmd == "run" else report(args)


if __name__ == "__main__":
    main()
