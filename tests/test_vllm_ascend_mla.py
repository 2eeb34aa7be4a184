"""The Ascend MLA wrapper driven through vllm-ascend 0.23.0.post1's real MLA code, on the CPU.

Same venv and stand-in ``torch_npu`` as ``tests/test_vllm_ascend.py`` (whose set-up
this module reuses; skipped where that one skips). Real here: vLLM 0.23's
``VllmConfig`` for a DeepSeek-V2-architecture config (MLA), ``NPUPlatform.get_attn_backend_cls``,
``AscendMLAMetadataBuilder.build`` and ``AscendMLAImpl.forward`` (query projection and
absorption, ``_mla_preprocess``, ``_forward_decode`` / ``_forward_prefill``, ``_v_up_proj``,
``o_proj``). Not real: the NPU kernels (the stand-in's fused RMSNorm+RoPE cache write, FIA v2
decode = our reference MQA over the latent cache), the model's linear layers (the test's own
random matrices), the model runner and the engine.
"""
from __future__ import annotations

import copy
import math
import os
from fractions import Fraction
from types import SimpleNamespace

import pytest
import torch

if not os.environ.get("GSA_VLLM_ASCEND_SRC"):
    pytest.skip("GSA_VLLM_ASCEND_SRC is not set (vllm-ascend sources: run ci/vllm_ascend.sh)", allow_module_level=True)

import test_vllm_ascend as T  # noqa: E402  (its set-up: sys.path, the stand-in torch_npu, the hook)
from test_vllm_ascend import fresh_generator, single_rank_groups  # noqa: F401  (autouse fixture)

import torch_npu  # noqa: E402  (the stand-in)
import vllm_ascend.ops.register_custom_ops as CUSTOM_OPS  # noqa: E402
import vllm_ascend.ops.rotary_embedding as ROPE_TABLES  # noqa: E402
import vllm_ascend.utils as AU  # noqa: E402
from vllm.config import set_current_vllm_config  # noqa: E402
from vllm.model_executor.layers.linear import UnquantizedLinearMethod  # noqa: E402
from vllm.utils.import_utils import resolve_obj_by_qualname  # noqa: E402
from vllm.v1.attention.backend import AttentionCGSupport  # noqa: E402
from vllm.v1.kv_cache_interface import MLAAttentionSpec  # noqa: E402
from vllm_ascend.attention import mla_v1 as M  # noqa: E402
from vllm_ascend.attention.utils import AscendCommonAttentionMetadata, enable_cp  # noqa: E402
from vllm_ascend.platform import NPUPlatform  # noqa: E402

from gsa import reference as R  # noqa: E402
from gsa.config import GSAConfig  # noqa: E402
from gsa.integrations.vllm import ascend  # noqa: E402
from gsa.integrations.vllm import ascend_mla as AM  # noqa: E402
from gsa.integrations.vllm.settings import GSAVllmConfigError  # noqa: E402

N, LORA, ROPE, NOPE, V, HID, BS, LAYERS = 4, 128, 64, 32, 32, 256, 128, 3
SCALE = 1.0 / math.sqrt(NOPE + ROPE)
MAX_LEN = 4096
SELECTOR = T.SELECTOR._replace(head_size=LORA + ROPE, use_mla=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A DeepSeek-V2-architecture config.json (no weights: only the config is read)."""
    path = tmp_path_factory.mktemp("tiny-deepseek-v2")
    (path / "config.json").write_text(
        '{"architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", '
        f'"hidden_size": {HID}, "intermediate_size": 512, "moe_intermediate_size": 128, '
        f'"num_attention_heads": {N}, "num_key_value_heads": {N}, "num_hidden_layers": {LAYERS}, '
        f'"kv_lora_rank": {LORA}, "q_lora_rank": null, "qk_nope_head_dim": {NOPE}, "qk_rope_head_dim": {ROPE}, '
        f'"v_head_dim": {V}, "first_k_dense_replace": {LAYERS}, '
        f'"vocab_size": 1000, "max_position_embeddings": {MAX_LEN}, "rms_norm_eps": 1e-6, '
        '"torch_dtype": "float32", "tie_word_embeddings": false}')
    return str(path)


def gsa_config(**kw):
    """Layer 0 dense, layer 1 scores at ratio 0.3, layer 2 reuses layer 1's selection."""
    base = dict(model_name="tiny-deepseek-v2", num_hidden_layers=LAYERS, num_attention_heads=N, is_mla=True,
                kv_lora_rank=LORA, qk_rope_head_dim=ROPE, hash_bits_kv_lora=128, hash_bits_qk_rope=32, seed=5,
                chunk_size=BS, top_k_ratio_per_layer=[1.0, 0.3, 0.3], top_k_index_reuse=[-1, -1, 1],
                must_select_blocks=[0, -1], gpu_seq_len_threshold=256, npu_seq_len_threshold=256,
                gpu_concurrency_threshold=1, npu_concurrency_threshold=1)
    base.update(kw)
    return GSAConfig.from_dict(base).to_dict()


def choose(vc, sel=SELECTOR):
    with set_current_vllm_config(vc):
        return NPUPlatform.get_attn_backend_cls(None, sel)


class Linear(torch.nn.Module):
    """vLLM's linear-layer calling convention: ``(y, bias)``."""

    def __init__(self, g, n_in, n_out):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n_out, n_in, generator=g) / math.sqrt(n_in), requires_grad=False)
        self.quant_method = UnquantizedLinearMethod()

    def forward(self, x, **unused):
        return x @ self.weight.T, None


def make_impl(cls, g, l):
    norm = SimpleNamespace(weight=1 + 0.1 * torch.randn(LORA, generator=g), variance_epsilon=1e-6)
    impl = cls(num_heads=N, head_size=LORA + ROPE, scale=SCALE, num_kv_heads=1, alibi_slopes=None, sliding_window=None,
               kv_cache_dtype="auto", logits_soft_cap=None, attn_type="decoder", kv_sharing_target_layer_name=None,
               q_lora_rank=None, kv_lora_rank=LORA, qk_nope_head_dim=NOPE, qk_rope_head_dim=ROPE,
               qk_head_dim=NOPE + ROPE, v_head_dim=V, rotary_emb=None, q_proj=Linear(g, HID, N * (NOPE + ROPE)),
               kv_b_proj=Linear(g, LORA, N * (NOPE + V)), o_proj=Linear(g, N * V, HID),
               kv_a_proj_with_mqa=Linear(g, HID, LORA + ROPE), kv_a_layernorm=norm, q_a_layernorm=None,
               fused_qkv_a_proj=None, layer_name=f"model.layers.{l}.self_attn.attn")
    impl.process_weights_after_loading(torch.float32)  # W_UK_T, W_UV from kv_b_proj (upstream's code)
    return impl


def setup_engine(vc, g, num_blocks):
    backend = resolve_obj_by_qualname(choose(vc))
    impls = [make_impl(backend.get_impl_cls(), g, l) for l in range(LAYERS)]
    for l, impl in enumerate(impls):  # as MLAAttention registers itself (vLLM's builder reads prefill_backend)
        vc.compilation_config.static_forward_context[impl.layer_name] = SimpleNamespace(impl=impl,
                                                                                         prefill_backend=None)
    spec = MLAAttentionSpec(block_size=BS, num_kv_heads=1, head_size=LORA + ROPE, dtype=torch.float32)
    builder = backend.get_builder_cls()(spec, [f"model.layers.{l}.self_attn.attn" for l in range(LAYERS)], vc,
                                        torch.device("cpu"))
    caches = [(torch.zeros(num_blocks, BS, 1, LORA), torch.zeros(num_blocks, BS, 1, ROPE)) for _ in range(LAYERS)]
    return impls, builder, caches


@pytest.fixture(autouse=True)
def rope_tables_and_prefetch(monkeypatch):
    """What vllm-ascend's model runner sets up before any step: cos/sin tables (random angles),
    the weight-prefetch helper (a no-op off the NPU), the Flash Comm gather op."""
    ang = torch.rand(MAX_LEN, ROPE // 2, generator=torch.Generator().manual_seed(1)) * 6.3
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    monkeypatch.setattr(ROPE_TABLES, "_cos_cache", cos)
    monkeypatch.setattr(ROPE_TABLES, "_sin_cache", sin)
    monkeypatch.setattr(ROPE_TABLES, "_cos_mla", torch.ones(MAX_LEN, 1, 1, ROPE))
    monkeypatch.setattr(ROPE_TABLES, "_sin_mla", torch.zeros(MAX_LEN, 1, 1, ROPE))
    # registered for the NPU dispatch key only: its Python body, called directly on the CPU
    monkeypatch.setattr(torch.ops.vllm, "maybe_all_gather_and_maybe_unpad",
                        CUSTOM_OPS._maybe_all_gather_and_maybe_unpad_impl)
    monkeypatch.setattr(AU, "_WEIGHT_PREFETCH_METHOD",
                        SimpleNamespace(maybe_prefetch_mla_or_sla_weight_in_current_stream=lambda **k: None))


class Requests(T.Requests):
    def step(self, query_lens, state):
        common, slots = super().step(query_lens, state)
        pos = torch.cat([torch.arange(s - q, s) for s, q in zip(self.lens, query_lens)])
        return AscendCommonAttentionMetadata(**{**common.__dict__, "positions": pos, "positions_cpu": pos}), slots


def run_layers(impls, caches, md, vc, t, g):
    """One step through every layer: per layer ``(output [T, HID], the FIA v2 decode call or None)``."""
    res = []
    for l in range(LAYERS):
        hidden = torch.randn(t, HID, generator=g)
        out = torch.empty(t, HID)
        torch_npu.CALLS.clear()
        with T.step_context(md, vc, t):
            impls[l].forward(f"model.layers.{l}.self_attn.attn", hidden, caches[l], md, False, out)
        calls = [c for c in torch_npu.CALLS if c["op"] == "npu_fused_infer_attention_score_v2"]
        res.append((hidden, out, calls[-1] if calls else None))
    return res


def latent(caches, l):
    """The layer's latent cache ``[NB, bs, 1, L + P]`` as the kernel reads it."""
    return torch.cat([caches[l][0], caches[l][1]], dim=-1)


def check_decode_rows(rt, impls, caches, res, reqs, seq, b):
    """Layers' results of a step whose first ``b`` rows decode (one token each): the query FIA v2
    got is the absorbed one, the hash cache holds the cached latents' codes at every written slot,
    the table and host lengths are the reference selection (layer 1; layer 2 reuses it; layer 0
    dense), the kernel and layer outputs the reference MQA over the latent cache."""
    w_lora, w_rope = rt.sparse.weights(1)
    sel = None
    for l, (hidden, out, call) in enumerate(res):
        impl, lat = impls[l], latent(caches, l)
        q = call["query"]  # [b, N, L + P] the kernel got: absorbed q_nope, then roped q_pe
        q_nope = (hidden[:b] @ impl.q_proj.weight.T).view(b, N, NOPE + ROPE)[..., :NOPE]
        torch.testing.assert_close(q[..., :LORA], torch.einsum("bnp,npl->bnl", q_nope, impl.W_UK_T), rtol=1e-5,
                                   atol=1e-5)
        dense_table, dense_lens = reqs.table[:b], seq[:b]
        if l == 0:
            table, lens = dense_table, dense_lens
            assert call["actual_seq_kvlen"] == lens.tolist() and torch.equal(call["block_table"], dense_table)
        else:
            if l == 1:
                # the hash cache holds spec 9's codes of the cached c_kv / k_pe, at vLLM's slots (every row's)
                hc = torch.zeros_like(rt.hash_caches[1])
                written = torch.cat([reqs.slots(r, 0, int(n)) for r, n in enumerate(seq)])
                rows = lat.reshape(-1, LORA + ROPE)[written]
                R.mla_hash_encode_and_cache(rows[:, :LORA], rows[:, LORA:], w_lora, w_rope, hc, written)
                assert torch.equal(rt.hash_caches[1], hc)
                n_blocks = [math.ceil(int(n) / BS) for n in dense_lens]
                budgets = torch.tensor([math.ceil(Fraction("0.3") * n) for n in n_blocks], dtype=torch.int32)
                width, cfg = max(n_blocks), rt.config
                codes = R.mla_hash_encode(q[..., :LORA], q[..., LORA:], w_lora, w_rope)
                idx, n_sel = R.hamming_dist_top_k(codes, hc, dense_table[:, :width], dense_lens, budgets, width,
                                                  cfg.must_select_blocks, cfg.chunk_repre_method, cfg.rope_bytes,
                                                  cfg.rope_score_weight)
                sel = R.kv_select(idx, n_sel, dense_table[:, :width], dense_lens, BS, 0)
            table, lens = sel  # layer 2 reuses layer 1's selection
            assert call["actual_seq_kvlen"] == lens.tolist() and (lens < dense_lens).all()  # host lengths
            for r in range(b):
                k = math.ceil(int(lens[r]) / BS)
                assert torch.equal(call["block_table"][r, :k], table[r, :k])
        # the kernel's output == the reference MQA over the latent cache on that table,
        # and the layer's output is o_proj(W_UV(that))
        ref = R.paged_decode_attention(q, lat, lat, table, lens, SCALE)[..., :LORA]  # [b, N, L]
        torch.testing.assert_close(call["out"].reshape(N, b, LORA).transpose(0, 1), ref, rtol=1e-5, atol=1e-5)
        want = torch.einsum("bnl,nlv->bnv", ref, impl.W_UV).reshape(b, N * V) @ impl.o_proj.weight.T
        torch.testing.assert_close(out[:b], want, rtol=1e-4, atol=1e-4)
        if l:
            full = R.paged_decode_attention(q, lat, lat, dense_table, dense_lens, SCALE)[..., :LORA]
            assert not torch.allclose(full, ref, atol=1e-4)  # the selection mattered


def test_gsa_engages_on_mla_decode_steps_and_matches_the_reference(model_dir):
    g = fresh_generator()
    vc = T.vllm_config(model_dir, gsa_config())
    assert vc.model_config.use_mla and choose(vc) == ascend.GSA_ASCEND_MLA_BACKEND
    reqs = Requests(g, [700, 1100, 1500], 40, d=1)
    with set_current_vllm_config(vc):
        impls, builder, caches = setup_engine(vc, g, 40)
        assert all(type(i) is AM.GSAAscendMLAImpl for i in impls)
        assert type(builder) is AM.GSAAscendMLAMetadataBuilder
        assert type(builder).get_cudagraph_support(vc, None) == AttentionCGSupport.NEVER
        rt = impls[0].gsa
        assert rt is not None and tuple(rt.policy.scoring_layers) == (1,)
        common, _ = reqs.step(list(reqs.lens), "prefill")
        md = builder.build(0, common)
        assert md.gsa.step is None and md.num_prefills == 3
        run_layers(impls, caches, md, vc, common.num_actual_tokens, g)
        for _ in range(2):  # decode steps
            reqs.lens = [n + 1 for n in reqs.lens]
            common, _ = reqs.step([1, 1, 1], "decode")
            md = builder.build(0, common)
            assert md.num_decodes == 3 and md.gsa.step is not None and md.gsa.step.plan.sparse_rows.all()
            check_decode_rows(rt, impls, caches, run_layers(impls, caches, md, vc, 3, g), reqs, common.seq_lens_cpu, 3)
    st = rt.stats()
    assert st["sparse_steps"] == 2 and st["layer_selections"] == 2 and st["blocks_read"] < st["blocks_dense"]


def test_mixed_step_decode_rows_sparse_new_prompt_dense(model_dir):
    """Rows 0 and 1 decode while row 2, a new request, prefills 200 tokens (ChunkedPrefill; no
    cached context): the plan covers the decode rows only, they get the reference selection and
    output; row 2's tokens are hashed too (the hash cache check covers them) and the step counts
    as mixed."""
    g = fresh_generator()
    vc = T.vllm_config(model_dir, gsa_config())
    reqs = Requests(g, [900, 1300, 200], 40, d=1)
    with set_current_vllm_config(vc):
        impls, builder, caches = setup_engine(vc, g, 40)
        rt = impls[0].gsa
        first = copy.copy(reqs)  # rows 0 and 1 arrive first
        first.lens, first.table = reqs.lens[:2], reqs.table[:2]
        common, _ = first.step(list(first.lens), "prefill")
        run_layers(impls, caches, builder.build(0, common), vc, common.num_actual_tokens, g)
        reqs.lens = [901, 1301, 200]
        common, _ = reqs.step([1, 1, 200], "chunked")
        md = builder.build(0, common)
        assert (md.num_decodes, md.num_prefills) == (2, 1) and md.prefill.chunked_context is None
        assert md.gsa.step is not None and md.gsa.step.plan.sparse_rows.tolist() == [True, True]
        res = run_layers(impls, caches, md, vc, common.num_actual_tokens, g)
        check_decode_rows(rt, impls, caches, res, reqs, common.seq_lens_cpu, 2)
        assert all(bool(out[2:].isfinite().all()) for _, out, _ in res)  # the prefill row ran (dense)
    st = rt.stats()
    assert st["sparse_steps"] == 1 and st["mixed_steps"] == 1, st


def test_gsa_off_leaves_upstream_mla_classes(model_dir):
    g = fresh_generator()
    vc = T.vllm_config(model_dir)
    assert choose(vc) == ascend.ASCEND_MLA_BACKEND
    with set_current_vllm_config(vc):
        impl = make_impl(M.AscendMLABackend.get_impl_cls(), g, 0)
        assert type(impl) is M.AscendMLAImpl
    vc.parallel_config.decode_context_parallel_size = 2
    enable_cp.cache_clear()
    try:
        with set_current_vllm_config(vc):
            cp_impl = M.AscendMLABackend.get_impl_cls()
            assert cp_impl.__name__ == "AscendMlaCPImpl" and AM.GSAAscendMLABackend.get_impl_cls() is cp_impl
            assert AM.GSAAscendMLABackend.get_builder_cls() is M.AscendMLABackend.get_builder_cls()
    finally:
        enable_cp.cache_clear()


@pytest.mark.parametrize("case", ["enable_kv_nz", "enable_mlapo", "fa_quant", "sparse_mla", "last_block"])
def test_mla_refusals_at_start_up(model_dir, case):
    vc = T.vllm_config(model_dir, gsa_config(must_select_blocks=[0]) if case == "last_block" else gsa_config())
    sel = SELECTOR
    if case in ("enable_kv_nz", "enable_mlapo"):
        vc.additional_config[case], pattern = True, rf"'{case}'.*expected off with GSA on an MLA model"
    elif case == "fa_quant":
        vc.quant_config, pattern = SimpleNamespace(enable_fa_quant=True), r"enable_fa_quant .*expected off"
    elif case == "sparse_mla":  # DeepSeek-V3.2's sparse MLA (SFA): not wrapped
        sel, pattern = SELECTOR._replace(use_sparse=True), r"attention backend: expected .*got 'vllm_ascend"
    else:
        pattern = r"'must_select_blocks': expected it to contain -1"
    if case != "last_block":
        with pytest.raises(GSAVllmConfigError, match=pattern):
            choose(vc, sel)
    if case != "sparse_mla":  # the impl checks again (vLLM caches the backend choice per process)
        with set_current_vllm_config(vc), pytest.raises(GSAVllmConfigError, match=pattern):
            make_impl(AM.GSAAscendMLAImpl, torch.Generator().manual_seed(0), 0)
