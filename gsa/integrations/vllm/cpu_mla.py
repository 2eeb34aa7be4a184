"""GSA around vLLM's CPU MLA backend (``CPU_MLA``, vLLM 0.32, tested in CI).

``CPU_MLA`` (``vllm/v1/attention/backends/mla/cpu_mla.py``) serves DeepSeek-V2/V3
style models on CPU: prefill by SDPA, decode by ``mla_decode_kvcache_cpu`` over
a latent cache ``[NB, bs, kv_lora_rank + qk_rope_head_dim]`` (the kernel is built
for 512 + 64 only, and vLLM forces block size 16 for it). Its metadata builder
is vLLM's ``MLACommonMetadataBuilder``; the decode kernel reads only
``decode.block_table`` and ``decode.seq_lens``, so a sparse decode needs no
other field rebuilt. Hashing and selection: :mod:`.mla`.
"""
from __future__ import annotations

import torch
from vllm.model_executor.layers.attention.mla_attention import MLACommonMetadataBuilder
from vllm.v1.attention.backends.mla.cpu_mla import CPUMLABackend, CPUMLAImpl

from .compat import GSABackendCompat, MLAKVCacheUpdate
from .mla import GSAMLABuilderMixin, GSAMLAImplMixin

__all__ = ["GSACPUMLABackend", "GSACPUMLAMetadataBuilder", "GSACPUMLAImpl"]


class GSACPUMLAMetadataBuilder(GSAMLABuilderMixin, MLACommonMetadataBuilder):
    def __init__(self, kv_cache_spec, layer_names, vllm_config, device, *args, **kwargs) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device, *args, **kwargs)
        self._gsa_builder_init(vllm_config, layer_names)

    def build(self, common_prefix_len: int, common_attn_metadata, fast_build: bool = False):
        md = super().build(common_prefix_len, common_attn_metadata, fast_build)
        return self._gsa_attach(md, common_attn_metadata)


class GSACPUMLAImpl(MLAKVCacheUpdate, GSAMLAImplMixin, CPUMLAImpl):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._gsa_mla_init(torch.device("cpu"))

    def forward_mqa(self, q, kv_c_and_k_pe_cache, attn_metadata, layer):
        return self._gsa_forward_mqa(super().forward_mqa, q, kv_c_and_k_pe_cache, attn_metadata, layer)


class GSACPUMLABackend(GSABackendCompat, CPUMLABackend):
    """``CPU_MLA`` with GSA (same name: vLLM looks backends up by it)."""

    @staticmethod
    def get_impl_cls():
        return GSACPUMLAImpl

    @staticmethod
    def get_builder_cls():
        return GSACPUMLAMetadataBuilder
