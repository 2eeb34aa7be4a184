"""GSA as a vLLM plugin: sparse decode attention without patching vLLM.

Installed with gsa-ops, the entry point ``vllm.general_plugins: gsa =
gsa.integrations.vllm:register`` runs in every vLLM process. :func:`register`
swaps the platform's attention backend class for a GSA wrapper through vLLM's
own registry (``register_backend``); the wrapper stays inert unless GSA is
enabled for the engine (``additional_config={"gsa": ...}`` or
``GSA_VLLM_CONFIG``, see :mod:`.settings` and docs/vllm.md).

Wrapped backends:

* ``CPU_ATTN`` (vLLM's CPU platform): :mod:`.cpu`, exercised in CI;
* ``FLASH_ATTN`` (CUDA): :mod:`.cuda`, run on an H200 with vLLM 0.26 (FULL CUDA graphs);
* ``CPU_MLA`` (DeepSeek-style MLA on CPU): :mod:`.cpu_mla`, exercised in CI;
* ``FLASH_ATTN_MLA`` (what vLLM 0.32 picks for MLA on Hopper) and ``TRITON_MLA``:
  :mod:`.cuda_mla`, written against vLLM 0.32, import-checked only, not run here;
* vllm-ascend's ``AscendAttentionBackend`` and ``AscendMLABackend``: :mod:`.ascend`
  (:mod:`.ascend_backend`, :mod:`.ascend_mla`), driven in CI through vllm-ascend
  0.23.0.post1's real code with a stand-in ``torch_npu``; never run on an NPU.

Counters: :func:`stats` (in-process engines), and a log line every
``log_every`` steps from logger ``gsa.vllm``.
"""
from __future__ import annotations

import logging
import os

from .runtime import current_runtime, reset_stats, stats
from .settings import GSAVllmConfigError

__all__ = ["register", "stats", "reset_stats", "current_runtime", "GSAVllmConfigError", "WRAPPED"]

logger = logging.getLogger("gsa.vllm")

#: vLLM backend enum name -> our wrapper class path
WRAPPED = {
    "CPU_ATTN": "gsa.integrations.vllm.cpu.GSACPUAttentionBackend",
    "FLASH_ATTN": "gsa.integrations.vllm.cuda.GSAFlashAttentionBackend",
    "CPU_MLA": "gsa.integrations.vllm.cpu_mla.GSACPUMLABackend",
    "FLASH_ATTN_MLA": "gsa.integrations.vllm.cuda_mla.GSAFlashAttnMLABackend",
    "TRITON_MLA": "gsa.integrations.vllm.cuda_mla.GSATritonMLABackend",
}

_DONE = False


def _ensure_log_handler() -> None:
    # vLLM configures its own "vllm" logger only; give ours a handler at INFO so
    # that the counters reach the same stream without touching the root logger.
    if not logger.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(levelname)s %(asctime)s [gsa.vllm] %(message)s", "%m-%d %H:%M:%S"))
        logger.addHandler(h)
        logger.setLevel(os.environ.get("GSA_VLLM_LOG_LEVEL", "INFO"))
        logger.propagate = False


def _vllm_version() -> str:
    try:
        import vllm

        return str(vllm.__version__)
    except Exception:  # version lookup only feeds a log line
        return "?"


def register() -> None:
    """vLLM general-plugin entry point (runs in every vLLM process; idempotent, cheap).

    Only class paths are registered here; the wrappers import their backend
    when vLLM resolves it, so a platform never imports another's kernels.
    """
    global _DONE
    if _DONE or os.environ.get("GSA_VLLM_PLUGIN", "1").strip().lower() in ("0", "false", "off", "no"):
        return
    _DONE = True
    _ensure_log_handler()
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    for name, path in WRAPPED.items():
        try:  # a backend this vLLM does not have (e.g. CPU_MLA before 0.32): nothing to wrap
            member = AttentionBackendEnum[name]
        except (KeyError, ValueError):
            logger.debug("GSA: vLLM %s has no attention backend %s; not wrapped", _vllm_version(), name)
            continue
        register_backend(member, path)
    try:  # vllm-ascend: its platform names the backend class by path, not through the enum
        from . import ascend

        ascend.register()
    except Exception as exc:  # never break a vLLM process over an optional platform
        logger.debug("GSA: Ascend adapter not registered: %s", exc)
