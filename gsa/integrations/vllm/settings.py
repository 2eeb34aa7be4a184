"""Where the vLLM plugin's GSA settings come from, and their checks against the model.

Sources, first match wins (docs/vllm.md):

1. vLLM's ``additional_config`` (``LLM(..., additional_config={"gsa": ...})`` or
   ``vllm serve ... --additional-config '{"gsa": ...}'``), key ``"gsa"``:

   * a path to a GSA config JSON file;
   * a mapping of GSA config keys (an inline config);
   * ``true`` or ``"auto"``: the shipped config for the served model, by name;
   * ``false``: GSA off for this engine, whatever the environment says;
   * a mapping with ``"config"`` (one of the above) and plugin options:
     ``"log_every"`` (steps between counter log lines, 0 = never).

2. the environment: ``GSA_VLLM_CONFIG`` = a path, or ``auto`` / ``1`` for the
   shipped config by model name; ``GSA_VLLM_LOG_EVERY`` = steps between log lines.

Neither set: the plugin stays inert (vLLM runs exactly as without it).

Every problem is a :class:`GSAVllmConfigError` raised while the engine starts
(when vLLM builds the attention layers), naming the setting, expected vs got.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence

from gsa.config import GSAConfig, GSAConfigError

__all__ = ["GSAVllmConfigError", "PluginSettings", "read_settings", "check_against_model", "sliding_layers",
           "check_sliding_layers"]

ENV_CONFIG = "GSA_VLLM_CONFIG"
ENV_LOG_EVERY = "GSA_VLLM_LOG_EVERY"
DEFAULT_LOG_EVERY = 100
_AUTO = ("auto", "1", "true", "on", "yes")
_OFF = ("", "0", "false", "off", "no")


class GSAVllmConfigError(GSAConfigError):
    """The GSA settings given to vLLM are invalid or do not fit the served model."""


def _fail(where: str, expected: str, got: Any) -> None:
    raise GSAVllmConfigError(f"GSA vLLM plugin: {where}: expected {expected}, got {got!r}")


@dataclass(frozen=True)
class PluginSettings:
    """Resolved settings of one engine: the GSA config and plugin options."""

    config: GSAConfig
    log_every: int
    origin: str  # where the config came from, for log lines and errors


def _model_names(model_config: Any) -> list:
    names = []
    for attr in ("served_model_name", "model", "tokenizer"):
        v = getattr(model_config, attr, None)
        if isinstance(v, (list, tuple)):
            names.extend(str(x) for x in v)
        elif v:
            names.append(str(v))
    hf = getattr(model_config, "hf_config", None)
    for attr in ("_name_or_path", "name_or_path"):
        v = getattr(hf, attr, None)
        if v:
            names.append(str(v))
    out = []
    for n in names:
        for cand in (n.rstrip("/"), os.path.basename(n.rstrip("/"))):
            if cand and cand not in out:
                out.append(cand)
    return out


def _shipped_for(model_config: Any, where: str) -> GSAConfig:
    names = _model_names(model_config)
    errors = []
    for n in names:
        try:
            return GSAConfig.for_model(n)
        except GSAConfigError as exc:
            errors.append(str(exc))
    from gsa.config import known_models

    raise GSAVllmConfigError(
        f"GSA vLLM plugin: {where}: no shipped GSA config matches the served model (tried {names}); "
        f"known models: {', '.join(known_models())}. Pass a config file path instead, or name the model "
        "with --served-model-name")


def _resolve(spec: Any, model_config: Any, where: str) -> tuple:
    if spec is True or (isinstance(spec, str) and spec.strip().lower() in _AUTO):
        return _shipped_for(model_config, where), f"shipped config for {_model_names(model_config)[:1]}"
    if isinstance(spec, Mapping):
        try:
            return GSAConfig.from_dict(spec, source=None), f"inline config ({where})"
        except GSAConfigError as exc:
            raise GSAVllmConfigError(f"GSA vLLM plugin: {where}: {exc}") from None
    if isinstance(spec, (str, os.PathLike)) and str(spec).strip():
        try:
            return GSAConfig.load(os.path.expanduser(str(spec))), str(spec)
        except GSAConfigError as exc:
            raise GSAVllmConfigError(f"GSA vLLM plugin: {where}: {exc}") from None
    _fail(where, "a GSA config path, a mapping of config keys, true/'auto' (shipped config by model name) or false", spec)


def _log_every(value: Any, where: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if isinstance(value, bool) or n < 0:
        _fail(where, "an integer >= 0 (0: never log)", value)
    return n


def read_settings(additional_config: Optional[Mapping[str, Any]], model_config: Any,
                  environ: Optional[Mapping[str, str]] = None) -> Optional[PluginSettings]:
    """The engine's GSA settings, or ``None`` when GSA is not enabled for it."""
    env = os.environ if environ is None else environ
    log_every = _log_every(env.get(ENV_LOG_EVERY, DEFAULT_LOG_EVERY), ENV_LOG_EVERY)
    extra = additional_config if isinstance(additional_config, Mapping) else {}
    if "gsa" in extra:
        spec = extra["gsa"]
        where = "additional_config['gsa']"
        if spec is False or spec is None:
            return None
        if isinstance(spec, Mapping) and "config" in spec:
            unknown = sorted(set(spec) - {"config", "log_every"})
            if unknown:
                _fail(where, "only the keys 'config' and 'log_every' next to 'config'", unknown)
            if "log_every" in spec:
                log_every = _log_every(spec["log_every"], where + "['log_every']")
            spec, where = spec["config"], where + "['config']"
            if spec is False or spec is None:
                return None
        cfg, origin = _resolve(spec, model_config, where)
        return PluginSettings(cfg, log_every, origin)
    raw = env.get(ENV_CONFIG, "").strip()
    if raw.lower() in _OFF:
        return None
    cfg, origin = _resolve(raw, model_config, ENV_CONFIG)
    return PluginSettings(cfg, log_every, origin)


def check_against_model(cfg: GSAConfig, *, num_layers: int, num_heads: int, num_kv_heads: int,
                        head_dim: int, block_size: int, use_mla: bool = False,
                        sliding_window: Optional[int] = None, layer_types: Optional[Sequence[str]] = None,
                        origin: str = "GSA config") -> None:
    """Reject a config that does not describe the served model (totals, before TP).

    MLA (``use_mla``): ``head_dim`` is vLLM's MLA head size ``kv_lora_rank +
    qk_rope_head_dim``; ``num_kv_heads`` is not compared (the cache holds one latent
    head). Sliding windows: ``layer_types`` (the HF config's per-layer list, e.g.
    Gemma 3 / gpt-oss) and ``sliding_window``: see :func:`check_sliding_layers`.
    """
    where = f"GSA vLLM plugin: {origin} (model {cfg.model_name})"

    def bad(key: str, model_value: Any, cfg_value: Any) -> None:
        raise GSAVllmConfigError(f"{where}: key '{key}': expected {model_value} (the served model's value), got {cfg_value!r}")

    if cfg.is_mla != bool(use_mla):
        bad("is_mla", bool(use_mla), cfg.is_mla)
    if cfg.num_hidden_layers != num_layers:
        bad("num_hidden_layers", num_layers, cfg.num_hidden_layers)
    if cfg.num_attention_heads != num_heads:
        bad("num_attention_heads", num_heads, cfg.num_attention_heads)
    if not cfg.is_mla and cfg.num_key_value_heads != num_kv_heads:
        bad("num_key_value_heads", num_kv_heads, cfg.num_key_value_heads)
    if cfg.head_dim != head_dim:
        bad("head_dim", head_dim, cfg.head_dim)
    if cfg.chunk_size != block_size:
        raise GSAVllmConfigError(
            f"{where}: key 'chunk_size': expected the vLLM KV cache block size {block_size} (GSA selects whole "
            f"KV blocks), got {cfg.chunk_size}; start vLLM with block_size={cfg.chunk_size} "
            f"(--block-size {cfg.chunk_size})")
    check_sliding_layers(cfg, sliding_layers(num_layers, sliding_window, layer_types), origin)


#: HF ``layer_types`` entries of full (global) causal attention: the only layers GSA may make sparse
FULL_ATTENTION_TYPES = ("full_attention",)


def sliding_layers(num_layers: int, sliding_window: Optional[int],
                   layer_types: Optional[Sequence[str]] = None) -> Dict[int, str]:
    """The layers GSA must leave dense, ``{layer: what it is}``, from the HF config.

    ``layer_types`` (Gemma 2/3, gpt-oss, Qwen2/3, Mistral with transformers >= 4.53):
    every entry other than ``"full_attention"`` (``"sliding_attention"``,
    ``"chunked_attention"``, ``"linear_attention"``, ...). Without it, a positive
    ``sliding_window`` applies to every layer (how vLLM reads such a config).
    """
    if layer_types is not None:
        if len(layer_types) != num_layers:
            _fail("HF config layer_types", f"{num_layers} entries (num_hidden_layers)", len(layer_types))
        windowed = sliding_window is not None and int(sliding_window) > 0
        # vLLM's disable_sliding_window clears sliding_window: "sliding_attention" layers then attend fully
        return {l: str(t) for l, t in enumerate(layer_types)
                if t not in FULL_ATTENTION_TYPES and (windowed or t != "sliding_attention")}
    if sliding_window is not None and int(sliding_window) > 0:
        return {l: "sliding_attention" for l in range(num_layers)}
    return {}


def check_sliding_layers(cfg: GSAConfig, dense_layers: Mapping[int, str], origin: str = "GSA config",
                         window: Optional[int] = None) -> None:
    """GSA selects blocks only on full-attention layers: every layer of ``dense_layers``
    (``{layer: its attention type}``) must be dense (ratio >= 1) in the config."""
    ratios = cfg.top_k_ratio_per_layer
    for l in sorted(dense_layers):
        if l < len(ratios) and ratios[l] < 1:
            w = f", window {window}" if window is not None else ""
            raise GSAVllmConfigError(
                f"GSA vLLM plugin: {origin} (model {cfg.model_name}): key 'top_k_ratio_per_layer[{l}]': layer {l} is "
                f"{dense_layers[l]}{w} (GSA serves only full-attention layers): expected 1.0 (dense), got {ratios[l]!r}")
