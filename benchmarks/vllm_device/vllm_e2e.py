"""One vLLM engine on the GPU, dense or with GSA, and its decode throughput (issue 13).

    python benchmarks/vllm_device/vllm_e2e.py --spec '{"model": "qwen3-4b", "gsa": "1/8",
        "mode": "FULL_AND_PIECEWISE", "runs": [[32768, 16], [131072, 4]]}' --out DIR

``gsa``: ``null`` (dense, plugin inert), ``"1"`` (GSA on every layer at ratio 1: must
equal dense token for token), ``"0.3"``, ``"1/8"``, ``"1/16"``, or ``"bad"`` (a config
whose chunk_size differs from the block size: the engine must refuse to start with our
error). ``mode``: vLLM's ``cudagraph_mode``. Weights: ``load_format="dummy"`` (a real
shape from a config.json alone; token-id prompts, prefix caching off). The engine is
stepped by hand (``llm_engine.add_request`` / ``step``): decode tokens/s = batch x (N - 1)
/ (time from the step where every request has its first token to the last step), so one
prefill per measurement and no prefill time in the decode figure. Each step's wall time is
kept too: ``decode_tok_s_median`` (batch / the median step) is the steady state, and
``first_steps_ms`` / ``slow_steps`` show one-time costs (a Triton launch specialisation
compiled at a run's first decode step, which PIECEWISE meets there and FULL at capture).
Appends one JSON row per (context, batch) to DIR/vllm_e2e.jsonl, with the GSA counters,
the cudagraph mode vLLM kept, and, with ``capture_layer``, the check of one sparse layer's
output against our reference sparse attention on the same table. Diagnostics per run index:
``"cprofile_runs"`` (host-time breakdown, ``profile_top``), ``"torch_profile_runs"`` (GPU
kernels), ``"sync_debug_runs"``; ``"variant"``: a free label copied into the rows.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: our runtime is visible
os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")  # flashinfer is not carried
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..")))
sys.path.insert(0, HERE)

from e2e_models import gsa_inline, is_mla, model_dir, vocab  # noqa: E402  (this folder)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _device_name() -> str:
    import platform

    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.machine()})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True)
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    args = ap.parse_args()
    spec = json.loads(args.spec)
    os.makedirs(args.out, exist_ok=True)
    rows_path = os.path.join(args.out, "vllm_e2e.jsonl")
    import torch

    t_imp = time.perf_counter()
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    import gsa.integrations.vllm as gv

    gv.register()  # the entry point is not installed on the device: register in-process
    print(f"[e2e] vllm {vllm.__version__} imported in {time.perf_counter() - t_imp:.1f}s; {_device_name()}", flush=True)
    name, ratio_key, mode = spec["model"], spec.get("gsa"), spec.get("mode", "FULL_AND_PIECEWISE")
    runs = spec["runs"]
    max_len = max(c for c, _ in runs) + 1024
    ov = spec.get("model_overrides")
    block = int(spec.get("block_size", 128))
    backend = spec.get("backend", "FLASH_ATTN_MLA" if is_mla(name) else "FLASH_ATTN")
    kw = dict(model=model_dir(name, max_len, ov), load_format="dummy", skip_tokenizer_init=True, max_model_len=max_len,
              block_size=block, enable_prefix_caching=False, gpu_memory_utilization=spec.get("mem", 0.88),
              max_num_seqs=max(b for _, b in runs), seed=0,
              max_num_batched_tokens=spec.get("mbt", 16384),
              attention_config={"backend": backend},
              compilation_config={"cudagraph_mode": mode,
                                  "cudagraph_capture_sizes": sorted({1, 2, 4, 8, 16, 32} | {b for _, b in runs})})
    kw.update(spec.get("engine_kw", {}))  # e.g. {"dtype": "float32", "enforce_eager": true} for a CPU check
    if ratio_key is not None:
        kw["additional_config"] = {"gsa": gsa_inline(name, ratio_key, block, ov, spec.get("gsa_overrides"))}
    t0 = time.perf_counter()
    try:
        llm = LLM(**kw)
    except Exception as exc:
        row = dict(model=name, config=ratio_key or "dense", started=False, error=f"{type(exc).__name__}: {exc}"[:600])
        print("[e2e] engine refused to start:", row["error"], flush=True)
        with open(rows_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        return
    init_s = time.perf_counter() - t0
    cc = llm.llm_engine.vllm_config.compilation_config
    kept_mode = str(cc.cudagraph_mode)
    kv_blocks = llm.llm_engine.vllm_config.cache_config.num_gpu_blocks
    print(f"[e2e] init {init_s:.1f}s; cudagraph_mode kept: {kept_mode}; KV cache blocks: {kv_blocks}", flush=True)
    gen = torch.Generator().manual_seed(spec.get("seed", 0))

    def prompts(n, length):
        ids = torch.randint(0, vocab(name, ov), (n, length), generator=gen).tolist()
        return [TokensPrompt(prompt_token_ids=x) for x in ids]

    def decode_run(ps, max_tokens, prof=None):
        """Step the engine by hand; returns (decode seconds, prefill seconds, token ids per request).
        ``prof``: started (``enable()``) when decoding starts and stopped after the last step: a
        ``cProfile.Profile`` (host-time breakdown) or a :class:`_Diag` (sync warnings, GPU profile)."""
        sp = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
        eng = llm.llm_engine
        ids = [f"r{time.perf_counter_ns()}_{i}" for i in range(len(ps))]
        _sync()
        t0 = time.perf_counter()
        for rid, p in zip(ids, ps):
            eng.add_request(rid, p, sp)
        toks = {rid: [] for rid in ids}
        t_first = None
        steps_ms = []  # wall time of each decode step (after every request has its first token)
        cpu_ms = []  # this thread's CPU time in each of those steps: wall >> CPU means waiting
        host = _HostWatch()
        while eng.has_unfinished_requests():
            t_s, c_s = time.perf_counter(), time.thread_time()
            for o in eng.step():
                if o.request_id in toks:
                    toks[o.request_id] = list(o.outputs[0].token_ids)
            if t_first is not None:
                steps_ms.append((time.perf_counter() - t_s) * 1e3)
                cpu_ms.append((time.thread_time() - c_s) * 1e3)
            elif all(len(v) >= 1 for v in toks.values()):
                t_first = time.perf_counter()
                host.start()
                if prof is not None:
                    prof.enable()
        t_end = time.perf_counter()
        if prof is not None:
            prof.disable()
        host.stop(cpu_ms)
        return t_end - t_first, t_first - t0, [toks[r] for r in ids], steps_ms, host.report

    decode_run(prompts(2, 512), 4)  # warm-up (small: the runs' own shapes may still compile at their first steps)
    n_new = spec.get("max_tokens", 129)
    for i_run, (ctx, batch) in enumerate(runs):
        rt = gv.current_runtime()
        if rt is not None:
            rt.reset_stats()
            if spec.get("capture_layer") is not None:
                rt.enable_capture(int(spec["capture_layer"]))
        plen = ctx - n_new
        ps = prompts(batch, plen)
        prof = None
        # "profile": "first" profiles the first run only (repeat it unprofiled for the clean figure)
        if (spec.get("profile") == "first" and i_run == 0) or i_run in spec.get("cprofile_runs", []):
            # host-time breakdown (cProfile adds overhead)
            import cProfile

            prof = cProfile.Profile()
        elif i_run in spec.get("sync_debug_runs", []) or i_run in spec.get("torch_profile_runs", []):
            prof = _Diag(sync=i_run in spec.get("sync_debug_runs", []),
                         gpu=i_run in spec.get("torch_profile_runs", []))
        t_dec, t_pre, toks, steps_ms, host = decode_run(ps, n_new, prof)
        dec = batch * (n_new - 1) / t_dec
        srt = sorted(steps_ms)
        med = srt[len(srt) // 2] if srt else float("nan")
        row = dict(vllm=vllm.__version__, torch=torch.__version__, device=_device_name(), model=name, backend=backend,
                   context=ctx, batch=batch, cudagraph_mode=mode, cudagraph_mode_kept=kept_mode,
                   config=ratio_key or "dense", decode_tok_s=dec, ms_per_step=t_dec / (n_new - 1) * 1e3,
                   prefill_s=t_pre, decode_s=t_dec, new_tokens=n_new, init_s=init_s,
                   tokens_sha=hashlib.sha256(json.dumps(toks).encode()).hexdigest()[:16],
                   tokens_head=[t[:12] for t in toks[:2]], commit=os.environ.get("GSA_COMMIT"),
                   # steady state: the median step, so a one-time cost in the first steps (Triton compiling a
                   # launch specialisation the warm-up did not meet) shows as first_steps_ms, not as throughput
                   variant=spec.get("variant"),
                   step_ms_median=med, decode_tok_s_median=batch * 1e3 / med if srt else None,
                   first_steps_ms=[round(x, 2) for x in steps_ms[:4]], step_ms_max=srt[-1] if srt else None,
                   slow_steps=sum(x > 2 * med for x in steps_ms), host=host,
                   # every request's whole context fits in the KV cache at once: otherwise the batch did not
                   # decode together and the row's tok/s is not that batch's
                   mem=kw["gpu_memory_utilization"], kv_blocks=kv_blocks,
                   fits=kv_blocks is not None and kv_blocks >= batch * -(-ctx // block))
        if isinstance(prof, _Diag):
            row.update(prof.report(n_new - 1, t_dec))
            row["superseded"] = "diagnostic run (sync-debug warnings or torch profiler in its timing)"
        elif prof is not None:
            row["profile_top"] = profile_top(prof, n_new - 1)
            row["superseded"] = "profiled run (cProfile overhead in its timing)"
        if rt is not None:
            st = rt.stats()
            row["gsa_stats"] = {k: st[k] for k in ("steps", "sparse_steps", "sparse_rows", "decode_rows",
                                                    "layer_selections", "blocks_read_fraction")}
            if rt.captured is not None:
                from gsa.integrations.vllm.capture_check import check_capture

                row["capture_check"] = check_capture(rt.captured, rt.config, block)
        print("[e2e] ROW", json.dumps(row), flush=True)
        with open(rows_path, "a") as f:
            f.write(json.dumps(row) + "\n")


def _cpu_mhz() -> float | None:
    """Mean current clock of the host's CPUs (``/proc/cpuinfo``; None where it is not readable)."""
    try:
        with open("/proc/cpuinfo") as fh:
            mhz = [float(line.split(":")[1]) for line in fh if line.startswith("cpu MHz")]
        return round(sum(mhz) / len(mhz), 1) if mhz else None
    except (OSError, ValueError, IndexError):
        return None


class _HostWatch:
    """What the host did during a run's decode steps: this thread's CPU time per step (median;
    against the median wall step it says whether a slow run computed more or waited more), the
    process's CPU time, the load average and CPU clocks at start and end, and the garbage
    collections (count and time per generation)."""

    def __init__(self) -> None:
        self.report: dict = {}
        self._gc = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
        self._t = 0.0

    def _cb(self, phase, info) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            g = self._gc.setdefault(info.get("generation", -1), [0, 0.0])
            g[0] += 1
            g[1] += time.perf_counter() - self._t

    def start(self) -> None:
        import gc

        self._p0 = time.process_time()
        self._w0 = time.perf_counter()
        self.report = {"load_start": _loadavg(), "cpu_mhz_start": _cpu_mhz()}
        gc.callbacks.append(self._cb)

    def stop(self, cpu_ms) -> None:
        import gc

        if self._cb in gc.callbacks:
            gc.callbacks.remove(self._cb)
        if not self.report:
            return
        srt = sorted(cpu_ms)
        wall = time.perf_counter() - self._w0
        self.report.update(
            thread_cpu_ms_median=round(srt[len(srt) // 2], 3) if srt else None,
            process_cpu_per_wall=round((time.process_time() - self._p0) / wall, 3) if wall > 0 else None,
            load_end=_loadavg(), cpu_mhz_end=_cpu_mhz(),
            gc={str(k): {"n": v[0], "ms": round(v[1] * 1e3, 2)} for k, v in self._gc.items() if v[0]})


def _loadavg() -> str | None:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return None


class _Diag:
    """Diagnostics over the decode steps: ``sync``: ``torch.cuda.set_sync_debug_mode("warn")``
    (every synchronizing CUDA call warns; the warnings' Python call sites are kept, deduplicated);
    ``gpu``: a ``torch.profiler`` trace (CUDA kernel time per step vs wall time, top kernels)."""

    def __init__(self, sync: bool, gpu: bool) -> None:
        self.sync, self.gpu = sync, gpu
        self._warn = None
        self._prof = None

    def enable(self) -> None:
        import warnings

        import torch

        if self.sync:
            self._warn = warnings.catch_warnings(record=True)
            self.records = self._warn.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        if self.gpu:
            self._prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                            torch.profiler.ProfilerActivity.CUDA])
            self._prof.__enter__()

    def disable(self) -> None:
        import torch

        if self.gpu and self._prof is not None:
            torch.cuda.synchronize()
            self._prof.__exit__(None, None, None)
        if self.sync and self._warn is not None:
            torch.cuda.set_sync_debug_mode(0)
            self._warn.__exit__(None, None, None)

    def report(self, steps: int, wall_s: float) -> dict:
        out = {}
        if self.sync:
            sites = {}
            for w in getattr(self, "records", []):
                if "synchroniz" not in str(w.message):
                    continue
                key = f"{os.path.basename(os.path.dirname(w.filename))}/{os.path.basename(w.filename)}:{w.lineno}"
                sites[key] = sites.get(key, 0) + 1
            out["sync_sites_per_step"] = {k: v / steps for k, v in sorted(sites.items(), key=lambda kv: -kv[1])[:15]}
        if self.gpu and self._prof is not None:
            ev = [e for e in self._prof.key_averages() if getattr(e, "self_device_time_total", 0) > 0]
            ev.sort(key=lambda e: -e.self_device_time_total)
            total = sum(e.self_device_time_total for e in ev)  # us over the profiled steps
            out["gpu_us_per_step"] = total / steps
            out["wall_us_per_step_profiled"] = wall_s / steps * 1e6
            out["gpu_top"] = [[e.key[:90], e.count / steps, e.self_device_time_total / steps] for e in ev[:20]]
        return out


def profile_top(prof, steps: int, n: int = 40) -> dict:
    """The ``n`` functions with the most own (tottime) and cumulative host time over the
    profiled decode steps, in microseconds per step: ``[name, calls/step, own us/step, cum us/step]``."""
    import pstats

    st = pstats.Stats(prof)
    rows = []
    for (fn, line, name), (cc, nc, tt, ct, _) in st.stats.items():
        where = f"{os.path.basename(os.path.dirname(fn))}/{os.path.basename(fn)}:{line}({name})"
        rows.append([where, nc / steps, tt / steps * 1e6, ct / steps * 1e6])
    own = sorted(rows, key=lambda r: -r[2])[:n]
    cum = sorted(rows, key=lambda r: -r[3])[:n]
    r3 = lambda r: [r[0], round(r[1], 2), round(r[2], 1), round(r[3], 1)]
    return {"by_own": [r3(r) for r in own], "by_cum": [r3(r) for r in cum]}


if __name__ == "__main__":
    main()
