"""GSA around vLLM's FlashAttention backend (``FLASH_ATTN``, CUDA).

Written against vLLM 0.32's ``vllm/v1/attention/backends/flash_attn.py`` and
imported (class construction checked) on the CPU build; NOT run on a GPU here.
See docs/vllm.md for what was and was not exercised.

Same structure as :mod:`.cpu`: keys hashed in ``do_kv_cache_update`` (the
``key`` tensor, ``[T, Hkv, D]``), the plan made in ``build`` from host lengths
(``seq_lens_cpu_upper_bound``: exact without speculative decoding, which the
plugin refuses), and on sparse steps a ``dataclasses.replace`` copy of the
metadata with the sparse ``block_table`` / ``seq_lens``, ``max_seq_len`` the
host-known upper bound, and ``scheduler_metadata=None`` (FlashAttention then
schedules from the new lengths itself; the AOT schedule was made for the dense
lengths and would be wrong).

CUDA graphs: the per-step plan runs on the host in ``build`` and the selection
allocates its outputs per step, so this builder reports
``AttentionCGSupport.NEVER``: vLLM then captures the model piecewise with
attention outside the graphs (``cudagraph_mode`` FULL is downgraded by vLLM).
The selection ops themselves are graph-capturable (tests/test_sparse_cuda.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from vllm.v1.attention.backend import AttentionCGSupport
from vllm.v1.attention.backends.flash_attn import (
    FlashAttentionBackend,
    FlashAttentionImpl,
    FlashAttentionMetadata,
    FlashAttentionMetadataBuilder,
)

from .common import GSAImplMixin, host_lengths
from .runtime import StepState, runtime_for

__all__ = ["GSAFlashAttentionBackend", "GSAFlashAttentionMetadata", "GSAFlashAttentionMetadataBuilder",
           "GSAFlashAttentionImpl"]


@dataclass
class GSAFlashAttentionMetadata(FlashAttentionMetadata):
    gsa: Optional[StepState] = None


class GSAFlashAttentionMetadataBuilder(FlashAttentionMetadataBuilder):
    @classmethod
    def get_cudagraph_support(cls, vllm_config, kv_cache_spec) -> AttentionCGSupport:
        from .settings import read_settings

        if read_settings(getattr(vllm_config, "additional_config", None), vllm_config.model_config) is None:
            # GSA off for this engine: FlashAttention's own graph support
            return FlashAttentionMetadataBuilder.get_cudagraph_support(vllm_config, kv_cache_spec)
        return AttentionCGSupport.NEVER

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self._gsa_vllm_config = vllm_config

    def build(self, common_prefix_len: int, common_attn_metadata, fast_build: bool = False):
        md = super().build(common_prefix_len, common_attn_metadata, fast_build)
        rt = runtime_for(self._gsa_vllm_config)
        if rt is None:
            return md
        md = GSAFlashAttentionMetadata(**{f.name: getattr(md, f.name) for f in dataclasses.fields(md)})
        seq_lens, query_lens = host_lengths(common_attn_metadata)
        md.gsa = rt.plan(seq_lens, query_lens, common_attn_metadata.query_start_loc)
        md.gsa.builder = self
        return md


class GSAFlashAttentionImpl(GSAImplMixin, FlashAttentionImpl):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._gsa_init(None)

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping) -> None:
        super().do_kv_cache_update(layer, key, value, kv_cache, slot_mapping)
        if self.gsa is not None and kv_cache.numel():
            num_blocks, _, block_size, _ = kv_cache.shape  # [NB, Hkv, bs, 2*D] (see FlashAttentionImpl)
            self._gsa_cache_keys(layer, key, value, slot_mapping, num_blocks, block_size)

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale=None,
                output_block_scale=None):
        return self._gsa_forward(super().forward, layer, query, key, value, kv_cache, attn_metadata, output,
                                 output_scale=output_scale, output_block_scale=output_block_scale)

    def _sparse_metadata(self, md: Any, table, lens, state: StepState, layer: int) -> Any:
        ub = int(state.host_seq_lens.max()) if state.host_seq_lens.size else 0
        return dataclasses.replace(md, block_table=table, seq_lens=lens, max_seq_len=ub, scheduler_metadata=None)


class GSAFlashAttentionBackend(FlashAttentionBackend):
    """``FLASH_ATTN`` with GSA (same name: vLLM looks backends up by it)."""

    @staticmethod
    def get_impl_cls():
        return GSAFlashAttentionImpl

    @staticmethod
    def get_builder_cls():
        return GSAFlashAttentionMetadataBuilder
