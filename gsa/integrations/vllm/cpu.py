"""GSA around vLLM's CPU attention backend (``CPU_ATTN``, vllm 0.32, tested in CI;
0.23 / 0.26 differences, e.g. 0.23 writing K/V inside ``forward``, in :mod:`.compat`).

The CPU KV cache is ``[NB, Hkv, bs, 2*D]`` with keys in a kernel-specific
(transposed) layout, so keys are hashed from the ``key`` tensor handed to
``do_kv_cache_update``, never read back from the cache. The CPU kernel's
``scheduler_metadata`` is derived from ``seq_lens`` and ``query_start_loc``,
so a sparse copy of the metadata rebuilds it with
``cpu_attn_get_scheduler_metadata`` for the new lengths.

Hybrid models (Gemma 3 ...): one builder per KV cache group; a group of
sliding-window layers does not plan GSA steps (see :mod:`.hybrid`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import torch
from vllm.v1.attention.backends.cpu_attn import (
    CPUAttentionBackend,
    CPUAttentionBackendImpl,
    CPUAttentionMetadata,
    CPUAttentionMetadataBuilder,
)

from .common import GSAImplMixin, host_lengths
from .compat import GSABackendCompat, builder_is_decoder_attention, cpu_scheduler_metadata, forward_writes_kv, kv_blocks
from .hybrid import gsa_group
from .runtime import StepState, runtime_for

__all__ = ["GSACPUAttentionBackend", "GSACPUAttentionMetadata", "GSACPUAttentionMetadataBuilder",
           "GSACPUAttentionImpl"]


@dataclass
class GSACPUAttentionMetadata(CPUAttentionMetadata):
    #: the step's GSA plan (None: GSA off or a dense step)
    gsa: Optional[StepState] = None


class GSACPUAttentionMetadataBuilder(CPUAttentionMetadataBuilder):
    def __init__(self, kv_cache_spec, layer_names, vllm_config, device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self._gsa_vllm_config = vllm_config
        rt = runtime_for(vllm_config)
        # hybrid models: a group of sliding-window layers never plans (its layers stay dense);
        # checked here, at engine start, against the layers vLLM built (hybrid.py)
        self._gsa_plans = rt is not None and gsa_group(rt, vllm_config, layer_names)

    def build(self, common_prefix_len: int, common_attn_metadata, fast_build: bool = False):
        md = super().build(common_prefix_len, common_attn_metadata, fast_build)
        rt = runtime_for(self._gsa_vllm_config)
        if rt is not None and self._gsa_plans and builder_is_decoder_attention(self):
            md = GSACPUAttentionMetadata(**{f.name: getattr(md, f.name) for f in dataclasses.fields(md)})
            seq_lens, query_lens = host_lengths(common_attn_metadata)
            md.gsa = rt.plan(seq_lens, query_lens, common_attn_metadata.query_start_loc)
            md.gsa.builder = self
        return md

    def sparse_scheduler_metadata(self, md: CPUAttentionMetadata, seq_lens: torch.Tensor) -> torch.Tensor:
        """The CPU kernel's work split for new ``seq_lens`` (same rows and queries)."""
        return cpu_scheduler_metadata(self, md, seq_lens)


_FORWARD_WRITES_KV = forward_writes_kv(CPUAttentionBackendImpl)


class GSACPUAttentionImpl(GSAImplMixin, CPUAttentionBackendImpl):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._gsa_init(torch.device("cpu"))

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping) -> None:
        super().do_kv_cache_update(layer, key, value, kv_cache, slot_mapping)
        if self.gsa is not None and kv_cache.numel():
            num_blocks, block_size = kv_blocks(kv_cache)
            self._gsa_cache_keys(layer, key, value, slot_mapping, num_blocks, block_size)

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale=None,
                output_block_scale=None):
        if (self.gsa is not None and _FORWARD_WRITES_KV and key is not None and attn_metadata is not None
                and kv_cache.numel()):
            # vLLM 0.23: no do_kv_cache_update, the backend's forward writes K/V at slot_mapping
            num_blocks, block_size = kv_blocks(kv_cache)
            self._gsa_cache_keys(layer, key, value, attn_metadata.slot_mapping, num_blocks, block_size)
        return self._gsa_forward(super().forward, layer, query, key, value, kv_cache, attn_metadata, output,
                                 output_scale=output_scale, output_block_scale=output_block_scale)

    def _sparse_metadata(self, md: Any, table: torch.Tensor, lens: torch.Tensor, state: StepState, layer: int) -> Any:
        # max_seq_len: an upper bound is enough (the CPU kernel does not read it)
        sched = state.builder.sparse_scheduler_metadata(md, lens)
        return dataclasses.replace(md, block_table=table, seq_lens=lens, scheduler_metadata=sched,
                                   max_seq_len=int(state.host_seq_lens.max()) if state.host_seq_lens.size else 0)


class GSACPUAttentionBackend(GSABackendCompat, CPUAttentionBackend):
    """``CPU_ATTN`` with GSA (same name: vLLM looks backends up by it)."""

    @staticmethod
    def get_impl_cls():
        return GSACPUAttentionImpl

    @staticmethod
    def get_builder_cls():
        return GSACPUAttentionMetadataBuilder
