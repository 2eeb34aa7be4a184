"""GSA around vllm-ascend's GQA attention backend (``AscendAttentionBackend``).

UNTESTED ON HARDWARE (no NPU here; this module is not even importable without
torch_npu and vllm_ascend). Written against vllm-ascend's
``vllm_ascend/attention/attention_v1.py``; see docs/vllm.md.

How it maps onto vllm-ascend:

* vllm-ascend writes the KV cache inside ``forward`` (its backend keeps
  vLLM's default ``forward_includes_kv_cache_update = True``), so keys are
  hashed in ``forward`` from the ``key`` argument and
  ``attn_metadata.slot_mapping[:num_actual_tokens]``, before the attention;
* the decode kernels read ``block_tables`` (device) and the lengths as host
  data: ``seq_lens`` (CPU tensor, ``context_lens`` of ``_npu_paged_attention``)
  and ``seq_lens_list`` (``actual_seq_lengths_kv`` of
  ``npu_fused_infer_attention_score``). The sparse copy of the metadata gets the
  selected table and host lengths computed from the step plan
  (:meth:`GSAVllmRuntime.host_sparse_lens`, exact because the config must force
  the last block, ``-1`` in ``must_select_blocks``), so no device-to-host copy
  happens inside the step;
* ACL graphs: the builder reports ``AttentionCGSupport.NEVER`` while GSA is on
  (vllm-ascend's full-graph replay re-reads the lengths from the original
  metadata, which would undo the selection); attention then runs eagerly.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import torch
from vllm.v1.attention.backend import AttentionCGSupport
from vllm_ascend.attention.attention_v1 import (
    AscendAttentionBackend,
    AscendAttentionBackendImpl,
    AscendAttentionMetadataBuilder,
    AscendMetadata,
)

from .common import GSAImplMixin, host_lengths
from .runtime import StepState, runtime_for
from .settings import GSAVllmConfigError, read_settings

__all__ = ["GSAAscendAttentionBackend", "GSAAscendMetadata", "GSAAscendMetadataBuilder", "GSAAscendImpl"]


@dataclass
class GSAAscendMetadata(AscendMetadata):
    gsa: Optional[StepState] = None


class GSAAscendMetadataBuilder(AscendAttentionMetadataBuilder):
    metadata_cls = GSAAscendMetadata

    @classmethod
    def get_cudagraph_support(cls, vllm_config, kv_cache_spec) -> AttentionCGSupport:
        if read_settings(getattr(vllm_config, "additional_config", None), vllm_config.model_config) is None:
            return AscendAttentionMetadataBuilder.get_cudagraph_support(vllm_config, kv_cache_spec)
        return AttentionCGSupport.NEVER

    def build(self, common_prefix_len: int, common_attn_metadata, fast_build: bool = False):
        md = super().build(common_prefix_len, common_attn_metadata, fast_build)
        rt = runtime_for(self.vllm_config)
        if rt is not None and isinstance(md, GSAAscendMetadata):
            seq_lens, query_lens = host_lengths(common_attn_metadata)
            md.gsa = rt.plan(seq_lens, query_lens, common_attn_metadata.query_start_loc)
            md.gsa.builder = self
        return md


class GSAAscendImpl(GSAImplMixin, AscendAttentionBackendImpl):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._gsa_init(None)
        if self.gsa is not None and -1 not in self.gsa.config.must_select_blocks:
            raise GSAVllmConfigError(
                "GSA vLLM plugin (Ascend): key 'must_select_blocks': expected it to contain -1 (the last block; "
                "the NPU kernels take lengths as host lists, computed without a device sync only when the last "
                f"block is always selected), got {list(self.gsa.config.must_select_blocks)}")

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output=None, output_scale=None,
                output_block_scale=None):
        if self.gsa is not None and key is not None and attn_metadata is not None and len(kv_cache) > 1:
            k_cache = kv_cache[0]  # [NB, bs, Hkv, D]
            n = attn_metadata.num_actual_tokens
            self._gsa_cache_keys(layer, key[:n], value[:n], attn_metadata.slot_mapping[:n], k_cache.shape[0],
                                 k_cache.shape[1])
        return self._gsa_forward(super().forward, layer, query, key, value, kv_cache, attn_metadata, output,
                                 output_scale=output_scale, output_block_scale=output_block_scale)

    def _gsa_table_and_lens(self, md: Any):
        # seq_lens is a host tensor here; the selection ops want it beside the table
        return md.block_tables, md.seq_lens.to(md.block_tables.device, non_blocking=True)

    def _sparse_metadata(self, md: Any, table: torch.Tensor, lens: torch.Tensor, state: StepState, layer: int) -> Any:
        # the device lengths from kv_select equal these host ones (last block forced)
        host = self.gsa.host_sparse_lens(layer, state)
        b = host.shape[0]
        seq_lens = md.seq_lens.clone()
        seq_lens[:b] = torch.from_numpy(host).to(seq_lens.dtype)
        seq_lens_list = list(md.seq_lens_list)
        seq_lens_list[:b] = [int(x) for x in host]
        # ``table`` already has every (padded) row of md.block_tables (see GSAImplMixin)
        return dataclasses.replace(md, block_tables=table, seq_lens=seq_lens, seq_lens_cpu=seq_lens,
                                   seq_lens_list=seq_lens_list)


class GSAAscendAttentionBackend(AscendAttentionBackend):
    @staticmethod
    def get_impl_cls():
        return GSAAscendImpl

    @staticmethod
    def get_builder_cls():
        return GSAAscendMetadataBuilder
