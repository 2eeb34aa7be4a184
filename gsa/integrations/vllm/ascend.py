"""vllm-ascend hook: point its GQA attention backend at the GSA wrapper.

UNTESTED ON HARDWARE: no Ascend NPU, CANN or torch_npu exists where this was
written. Written against vllm-ascend's ``vllm_ascend/platform.py`` and
``vllm_ascend/attention/attention_v1.py`` (main branch, November 2026).

vllm-ascend's ``NPUPlatform.get_attn_backend_cls`` returns a class path string
rather than going through vLLM's backend enum, so :func:`register` wraps that
classmethod (the one place where the plugin patches anything, and it is
vllm-ascend's code, not vLLM's): when it answers
``vllm_ascend.attention.attention_v1.AscendAttentionBackend`` the GSA wrapper
(:mod:`.ascend_backend`) is returned instead. MLA / SFA / DSA backends are left
alone. Nothing here imports torch_npu or vllm_ascend unless vllm_ascend is
installed.
"""
from __future__ import annotations

import importlib.util

__all__ = ["register", "ASCEND_GQA_BACKEND", "GSA_ASCEND_BACKEND"]

ASCEND_GQA_BACKEND = "vllm_ascend.attention.attention_v1.AscendAttentionBackend"
GSA_ASCEND_BACKEND = "gsa.integrations.vllm.ascend_backend.GSAAscendAttentionBackend"


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
        path = func(cls, *args, **kwargs)
        return GSA_ASCEND_BACKEND if path == ASCEND_GQA_BACKEND else path

    get_attn_backend_cls._gsa_wrapped = True  # type: ignore[attr-defined]
    NPUPlatform.get_attn_backend_cls = classmethod(get_attn_backend_cls)
    return True
