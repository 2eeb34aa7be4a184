"""GSA around vLLM's CUDA MLA backends: ``FLASH_ATTN_MLA`` and ``TRITON_MLA``.

Written against vLLM 0.26 and 0.32 (``vllm/v1/attention/backends/mla/flashattn_mla.py``,
``triton_mla.py``); run on an H200 with vLLM 0.26 (docs/vllm.md says what ran). On the CPU build ``flashattn_mla`` does
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

CUDA graphs: the builders report the wrapped backend's own graph support with GSA
on, as :mod:`.cuda` does: a uniform decode batch is planned in graph form
(persistent budgets, the block table's full width, the selection written into the
layer's persistent buffers), so FULL decode graphs capture the selection too. The
sparse copy keeps the dense ``max_seq_len`` and ``max_num_splits``.
"""
from __future__ import annotations

from vllm.v1.attention.backend import AttentionCGSupport
from vllm.v1.attention.backends.mla.flashattn_mla import (
    FlashAttnMLABackend,
    FlashAttnMLAImpl,
    FlashAttnMLAMetadataBuilder,
)
from vllm.v1.attention.backends.mla.triton_mla import TritonMLABackend, TritonMLAImpl, TritonMLAMetadataBuilder

from .compat import GSABackendCompat, MLAKVCacheUpdate
from .mla import GSAMLABuilderMixin, GSAMLAImplMixin

__all__ = ["GSAFlashAttnMLABackend", "GSAFlashAttnMLAMetadataBuilder", "GSAFlashAttnMLAImpl",
           "GSATritonMLABackend", "GSATritonMLAMetadataBuilder", "GSATritonMLAImpl"]


def _cg_support(base, vllm_config, kv_cache_spec) -> AttentionCGSupport:
    """The backend's own graph support, GSA on or off: uniform decode steps are planned in
    graph form (:mod:`.mla`), and the MLA path refuses tensor parallelism at start-up."""
    return base.get_cudagraph_support(vllm_config, kv_cache_spec)


class _Builder(GSAMLABuilderMixin):
    _gsa_graph_form = True

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
        out = super()._sparse_decode(dec, table, lens, state)
        out.scheduler_metadata = None  # made for the dense lengths: FA3 schedules the sparse ones itself
        return out


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
