# Copied next to the installed packages on the device (on PYTHONPATH), so every Python
# process vLLM starts gets the import stubs of stubs.py.
import os as _os

if _os.environ.get("GSA_VLLM_STUBS"):
    import gsa_vllm_stubs  # noqa: F401
