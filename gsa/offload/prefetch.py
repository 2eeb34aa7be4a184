"""Prefetch modes of :class:`gsa.offload.OffloadedGSA` (docs/offload.md): the argument checks
of ``prefetch`` and ``eviction``, widened budgets (``"lookahead"`` and a wide ``"speculative"``
pass), and the inputs of the speculative pass (:meth:`OffloadedGSA.speculate`).

Kept beside ``offloaded.py`` so that module stays readable; nothing here touches a pool.
Budgets are host numpy (from the step's plan) or device tensors (from the step's device
budgets: no host data, so a graph-form step computes them at replay).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch

from gsa.sparse import Step

__all__ = ["PREFETCH_MODES", "check_prefetch", "check_eviction", "wide_budgets", "wide_k", "check_speculate",
           "speculative_budgets"]

Tensor = torch.Tensor

PREFETCH_MODES = (None, "previous", "lookahead", "speculative")


def check_prefetch(where: str, prefetch, selector: str):
    """``prefetch`` normalised (``True`` -> ``"previous"``, falsy -> ``None``) and checked."""
    prefetch = "previous" if prefetch is True else (prefetch or None)
    if prefetch not in PREFETCH_MODES:
        raise ValueError(f"{where}: 'prefetch' must be None, 'previous', 'lookahead' or 'speculative', "
                         f"got {prefetch!r}")
    if prefetch == "speculative" and selector != "device":
        # the speculative pass scores the device hash cache (CPU top-k keeps the codes on the host)
        raise ValueError(f"{where}: prefetch 'speculative' needs the device selector, got selector {selector!r}")
    return prefetch


def check_eviction(where: str, eviction, selector: str, prefetch) -> None:
    if eviction not in ("lru", "score"):
        raise ValueError(f"{where}: 'eviction' must be 'lru' or 'score', got {eviction!r}")
    if eviction == "score" and (selector != "device" or prefetch not in (None, "previous", "speculative")):
        # a lookahead or lagged prediction admits blocks between two priority updates, when
        # the keys of the last request's blocks still hold its recency stamp (the speculative
        # admission writes the priorities into the keys first: OffloadedGSA._admit_prediction)
        raise ValueError(f"{where}: eviction 'score' needs the device selector and prefetch None, "
                         f"'previous' or 'speculative', got selector {selector!r}, prefetch {prefetch!r}")


def wide_budgets(budgets, n_blocks, factor: float):
    """Widened budgets: ``ceil(budget * factor)``, at most ``n_blocks`` (int32). Host numpy
    arrays or device tensors (the same float64 arithmetic)."""
    if isinstance(budgets, torch.Tensor):
        return torch.minimum(torch.ceil(budgets.double() * factor), n_blocks.double()).to(torch.int32)
    return np.minimum(np.ceil(budgets.astype(np.float64) * factor), n_blocks).astype(np.int32)


def wide_k(step: Step, layer: int, factor: float) -> int:
    """Output width of ``layer``'s selection with budgets ``factor`` times the step's (eager:
    the widest row's widened budget from the host plan, forced blocks included)."""
    plan = step.plan
    return int(max(int(np.minimum(plan.n_blocks, np.maximum(
        wide_budgets(plan.budgets[layer], plan.n_blocks, factor), plan.n_forced)).max()), 1))


def check_speculate(off, layer: int, step: Step, q_spec, block_table, seq_lens, width) -> None:
    """:meth:`OffloadedGSA.speculate`'s arguments (host data only: shapes, the plan)."""
    where = "OffloadedGSA.speculate"
    if off.prefetch != "speculative":
        raise ValueError(f"{where}: needs prefetch 'speculative' at construction (or reset_residency), got "
                         f"prefetch {off.prefetch!r}")
    off._check_layer(layer)
    src = off.gsa.policy.layer(layer).selection_layer
    if src != layer:
        raise ValueError(f"{where}: 'layer' must be a scoring layer; layer {layer} reuses layer {src}'s selection, "
                         f"which is prefetched for it exactly after layer {src}'s request (speculate on layer {src})")
    if not (isinstance(width, (int, float)) and not isinstance(width, bool) and 1.0 <= float(width) < math.inf):
        raise ValueError(f"{where}: 'width' must be a number >= 1, got {width!r}")
    b = step.plan.batch_size
    off.gsa._check_query(layer, "q_spec", q_spec, off.gsa.config.head_dim, "head_dim",
                         off.hash_caches[layer].shape[1])
    if q_spec.shape[0] != b:
        raise ValueError(f"{where}: layer {layer}: 'q_spec' must have the step's B = {b} rows, got shape "
                         f"{tuple(q_spec.shape)}")
    if not (isinstance(block_table, Tensor) and isinstance(seq_lens, Tensor) and block_table.dim() == 2
            and block_table.shape[0] == b and tuple(seq_lens.shape) == (b,)):
        got = [tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in (block_table, seq_lens)]
        raise ValueError(f"{where}: layer {layer}: 'block_table, seq_lens' must be [B, M] and [B] with B = {b} "
                         f"(the step's plan), got {got[0]}, {got[1]}")


def speculative_budgets(step: Step, layer: int, seq_lens: Tensor, block_size: int, width: float,
                        m: int) -> Optional[Tuple[Tensor, int]]:
    """Device budgets ``int32 [B]`` and output width ``k`` of the speculative selection of
    ``layer``, or ``None`` for a dense step (the request is then the whole table). Width 1: the
    step's own budgets and ``k`` (the real selection's inputs; persistent in graph form). Wider:
    the step's device budgets widened on the device (each row at most its ``ceil(seq_len / bs)``
    blocks); ``k`` from the host plan (eager) or ``min(M, ceil(k * width))`` (graph form: a
    captured step's output shapes are fixed)."""
    plan = step.plan
    if not (plan.sparse or step.graph):
        return None
    if width == 1.0:
        return step.budgets[layer], plan.k
    k = min(m, math.ceil(plan.k * width)) if step.graph else wide_k(step, layer, width)
    n_blocks = (seq_lens.to(torch.int64) + (block_size - 1)) // block_size
    return wide_budgets(step.budgets[layer], n_blocks, width), k
