"""GSA around vllm-ascend's GQA attention backend (``AscendAttentionBackend``).

Written against ``vllm_ascend/attention/attention_v1.py`` of vllm-ascend
0.23.0.post1 (vLLM 0.23.0) and of its main branch at ``182b75ea84``; driven in
CI through the real 0.23.0.post1 builder and impl with a stand-in ``torch_npu``
whose kernels are our reference ops (``tests/test_vllm_ascend.py``). Never run
on an NPU. Only importable where vllm_ascend and torch_npu import.

How it maps onto vllm-ascend:

* ``build``: upstream's ``build()`` (which constructs ``AscendMetadata``
  directly in 0.23.0.post1; ``metadata_cls`` exists only on main), then the
  metadata is rebuilt field by field as :class:`GSAAscendMetadata` carrying the
  step plan, made from the host lengths upstream itself hands the kernels
  (``seq_lens``, a CPU tensor);
* vllm-ascend writes the KV cache inside ``forward`` (vLLM's default
  ``forward_includes_kv_cache_update = True``), so keys are hashed in
  ``forward`` from the ``key`` argument and
  ``attn_metadata.slot_mapping[:num_actual_tokens]``, before the attention;
* the decode kernels read ``block_tables`` (device) and the lengths as host
  data: ``seq_lens_list`` (``actual_seq_lengths_kv`` of
  ``npu_fused_infer_attention_score``) and the CPU tensor ``seq_lens``
  (``context_lens`` of ``_npu_paged_attention``). The sparse copy of the
  metadata gets the selected table and host lengths computed from the step
  plan (:meth:`GSAVllmRuntime.host_sparse_lens`, spec 7's amendment: exact
  because the config must force the last block, ``-1`` in
  ``must_select_blocks``), so no device-to-host copy happens inside the step;
* graphs: the builder reports ``AttentionCGSupport.NEVER`` while GSA is on, and
  :func:`.ascend.check_engine` refuses FULL / FULL_DECODE_ONLY at start-up
  (their replay re-reads the dense lengths); FULL_AND_PIECEWISE is downgraded to
  PIECEWISE by vLLM, with attention outside the graphs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from vllm.v1.attention.backend import AttentionCGSupport
from vllm_ascend.attention.attention_v1 import (
    AscendAttentionBackend,
    AscendAttentionBackendImpl,
    AscendAttentionMetadataBuilder,
    AscendMetadata,
)

from .ascend import check_engine, check_last_block_forced
from .common import GSAImplMixin, host_lengths
from .runtime import StepState, runtime_for
from .settings import GSAVllmConfigError, read_settings

__all__ = ["GSAAscendAttentionBackend", "GSAAscendMetadata", "GSAAscendMetadataBuilder", "GSAAscendImpl"]

#: where the GSA runtime (hash caches, weights) lives; ``None``: the platform's current
#: device (the NPU). Tests that run vllm-ascend on the CPU set it to ``torch.device("cpu")``.
RUNTIME_DEVICE: Optional[torch.device] = None


@dataclass
class GSAAscendMetadata(AscendMetadata):
    #: the step's GSA plan (None: GSA off or a dense step)
    gsa: Optional[StepState] = None


class GSAAscendMetadataBuilder(AscendAttentionMetadataBuilder):
    @classmethod
    def get_cudagraph_support(cls, vllm_config, kv_cache_spec) -> AttentionCGSupport:
        if read_settings(getattr(vllm_config, "additional_config", None), vllm_config.model_config) is None:
            return AscendAttentionMetadataBuilder.get_cudagraph_support(vllm_config, kv_cache_spec)
        return AttentionCGSupport.NEVER

    def build(self, common_prefix_len: int, common_attn_metadata, fast_build: bool = False):
        md = super().build(common_prefix_len, common_attn_metadata, fast_build)
        rt = runtime_for(self.vllm_config)
        if rt is None:
            return md
        if type(md) is not AscendMetadata:  # a subclass (CP on main) would lose its fields
            raise GSAVllmConfigError(f"GSA vLLM plugin (Ascend): attention metadata: expected AscendMetadata, got "
                                     f"{type(md).__name__} (context parallel is not supported with GSA)")
        md = GSAAscendMetadata(**{f.name: getattr(md, f.name) for f in dataclasses.fields(md)})
        n = int(common_attn_metadata.num_reqs)
        if isinstance(md.seq_lens, torch.Tensor) and md.seq_lens.device.type == "cpu":
            # exactly the lengths upstream hands FIA (seq_lens_list is built from them)
            seq_lens = md.seq_lens[:n].numpy().astype(np.int64)
            qsl = common_attn_metadata.query_start_loc_cpu[: n + 1].numpy().astype(np.int64)
            query_lens = qsl[1:] - qsl[:-1]
        else:
            seq_lens, query_lens = host_lengths(common_attn_metadata)
        md.gsa = rt.plan(seq_lens, query_lens, common_attn_metadata.query_start_loc)
        md.gsa.builder = self
        return md


class GSAAscendImpl(GSAImplMixin, AscendAttentionBackendImpl):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._gsa_init(RUNTIME_DEVICE)
        if self.gsa is None:
            return
        # again here: vLLM caches the backend choice per process, so the hook may not
        # have seen this engine's config
        check_engine(self.vllm_config, self.gsa.settings)
        check_last_block_forced(self.gsa.config)

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
    """Only chosen for engines with GSA on (:func:`.ascend.choose_backend`). Where upstream
    would pick a specialised class (context parallel), that class is returned: GSA
    refuses those engines at start-up, and a GSA-off engine sharing vLLM's cached
    backend choice keeps upstream's behaviour."""

    @staticmethod
    def get_impl_cls():
        upstream = AscendAttentionBackend.get_impl_cls()
        return GSAAscendImpl if upstream is AscendAttentionBackendImpl else upstream

    @staticmethod
    def get_builder_cls():
        upstream = AscendAttentionBackend.get_builder_cls()
        return GSAAscendMetadataBuilder if upstream is AscendAttentionMetadataBuilder else upstream
