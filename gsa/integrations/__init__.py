"""Inference-engine integrations of GSA (``gsa.integrations.vllm``: the vLLM plugin)."""
