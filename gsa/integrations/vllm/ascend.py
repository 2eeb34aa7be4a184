"""vllm-ascend hook: the GSA GQA and MLA backends for engines with GSA on, upstream's classes otherwise.

Written against vllm-ascend 0.23.0.post1 (vLLM 0.23.0) and, for GQA, its main branch at
``182b75ea84`` (vLLM 0.27.1; the MLA wrapper was not checked against main); exercised in
CI on 0.23.0.post1's Python sources with a stand-in ``torch_npu`` (``ci/vllm_ascend.sh``,
``tests/test_vllm_ascend.py``, ``tests/test_vllm_ascend_mla.py``);
never run on an NPU. Nothing here imports torch_npu.

vllm-ascend's ``NPUPlatform.get_attn_backend_cls`` returns a class path rather
than going through vLLM's backend registry, so :func:`register` wraps that
classmethod (the one place where the plugin patches anything). For each layer
vLLM asks it once (the answer is cached per process by vLLM's selector):

* GSA off for the engine being built (no ``additional_config["gsa"]`` /
  ``GSA_VLLM_CONFIG``): upstream's answer, unchanged (its context-parallel, C8,
  MLA, ... classes keep working);
* GSA on: :func:`check_engine` refuses, with :class:`GSAVllmConfigError` naming
  the setting, what GSA cannot serve on Ascend, then upstream's GQA backend
  ``AscendAttentionBackend`` becomes our wrapper (:mod:`.ascend_backend`) and
  the MLA backend ``AscendMLABackend`` ours (:mod:`.ascend_mla`, after
  :func:`check_mla_engine`). Any other upstream backend (SFA / DSA / FA3 / 310P)
  is refused: it is not wrapped, and running it would silently serve dense attention.
"""
from __future__ import annotations

import importlib.util
from typing import Any, Mapping, Optional, Sequence

from .settings import GSAVllmConfigError, PluginSettings, read_settings

__all__ = ["register", "check_engine", "check_mla_engine", "check_last_block_forced", "choose_backend",
           "ASCEND_GQA_BACKEND", "GSA_ASCEND_BACKEND", "ASCEND_MLA_BACKEND", "GSA_ASCEND_MLA_BACKEND",
           "KERNEL_BLOCK_SIZES"]

ASCEND_GQA_BACKEND = "vllm_ascend.attention.attention_v1.AscendAttentionBackend"
GSA_ASCEND_BACKEND = "gsa.integrations.vllm.ascend_backend.GSAAscendAttentionBackend"
ASCEND_MLA_BACKEND = "vllm_ascend.attention.mla_v1.AscendMLABackend"
GSA_ASCEND_MLA_BACKEND = "gsa.integrations.vllm.ascend_mla.GSAAscendMLABackend"
#: ``AscendAttentionBackend.get_supported_kernel_block_sizes()`` in 0.23.0.post1 and main:
#: the block size of the tables the NPU kernels (and so GSA's selection) see
KERNEL_BLOCK_SIZES = (128,)
#: cudagraph modes whose decode steps replay a captured FIA / paged-attention call;
#: vllm-ascend's replay re-reads ``seq_lens_list`` from the un-selected metadata
_FULL_DECODE_MODES = ("FULL", "FULL_DECODE_ONLY")


def _fail(setting: str, expected: str, got: Any) -> None:
    raise GSAVllmConfigError(f"GSA vLLM plugin (Ascend): {setting}: expected {expected}, got {got!r}")


def _truthy_flag(value: Any) -> bool:
    if isinstance(value, Mapping):
        return bool(value.get("enabled", False))
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "off", "no")
    return bool(value)


def check_engine(vllm_config: Any, settings: PluginSettings,
                 kernel_block_sizes: Sequence[int] = KERNEL_BLOCK_SIZES) -> None:
    """Refuse, at start-up, what GSA cannot serve on vllm-ascend (GSA on for this engine).

    Context parallel (vllm-ascend swaps in its CP classes, whose KV layout GSA does
    not hash); C8 INT8 KV (``quant_config.enable_c8_quant``: vllm-ascend replaces the
    impl class by ``AscendC8AttentionBackendImpl`` after construction, dropping GSA);
    vllm-ascend's own hamming sparse attention (``additional_config`` keys
    ``hamming_sparse`` / ``enable_hamming_sparse``: two selections would stack); a
    kernel block size other than the config's ``chunk_size`` (GSA selects whole kernel
    blocks); FULL / FULL_DECODE_ONLY graph modes (the replay reads the dense lengths).
    """
    cfg = settings.config
    pc = getattr(vllm_config, "parallel_config", None)
    for what in ("decode_context_parallel_size", "prefill_context_parallel_size"):
        n = int(getattr(pc, what, 1) or 1)
        if n != 1:
            _fail(f"parallel_config.{what}", "1 (GSA does not wrap vllm-ascend's context-parallel attention)", n)
    qc = getattr(vllm_config, "quant_config", None)
    if getattr(qc, "enable_c8_quant", False):
        _fail("quantization: quant_config.enable_c8_quant (C8 INT8 KV cache)",
              "off (vllm-ascend swaps the attention impl for AscendC8AttentionBackendImpl, which GSA does not wrap)",
              True)
    extra = getattr(vllm_config, "additional_config", None) or {}
    for key in ("enable_hamming_sparse", "hamming_sparse"):
        if key in extra and _truthy_flag(extra[key]):
            _fail(f"additional_config[{key!r}] (vllm-ascend's own hamming sparse attention)",
                  "off with GSA (both would select KV blocks, one on top of the other)", extra[key])
    if cfg.chunk_size not in tuple(kernel_block_sizes):
        _fail("kernel block size", f"the config's chunk_size {cfg.chunk_size} (GSA selects whole kernel blocks); "
              f"vllm-ascend's GQA and MLA kernels use block size {list(kernel_block_sizes)}, so set chunk_size and "
              f"--block-size to {kernel_block_sizes[0]}", list(kernel_block_sizes))
    cc = getattr(vllm_config, "compilation_config", None)
    mode = getattr(cc, "cudagraph_mode", None)
    name = getattr(mode, "name", str(mode) if mode is not None else "NONE")
    if name in _FULL_DECODE_MODES:
        _fail("compilation_config.cudagraph_mode",
              "NONE, PIECEWISE or FULL_AND_PIECEWISE with GSA (decode graphs replay the FIA / paged attention "
              "with the dense lengths; GSA's per-step selection runs outside graphs, see docs/vllm.md)", name)


def check_mla_engine(vllm_config: Any, enable_kv_nz: bool = False, enable_mlapo: bool = False,
                     fa_quant: bool = False) -> None:
    """Refuse what the MLA wrapper cannot serve (GSA on): vllm-ascend's NZ latent cache
    (``additional_config["enable_kv_nz"]``: the cache is not laid out as the ``[NB, bs, 1, L]``
    rows GSA hashes), its fused MLA preprocess (``enable_mlapo``: it writes the cache in one
    op outside the path GSA hashes from) and FA quantisation (``quant_config.enable_fa_quant``:
    an INT8 / FP8 latent cache). The impl passes its own resolved flags as well."""
    extra = getattr(vllm_config, "additional_config", None) or {}
    for key, own in (("enable_kv_nz", enable_kv_nz), ("enable_mlapo", enable_mlapo)):
        if own or _truthy_flag(extra.get(key, False)):
            _fail(f"additional_config[{key!r}]", "off with GSA on an MLA model (the MLA wrapper hashes the latent "
                  "cache as ND rows written by the unfused preprocess)", extra.get(key, own))
    qc = getattr(vllm_config, "quant_config", None)
    if fa_quant or getattr(qc, "enable_fa_quant", False):
        _fail("quantization: quant_config.enable_fa_quant (quantised latent cache)",
              "off with GSA (GSA hashes a floating-point latent cache)", True)


def check_last_block_forced(config: Any) -> None:
    """The NPU kernels take lengths as host lists, computed without a device sync only
    when the last block is always selected (spec 7's amendment)."""
    if -1 not in config.must_select_blocks:
        raise GSAVllmConfigError(
            "GSA vLLM plugin (Ascend): key 'must_select_blocks': expected it to contain -1 (the last block; "
            "the NPU kernels take lengths as host lists, computed without a device sync only when the last "
            f"block is always selected), got {list(config.must_select_blocks)}")


def _current_vllm_config() -> Optional[Any]:
    try:  # vLLM >= 0.23; get_current_vllm_config() asserts outside a config context there
        from vllm.config import get_current_vllm_config_or_none as current
    except ImportError:
        from vllm.config import get_current_vllm_config as current
    vc = current()
    return vc if getattr(vc, "model_config", None) is not None else None


def choose_backend(path: str, vllm_config: Optional[Any]) -> str:
    """The backend class path for upstream's answer ``path`` and the engine's config."""
    if vllm_config is None:
        return path
    settings = read_settings(getattr(vllm_config, "additional_config", None), vllm_config.model_config)
    if settings is None:
        return path  # GSA off: upstream's classes, untouched
    check_engine(vllm_config, settings)
    if path == ASCEND_GQA_BACKEND:
        return GSA_ASCEND_BACKEND
    if path == ASCEND_MLA_BACKEND:
        check_mla_engine(vllm_config)
        return GSA_ASCEND_MLA_BACKEND
    _fail("attention backend", f"{ASCEND_GQA_BACKEND} or {ASCEND_MLA_BACKEND} (the vllm-ascend backends GSA wraps)",
          path)
    return path  # unreachable


def register() -> bool:
    """Wrap vllm-ascend's backend choice; ``False`` when vllm-ascend is absent."""
    if importlib.util.find_spec("vllm_ascend") is None:
        return False
    from vllm_ascend.platform import NPUPlatform

    original = NPUPlatform.get_attn_backend_cls
    if getattr(original, "_gsa_wrapped", False):
        return True
    func = original.__func__

    def get_attn_backend_cls(cls, *args, **kwargs):
        return choose_backend(func(cls, *args, **kwargs), _current_vllm_config())

    get_attn_backend_cls._gsa_wrapped = True  # type: ignore[attr-defined]
    NPUPlatform.get_attn_backend_cls = classmethod(get_attn_backend_cls)
    return True
