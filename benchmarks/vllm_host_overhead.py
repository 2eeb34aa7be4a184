"""Host (Python) time GSA adds per layer to a vLLM eager decode step (issue 13).

With vLLM's PIECEWISE CUDA graphs the attention of every layer runs eagerly, so the
GSA wrapper's Python work is paid per layer and step. This script times that work on
THIS machine's CPU, with CPU tensors, for the FLASH_ATTN wrapper (``gsa.integrations.vllm.cuda``)
in the graph form a uniform decode batch is planned in:

* once per step: ``GSAVllmRuntime.plan(..., static_width=W)``;
* per layer (36, Qwen3-4B shape, 33 scoring layers at ratio 1/8, as ``vllm_device/vllm_e2e.py``):
  ``GSAFlashAttentionImpl.do_kv_cache_update`` (hash the step's keys) then
  ``GSAFlashAttentionImpl.forward`` (select, sparse metadata copy, vLLM's forward).

Stubs (so that only host work is timed, and only GSA's): vLLM's own
``FlashAttentionImpl.do_kv_cache_update`` / ``forward`` do nothing, and GSA's hot-path
launch programs (``gsa.sparse.hot_path_for``) are recording stubs: no kernel runs in the
timed loop. The value checks that read tensor data (``check_select_values``, the slot
range check) run on CPU tensors but not on an accelerator without ``GSA_DEBUG``; they are
stubbed too by default (``--cpu-value-checks`` keeps them). The GPU effect is not measured here.

    PYTHONPATH=$PWD python benchmarks/vllm_host_overhead.py [--steps 300] [--json OUT.json]

Run it against another tree (e.g. main's, for a before/after) with ``PYTHONPATH=that_tree``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch

LAYERS, HQ, HKV, D, BS = 36, 32, 8, 128, 128


def gsa_config():
    from gsa.config import GSAConfig

    ratios = [1.0 if l in (0, 1, LAYERS - 1) else 0.125 for l in range(LAYERS)]
    return GSAConfig(model_name="Qwen/qwen3-4b", num_hidden_layers=LAYERS, num_attention_heads=HQ,
                     num_key_value_heads=HKV, head_dim=D, hash_bits=128, chunk_size=BS, top_k_ratio_per_layer=ratios)


class _Recorder:
    """A launch program that records its calls instead of launching kernels."""

    def __init__(self, log, name):
        self.log, self.name = log, name

    def __call__(self, *tensors):
        self.log.append(self.name)


class _StubHotPath:
    def __init__(self, log):
        self.log = log

    def select_program(self, *args):
        return _Recorder(self.log, "select")

    def cache_program(self, *args):
        return _Recorder(self.log, "cache")

    def attention_program(self, *args):
        return _Recorder(self.log, "attention")


def setup(batch: int, context: int, cpu_value_checks: bool):
    import gsa.sparse as S
    from gsa import use_backend
    from gsa.integrations.vllm import cuda as W
    from gsa.integrations.vllm.runtime import GSAVllmRuntime
    from gsa.integrations.vllm.settings import PluginSettings

    log = []
    stub = _StubHotPath(log)
    S.hot_path_for = lambda device: stub  # no kernel launches in the timed loop
    if not cpu_value_checks:  # as on an accelerator without GSA_DEBUG: no value-reading checks
        S.check_select_values = lambda *a, **k: None
        S.C._check_slots = lambda *a, **k: None
    # vLLM's own work (reshape_and_cache_flash, FA3) is not GSA's: stubbed
    W.FlashAttentionImpl.do_kv_cache_update = lambda self, *a, **k: None
    W.FlashAttentionImpl.forward = lambda self, layer, query, key, value, kv_cache, md, output, **kw: log.append("fa")

    rt = GSAVllmRuntime(PluginSettings(gsa_config(), 0, "bench"), device=torch.device("cpu"), num_layers=LAYERS)
    impl = object.__new__(W.GSAFlashAttentionImpl)
    impl.gsa, impl.scale = rt, D ** -0.5
    width = (context + 1024) // BS  # vLLM's table width: max_model_len / block size (vllm_e2e.py)
    nb = batch * width + 8
    g = torch.Generator().manual_seed(0)
    table = torch.randperm(nb, generator=g)[: batch * width].reshape(batch, width).to(torch.int32)
    seq = np.full(batch, context, dtype=np.int64)
    seq_t = torch.tensor(seq, dtype=torch.int32)
    last = torch.tensor(seq - 1)
    slots = (table.long()[torch.arange(batch), last // BS] * BS + last % BS).contiguous()
    key = torch.randn(batch, HKV, D, generator=g).to(torch.bfloat16)
    value = torch.empty_like(key)
    query = torch.randn(batch, HQ, D, generator=g).to(torch.bfloat16)
    output = torch.empty(batch, HQ * D, dtype=torch.bfloat16)
    kv_cache = torch.empty(()).expand(nb, 2, BS, HKV, D)  # shape only (kv_blocks reads dims 0 and 2)
    layers = [SimpleNamespace(layer_name=f"model.layers.{l}.self_attn.attn") for l in range(LAYERS)]
    fields = {f.name: None for f in dataclasses.fields(W.GSAFlashAttentionMetadata)}
    fields.update({k: v for k, v in dict(block_table=table, seq_lens=seq_t, num_actual_tokens=batch, max_query_len=1,
                                         max_seq_len=context, causal=True).items() if k in fields})
    qsl = torch.arange(batch + 1, dtype=torch.int32)
    qlens = np.ones(batch, dtype=np.int64)

    def step(with_gsa: bool = True):
        impl.gsa = rt if with_gsa else None
        md = W.GSAFlashAttentionMetadata(**fields)
        if with_gsa:
            md.gsa = rt.plan(seq, qlens, qsl, static_width=width)
        for l in range(LAYERS):
            impl.do_kv_cache_update(layers[l], key, value, kv_cache, slots)
            impl.forward(layers[l], query, key, value, kv_cache, md, output)

    def plan_only():
        rt.plan(seq, qlens, qsl, static_width=width)

    with use_backend("reference"):  # the first (validating) calls run real ops: the reference's
        for _ in range(3):
            step()
    return rt, step, plan_only, log


def timed(fn, n: int, repeats: int) -> float:
    """Best of ``repeats`` means over ``n`` calls, seconds per call (the machine is shared)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--cpu-value-checks", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import gsa

    rt, step, plan_only, log = setup(a.batch, a.context, a.cpu_value_checks)
    n_scoring = len(rt.policy.scoring_layers)
    log.clear()
    step()
    launches = {k: log.count(k) for k in sorted(set(log))}
    t_step = timed(step, a.steps, a.repeats)
    t_dense = timed(lambda: step(False), a.steps, a.repeats)
    t_plan = timed(plan_only, a.steps, a.repeats)
    added = t_step - t_dense
    row = dict(tree=os.path.dirname(os.path.dirname(os.path.abspath(gsa.__file__))), cpu=platform.processor() or
               platform.machine(), python=platform.python_version(), torch=torch.__version__, batch=a.batch,
               context=a.context, layers=LAYERS, scoring_layers=n_scoring, cpu_value_checks=a.cpu_value_checks,
               step_us=1e6 * t_step, wrapper_floor_us=1e6 * t_dense, gsa_added_us_per_step=1e6 * added,
               plan_us=1e6 * t_plan, gsa_added_us_per_scoring_layer=1e6 * (added - t_plan) / n_scoring,
               recorded_launches_per_step=launches)
    print("GSA host time of one vLLM eager decode step (FLASH_ATTN wrapper, graph-form plan), CPU tensors; "
          "kernel launches and vLLM's own attention are recording stubs, so only Python host work is timed; "
          f"value-reading checks {'ON (CPU)' if a.cpu_value_checks else 'stubbed (as on an accelerator)'}; "
          "GPU effect not measured.")
    print(f"  tree {row['tree']}  batch {a.batch} x {a.context} tokens, {LAYERS} layers ({n_scoring} scoring)")
    print(f"  step with GSA {row['step_us']:.0f} us, wrapper floor without GSA {row['wrapper_floor_us']:.0f} us")
    print(f"  GSA adds {row['gsa_added_us_per_step']:.0f} us/step: plan {row['plan_us']:.0f} us + "
          f"{row['gsa_added_us_per_scoring_layer']:.1f} us per scoring layer (keys + select + metadata; "
          "the 3 dense layers' small share included)")
    print(f"  recorded per step: {launches}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(row, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
