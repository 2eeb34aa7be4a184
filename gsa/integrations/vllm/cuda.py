"""GSA around vLLM's FlashAttention backend (``FLASH_ATTN``, CUDA).

Written against vLLM 0.26 and 0.32's ``vllm/v1/attention/backends/flash_attn.py``;
run on an H200 with vLLM 0.26 (benchmarks/vllm_device/, docs/vllm.md says what ran).
What differs in 0.23 and 0.33 (cache layout, cascade attention, K/V-update bypass) is
handled in :mod:`.compat`.

Same structure as :mod:`.cpu`: keys hashed in ``do_kv_cache_update`` (the
``key`` tensor, ``[T, Hkv, D]``), the plan made in ``build`` from host lengths
(``seq_lens_cpu_upper_bound``: exact without speculative decoding, which the
plugin refuses), and on sparse steps a shallow copy of the metadata with the
sparse ``block_table`` / ``seq_lens`` and ``scheduler_metadata=None``
(FlashAttention then schedules from the new lengths itself; the AOT schedule was
made for the dense lengths and would be wrong).

CUDA graphs: the builder reports FlashAttention's own graph support, so vLLM
keeps ``FULL_AND_PIECEWISE`` / ``FULL_DECODE_ONLY``. A uniform decode batch that
may be replayed from (or captured into) a FULL graph is planned in graph form
(``StepState.static``): the budgets are copied in ``build`` into persistent
device buffers, every sparse layer selects over the whole block table with a
fixed width (so the captured kernels and shapes serve every later step; a dense
row or step is a budget of ``n_blocks``), the selection writes into the layer's
persistent buffers (``gsa.hotpath``), and the sparse metadata keeps the dense
``max_seq_len`` bound and ``max_num_splits`` while FA3 schedules the sparse lengths
itself (``scheduler_metadata=None``). The dense bound also in eager steps: FA3 divides
each row's own length into the splits its heuristic picks from ``max_seq_len``, so a
smaller bound means fewer splits and fewer CTAs; giving it the plan's sparse bound
(the largest ``n_sel`` x block size) made PIECEWISE steps slower on the H200
(median 12.8 -> 19.8 ms at 128K x 5, 12.9 -> 17.3 ms at 32K x 16; docs/vllm.md). The same graph form serves eager
uniform decode steps (PIECEWISE mode). Mixed prefill/decode batches run piecewise
(attention eager) with the compact selection width. Tensor
parallelism (codes all-gathered per layer) keeps ``AttentionCGSupport.NEVER``.
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

from .common import GSAImplMixin, host_lengths, shallow_copy
from .compat import GSABackendCompat, NoCascadeWithGSA, kv_blocks
from .hybrid import gsa_group
from .runtime import StepState, runtime_for

__all__ = ["GSAFlashAttentionBackend", "GSAFlashAttentionMetadata", "GSAFlashAttentionMetadataBuilder",
           "GSAFlashAttentionImpl"]


@dataclass
class GSAFlashAttentionMetadata(FlashAttentionMetadata):
    gsa: Optional[StepState] = None


class GSAFlashAttentionMetadataBuilder(NoCascadeWithGSA, FlashAttentionMetadataBuilder):
    @classmethod
    def get_cudagraph_support(cls, vllm_config, kv_cache_spec) -> AttentionCGSupport:
        from .settings import read_settings

        own = FlashAttentionMetadataBuilder.get_cudagraph_support(vllm_config, kv_cache_spec)
        if read_settings(getattr(vllm_config, "additional_config", None), vllm_config.model_config) is None:
            return own  # GSA off for this engine
        if int(vllm_config.parallel_config.tensor_parallel_size) > 1:
            return AttentionCGSupport.NEVER  # the per-layer code all-gather is not captured
        return own

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self._gsa_vllm_config = vllm_config
        self._gsa_layer_names = list(layer_names)
        self._gsa_plans: Optional[bool] = None  # hybrid models: does this KV cache group plan GSA steps

    def build(self, common_prefix_len: int, common_attn_metadata, fast_build: bool = False):
        md = super().build(common_prefix_len, common_attn_metadata, fast_build)
        rt = runtime_for(self._gsa_vllm_config)
        if rt is None:
            return md
        if self._gsa_plans is None:  # once, against the layers vLLM built (hybrid.py: sliding groups stay dense)
            self._gsa_plans = gsa_group(rt, self._gsa_vllm_config, self._gsa_layer_names)
        if not self._gsa_plans:
            return md
        md = GSAFlashAttentionMetadata(**{f.name: getattr(md, f.name) for f in dataclasses.fields(md)})
        seq_lens, query_lens = host_lengths(common_attn_metadata)
        static = None
        if common_attn_metadata.max_query_len == 1 and common_attn_metadata.num_reqs <= 1024:
            # a uniform decode batch: graph form (the table's full width, persistent budgets), which a
            # FULL graph needs and which also spares eager (PIECEWISE) steps the per-step gathers
            static = common_attn_metadata.block_table_tensor.shape[1]
        md.gsa = rt.plan(seq_lens, query_lens, common_attn_metadata.query_start_loc, static_width=static)
        md.gsa.builder = self
        return md


class GSAFlashAttentionImpl(GSAImplMixin, FlashAttentionImpl):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._gsa_init(None)

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping) -> None:
        super().do_kv_cache_update(layer, key, value, kv_cache, slot_mapping)
        if self.gsa is not None and kv_cache.numel():
            num_blocks, block_size = kv_blocks(kv_cache)  # [NB, Hkv, bs, 2*D] (0.23: [NB, 2, bs, Hkv, D])
            self._gsa_cache_keys(layer, key, value, slot_mapping, num_blocks, block_size)

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale=None,
                output_block_scale=None):
        return self._gsa_forward(super().forward, layer, query, key, value, kv_cache, attn_metadata, output,
                                 output_scale=output_scale, output_block_scale=output_block_scale)

    def _sparse_metadata(self, md: Any, table, lens, state: StepState, layer: int) -> Any:
        # A shallow copy (dataclasses.replace re-runs __init__: ~10x the host time; shallow_copy is
        # copy.copy without its reduce protocol). FA3 schedules the sparse lengths itself: the AOT
        # schedule was made for the dense ones.
        out = shallow_copy(md)
        out.block_table = table
        out.seq_lens = lens
        out.scheduler_metadata = None
        return out


class GSAFlashAttentionBackend(GSABackendCompat, FlashAttentionBackend):
    """``FLASH_ATTN`` with GSA (same name: vLLM looks backends up by it)."""

    @staticmethod
    def get_impl_cls():
        return GSAFlashAttentionImpl

    @staticmethod
    def get_builder_cls():
        return GSAFlashAttentionMetadataBuilder
