"""The vLLM plugin's settings, host-side length rule and Ascend hook, without vLLM.

These run everywhere (no vLLM, no NPU): settings resolution and checks
(``gsa.integrations.vllm.settings``), the host-computed sparse lengths that the
Ascend adapter hands to ``actual_seq_lengths_kv`` against ``kv_select``'s device
lengths, and the wrapping of vllm-ascend's backend choice on a stand-in module.
"""
from __future__ import annotations

import importlib.machinery
import sys
import types

import numpy as np
import pytest
import torch

from gsa import reference as R
from gsa.config import GSAConfig
from gsa.integrations.vllm.settings import GSAVllmConfigError, check_against_model, read_settings

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"


class _ModelConfig:
    def __init__(self, model="/models/SmolLM2-135M-Instruct", served=None):
        self.model = model
        self.served_model_name = served
        self.tokenizer = model
        self.hf_config = types.SimpleNamespace(_name_or_path=model)


def test_off_unless_enabled():
    assert read_settings({}, _ModelConfig(), environ={}) is None
    assert read_settings(None, _ModelConfig(), environ={"GSA_VLLM_CONFIG": "0"}) is None
    assert read_settings({"gsa": False}, _ModelConfig(), environ={"GSA_VLLM_CONFIG": "auto"}) is None


def test_shipped_config_by_model_name():
    for spec, env in ((True, {}), ("auto", {}), (None, {"GSA_VLLM_CONFIG": "auto"})):
        extra = {} if spec is None else {"gsa": spec}
        s = read_settings(extra, _ModelConfig(), environ=env)
        assert s.config.model_name == SMOL and s.log_every == 100
    s = read_settings({"gsa": True}, _ModelConfig(model="/x/local-dir", served="SmolLM2-135M-Instruct"), environ={})
    assert s.config.model_name == SMOL
    with pytest.raises(GSAVllmConfigError, match="no shipped GSA config matches the served model"):
        read_settings({"gsa": True}, _ModelConfig(model="/x/my-model"), environ={})


def test_inline_path_and_options(tmp_path):
    cfg = GSAConfig.for_model("SmolLM2-135M-Instruct").replace(chunk_size=32, source=None)
    path = tmp_path / "gsa.json"
    cfg.save(path)
    s = read_settings({"gsa": {"config": str(path), "log_every": 7}}, _ModelConfig(), environ={})
    assert s.config.chunk_size == 32 and s.log_every == 7 and s.origin == str(path)
    s = read_settings({}, _ModelConfig(), environ={"GSA_VLLM_CONFIG": str(path), "GSA_VLLM_LOG_EVERY": "0"})
    assert s.config.chunk_size == 32 and s.log_every == 0
    s = read_settings({"gsa": cfg.to_dict()}, _ModelConfig(), environ={})
    assert s.config == cfg
    with pytest.raises(GSAVllmConfigError, match=r"log_every'\]: expected an integer >= 0"):
        read_settings({"gsa": {"config": True, "log_every": -1}}, _ModelConfig(), environ={})
    with pytest.raises(GSAVllmConfigError, match=r"only the keys 'config' and 'log_every'"):
        read_settings({"gsa": {"config": True, "every": 3}}, _ModelConfig(), environ={})
    with pytest.raises(GSAVllmConfigError, match="cannot read"):
        read_settings({"gsa": str(tmp_path / "missing.json")}, _ModelConfig(), environ={})
    with pytest.raises(GSAVllmConfigError, match=r"unknown key 'chunk'.*did you mean 'chunk_size'"):
        read_settings({"gsa": {**cfg.to_dict(), "chunk": 3}}, _ModelConfig(), environ={})
    with pytest.raises(GSAVllmConfigError, match="expected a GSA config path"):
        read_settings({"gsa": 3}, _ModelConfig(), environ={})


def test_checks_against_the_model():
    cfg = GSAConfig.for_model("SmolLM2-135M-Instruct")
    ok = dict(num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, block_size=128)
    check_against_model(cfg, **ok)
    for key, value, pattern in (
        ("num_layers", 24, r"'num_hidden_layers': expected 24 \(the served model's value\), got 30"),
        ("num_heads", 14, r"'num_attention_heads': expected 14"),
        ("num_kv_heads", 2, r"'num_key_value_heads': expected 2"),
        ("head_dim", 128, r"'head_dim': expected 128"),
        ("block_size", 16, r"'chunk_size': expected the vLLM KV cache block size 16 .*--block-size 128"),
    ):
        with pytest.raises(GSAVllmConfigError, match=pattern):
            check_against_model(cfg, **{**ok, key: value})
    with pytest.raises(GSAVllmConfigError, match="'is_mla'"):
        check_against_model(cfg, **ok, use_mla=True)


def test_sliding_window_layers_must_be_dense():
    """GSA only on full-attention layers: a sparse ratio on a windowed layer is refused,
    naming the layer, expected vs got; dense ratios there are accepted."""
    base = GSAConfig.for_model("SmolLM2-135M-Instruct")
    ok = dict(num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, block_size=128)
    first_sparse = next(l for l, r in enumerate(base.top_k_ratio_per_layer) if r < 1)
    # Mistral-style: one window for every layer (no layer_types): any sparse layer is refused
    with pytest.raises(GSAVllmConfigError, match=rf"top_k_ratio_per_layer\[{first_sparse}\]': layer {first_sparse} is "
                                                 rf"sliding_attention .*expected 1.0 \(dense\), got 0.3"):
        check_against_model(base, **ok, sliding_window=4096)
    # Gemma 3 style layer_types: full layers may be sparse, windowed ones must be dense
    types_ = ["sliding_attention"] * 30
    for l in range(5, 30, 6):
        types_[l] = "full_attention"
    ratios = [0.25 if t == "full_attention" else 1.0 for t in types_]
    cfg = base.replace(top_k_ratio_per_layer=ratios, top_k_index_reuse=[-1] * 30, source=None)
    check_against_model(cfg, **ok, sliding_window=512, layer_types=types_)
    bad = list(ratios)
    bad[7] = 0.5
    with pytest.raises(GSAVllmConfigError, match=r"top_k_ratio_per_layer\[7\]': layer 7 is sliding_attention .*got 0.5"):
        check_against_model(cfg.replace(top_k_ratio_per_layer=bad, source=None), **ok, sliding_window=512,
                            layer_types=types_)
    # vLLM's disable_sliding_window clears sliding_window: those layers attend fully
    check_against_model(cfg.replace(top_k_ratio_per_layer=bad, source=None), **ok, sliding_window=None,
                        layer_types=types_)
    # other non-full layer kinds (chunked / linear attention) are never sparse
    odd = ["full_attention"] * 30
    odd[5] = "chunked_attention"
    with pytest.raises(GSAVllmConfigError, match=r"\[5\]': layer 5 is chunked_attention"):
        check_against_model(cfg, **ok, sliding_window=None, layer_types=odd)
    with pytest.raises(GSAVllmConfigError, match=r"HF config layer_types: expected 30 entries"):
        check_against_model(cfg, **ok, layer_types=types_[:29])


def test_mla_config_checks():
    """MLA: head size kv_lora_rank + qk_rope_head_dim; the model's KV head count is not compared."""
    cfg = GSAConfig.for_model("DeepSeek-V2-Lite")
    ok = dict(num_layers=27, num_heads=16, num_kv_heads=16, head_dim=576, block_size=128, use_mla=True)
    check_against_model(cfg, **ok)
    with pytest.raises(GSAVllmConfigError, match=r"'head_dim': expected 640 .*got 576"):
        check_against_model(cfg, **{**ok, "head_dim": 640})
    with pytest.raises(GSAVllmConfigError, match=r"'is_mla': expected False"):
        check_against_model(cfg, **{**ok, "use_mla": False})


def _runtime_stub(cfg):
    from gsa.integrations.vllm.runtime import GSAVllmRuntime
    from gsa.integrations.vllm.settings import PluginSettings

    return GSAVllmRuntime(PluginSettings(cfg, 0, "test"), device=torch.device("cpu"), num_layers=cfg.num_hidden_layers)


@pytest.mark.parametrize("seed", range(4))
def test_host_sparse_lengths_equal_kv_select(seed):
    """The Ascend adapter's host lengths (no device read) == kv_select's lengths."""
    g = torch.Generator().manual_seed(seed)
    bs = 32
    ratios = [1.0] * 30
    ratios[2] = ratios[3] = 0.25  # one scoring layer (2) and one reusing it (3): quick weight set-up
    reuse = [-1] * 30
    reuse[3] = 2
    cfg = GSAConfig.for_model("SmolLM2-135M-Instruct").replace(
        chunk_size=bs, gpu_seq_len_threshold=64, must_select_blocks=(0, -1), top_k_ratio_per_layer=ratios,
        top_k_index_reuse=reuse)
    rt = _runtime_stub(cfg)
    b = 6
    seq = torch.randint(1, 900, (b,), generator=g)
    seq[0] = 640  # a whole number of blocks
    ql = torch.ones(b, dtype=torch.int64)
    ql[1] = 5  # a prefill row stays dense
    qsl = torch.cat([torch.zeros(1, dtype=torch.int64), ql.cumsum(0)])
    state = rt.plan(seq.numpy(), ql.numpy(), qsl)
    assert state.step is not None and not state.step.plan.sparse_rows[1]
    m = int((seq.max() + bs - 1) // bs)
    nb_phys = b * m
    table = torch.randperm(nb_phys, generator=g)[: b * m].reshape(b, m).to(torch.int32)
    l = rt.policy.scoring_layers[0]
    hc = torch.randint(0, 256, (nb_phys, 3, bs, 16), generator=g, dtype=torch.uint8)
    rt.hash_caches[l] = hc
    q = torch.randn(int(qsl[-1]), 9, 64, generator=g)
    sparse_table, sparse_lens = rt.select(l, state, q, table, seq.to(torch.int32))
    host = rt.host_sparse_lens(l, state)
    assert host.tolist() == sparse_lens.tolist()
    # the reusing layer gets the very same selection, without scoring again
    reused_table, reused_lens = rt.select(3, state, q, table, seq.to(torch.int32))
    assert reused_table is sparse_table and reused_lens is sparse_lens
    assert rt.host_sparse_lens(3, state).tolist() == host.tolist()
    # and the selection itself is the reference one
    q_rows = q[qsl[1:] - 1]
    budgets = torch.from_numpy(state.step.plan.budgets[l].astype(np.int32))
    idx, n_sel = R.hamming_dist_top_k(R.hash_encode(q_rows, rt.sparse.weights(l)), hc, table, seq.to(torch.int32),
                                      budgets, state.step.plan.k, cfg.must_select_blocks, "max", 0, 1.0)
    want_t, want_l = R.kv_select(idx, n_sel, table, seq.to(torch.int32), bs, 0)
    assert torch.equal(want_t, sparse_table) and torch.equal(want_l, sparse_lens)
    assert int(sparse_lens[1]) == int(seq[1])  # prefill row: all of it
    st = rt.stats()
    assert st["sparse_steps"] == 1 and st["layer_selections"] == 1 and st["sparse_rows"] == int(state.step.plan.sparse_rows.sum()) and st["mixed_steps"] == 1


def _engine(gsa=None, **extra):
    """A stand-in VllmConfig: what :func:`ascend.choose_backend` / :func:`ascend.check_engine` read."""
    cfg = GSAConfig.for_model("SmolLM2-135M-Instruct")  # chunk_size 128, -1 forced
    add = dict(extra)
    if gsa is not None:
        add["gsa"] = gsa
    return types.SimpleNamespace(
        additional_config=add, model_config=_ModelConfig(), quant_config=None,
        parallel_config=types.SimpleNamespace(decode_context_parallel_size=1, prefill_context_parallel_size=1),
        compilation_config=types.SimpleNamespace(cudagraph_mode=types.SimpleNamespace(name="PIECEWISE"))), cfg


def test_ascend_hook_on_a_stand_in_platform(monkeypatch):
    """The hook picks our backend only for engines with GSA on (the real vllm-ascend code
    is exercised by tests/test_vllm_ascend.py in ci/vllm_ascend.sh's venv)."""
    from gsa.integrations.vllm import ascend

    calls = []

    class NPUPlatform:
        @classmethod
        def get_attn_backend_cls(cls, selected_backend, cfg, num_heads=None):
            calls.append(cfg)
            return cfg

    pkg = types.ModuleType("vllm_ascend")
    pkg.__spec__ = importlib.machinery.ModuleSpec("vllm_ascend", None, is_package=True)
    pkg.__path__ = []
    plat = types.ModuleType("vllm_ascend.platform")
    plat.NPUPlatform = NPUPlatform
    monkeypatch.setitem(sys.modules, "vllm_ascend", pkg)
    monkeypatch.setitem(sys.modules, "vllm_ascend.platform", plat)
    current = {"vc": None}
    monkeypatch.setattr(ascend, "_current_vllm_config", lambda: current["vc"])
    assert ascend.register() is True
    assert ascend.register() is True  # idempotent: wrapped once
    mla = "vllm_ascend.attention.mla_v1.AscendMLABackend"
    # no engine config (or GSA off): upstream's answer, whatever it is
    assert NPUPlatform.get_attn_backend_cls(None, ascend.ASCEND_GQA_BACKEND) == ascend.ASCEND_GQA_BACKEND
    current["vc"] = _engine()[0]
    assert NPUPlatform.get_attn_backend_cls(None, ascend.ASCEND_GQA_BACKEND) == ascend.ASCEND_GQA_BACKEND
    assert NPUPlatform.get_attn_backend_cls(None, mla) == mla
    current["vc"] = _engine(gsa=True)[0]
    assert NPUPlatform.get_attn_backend_cls(None, ascend.ASCEND_GQA_BACKEND) == ascend.GSA_ASCEND_BACKEND
    assert NPUPlatform.get_attn_backend_cls(None, mla) == ascend.GSA_ASCEND_MLA_BACKEND
    sfa = "vllm_ascend.attention.sfa_v1.AscendSFABackend"  # not wrapped: refused
    with pytest.raises(GSAVllmConfigError, match=r"attention backend: expected .*AscendMLABackend.*got "
                                                 r"'vllm_ascend.attention.sfa_v1.AscendSFABackend'"):
        NPUPlatform.get_attn_backend_cls(None, sfa)
    assert len(calls) == 6  # upstream asked every time


@pytest.mark.parametrize("what", ["dcp", "pcp", "c8", "enable_hamming_sparse", "hamming_sparse", "FULL",
                                  "FULL_DECODE_ONLY", "kernel"])
def test_ascend_refusals(what):
    from gsa.integrations.vllm import ascend
    from gsa.integrations.vllm.settings import PluginSettings

    vc, cfg = _engine(gsa=True)
    settings = PluginSettings(cfg, 0, "test")
    ascend.check_engine(vc, settings)  # the defaults pass
    kernel = ascend.KERNEL_BLOCK_SIZES
    if what == "dcp":
        vc.parallel_config.decode_context_parallel_size, pattern = 2, r"decode_context_parallel_size: expected 1.*got 2"
    elif what == "pcp":
        vc.parallel_config.prefill_context_parallel_size, pattern = 4, r"prefill_context_parallel_size: expected 1.*got 4"
    elif what == "c8":
        vc.quant_config, pattern = types.SimpleNamespace(enable_c8_quant=True), r"enable_c8_quant.*expected off"
    elif what == "enable_hamming_sparse":
        vc.additional_config[what], pattern = "1", r"\['enable_hamming_sparse'\].*expected off.*got '1'"
    elif what == "hamming_sparse":
        vc.additional_config[what] = {"enabled": False}
        ascend.check_engine(vc, settings)  # present but disabled: fine
        vc.additional_config[what], pattern = {"enabled": True}, r"\['hamming_sparse'\].*expected off"
    elif what == "kernel":
        kernel, pattern = (64,), r"kernel block size: expected the config's chunk_size 128 .*got \[64\]"
    else:
        vc.compilation_config.cudagraph_mode.name = what
        pattern = rf"cudagraph_mode: expected NONE, PIECEWISE or FULL_AND_PIECEWISE.*got '{what}'"
    with pytest.raises(GSAVllmConfigError, match=pattern):
        ascend.check_engine(vc, settings, kernel)


def test_ascend_hook_absent_without_vllm_ascend():
    from gsa.integrations.vllm import ascend

    if "vllm_ascend" in sys.modules or importlib.util.find_spec("vllm_ascend") is not None:
        pytest.skip("vllm-ascend is installed here")
    assert ascend.register() is False


def test_register_skips_backends_this_vllm_lacks(monkeypatch):
    """The plugin runs in every vLLM process of every version: a wrapped backend the
    installed vLLM does not have (CPU_MLA before 0.32) is skipped, never an error."""
    pytest.importorskip("vllm")
    import gsa.integrations.vllm as gv
    from vllm.v1.attention.backends import registry

    calls = []
    monkeypatch.setattr(registry, "register_backend", lambda member, path: calls.append((member.name, path)))
    monkeypatch.setattr(gv, "WRAPPED", {**gv.WRAPPED, "NO_SUCH_BACKEND": "x.y.Z"})
    monkeypatch.setattr(gv, "_DONE", False)
    gv.register()
    names = [n for n, _ in calls]
    assert "NO_SUCH_BACKEND" not in names
    assert ("CPU_ATTN", gv.WRAPPED["CPU_ATTN"]) in calls
