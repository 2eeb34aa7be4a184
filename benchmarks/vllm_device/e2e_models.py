"""Dummy-weight model folders and inline GSA configs for ``vllm_e2e.py`` (issue 13).

vLLM's ``load_format="dummy"`` builds a model of real shape from a ``config.json`` alone,
so each model here is a config: Qwen3 (GQA, ``FLASH_ATTN``) and DeepSeek-V2-Lite's
attention (MLA: ``kv_lora_rank`` 512, ``qk_rope_head_dim`` 64, 16 heads, 27 layers) with
**dense MLPs** (``first_k_dense_replace`` = every layer): the GPU payload leaves vLLM's
fused-MoE kernels out, and decode attention, what GSA changes, is the same. A spec's
``"model_overrides"`` shrink a model (e.g. the CPU check of this script on ``CPU_MLA``).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

RATIOS = {"1": 1.0, "0.3": 0.3, "1/8": 0.125, "1/16": 0.0625}

MODELS: Dict[str, Dict[str, Any]] = {
    "qwen3-4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "qwen3-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
    "deepseek-v2-lite": dict(hidden_size=2048, intermediate_size=10944, num_hidden_layers=27, num_attention_heads=16,
                             num_key_value_heads=16, q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128,
                             qk_rope_head_dim=64, v_head_dim=128, moe_intermediate_size=1408, n_routed_experts=64,
                             num_experts_per_tok=6, n_shared_experts=2, vocab_size=102400, tie_word_embeddings=False),
}
QWEN_VOCAB = 151936


def is_mla(name: str) -> bool:
    return "kv_lora_rank" in MODELS[name]


def shape(name: str, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The model's config keys with a spec's ``model_overrides`` applied."""
    if name not in MODELS:
        raise SystemExit(f"vllm_e2e: 'model': expected one of {sorted(MODELS)}, got {name!r}")
    m = dict(MODELS[name])
    m.update(overrides or {})
    return m


def vocab(name: str, overrides: Optional[Dict[str, Any]] = None) -> int:
    return int(shape(name, overrides).get("vocab_size", QWEN_VOCAB))


def model_dir(name: str, max_len: int, overrides: Optional[Dict[str, Any]] = None) -> str:
    """Write ``/tmp/<name>-dummy/config.json`` and return the folder."""
    m = shape(name, overrides)
    if is_mla(name):
        cfg = dict(architectures=["DeepseekV2ForCausalLM"], model_type="deepseek_v2", hidden_act="silu",
                   max_position_embeddings=max_len, initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True,
                   rope_theta=10000, dtype="bfloat16", torch_dtype="bfloat16", attention_bias=False,
                   bos_token_id=100000, eos_token_id=100001, topk_method="greedy", n_group=1, topk_group=1,
                   routed_scaling_factor=1.0, scoring_func="softmax", norm_topk_prob=False, moe_layer_freq=1, **m)
        cfg["first_k_dense_replace"] = cfg["num_hidden_layers"]  # dense MLPs: no fused-MoE kernels needed
    else:
        cfg = dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=QWEN_VOCAB, hidden_act="silu",
                   max_position_embeddings=max_len, initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True,
                   rope_parameters={"rope_type": "default", "rope_theta": 1000000}, rope_theta=1000000,
                   dtype="bfloat16", torch_dtype="bfloat16", attention_bias=False, attention_dropout=0.0,
                   use_sliding_window=False, sliding_window=None, bos_token_id=151643, eos_token_id=151645, **m)
        cfg["max_window_layers"] = cfg["num_hidden_layers"]
    path = f"/tmp/{name}-dummy"
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    return path


def gsa_inline(name: str, ratio_key: str, block_size: int = 128, overrides: Optional[Dict[str, Any]] = None,
               gsa_overrides: Optional[Dict[str, Any]] = None) -> dict:
    """The ``additional_config["gsa"]`` of a run: layers 0, 1 and the last dense, the others at
    the ratio (``"1"``: every layer scoring at 0.99999, which must equal dense; ``"bad"``: a
    chunk_size other than the block size, which must fail start-up)."""
    m = shape(name, overrides)
    layers = m["num_hidden_layers"]
    r = RATIOS.get(ratio_key, 0.125)
    ratios = [1.0 if (l in (0, 1, layers - 1) and ratio_key != "1") else r for l in range(layers)]
    if ratio_key == "1":  # ratio 1 everywhere would make every layer dense: keep them scoring at 0.99999
        ratios = [0.99999] * layers
    chunk = block_size // 2 if ratio_key == "bad" else block_size
    if is_mla(name):
        cfg = dict(model_name=f"deepseek-ai/{name}", num_hidden_layers=layers,
                   num_attention_heads=m["num_attention_heads"], is_mla=True, kv_lora_rank=m["kv_lora_rank"],
                   qk_rope_head_dim=m["qk_rope_head_dim"], hash_bits_kv_lora=512, hash_bits_qk_rope=64,
                   rope_score_weight=1.0, chunk_size=chunk, top_k_ratio_per_layer=ratios)
    else:
        cfg = dict(model_name=f"Qwen/{name}", num_hidden_layers=layers, num_attention_heads=m["num_attention_heads"],
                   num_key_value_heads=m["num_key_value_heads"], head_dim=m["head_dim"], hash_bits=128,
                   chunk_size=chunk, top_k_ratio_per_layer=ratios)
    cfg.update(gsa_overrides or {})
    return {"config": cfg, "log_every": 0}
