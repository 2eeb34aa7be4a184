"""GSA around vllm-ascend's MLA attention backend (``AscendMLABackend``).

Written against ``vllm_ascend/attention/mla_v1.py`` of vllm-ascend 0.23.0.post1
(vLLM 0.23.0); driven in CI through the real 0.23.0.post1 builder and impl with
a stand-in ``torch_npu`` whose kernels are our reference ops
(``tests/test_vllm_ascend_mla.py``). Never run on an NPU. Only importable where
vllm_ascend and torch_npu import.

How it maps onto vllm-ascend (the shared MLA logic is :mod:`.mla`):

* ``build``: upstream's ``AscendMLAMetadataBuilder.build()`` (decode rows first,
  ``decode`` holds ``block_table``, the host tensor ``seq_lens`` and the host list
  ``seq_lens_list``), then a copy with ``gsa``, the step planned over the decode
  rows from host lengths (:class:`.mla.GSAMLABuilderMixin`);
* vllm-ascend's impl does everything in ``forward``: ``_mla_preprocess`` projects
  the query and writes the latent cache with the fused
  ``npu_kv_rmsnorm_rope_cache`` (RMSNorm of ``c_kv``, RoPE of ``k_pe``, both
  written at ``slot_mapping``: ``kv_cache[0] [NB, bs, 1, L]``, ``kv_cache[1]
  [NB, bs, 1, P]``). The normalised ``c_kv`` and roped ``k_pe`` of decode tokens
  exist only inside those caches, so GSA hashes them (spec 9) by reading the
  step's slots back from the caches right after the write: exactly what the
  decode kernel will read;
* ``_forward_decode`` gets the absorbed query ``ql_nope = q_nope @ W_UK^T [B, N, L]``
  and the roped ``q_pe [B, N, P]``: on a sparse layer they score the blocks and
  the unmodified upstream decode (``npu_fused_infer_attention_score_v2``, layout
  ``BNSD_NBSD``, ``block_table``, ``actual_seq_kvlen = seq_lens_list``) runs on a
  copy of the metadata whose ``decode`` has the selected table, host
  ``seq_lens`` and ``seq_lens_list`` computed from the step plan
  (:meth:`GSAVllmRuntime.host_sparse_lens`, last block forced: no device sync);
* prefill (``_forward_prefill``) is untouched: prefill rows are dense (spec 8);
* graphs: the builder reports ``AttentionCGSupport.NEVER`` while GSA is on, and
  FULL / FULL_DECODE_ONLY are refused at start-up (:func:`.ascend.check_engine`).

Refused at start-up besides :func:`.ascend.check_engine`'s list
(:func:`.ascend.check_mla_engine`): the NZ latent cache (``enable_kv_nz``), the
fused MLA preprocess (``enable_mlapo``) and FA quantisation.
"""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import torch
from vllm.v1.attention.backend import AttentionCGSupport
from vllm_ascend.attention.mla_v1 import AscendMLABackend, AscendMLAImpl, AscendMLAMetadataBuilder

from . import ascend_backend
from .ascend import check_engine, check_last_block_forced, check_mla_engine
from .common import layer_index
from .mla import GSAMLABuilderMixin, GSAMLAImplMixin
from .runtime import StepState
from .settings import read_settings

__all__ = ["GSAAscendMLABackend", "GSAAscendMLAMetadataBuilder", "GSAAscendMLAImpl"]


class GSAAscendMLAMetadataBuilder(GSAMLABuilderMixin, AscendMLAMetadataBuilder):
    def __init__(self, kv_cache_spec, layer_names, vllm_config, device, *args, **kwargs) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device, *args, **kwargs)
        self._gsa_builder_init(vllm_config, layer_names)

    @classmethod
    def get_cudagraph_support(cls, vllm_config, kv_cache_spec) -> AttentionCGSupport:
        if read_settings(getattr(vllm_config, "additional_config", None), vllm_config.model_config) is None:
            return AscendMLAMetadataBuilder.get_cudagraph_support(vllm_config, kv_cache_spec)
        return AttentionCGSupport.NEVER

    def build(self, common_prefix_len: int, common_attn_metadata, fast_build: bool = False):
        md = super().build(common_prefix_len, common_attn_metadata, fast_build)
        return self._gsa_attach(md, common_attn_metadata)


class GSAAscendMLAImpl(GSAMLAImplMixin, AscendMLAImpl):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._gsa_mla_init(ascend_backend.RUNTIME_DEVICE)
        if self.gsa is None:
            return
        # again here: vLLM caches the backend choice per process
        check_engine(self.vllm_config, self.gsa.settings)
        check_mla_engine(self.vllm_config, enable_kv_nz=bool(self.enable_kv_nz), enable_mlapo=bool(self.enable_mlapo),
                         fa_quant=bool(self.fa_quant_layer))
        check_last_block_forced(self.gsa.config)

    def _gsa_layer_index(self) -> int:
        # upstream hands its impl the layer name (``layer_name`` kwarg): no registry search
        if self._gsa_layer is None:
            self._gsa_layer = layer_index(SimpleNamespace(layer_name=self.layer_name))
        return self._gsa_layer

    # -- keys: read back from the latent cache the fused op just wrote ---------------
    def _mla_preprocess(self, layer_name, hidden_states, kv_cache, attn_metadata, need_gather_q_kv):
        res = super()._mla_preprocess(layer_name, hidden_states, kv_cache, attn_metadata, need_gather_q_kv)
        if self.gsa is not None:
            c_cache, pe_cache = kv_cache[0], kv_cache[1]  # [NB, bs, 1, L], [NB, bs, 1, P]
            slots = attn_metadata.slot_mapping[: attn_metadata.num_actual_tokens]
            rows = slots.clamp(min=0).to(torch.int64)  # -1 (padding) slots: read anything, not hashed
            c_kv = c_cache.view(-1, c_cache.shape[-1]).index_select(0, rows)
            k_pe = pe_cache.view(-1, pe_cache.shape[-1]).index_select(0, rows)
            self._gsa_cache_latent(c_kv, k_pe, c_cache, slots)
        return res

    # -- decode ------------------------------------------------------------------------
    def _forward_decode(self, q_nope, q_pe, k_nope, k_pe, block_size, attn_metadata, dequant_scale_q_nope=None):
        """``q_nope``: the absorbed query ``[B, N, L]``, ``q_pe [B, N, P]`` (roped); ``k_nope``,
        ``k_pe``: the latent caches."""
        rt = self.gsa
        state = getattr(attn_metadata, "gsa", None)
        if rt is not None and state is not None and rt.is_sparse(self._gsa_layer_index(), state):
            attn_metadata = self._gsa_sparse_attn_metadata(self._gsa_layer_index(), state, q_nope, q_pe,
                                                           attn_metadata)
        return super()._forward_decode(q_nope, q_pe, k_nope, k_pe, block_size, attn_metadata, dequant_scale_q_nope)

    def _gsa_decode_table_and_lens(self, dec: Any):
        # upstream's decode seq_lens is a host tensor; the selection ops want it beside the table
        return dec.block_table, dec.seq_lens.to(dec.block_table.device, non_blocking=True)

    def _sparse_decode(self, dec: Any, table: torch.Tensor, lens: torch.Tensor, state: StepState) -> Any:
        # the kernel reads seq_lens_list (host); the device lens from kv_select equal these host ones
        host = self.gsa.host_sparse_lens(self._gsa_layer_index(), state)
        b = host.shape[0]
        seq_lens = dec.seq_lens.clone()
        seq_lens[:b] = torch.from_numpy(host).to(seq_lens.dtype)
        seq_lens_list = list(dec.seq_lens_list)
        seq_lens_list[:b] = [int(x) for x in host]
        return dataclasses.replace(dec, block_table=table, seq_lens=seq_lens, seq_lens_list=seq_lens_list)


class GSAAscendMLABackend(AscendMLABackend):
    """Only chosen for engines with GSA on (:func:`.ascend.choose_backend`). Where upstream
    would pick its context-parallel classes, those are returned (GSA refuses such engines
    at start-up; a GSA-off engine sharing vLLM's cached choice keeps upstream's behaviour)."""

    @staticmethod
    def get_impl_cls():
        upstream = AscendMLABackend.get_impl_cls()
        return GSAAscendMLAImpl if upstream is AscendMLAImpl else upstream

    @staticmethod
    def get_builder_cls():
        upstream = AscendMLABackend.get_builder_cls()
        return GSAAscendMLAMetadataBuilder if upstream is AscendMLAMetadataBuilder else upstream
