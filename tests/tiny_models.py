"""Tiny random-weight Hugging Face model folders for engine tests (no download).

transformers builds any architecture from a config with random weights; saved
with ``save_pretrained`` the folder is a model vLLM loads like a real one.
Engines are started with ``skip_tokenizer_init=True`` and token-id prompts, so
no tokenizer is needed. Folders are cached per config under ``root`` (the
weights are seeded, so a folder is the same model every time).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict

import torch


def _build(arch: str, config: Dict[str, Any], root: str, seed: int) -> str:
    import transformers

    key = hashlib.sha256(json.dumps([arch, config, seed, transformers.__version__], sort_keys=True).encode()).hexdigest()[:12]
    path = os.path.join(root, f"{arch}-{key}")
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    cfg_cls = {"DeepseekV2ForCausalLM": transformers.DeepseekV2Config,
               "Gemma3ForCausalLM": transformers.Gemma3TextConfig}[arch]
    cfg = cfg_cls(**config)
    cfg.architectures = [arch]
    torch.manual_seed(seed)
    model = getattr(transformers, arch)(cfg).to(torch.float32)
    with torch.no_grad():  # larger-than-default weights: attention far from uniform, logits far apart
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "embed" not in name:
                p.normal_(0.0, 1.5 / p.shape[-1] ** 0.5)
    tmp = path + f".tmp{os.getpid()}"
    model.save_pretrained(tmp)
    os.replace(tmp, path)
    return path


def deepseek_v2_tiny(root: str, num_layers: int = 3, seed: int = 0) -> str:
    """A DeepSeek-V2-architecture model (MLA, dense MLPs): 4 heads, kv_lora_rank 512 and
    qk_rope_head_dim 64 (vLLM's CPU MLA decode kernel is compiled for 576 = 512 + 64 only),
    hidden size 128, vocabulary 512."""
    return _build("DeepseekV2ForCausalLM", dict(
        vocab_size=512, hidden_size=128, intermediate_size=256, moe_intermediate_size=64,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=4,
        q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=32, qk_rope_head_dim=64, v_head_dim=32,
        first_k_dense_replace=num_layers, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
        max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    ), root, seed)


def gemma3_tiny(root: str, layer_types=("sliding_attention", "full_attention", "sliding_attention", "full_attention"),
                sliding_window: int = 64, seed: int = 0) -> str:
    """A Gemma-3-architecture text model mixing sliding-window and full-attention layers
    (``layer_types``): 4 query heads, 2 KV heads, head_dim 64, hidden size 128, vocabulary 512."""
    return _build("Gemma3ForCausalLM", dict(
        vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=len(layer_types),
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, query_pre_attn_scalar=64,
        layer_types=list(layer_types), sliding_window=sliding_window, max_position_embeddings=4096,
        bos_token_id=2, eos_token_id=1, pad_token_id=0,
    ), root, seed)


def byte_tokenizer(path: str, add_bos: bool) -> None:
    """Save a byte-level tokenizer (ids 0 <pad>, 1 <eos>, 2 <bos>, then the 256 bytes)
    into ``path``; with ``add_bos`` it puts ``<bos>`` before every text, as Llama /
    Gemma tokenizers do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2}
    for c in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[c] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    if add_bos:
        tk.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                          special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   add_bos_token=add_bos)
    fast.save_pretrained(path)


def hf_tiny(root: str, arch: str, config: Dict[str, Any], add_bos: bool = True, seed: int = 0) -> str:
    """A random-weight HF folder of any transformers architecture ``arch`` (e.g.
    ``"Gemma2ForCausalLM"``) built from ``config`` (its config class's keyword
    arguments), with a :func:`byte_tokenizer`: a model the eval harness loads by path."""
    import transformers

    key = hashlib.sha256(json.dumps([arch, config, seed, add_bos, transformers.__version__],
                                    sort_keys=True).encode()).hexdigest()[:12]
    path = os.path.join(root, f"{arch}-{key}")
    if os.path.exists(os.path.join(path, "tokenizer_config.json")):
        return path
    model_cls = getattr(transformers, arch)
    cfg = model_cls.config_class(**config)
    cfg.architectures = [arch]
    torch.manual_seed(seed)
    model = model_cls(cfg).to(torch.float32)
    with torch.no_grad():  # larger-than-default weights: attention far from uniform
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "embed" not in name:
                p.normal_(0.0, 1.5 / p.shape[-1] ** 0.5)
    tmp = path + f".tmp{os.getpid()}"
    model.save_pretrained(tmp)
    byte_tokenizer(tmp, add_bos)
    os.replace(tmp, path)
    return path
