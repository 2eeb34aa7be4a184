"""GSA configuration: one frozen, validated record per model (docs/config.md).

The JSON format is a superset of the UCM/HATA ``GSAOnDeviceConfig`` keys: a
file written by the original implementation loads here (its runtime-only
``vllm_hash_attention_*`` keys are accepted only with their inert defaults),
and every key this package accepts is read by code (``gsa.weights``,
``gsa.policy``, ``gsa.sparse``) or rejected: nothing is silently ignored.

>>> cfg = GSAConfig.for_model("Qwen3-4B")
>>> cfg.top_k_ratio_per_layer[:3]
(1.0, 1.0, 0.3)
>>> GSAConfig.load("configs/qwen3-4b.json").save("/tmp/copy.json")
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from gsa.validate import MAX_FORCED_BLOCKS

__all__ = ["GSAConfig", "GSAConfigError", "config_errors", "known_models", "shipped_config_paths", "default_ratios"]

PathLike = Union[str, "os.PathLike[str]"]

# HATA/UCM keys that only their vLLM integration read. Accepted only with their
# inert defaults so that files written by the original load unchanged; any other
# value would be a setting we would silently ignore, so it is an error.
_INERT_LEGACY_KEYS = {
    "vllm_hash_attention_reduction_head_num": (None,),
    "vllm_hash_attention_rollback_layers": (None, []),
    "vllm_hash_attention_skip_layers": (None, []),
}
# Original key -> our key with the same meaning.
_ALIASES = {"vllm_hash_attention_topk": "top_k_tokens"}

_MLA_KEYS = ("kv_lora_rank", "qk_rope_head_dim", "hash_bits_kv_lora", "hash_bits_qk_rope")
_MLA_OPTIONAL = ("hash_weight_kv_lora", "hash_weight_qk_rope", "rope_score_weight")


class GSAConfigError(ValueError):
    """An invalid GSA config: names the file (if any), the key, expected vs got."""


def default_ratios(num_layers: int, ratio: float = 0.3) -> List[float]:
    """The shipped default: first two and last layers dense (1.0), ``ratio`` elsewhere."""
    dense = {0, 1, num_layers - 1}
    return [1.0 if l in dense else ratio for l in range(num_layers)]


_REQUIRED_KEYS = ("model_name", "num_hidden_layers", "num_attention_heads")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


@dataclass(frozen=True)
class GSAConfig:
    """A validated GSA config. Construct with :meth:`load`, :meth:`from_dict`,
    :meth:`for_model` or directly (keyword arguments = JSON keys); every path
    validates. Lists are stored as tuples (the record is immutable and hashable).

    Derived values: :attr:`cache_heads`, :attr:`code_bytes`, :attr:`rope_bytes`.
    See docs/config.md for every key's meaning, default, rule and reader.
    """

    model_name: str
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: Optional[int] = None
    head_dim: Optional[int] = None
    is_mla: bool = False
    model_aliases: Tuple[str, ...] = ()
    hash_weight_type: str = "random"
    hash_weight: Optional[str] = None
    seed: Optional[int] = None
    hash_bits: Optional[int] = None
    chunk_size: int = 128
    chunk_repre_method: str = "max"
    top_k_ratio_per_layer: Optional[Tuple[float, ...]] = None
    top_k_tokens: Optional[int] = None
    top_k_index_reuse: Optional[Tuple[int, ...]] = None
    must_select_blocks: Tuple[int, ...] = (0, -2, -1)
    gpu_seq_len_threshold: int = 2048
    gpu_concurrency_threshold: int = 1
    npu_seq_len_threshold: int = 2048
    npu_concurrency_threshold: int = 1
    kv_lora_rank: Optional[int] = None
    qk_rope_head_dim: Optional[int] = None
    hash_bits_kv_lora: Optional[int] = None
    hash_bits_qk_rope: Optional[int] = None
    hash_weight_kv_lora: Optional[str] = None
    hash_weight_qk_rope: Optional[str] = None
    rope_score_weight: Optional[float] = None
    #: spec 13 (centred key codes): a safetensors bundle with per-layer key means
    #: (``layers.{l}.key_mean [Hkv, D]``) or thresholds (``layers.{l}.hash_threshold [Hkv, R]``)
    hash_centre: Optional[str] = None
    #: file the config came from (not a key): errors name it, relative weight paths resolve against it
    source: Optional[str] = field(default=None, compare=False, repr=False)

    # ------------------------------------------------------------------ validation
    def _fail(self, key: str, expected: str, got: Any) -> None:
        where = f"GSA config {self.source}" if self.source else "GSA config"
        raise GSAConfigError(f"{where}: key '{key}': expected {expected}, got {got!r}")

    def _set(self, key: str, value: Any) -> None:
        object.__setattr__(self, key, value)

    def _int(self, key: str, lo: int = 1, optional: bool = False) -> None:
        v = getattr(self, key)
        if v is None and optional:
            return
        if not _is_int(v) or v < lo:
            self._fail(key, f"an integer >= {lo}", v)

    def _bits(self, key: str) -> None:
        v = getattr(self, key)
        if not _is_int(v) or v <= 0 or v % 32:
            self._fail(key, "a positive multiple of 32 (codes are packed in 32-bit words)", v)

    def _path(self, key: str) -> None:
        v = getattr(self, key)
        if v is not None and (not isinstance(v, (str, os.PathLike)) or not str(v)):
            self._fail(key, "a non-empty path string", v)
        if v is not None:
            self._set(key, str(v))

    def __post_init__(self) -> None:
        if not isinstance(self.model_name, str) or not self.model_name.strip():
            self._fail("model_name", "a non-empty string", self.model_name)
        aliases = self.model_aliases
        if isinstance(aliases, str) or not isinstance(aliases, (list, tuple)) or not all(
            isinstance(a, str) and a.strip() for a in aliases
        ):
            self._fail("model_aliases", "a list of non-empty strings", aliases)
        self._set("model_aliases", tuple(aliases))
        if not isinstance(self.is_mla, bool):
            self._fail("is_mla", "true or false", self.is_mla)
        self._int("num_hidden_layers")
        self._int("num_attention_heads")
        self._validate_shape()
        self._validate_weights()
        self._int("chunk_size")
        if self.chunk_repre_method not in ("max", "mean"):
            self._fail("chunk_repre_method", "'max' or 'mean' (spec 4; the original's 'min'/'sum' are not part of the contract)",
                       self.chunk_repre_method)
        self._validate_layers()
        self._int("top_k_tokens", optional=True)
        if self.top_k_tokens is not None and self.top_k_tokens % self.chunk_size:
            self._fail("top_k_tokens", f"a multiple of chunk_size = {self.chunk_size} (the budget is top_k_tokens // chunk_size blocks)",
                       self.top_k_tokens)
        msb = self.must_select_blocks
        if isinstance(msb, (str, bytes)) or not isinstance(msb, (list, tuple)) or not all(_is_int(m) for m in msb):
            self._fail("must_select_blocks", "a list of integers (block m, or n_blocks + m when negative)", msb)
        if not all(-2**31 <= m < 2**31 for m in msb) or len(set(msb)) > MAX_FORCED_BLOCKS:
            self._fail("must_select_blocks", f"int32 entries, at most {MAX_FORCED_BLOCKS} distinct (spec 5)", msb)
        self._set("must_select_blocks", tuple(msb))
        self._check_score_bound()
        for key in ("gpu_seq_len_threshold", "gpu_concurrency_threshold", "npu_seq_len_threshold", "npu_concurrency_threshold"):
            self._int(key)
        self._path("hash_centre")
        if self.hash_centre is not None and self.is_mla:
            self._fail("hash_centre", "no value for an MLA model (spec 13: centred codes are GQA only)", self.hash_centre)

    def _check_score_bound(self) -> None:
        """Spec 4: token scores are int32 on every backend: 16*Hq*R_main + 16w*Hq*R_rope < 2**31."""
        hq = self.num_attention_heads
        if self.is_mla:
            bound = 16 * hq * self.hash_bits_kv_lora + int(16 * self.rope_score_weight) * hq * self.hash_bits_qk_rope
        else:
            bound = 16 * hq * self.hash_bits
        if bound >= 2**31:
            self._fail("num_attention_heads", f"16 * heads * hash bits < 2**31 (token scores are int32, spec 4); "
                       f"16*Hq*R = {bound}", hq)

    def _validate_shape(self) -> None:
        if not self.is_mla:
            for key in _MLA_KEYS + _MLA_OPTIONAL:
                if getattr(self, key) is not None:
                    self._fail(key, "no value: MLA keys are only allowed with is_mla = true", getattr(self, key))
            self._int("num_key_value_heads")
            self._int("head_dim")
            if self.num_attention_heads % self.num_key_value_heads:
                self._fail("num_attention_heads", f"a multiple of num_key_value_heads = {self.num_key_value_heads}",
                           self.num_attention_heads)
            if self.hash_bits is None:
                self._set("hash_bits", 128)
            self._bits("hash_bits")
            return
        for key in _MLA_KEYS:
            if getattr(self, key) is None:
                self._fail(key, "a value: required when is_mla = true", None)
        self._int("kv_lora_rank")
        self._int("qk_rope_head_dim")
        self._bits("hash_bits_kv_lora")
        self._bits("hash_bits_qk_rope")
        # head_dim / hash_bits / num_key_value_heads are implied for MLA; the
        # original format writes them, so accept them only when they agree.
        derived = {
            "head_dim": (self.kv_lora_rank + self.qk_rope_head_dim, "kv_lora_rank + qk_rope_head_dim"),
            "hash_bits": (self.hash_bits_kv_lora + self.hash_bits_qk_rope, "hash_bits_kv_lora + hash_bits_qk_rope"),
            "num_key_value_heads": (1, "1 (MLA caches one latent head)"),
        }
        for key, (value, what) in derived.items():
            got = getattr(self, key)
            if got is not None and got != value:
                self._fail(key, f"{value} = {what}, or no value", got)
            self._set(key, value)
        w = 1.0 if self.rope_score_weight is None else self.rope_score_weight
        if not _is_num(w) or not (0 <= w <= 16) or w * 16 != int(w * 16):
            self._fail("rope_score_weight", "a multiple of 1/16 in [0, 16] (spec 4, amendment 1.1)", w)
        self._set("rope_score_weight", float(w))

    def _validate_weights(self) -> None:
        for key in ("hash_weight", "hash_weight_kv_lora", "hash_weight_qk_rope"):
            self._path(key)
        kind = self.hash_weight_type
        if kind == "fixed":
            self._fail("hash_weight_type", "'random' or 'file' (inline 'fixed' matrices are not supported: "
                       "save them with gsa.weights.save_hash_weights and use 'file')", kind)
        if kind not in ("random", "file", "mlp"):
            self._fail("hash_weight_type", "'random', 'file' or 'mlp'", kind)
        split = (self.hash_weight_kv_lora, self.hash_weight_qk_rope)
        if kind == "random":
            for key in ("hash_weight", "hash_weight_kv_lora", "hash_weight_qk_rope"):
                if getattr(self, key) is not None:
                    self._fail(key, "no value: weight files are only read with hash_weight_type = 'file' or 'mlp'",
                               getattr(self, key))
            if self.seed is None:
                self._set("seed", 0)
            self._int("seed", lo=0)
            return
        if self.seed is not None:
            self._fail("seed", "no value: the seed is only used with hash_weight_type = 'random'", self.seed)
        if kind == "mlp":  # spec 12: a bundle of per-head key and query MLPs
            if self.is_mla:
                self._fail("hash_weight_type", "'random' or 'file' for MLA (the MLP encoder, spec 12, is GQA only)", kind)
            if self.hash_weight is None:
                self._fail("hash_weight", "a path to an MLP hash bundle (.safetensors; required with "
                           "hash_weight_type = 'mlp'; `gsa train-hash --method mlp` writes one)", None)
            return
        if not self.is_mla:
            if self.hash_weight is None:
                self._fail("hash_weight", "a path (required with hash_weight_type = 'file')", None)
            return
        if self.hash_weight is not None and any(s is not None for s in split):
            self._fail("hash_weight", "either hash_weight (one bundle) or hash_weight_kv_lora + hash_weight_qk_rope, not both",
                       self.hash_weight)
        if self.hash_weight is None:
            for key, v in zip(("hash_weight_kv_lora", "hash_weight_qk_rope"), split):
                if v is None:
                    self._fail(key, "a path (MLA with hash_weight_type = 'file' needs hash_weight, or both "
                               "hash_weight_kv_lora and hash_weight_qk_rope)", None)

    def _validate_layers(self) -> None:
        n = self.num_hidden_layers
        ratios = default_ratios(n) if self.top_k_ratio_per_layer is None else self.top_k_ratio_per_layer
        if isinstance(ratios, (str, bytes)) or not isinstance(ratios, (list, tuple)):
            self._fail("top_k_ratio_per_layer", f"a list of {n} numbers", ratios)
        if len(ratios) != n:
            self._fail("top_k_ratio_per_layer", f"{n} entries (num_hidden_layers)", f"{len(ratios)} entries")
        for l, r in enumerate(ratios):
            if not _is_num(r) or r <= 0:
                self._fail("top_k_ratio_per_layer", f"numbers > 0 (>= 1 means dense); entry {l}", r)
        self._set("top_k_ratio_per_layer", tuple(float(r) for r in ratios))
        reuse = [-1] * n if self.top_k_index_reuse is None else self.top_k_index_reuse
        if isinstance(reuse, (str, bytes)) or not isinstance(reuse, (list, tuple)):
            self._fail("top_k_index_reuse", f"a list of {n} integers", reuse)
        if len(reuse) != n:
            self._fail("top_k_index_reuse", f"{n} entries (num_hidden_layers)", f"{len(reuse)} entries")
        reuse = tuple(reuse)
        for l, j in enumerate(reuse):
            if not _is_int(j) or j < -1:
                self._fail("top_k_index_reuse", f"-1 or a layer index; entry {l}", j)
            if j == -1:
                continue
            dense_l = self.top_k_ratio_per_layer[l] >= 1
            if dense_l:
                self._fail("top_k_index_reuse", f"-1 for layer {l}: it is dense (top_k_ratio_per_layer[{l}] >= 1) "
                           "and selects nothing", j)
            if j >= l:
                self._fail("top_k_index_reuse", f"an earlier layer (j < {l}) for layer {l} (spec 8)", j)
            if reuse[j] != -1:
                self._fail("top_k_index_reuse", f"a layer that scores itself for layer {l} (spec 8), but layer {j} "
                           f"reuses layer {reuse[j]}", j)
            if self.top_k_ratio_per_layer[j] >= 1:
                self._fail("top_k_index_reuse", f"a sparse layer for layer {l} (spec 8), but layer {j} is dense", j)
        self._set("top_k_index_reuse", reuse)

    # ------------------------------------------------------------------ derived
    @property
    def cache_heads(self) -> int:
        """Heads of the key hash cache: ``num_key_value_heads`` (GQA) or 1 (MLA)."""
        return 1 if self.is_mla else self.num_key_value_heads

    @property
    def code_bytes(self) -> int:
        """Bytes per key code: ``hash_bits / 8`` (MLA: lora + rope bits / 8)."""
        return self.hash_bits // 8

    @property
    def rope_bytes(self) -> int:
        """Trailing rope bytes of an MLA code (``hash_bits_qk_rope / 8``); 0 for GQA."""
        return self.hash_bits_qk_rope // 8 if self.is_mla else 0

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Optional[PathLike] = None) -> "GSAConfig":
        """Build from a JSON-style mapping. ``null`` values count as absent;
        unknown keys are an error with a did-you-mean suggestion."""
        where = f"GSA config {source}" if source else "GSA config"
        if not isinstance(data, Mapping):
            raise GSAConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
        data = dict(data)
        for old, new in _ALIASES.items():
            if old in data:
                v = data.pop(old)
                if v is not None:
                    if data.get(new) is not None and data[new] != v:
                        raise GSAConfigError(f"{where}: key '{old}': expected the same value as '{new}' "
                                             f"({data[new]!r}), got {v!r}")
                    data[new] = v
        for key, inert in _INERT_LEGACY_KEYS.items():
            if key in data:
                v = data.pop(key)
                if v not in inert:
                    raise GSAConfigError(f"{where}: key '{key}': expected {' or '.join(map(repr, inert))} "
                                         f"(this vLLM-integration setting of the original is not supported), got {v!r}")
        known = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
        unknown = [k for k in data if k not in known]
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise GSAConfigError(f"{where}: unknown key '{key}'{hint}; known keys: {', '.join(known)}")
        missing = [k for k in _REQUIRED_KEYS if data.get(k) is None]
        if missing:
            raise GSAConfigError(f"{where}: key '{missing[0]}': expected a value (required), got None")
        kwargs = {k: v for k, v in data.items() if v is not None}
        return cls(source=None if source is None else str(source), **kwargs)

    @classmethod
    def load(cls, path: PathLike) -> "GSAConfig":
        """Read and validate a JSON config file."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise GSAConfigError(f"GSA config {p}: cannot read: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GSAConfigError(f"GSA config {p}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        return cls.from_dict(data, source=p)

    def to_dict(self) -> Dict[str, Any]:
        """Canonical JSON mapping: every set key in a fixed order, lists as lists;
        keys implied by ``is_mla`` (MLA head_dim, hash_bits, num_key_value_heads) omitted."""
        out: Dict[str, Any] = {}
        implied = ("head_dim", "hash_bits", "num_key_value_heads") if self.is_mla else ()
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "source" or f.name in implied or v is None:
                continue
            if f.name == "model_aliases" and not v:
                continue
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def to_json(self) -> str:
        """The canonical JSON text: one key per line, lists on one line."""
        items = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in self.to_dict().items()]
        return "{\n" + ",\n".join(items) + "\n}\n"

    def save(self, path: PathLike) -> None:
        """Write the canonical JSON; ``GSAConfig.load(path) == self``."""
        Path(path).write_text(self.to_json(), encoding="utf-8")

    def replace(self, **changes: Any) -> "GSAConfig":
        """A copy with some keys changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def resolve_path(self, value: str) -> Path:
        """A weight path from the config: absolute, or relative to the config file's folder."""
        p = Path(os.path.expanduser(value))
        if not p.is_absolute() and self.source:
            p = Path(self.source).parent / p
        return p

    # ------------------------------------------------------------------ shipped configs
    @classmethod
    def for_model(cls, name: str) -> "GSAConfig":
        """The shipped config whose ``model_name`` (e.g. ``Qwen/Qwen3-4B``), name after
        the organisation (``Qwen3-4B``) or one of ``model_aliases`` equals ``name``,
        case-insensitively. Never matches a substring or a path."""
        want = str(name).strip().lower()
        hits = []
        for cfg in _shipped_configs():
            names = {cfg.model_name.lower(), cfg.model_name.split("/")[-1].lower()}
            names.update(a.lower() for a in cfg.model_aliases)
            if want in names:
                hits.append(cfg)
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise GSAConfigError(f"model name {name!r} is ambiguous: it names {[c.model_name for c in hits]}; "
                                 "use the full name")
        raise GSAConfigError(f"no shipped GSA config for model {name!r}; known models: {', '.join(known_models())}")


def _configs_dir() -> Optional[Path]:
    import gsa

    # a source checkout: <repo>/gsa/ next to <repo>/configs/ (and <repo>/setup.py, so
    # that an unrelated site-packages/configs/ folder is never taken for ours)
    root = Path(gsa.__file__).resolve().parent.parent
    src = root / "configs"
    if (root / "setup.py").is_file() and (src / "__init__.py").is_file():
        return src
    try:
        from importlib.resources import files

        res = files("gsa.configs")
        return Path(str(res))
    except (ModuleNotFoundError, TypeError):
        return None


def shipped_config_paths() -> List[Path]:
    """The JSON files of the shipped configs (source checkout ``configs/`` or the installed ``gsa.configs``)."""
    d = _configs_dir()
    return sorted(d.glob("*.json")) if d is not None else []


_SHIPPED: Optional[List[GSAConfig]] = None


def _shipped_configs() -> List[GSAConfig]:
    global _SHIPPED
    if _SHIPPED is None:
        _SHIPPED = [GSAConfig.load(p) for p in shipped_config_paths()]
    return _SHIPPED


def config_errors(data: Any, source: Optional[PathLike] = None, limit: int = 50) -> List[str]:
    """Every error of a config mapping, not just the first (``gsa validate``).

    Validation stops at its first bad key, so this re-validates after dropping each
    offending key (its default then applies, an unknown key simply goes) until the
    config validates or the bad key cannot be dropped (a required key, or a rule
    between keys): later errors may hide behind that one, and the list says so.
    Returns ``[]`` for a valid config."""
    errors: List[str] = []
    if not isinstance(data, Mapping):
        data = None
    cur = dict(data) if data is not None else data
    for _ in range(limit):
        try:
            GSAConfig.from_dict(cur, source=source)  # type: ignore[arg-type]
            return errors
        except GSAConfigError as exc:
            msg = str(exc)
            errors.append(msg)
            import re

            m = re.search(r"key '([^']+)'", msg)
            key = m.group(1) if m else None
            if cur is None or key is None or key not in cur or key in _REQUIRED_KEYS:
                break
            del cur[key]
    errors.append("(validation stopped here: later errors, if any, are reported once this one is fixed)")
    return errors


def known_models() -> List[str]:
    """``model_name`` of every shipped config, sorted."""
    return sorted(c.model_name for c in _shipped_configs())


GSAConfig.known_models = staticmethod(known_models)  # type: ignore[attr-defined]
