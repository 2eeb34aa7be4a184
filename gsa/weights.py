"""Hash projection weights: spec section 10 (docs/spec.md, docs/config.md).

One entry point, :func:`load_hash_weights`, returns a layer's projection for a
config, cached: GQA ``float32 [Hkv, D, R]``; MLA ``(w_lora float32 [L, R_lora],
w_rope float32 [P, R_rope])``.

Seeded random weights (``hash_weight_type = "random"``): the exact recipe
(so that any implementation, in any process, on any device reproduces it):

1. One CPU ``torch.Generator`` per ``(seed, layer, part)``, where ``part`` is
   ``"main"`` (GQA), ``"kv_lora"`` or ``"qk_rope"`` (MLA). Its seed is the first
   8 bytes, little-endian, of ``sha256(f"gsa-hash-weight/{seed}/{layer}/{part}")``
   (UTF-8), with the top bit cleared (a value in ``[0, 2**63)``).
2. For head ``h = 0 .. H-1`` (GQA ``H = Hkv``; MLA ``H = 1``), for column block
   ``i = 0 .. ceil(R / D) - 1`` with ``c_i = min(D, R - i*D)`` columns, in that
   order: draw ``G = torch.randn(D, c_i, generator=gen, dtype=torch.float64)``.
3. ``Q, T = torch.linalg.qr(G, mode="reduced")``; fix signs so the QR is unique:
   multiply column ``j`` of ``Q`` by ``-1`` where ``T[j, j] < 0``.
4. Concatenate the blocks along columns: ``W[h] = [Q_0 | Q_1 | ...]`` (``[D, R]``;
   each block has orthonormal columns; blocks are independent when ``R > D``).
5. Stack heads (``[H, D, R]``), cast to float32 on the CPU, then move to the
   device. Everything before the move is CPU-only, so every rank, process and
   backend of one installation gets identical weights. (Different LAPACK builds
   may differ in the last float64 bit; after rounding to float32 that is far
   inside the spec-2 projection band.)

Weight files (``hash_weight_type = "file"``): a path is either a directory in
HATA's layout, ``hash_weight_layer_{l:02d}.pt`` per layer, or one safetensors
bundle with one tensor per layer named (see :func:`tensor_name`)
``layers.{l}.hash_weight`` (GQA ``[Hkv, D, R]``),
``layers.{l}.hash_weight_kv_lora`` (MLA ``[L, R_lora]``) and
``layers.{l}.hash_weight_qk_rope`` (MLA ``[P, R_rope]``). An MLA config names
either one bundle (``hash_weight``) or one source per part
(``hash_weight_kv_lora``, ``hash_weight_qk_rope``: a directory of per-layer
``.pt`` files holding that part, or a bundle). :func:`save_hash_weights` writes
a bundle.

MLP encoders (``hash_weight_type = "mlp"``, spec 12): one safetensors bundle
holding, per scoring layer, a key MLP per KV head and a query MLP per query head
(:func:`mlp_tensor_name`); :func:`load_mlp_hash_weights` returns a layer's
:class:`MLPHashWeights`, :func:`save_mlp_hash_weights` writes a bundle.

Centred key codes (spec 13, config key ``hash_centre``): a safetensors bundle
holding, per layer, ``layers.{l}.key_mean`` (``[Hkv, D]``, the per-head mean key
``mu``) or ``layers.{l}.hash_threshold`` (``[Hkv, R]``). :func:`load_hash_threshold`
returns ``t = mu @ W[h]`` per head (float64 product, rounded once to float32) for the
config's weights, or the stored threshold; a layer with neither has no threshold
(``None``: spec 2's codes, bit for bit). Keys are hashed with it; queries never are.
:func:`save_key_means` writes such a bundle (``gsa calibrate-centre``).
"""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple, Union

import torch

from gsa.config import GSAConfig

__all__ = [
    "generator_seed",
    "random_hash_weight",
    "load_hash_weights",
    "save_hash_weights",
    "tensor_name",
    "load_hash_threshold",
    "save_key_means",
    "hata_file_name",
    "clear_cache",
    "HashWeightError",
    "MLPHashWeights",
    "mlp_tensor_name",
    "load_mlp_hash_weights",
    "save_mlp_hash_weights",
    "bundle_weight_type",
]

Weights = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


class HashWeightError(ValueError):
    """A hash weight source is missing, malformed or does not fit the config."""


def generator_seed(seed: int, layer: int, part: str = "main") -> int:
    """Step 1 of the recipe: the CPU generator seed for ``(seed, layer, part)``."""
    digest = hashlib.sha256(f"gsa-hash-weight/{seed}/{layer}/{part}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def random_hash_weight(seed: int, layer: int, heads: int, dim: int, bits: int, part: str = "main") -> torch.Tensor:
    """Seeded random projection ``float32 [heads, dim, bits]`` on the CPU (module docstring recipe).

    Every tensor is created with ``device="cpu"`` explicitly: engines (vLLM) build
    models under a CUDA default device, where a CPU generator would be refused."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(generator_seed(seed, layer, part))
    out = []
    for _ in range(heads):
        blocks = []
        for start in range(0, bits, dim):
            cols = min(dim, bits - start)
            g = torch.randn(dim, cols, generator=gen, dtype=torch.float64, device="cpu")
            q, t = torch.linalg.qr(g, mode="reduced")
            sign = torch.where(torch.diagonal(t) < 0, -1.0, 1.0).to(torch.float64)  # t is on the CPU: so is this
            blocks.append(q * sign)
        out.append(torch.cat(blocks, dim=1))
    return torch.stack(out).to(torch.float32)


def hata_file_name(layer: int) -> str:
    """HATA's per-layer file name."""
    return f"hash_weight_layer_{layer:02d}.pt"


def tensor_name(layer: int, part: str = "main") -> str:
    """Tensor name in a safetensors bundle: ``layers.{l}.hash_weight`` (GQA) or
    ``layers.{l}.hash_weight_kv_lora`` / ``layers.{l}.hash_weight_qk_rope`` (MLA);
    spec 13: ``layers.{l}.key_mean`` (part ``key_mean``), ``layers.{l}.hash_threshold``
    (part ``threshold``)."""
    suffix = {"main": "hash_weight", "kv_lora": "hash_weight_kv_lora", "qk_rope": "hash_weight_qk_rope",
              "key_mean": "key_mean", "threshold": "hash_threshold"}[part]
    return f"layers.{layer}.{suffix}"


def _expected_shapes(config: GSAConfig) -> Dict[str, Tuple[int, ...]]:
    if config.is_mla:
        return {
            "kv_lora": (config.kv_lora_rank, config.hash_bits_kv_lora),
            "qk_rope": (config.qk_rope_head_dim, config.hash_bits_qk_rope),
        }
    return {"main": (config.num_key_value_heads, config.head_dim, config.hash_bits)}


_SHAPE_NAMES = {"main": "[Hkv, D, R]", "kv_lora": "[kv_lora_rank, R_lora]", "qk_rope": "[qk_rope_head_dim, R_rope]"}


def _read_source(path: Path, layer: int, part: str) -> torch.Tensor:
    """One layer's tensor from a HATA directory or a safetensors bundle (CPU)."""
    if path.is_dir():
        f = path / hata_file_name(layer)
        if not f.is_file():
            raise HashWeightError(f"hash weights for layer {layer}: {f} does not exist (HATA layout: one "
                                  f"{hata_file_name(0)!r}-style file per layer)")
        obj = torch.load(f, map_location="cpu", weights_only=True)
        if isinstance(obj, dict):
            tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
            if len(tensors) != 1:
                raise HashWeightError(f"hash weights for layer {layer}: {f} holds a dict with {len(tensors)} tensors; "
                                      "expected one tensor")
            obj = tensors[0]
        if not isinstance(obj, torch.Tensor):
            raise HashWeightError(f"hash weights for layer {layer}: {f} holds {type(obj).__name__}; expected a tensor")
        return obj
    if path.is_file():
        from safetensors import safe_open

        name = tensor_name(layer, part)
        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                if name not in fh.keys():
                    raise HashWeightError(f"hash weights for layer {layer}: {path} has no tensor {name!r} "
                                          f"(it has {len(list(fh.keys()))} tensors, e.g. {sorted(fh.keys())[:3]})")
                return fh.get_tensor(name)
        except HashWeightError:
            raise
        except Exception as exc:
            raise HashWeightError(f"hash weights: cannot read {path} as safetensors: {exc}") from None
    raise HashWeightError(f"hash weights: {path} does not exist (expected a HATA directory or a .safetensors file)")


def _check(t: torch.Tensor, expected: Tuple[int, ...], layer: int, part: str, origin: str) -> torch.Tensor:
    if part != "main" and t.dim() == 3 and t.shape[0] == 1:
        t = t[0]  # an MLA part saved with a head axis of 1
    if not t.is_floating_point():
        raise HashWeightError(f"hash weight {part!r} of layer {layer} from {origin}: expected a float tensor, got {t.dtype}")
    if tuple(t.shape) != tuple(expected):
        raise HashWeightError(f"hash weight {part!r} of layer {layer} from {origin}: expected shape {tuple(expected)} "
                              f"{_SHAPE_NAMES[part]}, got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise HashWeightError(f"hash weight {part!r} of layer {layer} from {origin}: expected finite values, got NaN/inf")
    return t.to(torch.float32).contiguous()


def _sources(config: GSAConfig) -> Dict[str, Path]:
    if config.is_mla and config.hash_weight is None:
        return {"kv_lora": config.resolve_path(config.hash_weight_kv_lora),
                "qk_rope": config.resolve_path(config.hash_weight_qk_rope)}
    path = config.resolve_path(config.hash_weight)
    return {part: path for part in _expected_shapes(config)}


def _check_layer(config: GSAConfig, layer: int) -> None:
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < config.num_hidden_layers:
        raise HashWeightError(f"hash weights: layer must be in [0, {config.num_hidden_layers}), got {layer!r}")


_CPU_CACHE: Dict[tuple, Dict[str, torch.Tensor]] = {}
_DEV_CACHE: Dict[tuple, Weights] = {}
_LOCK = threading.Lock()


def _cpu_parts(config: GSAConfig, layer: int) -> Dict[str, torch.Tensor]:
    shapes = _expected_shapes(config)
    if config.hash_weight_type == "random":
        key = ("random", config.seed, layer, tuple(shapes.items()))
    else:
        key = ("file", tuple((p, str(s.resolve())) for p, s in _sources(config).items()), layer, tuple(shapes.items()))
    with _LOCK:
        hit = _CPU_CACHE.get(key)
    if hit is not None:
        return hit
    parts = {}
    if config.hash_weight_type == "random":
        for part, shape in shapes.items():
            if part == "main":
                parts[part] = random_hash_weight(config.seed, layer, *shape, part="main")
            else:
                parts[part] = random_hash_weight(config.seed, layer, 1, *shape, part=part)[0]
    else:
        for part, src in _sources(config).items():
            parts[part] = _check(_read_source(src, layer, part), shapes[part], layer, part, str(src))
    with _LOCK:
        _CPU_CACHE[key] = parts
    return parts


def load_hash_weights(config: GSAConfig, layer: int, device: Union[str, torch.device, None] = None) -> Weights:
    """Layer ``layer``'s hash projection for ``config`` on ``device`` (default CPU), cached.
    (``hash_weight_type = "mlp"`` configs have MLPs, not projections: :func:`load_mlp_hash_weights`.)

    GQA: ``float32 [Hkv, D, R]``. MLA: ``(w_lora float32 [kv_lora_rank, R_lora],
    w_rope float32 [qk_rope_head_dim, R_rope])``. The returned tensors are shared
    by every caller: do not modify them in place.
    """
    _check_layer(config, layer)
    if config.hash_weight_type == "mlp":
        raise HashWeightError(f"hash weights for layer {layer}: the config's hash_weight_type is 'mlp' (spec 12): "
                              "use gsa.weights.load_mlp_hash_weights, not a linear projection")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    parts = _cpu_parts(config, layer)
    key = (id(parts), str(dev))
    with _LOCK:
        hit = _DEV_CACHE.get(key)
    if hit is None:
        moved = {p: t.to(dev) for p, t in parts.items()}
        hit = (moved["kv_lora"], moved["qk_rope"]) if config.is_mla else moved["main"]
        with _LOCK:
            _DEV_CACHE[key] = hit
    return hit


def clear_cache() -> None:
    """Forget every cached weight and threshold (e.g. after rewriting a weight file)."""
    with _LOCK:
        _CPU_CACHE.clear()
        _DEV_CACHE.clear()
        _MLP_CACHE.clear()
        _THR_CACHE.clear()


_THR_CACHE: Dict[tuple, Optional[torch.Tensor]] = {}


def _centre_tensors(path: Path, layer: int) -> Dict[str, torch.Tensor]:
    """``{"key_mean": ..., "threshold": ...}`` (those present) of one layer from a bundle."""
    from safetensors import safe_open

    if not path.is_file():
        raise HashWeightError(f"hash_centre: {path} does not exist (expected a safetensors bundle from "
                              "`gsa calibrate-centre`)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            names = set(fh.keys())
            return {part: fh.get_tensor(tensor_name(layer, part)) for part in ("key_mean", "threshold")
                    if tensor_name(layer, part) in names}
    except Exception as exc:
        raise HashWeightError(f"hash_centre: cannot read {path} as safetensors: {exc}") from None


def load_hash_threshold(config: GSAConfig, layer: int,
                        device: Union[str, torch.device, None] = None) -> Optional[torch.Tensor]:
    """Spec 13: layer ``layer``'s key threshold ``float32 [Hkv, R]`` on ``device``, or ``None``.

    ``None`` when the config has no ``hash_centre`` or the bundle has nothing for this
    layer. From ``layers.{l}.hash_threshold [Hkv, R]`` as stored, else from
    ``layers.{l}.key_mean [Hkv, D]`` as ``t[h] = mu[h] @ W[h]`` with this config's
    weights (float64, rounded once to float32). Cached; do not modify the result.
    """
    _check_layer(config, layer)
    if config.hash_centre is None:
        return None
    if config.is_mla:
        raise HashWeightError("hash_centre: centred codes are GQA only (spec 13)")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    w = _cpu_parts(config, layer)["main"]  # [Hkv, D, R]
    path = config.resolve_path(config.hash_centre)
    key = (str(path.resolve()), layer, id(w), str(dev))
    with _LOCK:
        if key in _THR_CACHE:
            return _THR_CACHE[key]
    hkv, d, r = w.shape
    found = _centre_tensors(path, layer)
    thr = None
    if "threshold" in found:
        thr = _check_centre(found["threshold"], (hkv, r), layer, "hash_threshold", path)
    elif "key_mean" in found:
        mu = _check_centre(found["key_mean"], (hkv, d), layer, "key_mean", path)
        thr = torch.einsum("hd,hdr->hr", mu.double(), w.double()).to(torch.float32)
    if thr is not None:
        thr = thr.contiguous().to(dev)
    with _LOCK:
        _THR_CACHE[key] = thr
    return thr


def _check_centre(t: torch.Tensor, expected: Tuple[int, ...], layer: int, what: str, path: Path) -> torch.Tensor:
    if not t.is_floating_point() or tuple(t.shape) != expected or not bool(torch.isfinite(t).all()):
        raise HashWeightError(f"hash_centre {path}: layers.{layer}.{what}: expected finite float {expected}, "
                              f"got {t.dtype} {tuple(t.shape)}")
    return t.to(torch.float32)


def save_key_means(path: Union[str, Path], means: Dict[int, torch.Tensor], metadata: Optional[Dict[str, str]] = None,
                   extra: Optional[Dict[str, torch.Tensor]] = None) -> Path:
    """Write spec 13 key means ``{layer: float32 [Hkv, D]}`` as ``layers.{l}.key_mean``
    (plus ``extra`` tensors, e.g. a data-driven ``layers.{l}.hash_weight``) to one bundle."""
    from safetensors.torch import save_file

    tensors = {tensor_name(l, "key_mean"): m.to(torch.float32).contiguous() for l, m in means.items()}
    tensors.update({k: v.contiguous() for k, v in (extra or {}).items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "gsa-hash-centre", **(metadata or {})})
    return path


def save_hash_weights(config: GSAConfig, path: Union[str, Path], layers: Optional[Iterable[int]] = None) -> Path:
    """Write ``config``'s weights (random or loaded) for ``layers`` (default: every
    layer) to one safetensors bundle in this module's naming. A config with
    ``hash_weight_type = "file"`` and ``hash_weight = path`` then loads them."""
    from safetensors.torch import save_file

    layers = range(config.num_hidden_layers) if layers is None else list(layers)
    tensors = {}
    for l in layers:
        _check_layer(config, l)
        for part, t in _cpu_parts(config, l).items():
            tensors[tensor_name(l, part)] = t.contiguous()
    meta = {"format": "gsa-hash-weights", "model_name": config.model_name, "num_hidden_layers": str(config.num_hidden_layers)}
    path = Path(path)
    save_file(tensors, str(path), metadata=meta)
    return path


# ----------------------------------------------------------------------------
# spec 12: MLP hash encoders
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class MLPHashWeights:
    """One layer's spec-12 encoders, fp32: ``key_weights[i] [Hkv, in_i, out_i]``,
    ``key_biases[i] [Hkv, out_i]`` and the same for queries with ``Hq`` heads
    (``in_0 = D``, ``out_{L-1} = R``; 1 to 3 layers, SiLU between)."""

    key_weights: Tuple[torch.Tensor, ...]
    key_biases: Tuple[torch.Tensor, ...]
    query_weights: Tuple[torch.Tensor, ...]
    query_biases: Tuple[torch.Tensor, ...]

    def to(self, device) -> "MLPHashWeights":
        return MLPHashWeights(*(tuple(t.to(device) for t in part) for part in
                                (self.key_weights, self.key_biases, self.query_weights, self.query_biases)))

    @property
    def depth(self) -> Tuple[int, int]:
        """``(key layers, query layers)``."""
        return len(self.key_weights), len(self.query_weights)


def mlp_tensor_name(layer: int, side: str, i: int, kind: str) -> str:
    """``layers.{l}.mlp_hash.{side}.{i}.{kind}``; ``side`` ``key``/``query``, ``kind`` ``weight``/``bias``."""
    if side not in ("key", "query") or kind not in ("weight", "bias"):
        raise ValueError(f"mlp_tensor_name: side must be 'key' or 'query' and kind 'weight' or 'bias', got {side!r}, {kind!r}")
    return f"layers.{layer}.mlp_hash.{side}.{i}.{kind}"


def _read_mlp_side(fh, path: Path, layer: int, side: str, heads: int, d: int, bits: int):
    ws, bs = [], []
    names = set(fh.keys())
    while mlp_tensor_name(layer, side, len(ws), "weight") in names:
        i = len(ws)
        ws.append(fh.get_tensor(mlp_tensor_name(layer, side, i, "weight")))
        bname = mlp_tensor_name(layer, side, i, "bias")
        if bname not in names:
            raise HashWeightError(f"MLP hash weights for layer {layer} in {path}: {bname!r} is missing")
        bs.append(fh.get_tensor(bname))
    if not 1 <= len(ws) <= 3:
        raise HashWeightError(f"MLP hash weights for layer {layer} in {path}: expected 1 to 3 {side} layers named "
                              f"{mlp_tensor_name(layer, side, 0, 'weight')!r}..., got {len(ws)}")
    width = d
    for i, (w, b) in enumerate(zip(ws, bs)):
        what = f"MLP hash weight {mlp_tensor_name(layer, side, i, 'weight')} in {path}"
        if not w.is_floating_point() or w.dim() != 3 or w.shape[0] != heads or w.shape[1] != width:
            raise HashWeightError(f"{what}: expected a float tensor [{heads}, {width}, out] "
                                  f"({'Hkv' if side == 'key' else 'Hq'} heads, the previous width), "
                                  f"got {w.dtype} {tuple(w.shape)}")
        if tuple(b.shape) != (heads, w.shape[2]) or not b.is_floating_point():
            raise HashWeightError(f"{what}: its bias must be a float [{heads}, {w.shape[2]}], got {b.dtype} {tuple(b.shape)}")
        if not (bool(torch.isfinite(w).all()) and bool(torch.isfinite(b).all())):
            raise HashWeightError(f"{what}: expected finite values, got NaN/inf")
        width = w.shape[2]
    if width != bits:
        raise HashWeightError(f"MLP hash weights for layer {layer} in {path}: the {side} MLP outputs {width} bits, "
                              f"the config's hash_bits is {bits}")
    if len(ws) > 2 and ws[1].shape[2] != ws[0].shape[2]:
        raise HashWeightError(f"MLP hash weights for layer {layer} in {path}: hidden widths differ "
                              f"({ws[0].shape[2]} vs {ws[1].shape[2]}); spec 12 needs them equal")
    return (tuple(w.to(torch.float32).contiguous() for w in ws), tuple(b.to(torch.float32).contiguous() for b in bs))


_MLP_CACHE: Dict[tuple, MLPHashWeights] = {}


def load_mlp_hash_weights(config: GSAConfig, layer: int, device: Union[str, torch.device, None] = None) -> MLPHashWeights:
    """Layer ``layer``'s spec-12 encoders from the config's bundle, on ``device`` (default
    CPU), cached. Raises :class:`HashWeightError` naming the file and tensor when the
    bundle is missing, lacks the layer, or has the wrong shapes."""
    _check_layer(config, layer)
    if config.hash_weight_type != "mlp":
        raise HashWeightError(f"MLP hash weights: the config's hash_weight_type is {config.hash_weight_type!r}, "
                              "not 'mlp' (use load_hash_weights)")
    path = config.resolve_path(config.hash_weight)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    key = (str(path.resolve()), layer, config.num_key_value_heads, config.num_attention_heads, config.head_dim,
           config.hash_bits, str(dev))
    with _LOCK:
        hit = _MLP_CACHE.get(key)
    if hit is not None:
        return hit
    if not path.is_file():
        raise HashWeightError(f"MLP hash weights: {path} does not exist (expected a .safetensors bundle from "
                              "`gsa train-hash --method mlp`)")
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            kw, kb = _read_mlp_side(fh, path, layer, "key", config.num_key_value_heads, config.head_dim,
                                    config.hash_bits)
            qw, qb = _read_mlp_side(fh, path, layer, "query", config.num_attention_heads, config.head_dim,
                                    config.hash_bits)
    except HashWeightError:
        raise
    except Exception as exc:
        raise HashWeightError(f"MLP hash weights: cannot read {path} as safetensors: {exc}") from None
    hit = MLPHashWeights(kw, kb, qw, qb).to(dev)
    with _LOCK:
        _MLP_CACHE[key] = hit
    return hit


def save_mlp_hash_weights(path: Union[str, Path], layers: Dict[int, MLPHashWeights],
                          metadata: Optional[Dict[str, str]] = None) -> Path:
    """Write ``{layer: MLPHashWeights}`` to one safetensors bundle (spec 12 naming);
    a config with ``hash_weight_type = "mlp"`` and ``hash_weight = path`` loads it."""
    from safetensors.torch import save_file

    tensors = {}
    for l, m in layers.items():
        for side, ws, bs in (("key", m.key_weights, m.key_biases), ("query", m.query_weights, m.query_biases)):
            for i, (w, b) in enumerate(zip(ws, bs)):
                tensors[mlp_tensor_name(l, side, i, "weight")] = w.detach().to("cpu", torch.float32).contiguous()
                tensors[mlp_tensor_name(l, side, i, "bias")] = b.detach().to("cpu", torch.float32).contiguous()
    meta = {"format": "gsa-mlp-hash-weights"}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    with _LOCK:
        for k in [k for k in _MLP_CACHE if k[0] == str(path.resolve())]:
            del _MLP_CACHE[k]
    return path


def bundle_weight_type(path: Union[str, Path]) -> str:
    """``"mlp"`` for a spec-12 bundle (written by :func:`save_mlp_hash_weights`), else
    ``"file"`` (a projection bundle or a HATA directory): the ``hash_weight_type`` that loads it."""
    p = Path(path)
    if p.is_file():
        try:
            from safetensors import safe_open
            with safe_open(str(p), framework="pt", device="cpu") as fh:
                if (fh.metadata() or {}).get("format") == "gsa-mlp-hash-weights":
                    return "mlp"
        except Exception:
            pass  # not readable as safetensors: the "file" loader reports it properly
    return "file"
