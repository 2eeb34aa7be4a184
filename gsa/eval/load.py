"""Load any causal LM for the accuracy harness (docs/accuracy.md, "Any model").

A model is named by one of:

* ``"smollm2"`` / ``"qwen"``: the packaged models of :mod:`gsa.eval.assets`, with
  their shipped GSA configs;
* a local Hugging Face folder (``config.json``, ``*.safetensors`` or
  ``pytorch_model*.bin``, tokenizer files);
* a ``.gguf`` file: dequantised once into a HF folder in the cache
  (:func:`gsa.eval.assets.convert_gguf`).

The GSA config of a folder or GGUF model is ``gsa_config`` (a JSON path, a mapping
or a :class:`GSAConfig`) or, by default, one derived from the model's HF config
(:func:`default_config`: 128 random bits, seed 0, 128-token blocks, ratio 0.3 with
the first two and the last layer dense). Either way it is checked against the
model (layers, heads, head dim) and **sliding-window layers are dense**: a config
that states per-layer ratios must say 1.0 there (else an error); one that does not
gets 1.0 there, and the load says so (``info["notes"]``).

The returned model carries ``model.gsa_eval_info``: ``{"source", "sliding_layers"
({layer: type}), "notes" (lines for the printed summary), "bos_ids"}``.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from gsa.config import GSAConfig, default_ratios

__all__ = ["PACKAGED", "resolve_model", "load_model", "default_config", "harmonise_config", "hf_sliding_layers",
           "bos_ids", "encode_text", "ModelSpecError"]

#: packaged model name -> (shipped config name, dtype of its cached HF folder)
PACKAGED = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct", "qwen": "Qwen/Qwen2.5-Coder-0.5B-Instruct"}
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
_GGUF_MAGIC = b"GGUF"


class ModelSpecError(ValueError):
    """A model name/path, or a GSA config for it, that the harness cannot use."""


def resolve_model(name: Union[str, os.PathLike]) -> Tuple[pathlib.Path, str]:
    """``name`` -> ``(HF folder, kind)`` with kind ``"packaged"``, ``"folder"`` or ``"gguf"``
    (GGUF files are converted into the cache on first use). Raises
    :class:`ModelSpecError` naming what is wrong with the path."""
    from gsa.eval import assets
    text = str(name)
    if text == "smollm2":
        return assets.smollm2_hf_dir(), "packaged"
    if text == "qwen":
        return assets.qwen_coder_hf_dir(), "packaged"
    p = pathlib.Path(os.path.expanduser(text))
    expected = ("expected 'smollm2', 'qwen', a Hugging Face model folder (config.json + weights + tokenizer) "
                "or a .gguf file")
    if not p.exists():
        raise ModelSpecError(f"model {text!r}: no such file or folder ({expected})")
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelSpecError(f"model {text!r}: the folder has no config.json ({expected})")
        if not any(next(p.glob(g), None) is not None for g in _WEIGHT_GLOBS):
            raise ModelSpecError(f"model {text!r}: the folder has no weights ({' or '.join(_WEIGHT_GLOBS)}; "
                                 f"{expected})")
        return p, "folder"
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic != _GGUF_MAGIC:
        raise ModelSpecError(f"model {text!r}: not a GGUF file (first bytes {magic!r}, a GGUF starts with "
                             f"{_GGUF_MAGIC!r}; {expected})")
    return assets.convert_gguf(p), "gguf"


def _text_config(hf_config):
    return hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config


def hf_sliding_layers(hf_config) -> Dict[int, str]:
    """``{layer: attention type}`` of the layers that are not full causal attention,
    read from the HF config as vLLM reads it (``layer_types``; else a positive
    ``sliding_window`` unless ``use_sliding_window`` is false)."""
    from gsa.integrations.vllm.settings import sliding_layers
    text = _text_config(hf_config)
    window = getattr(text, "sliding_window", None) if getattr(text, "use_sliding_window", True) else None
    return sliding_layers(int(text.num_hidden_layers), window, getattr(text, "layer_types", None))


def _shape(hf_config) -> Dict[str, int]:
    text = _text_config(hf_config)
    heads = int(text.num_attention_heads)
    return {"num_hidden_layers": int(text.num_hidden_layers), "num_attention_heads": heads,
            "num_key_value_heads": int(getattr(text, "num_key_value_heads", None) or heads),
            "head_dim": int(getattr(text, "head_dim", None) or text.hidden_size // heads)}


def default_config(hf_config, model_name: str, ratio: float = 0.3, bits: int = 128) -> GSAConfig:
    """The harness's GSA config for a model without one: shape from ``hf_config``,
    ``bits`` random bits (seed 0), 128-token blocks, ``ratio`` on every layer but the
    first two and the last (spec 8's shipped default); sliding layers are made dense
    by :func:`harmonise_config`."""
    shape = _shape(hf_config)
    return GSAConfig(model_name=model_name, hash_weight_type="random", seed=0, hash_bits=bits, chunk_size=128,
                     top_k_ratio_per_layer=default_ratios(shape["num_hidden_layers"], ratio), **shape)


def harmonise_config(cfg: GSAConfig, hf_config, ratios_stated: bool) -> Tuple[GSAConfig, List[str]]:
    """Check ``cfg`` against the model and make its sliding layers dense.

    ``ratios_stated``: the config spelled out ``top_k_ratio_per_layer``; then a
    sparse sliding layer is an error (GSA serves full-attention layers only), else
    such layers become dense. Returns ``(config, notes)``."""
    shape = _shape(hf_config)
    for key, want in shape.items():
        got = getattr(cfg, key)
        if got is not None and got != want:
            raise ModelSpecError(f"GSA config for {cfg.model_name}: key '{key}': expected {want} (the model's "
                                 f"value), got {got}")
    sliding = hf_sliding_layers(hf_config)
    notes: List[str] = []
    ratios = list(cfg.top_k_ratio_per_layer)
    bad = [l for l in sorted(sliding) if ratios[l] < 1]
    if bad and ratios_stated:
        raise ModelSpecError(f"GSA config for {cfg.model_name}: key 'top_k_ratio_per_layer': layers {bad} are "
                             f"{sliding[bad[0]]} (GSA serves full-attention layers only): expected 1.0 there, got "
                             f"{[ratios[l] for l in bad]}")
    if bad:
        reuse = list(cfg.top_k_index_reuse)
        for l in bad:
            ratios[l] = 1.0
            reuse[l] = -1
        reuse = [-1 if j in bad else j for j in reuse]  # a layer reusing a now-dense one scores itself
        cfg = cfg.replace(top_k_ratio_per_layer=ratios, top_k_index_reuse=reuse)
    if sliding:
        notes.append(f"{len(sliding)} of {len(ratios)} layers are sliding-window/non-full attention "
                     f"({_ranges(sorted(sliding))}): dense (GSA serves full-attention layers only)"
                     + (f"; the config had no per-layer ratios, so {len(bad)} of them were set to 1.0" if bad else ""))
    sparse = [l for l, r in enumerate(cfg.top_k_ratio_per_layer) if r < 1]
    notes.append(f"sparse layers: {_ranges(sparse) or 'none'} (ratio {min(cfg.top_k_ratio_per_layer):.4g}), "
                 f"{cfg.hash_bits}-bit {cfg.hash_weight_type} codes, {cfg.chunk_size}-token blocks")
    return cfg, notes


def _ranges(xs: List[int]) -> str:
    out, i = [], 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ", ".join(out)


def _read_gsa_config(gsa_config) -> Tuple[GSAConfig, bool]:
    """``(config, whether it states top_k_ratio_per_layer)``."""
    if isinstance(gsa_config, GSAConfig):
        return gsa_config, True
    if isinstance(gsa_config, Mapping):
        return GSAConfig.from_dict(gsa_config), "top_k_ratio_per_layer" in gsa_config
    path = pathlib.Path(os.path.expanduser(str(gsa_config)))
    if not path.is_file():
        raise ModelSpecError(f"gsa_config: expected a GSA config JSON file, got {str(gsa_config)!r} (no such file)")
    raw = json.loads(path.read_text())
    return GSAConfig.load(path), isinstance(raw, dict) and "top_k_ratio_per_layer" in raw


def bos_ids(tok) -> List[int]:
    """The special tokens the tokenizer puts *before* a text (its BOS, when it adds
    one): the leading ids of ``tok(x)`` that ``tok(x, add_special_tokens=False)``
    lacks; else ``[bos_token_id]`` when the tokenizer declares ``add_bos_token``."""
    probe = "Hello"
    with_sp = list(tok(probe, add_special_tokens=True).input_ids)
    plain = list(tok(probe, add_special_tokens=False).input_ids)
    lead: List[int] = []
    for i in range(len(with_sp) - len(plain) + 1):
        if with_sp[i:i + len(plain)] == plain:
            lead = with_sp[:i]
            break
    if not lead and getattr(tok, "add_bos_token", False) and getattr(tok, "bos_token_id", None) is not None:
        lead = [int(tok.bos_token_id)]
    return lead


def encode_text(tok, text: str, n_tokens: int, bos: bool = True) -> torch.Tensor:
    """``int64 [n_tokens]``: the tokenizer's leading special tokens (:func:`bos_ids`,
    with ``bos``) then the first tokens of ``text``. Raises ``ValueError`` when the
    text is too short."""
    lead = bos_ids(tok) if bos else []
    need = n_tokens - len(lead)
    ids = tok(text[: max(need, 1) * 8], add_special_tokens=False).input_ids
    if len(ids) < need:
        raise ValueError(f"text too short: {len(ids)} tokens, need {need}")
    return torch.tensor(lead + list(ids[:need]), dtype=torch.long)


def load_model(name: Union[str, os.PathLike] = "smollm2", device: str = "cpu", dtype: torch.dtype = torch.float32,
               gsa_config: Optional[Any] = None, verbose: bool = False):
    """``(model, tokenizer, GSAConfig)`` for a packaged name, HF folder or GGUF file
    (module docstring). The model runs with the harness's attention hook
    (:mod:`gsa.eval.model`); ``model.gsa_eval_info`` holds the sliding layers, the
    BOS ids and the notes (printed with ``verbose``)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from gsa.eval.model import ATTN_NAME, _register

    _register()
    path, kind = resolve_model(name)
    hf_config = AutoConfig.from_pretrained(str(path))
    if gsa_config is not None:
        cfg, stated = _read_gsa_config(gsa_config)
    elif kind == "packaged":
        cfg, stated = GSAConfig.for_model(PACKAGED[str(name)]), True
    else:
        cfg, stated = default_config(hf_config, str(getattr(hf_config, "_name_or_path", "") or path.name)), False
    cfg, notes = harmonise_config(cfg, hf_config, stated)
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # noqa: BLE001 - one clear message whatever the tokenizer loader raised
        raise ModelSpecError(f"model {str(name)!r}: could not load its tokenizer from {path}: "
                             f"{type(e).__name__}: {e}") from e
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, attn_implementation=ATTN_NAME)
    model.to(device).eval()
    bos = bos_ids(tok)
    notes.insert(0, f"model {name} ({kind}: {path}); BOS {bos if bos else 'none'} (as the tokenizer adds it)")
    model.gsa_eval_info = {"source": str(path), "kind": kind, "sliding_layers": hf_sliding_layers(hf_config),
                           "notes": notes, "bos_ids": bos}
    if verbose:
        for line in notes:
            print(f"[gsa eval] {line}", flush=True)
    return model, tok, cfg
