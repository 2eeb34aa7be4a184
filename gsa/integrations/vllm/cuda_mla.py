"""GSA around vLLM's CUDA MLA backends: ``FLASH_ATTN_MLA`` and ``TRITON_MLA``.

Written against vLLM 0.32 (``vllm/v1/attention/backends/mla/flashattn_mla.py``,
``triton_mla.py``); NOT run on a GPU here. On the CPU build ``flashattn_mla`` does
not even import (its FlashAttention-3 symbols are absent), so CI import-checks
this module with those two symbols stubbed (tests/test_vllm_mla.py); docs/vllm.md
says what was and was not exercised.

Which backend vLLM picks for MLA on Hopper (SM 9.x), vLLM 0.32
``vllm/platforms/cuda.py`` ``_get_backend_priorities``: ``FLASH_ATTN_MLA``, then
``FLASHMLA``, ``FLASHINFER_MLA``, ``TRITON_MLA`` (the first whose checks pass).
``FLASHMLA`` and ``FLASHINFER_MLA`` are not wrapped: with GSA on, pick a wrapped
one (``--attention-backend FLASH_ATTN_MLA``).

Both decode kernels read ``decode.block_table`` / ``decode.seq_lens``;
FlashAttention MLA also an ahead-of-time ``decode.scheduler_metadata`` made for
the dense lengths, which the sparse copy drops (FlashAttention then schedules
from the new lengths itself; ``max_seq_len`` stays the dense upper bound).
FLASH_ATTN_MLA's builder treats rows of up to 512 query tokens as "decode" rows:
those rows are dense in the GSA plan (spec 8) and keep their blocks.

CUDA graphs: as :mod:`.cuda`, the builders report ``AttentionCGSupport.NEVER``
while GSA is on (attention runs outside the graphs).
"""
from __future__ import annotations

import dataclasses

from vllm.v1.attention.backend import AttentionCGSupport
from vllm.v1.attention.backends.mla.flashattn_mla import (
    FlashAttnMLABackend,
    FlashAttnMLAImpl,
    FlashAttnMLAMetadataBuilder,
)
from vllm.v1.attention.backends.mla.triton_mla import TritonMLABackend, TritonMLAImpl, TritonMLAMetadataBuilder

from .compat import GSABackendCompat, MLAKVCacheUpdate
from .mla import GSAMLABuilderMixin, GSAMLAImplMixin
from .settings import read_settings

__all__ = ["GSAFlashAttnMLABackend", "GSAFlashAttnMLAMetadataBuilder", "GSAFlashAttnMLAImpl",
           "GSATritonMLABackend", "GSATritonMLAMetadataBuilder", "GSATritonMLAImpl"]


def _cg_support(base, vllm_config, kv_cache_spec) -> AttentionCGSupport:
    if read_settings(getattr(vllm_config, "additional_config", None), vllm_config.model_config) is None:
        return base.get_cudagraph_support(vllm_config, kv_cache_spec)  # GSA off: the backend's own
    return AttentionCGSupport.NEVER


class _Builder(GSAMLABuilderMixin):
    def __init__(self, kv_cache_spec, layer_names, vllm_config, device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self._gsa_builder_init(vllm_config, layer_names)

    def build(self, common_prefix_len: int, common_attn_metadata, fast_build: bool = False):
        md = super().build(common_prefix_len, common_attn_metadata, fast_build)
        return self._gsa_attach(md, common_attn_metadata)


class _Impl(MLAKVCacheUpdate, GSAMLAImplMixin):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._gsa_mla_init(None)

    def forward_mqa(self, q, kv_c_and_k_pe_cache, attn_metadata, layer):
        return self._gsa_forward_mqa(super().forward_mqa, q, kv_c_and_k_pe_cache, attn_metadata, layer)


# ---------------------------------------------------------------- FLASH_ATTN_MLA
class GSAFlashAttnMLAMetadataBuilder(_Builder, FlashAttnMLAMetadataBuilder):
    @classmethod
    def get_cudagraph_support(cls, vllm_config, kv_cache_spec) -> AttentionCGSupport:
        return _cg_support(FlashAttnMLAMetadataBuilder, vllm_config, kv_cache_spec)


class GSAFlashAttnMLAImpl(_Impl, FlashAttnMLAImpl):
    def _sparse_decode(self, dec, table, lens, state):
        return dataclasses.replace(dec, block_table=table, seq_lens=lens, scheduler_metadata=None)


class GSAFlashAttnMLABackend(GSABackendCompat, FlashAttnMLABackend):
    """``FLASH_ATTN_MLA`` with GSA (same name: vLLM looks backends up by it)."""

    @staticmethod
    def get_impl_cls():
        return GSAFlashAttnMLAImpl

    @staticmethod
    def get_builder_cls():
        return GSAFlashAttnMLAMetadataBuilder


# ---------------------------------------------------------------- TRITON_MLA
class GSATritonMLAMetadataBuilder(_Builder, TritonMLAMetadataBuilder):
    @classmethod
    def get_cudagraph_support(cls, vllm_config, kv_cache_spec) -> AttentionCGSupport:
        return _cg_support(TritonMLAMetadataBuilder, vllm_config, kv_cache_spec)


class GSATritonMLAImpl(_Impl, TritonMLAImpl):
    pass  # the Triton decode kernel reads decode.block_table / seq_lens only: the mixin's copy


class GSATritonMLABackend(GSABackendCompat, TritonMLABackend):
    """``TRITON_MLA`` with GSA (same name: vLLM looks backends up by it)."""

    @staticmethod
    def get_impl_cls():
        return GSATritonMLAImpl

    @staticmethod
    def get_builder_cls():
        return GSATritonMLAMetadataBuilder
