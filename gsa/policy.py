"""Per-layer sparsity policy: spec section 8 (docs/spec.md, docs/policy.md).

Device-agnostic Python over host-side data only (Python lists, numpy, CPU
tensors): nothing here reads a device tensor, so an engine can build the plan
for a step before launching (or replaying a graph of) that step.

Rules, for layer ``l`` with ratio ``r_l = top_k_ratio_per_layer[l]``:

* dense iff ``r_l >= 1``; a layer with ``top_k_index_reuse[l] = j >= 0`` takes
  layer ``j``'s selection of the same step; a sparse layer with ``reuse = -1``
  *scores*: it hashes keys into its own hash cache and selects. Only scoring
  layers need a hash cache (and hash weights).
* per step: only decode rows (query length 1) with ``seq_len >= seq_len_threshold``
  are sparse; when fewer than ``concurrency_threshold`` rows are, the whole step
  is dense. Thresholds: the config's ``npu_*`` keys on NPU, ``gpu_*`` otherwise.
* budget of a sparse row (blocks): ``ceil(r_l * n_blocks)``, or
  ``top_k_tokens // chunk_size`` when ``top_k_tokens`` is set; never below the
  row's number of forced blocks. ``r_l`` is taken as the exact decimal written in
  the config (``Fraction(repr(r_l))``), so ``0.3 * 10`` is 3, not 4 from float
  rounding. Dense rows get ``budget = n_blocks`` (selection then keeps every
  block, i.e. the original table and length).
* static width ``k``: the largest ``n_sel = min(n_blocks, max(budget, n_forced))``
  over rows and scoring layers, or a caller-fixed width (graph capture), which
  must be at least that.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from gsa.config import GSAConfig

__all__ = ["LayerPolicy", "StepPlan", "GSAPolicy", "device_kind"]

HostInts = Union[Sequence[int], np.ndarray, torch.Tensor]


def device_kind(device: Union[str, torch.device, None]) -> str:
    """``"npu"`` for an Ascend device, else ``"gpu"`` (CUDA, CPU and anything else
    use the ``gpu_*`` thresholds, spec 8)."""
    if device is None:
        return "gpu"
    name = device if isinstance(device, str) else torch.device(device).type
    name = name.split(":")[0].lower()
    return "npu" if name == "npu" else "gpu"


@dataclass(frozen=True)
class LayerPolicy:
    """What one layer does. ``reuse_source``: the layer whose selection it takes
    (``-1``: none). ``scores``: sparse and selects itself (needs a hash cache and
    hash weights)."""

    layer: int
    ratio: float
    dense: bool
    reuse_source: int
    scores: bool

    @property
    def needs_hash_cache(self) -> bool:
        return self.scores

    @property
    def selection_layer(self) -> int:
        """The layer whose selection this layer uses (itself when it scores; -1 when dense)."""
        if self.dense:
            return -1
        return self.reuse_source if self.reuse_source >= 0 else self.layer


def _host_ints(name: str, values: HostInts) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        if values.device.type != "cpu":
            raise ValueError(f"GSA policy: '{name}' must be host-side (list, numpy or CPU tensor) so that no "
                             f"device sync happens inside a step; got a tensor on {values.device}")
        values = values.numpy()
    arr = np.asarray(values)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise ValueError(f"GSA policy: '{name}' must be a 1-D sequence of integers, got shape {arr.shape} dtype {arr.dtype}")
    return arr.astype(np.int64)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class StepPlan:
    """The host-side plan of one decode step (immutable; arrays are read-only).

    ``B`` rows. ``seq_lens``, ``query_lens``, ``n_blocks``, ``n_forced``:
    ``int64 [B]``. ``sparse_rows``: ``bool [B]``, rows selected sparsely.
    ``sparse``: whether any selection runs this step (False: every layer and row
    is dense). ``budgets[l]``: ``int32 [B]`` per scoring layer ``l`` (sparse rows:
    the spec-8 budget; dense rows: ``n_blocks``). ``n_sel[l]``: ``int64 [B]`` the
    block counts the selection will keep. ``k``: static output width.
    """

    seq_lens: np.ndarray
    query_lens: np.ndarray
    n_blocks: np.ndarray
    n_forced: np.ndarray
    sparse_rows: np.ndarray
    sparse: bool
    k: int
    budgets: Mapping[int, np.ndarray] = field(default_factory=dict, repr=False)
    n_sel: Mapping[int, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def batch_size(self) -> int:
        return int(self.seq_lens.shape[0])


class GSAPolicy:
    """Spec-8 decisions for one config on one device kind (``"gpu"`` or ``"npu"``;
    a torch device or its type string is accepted too)."""

    def __init__(self, config: GSAConfig, device: Union[str, torch.device, None] = "gpu"):
        self.config = config
        self.device_kind = device_kind(device)
        if self.device_kind == "npu":
            self.seq_len_threshold = config.npu_seq_len_threshold
            self.concurrency_threshold = config.npu_concurrency_threshold
        else:
            self.seq_len_threshold = config.gpu_seq_len_threshold
            self.concurrency_threshold = config.gpu_concurrency_threshold
        self.block_size = config.chunk_size
        layers = []
        for l, (r, j) in enumerate(zip(config.top_k_ratio_per_layer, config.top_k_index_reuse)):
            dense = r >= 1
            layers.append(LayerPolicy(layer=l, ratio=r, dense=dense, reuse_source=j, scores=not dense and j == -1))
        self.layers: Tuple[LayerPolicy, ...] = tuple(layers)
        self.scoring_layers: Tuple[int, ...] = tuple(p.layer for p in layers if p.scores)
        # exact rational ratios, grouped: layers with one ratio share one budget vector
        self._ratio: Dict[int, Fraction] = {l: Fraction(repr(layers[l].ratio)) for l in self.scoring_layers}
        # the grouping itself, once (hashing Fractions per layer and step cost ~0.5 ms a step)
        groups: Dict[object, int] = {}
        self._group: Dict[int, int] = {}
        for l in self.scoring_layers:
            key = "tokens" if config.top_k_tokens is not None else self._ratio[l]
            self._group[l] = groups.setdefault(key, len(groups))

    # ---------------------------------------------------------------- per layer
    def layer(self, l: int) -> LayerPolicy:
        return self.layers[l]

    def is_dense(self, l: int) -> bool:
        return self.layers[l].dense

    def reuse_source(self, l: int) -> int:
        return self.layers[l].reuse_source

    def needs_hash_cache(self, l: int) -> bool:
        return self.layers[l].scores

    def budget_group(self, l: int) -> int:
        """Scoring layer ``l``'s budget group: layers of one group share one budget vector
        in every step (same ratio, or all layers under ``top_k_tokens``)."""
        return self._group[l]

    # ---------------------------------------------------------------- per row
    def n_blocks(self, seq_lens: HostInts) -> np.ndarray:
        """``ceil(seq_len / chunk_size)`` per row, ``int64``."""
        s = _host_ints("seq_lens", seq_lens)
        return (s + self.block_size - 1) // self.block_size

    def n_forced(self, n_blocks: HostInts) -> np.ndarray:
        """Distinct in-range forced blocks per row (spec 5), ``int64``."""
        nb = _host_ints("n_blocks", n_blocks)
        msb = np.asarray(self.config.must_select_blocks, dtype=np.int64)
        if msb.size == 0:
            return np.zeros_like(nb)
        target = np.where(msb[None, :] >= 0, msb[None, :], nb[:, None] + msb[None, :])  # [B, E]
        target = np.sort(np.where((target >= 0) & (target < nb[:, None]), target, -1), axis=1)
        first = np.ones_like(target, dtype=bool)
        first[:, 1:] = target[:, 1:] != target[:, :-1]  # duplicates merge
        return ((target >= 0) & first).sum(axis=1).astype(np.int64)

    def sparse_budget(self, l: int, n_blocks: HostInts) -> np.ndarray:
        """Spec-8 budget of layer ``l`` for sparse rows with these block counts
        (before the forced-block floor), ``int64``."""
        nb = _host_ints("n_blocks", n_blocks)
        if self.config.top_k_tokens is not None:
            return np.full_like(nb, self.config.top_k_tokens // self.block_size)
        r = self._ratio[l] if l in self._ratio else Fraction(repr(self.layers[l].ratio))
        return (r.numerator * nb + r.denominator - 1) // r.denominator

    # ---------------------------------------------------------------- per step
    def plan_step(self, seq_lens: HostInts, query_lens: Optional[HostInts] = None, k: Optional[int] = None) -> StepPlan:
        """Plan one step from host-side lengths.

        ``seq_lens [B]``: tokens in each row's KV cache, the new ones included
        (>= 1). ``query_lens [B]``: new tokens per row this step (default: all 1,
        i.e. all decode). ``k``: a fixed selection width (graph capture); default
        the smallest that fits. Raises ``ValueError`` if ``k`` is too small.
        """
        s = _host_ints("seq_lens", seq_lens)
        b = s.shape[0]
        if b and s.min() < 1:
            raise ValueError(f"GSA policy: 'seq_lens' must be >= 1, got {s.tolist()}")
        q = np.ones_like(s) if query_lens is None else _host_ints("query_lens", query_lens)
        if q.shape != s.shape:
            raise ValueError(f"GSA policy: 'query_lens' must have one entry per row ({b}), got {q.shape[0]}")
        nb = self.n_blocks(s)
        nf = self.n_forced(nb)
        candidates = (q == 1) & (s >= self.seq_len_threshold)
        step_sparse = bool(self.scoring_layers) and int(candidates.sum()) >= self.concurrency_threshold and b > 0
        rows = candidates if step_sparse else np.zeros_like(candidates)
        budgets: Dict[int, np.ndarray] = {}
        n_sel: Dict[int, np.ndarray] = {}
        need = 0  # a dense step runs no selection, so any k fits
        if step_sparse:
            by_ratio: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
            for l in self.scoring_layers:
                key = self.budget_group(l)
                if key not in by_ratio:
                    bud = np.where(rows, np.maximum(self.sparse_budget(l, nb), nf), nb)
                    sel = np.where(bud >= nb, nb, np.maximum(bud, nf))
                    by_ratio[key] = (_frozen(bud.astype(np.int32)), _frozen(sel))
                    need = max(need, int(sel.max()))  # once per group: its layers share the arrays
                budgets[l], n_sel[l] = by_ratio[key]
        if k is None:
            k = max(need, 1)
        elif not isinstance(k, int) or isinstance(k, bool) or k < max(need, 1):
            raise ValueError(f"GSA policy: 'k' must be an int >= the largest n_sel of this step ({max(need, 1)}), got {k!r}")
        return StepPlan(
            seq_lens=_frozen(s), query_lens=_frozen(q), n_blocks=_frozen(nb), n_forced=_frozen(nf),
            sparse_rows=_frozen(rows), sparse=step_sparse, k=k,
            budgets=MappingProxyType(budgets), n_sel=MappingProxyType(n_sel),
        )
