"""Block selectors for many query rows at once: GSA (Hamming), the exact-attention
oracle and a Quest-style bound, all at one budget rule (docs/accuracy.md).

Rows are ``N`` decode steps of one sequence: query ``i`` sits at position
``p_i = pos0 + i`` and sees ``seq_len_i = p_i + 1`` tokens (keys ``[S, Hkv, D]``,
``S >= seq_len_i``), ``n_blocks_i = ceil(seq_len_i / bs)``. Every selector returns
``bool [N, NBLK]`` (``NBLK = ceil(S / bs)``): the blocks row ``i`` attends to,
with the spec-5 rule (forced blocks, budget from the spec-8 policy, ties to the
smaller block index).

GSA scoring here uses the identity ``sim(a, b) = R - 2 popcount(a ^ b) =
<sgn(a), sgn(b)>`` (``sgn`` = the code's bits as +-1), so token scores of all
rows are one exact float32 matmul (integers below 2^24). The codes come from
``gsa.ops.hash_encode`` and :func:`gsa_select` checks sampled rows against
``gsa.ops.hamming_dist_top_k`` (bit-exact by the spec), so this is a faster
evaluation of the same op, not a second definition.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from gsa import ops
from gsa.eval.metrics import mass_recall, unpack_signs
from gsa.policy import GSAPolicy

__all__ = ["unpack_signs", "select_top", "block_scores", "gsa_block_scores", "quest_scores", "budgets_for",
           "gsa_select", "oracle_select", "quest_select", "quest_select_extra", "quest_equal_bytes_recall", "block_mass",
           "dense_probs"]


def budgets_for(policy: GSAPolicy, layer: int, seq_lens: torch.Tensor) -> tuple:
    """Spec 8 for rows of lengths ``seq_lens int64 [N]`` (all decode rows, assumed at
    or over the threshold): ``(n_blocks, budget, forced bool [N, NBLK_max])``."""
    nb = policy.n_blocks(seq_lens.cpu().numpy())
    nf = policy.n_forced(nb)
    bud = torch.as_tensor(policy.sparse_budget(layer, nb)).clamp(min=torch.as_tensor(nf))
    n_blocks = torch.as_tensor(nb)
    nmax = int(n_blocks.max())
    forced = torch.zeros(len(nb), nmax, dtype=torch.bool)
    for m in policy.config.must_select_blocks:
        idx = torch.full_like(n_blocks, m) if m >= 0 else n_blocks + m
        ok = (idx >= 0) & (idx < n_blocks)
        forced[ok.nonzero()[:, 0], idx[ok]] = True
    return n_blocks, bud, forced


def select_top(scores: torch.Tensor, n_blocks: torch.Tensor, budget: torch.Tensor,
               forced: torch.Tensor) -> torch.Tensor:
    """Spec 5 on block scores ``[N, NBLK]`` (any float; higher is better):
    ``n_blocks, budget int64 [N]``, ``forced bool [N, NBLK]`` -> ``bool [N, NBLK]``.
    ``budget >= n_blocks`` keeps every block; else the forced blocks plus the
    best ``max(budget, n_forced) - n_forced`` others, ties to the smaller index."""
    n, nblk = scores.shape
    forced = forced[:, :nblk] if forced.shape[1] >= nblk else torch.nn.functional.pad(forced, (0, nblk - forced.shape[1]))
    cols = torch.arange(nblk)
    valid = cols.unsqueeze(0) < n_blocks.unsqueeze(1)
    n_forced = forced.sum(dim=1)
    take = torch.where(budget >= n_blocks, n_blocks, torch.maximum(budget, n_forced)) - n_forced
    s = scores.double().masked_fill(~valid | forced, -math.inf)
    order = torch.sort(s, dim=1, descending=True, stable=True).indices  # stable: ties keep the smaller index first
    rank = torch.empty_like(order)
    rank.scatter_(1, order, cols.unsqueeze(0).expand(n, -1).contiguous())
    return (forced | (rank < take.unsqueeze(1))) & valid


def _block_max(tok: torch.Tensor, seq_lens: torch.Tensor, bs: int) -> torch.Tensor:
    """Token scores ``[N, S]`` -> block max ``[N, NBLK]`` over valid tokens (``-inf`` if none)."""
    n, s = tok.shape
    nblk = math.ceil(s / bs)
    valid = torch.arange(s, device=tok.device).unsqueeze(0) < seq_lens.to(tok.device).unsqueeze(1)
    t = tok.masked_fill(~valid, -math.inf)
    t = torch.nn.functional.pad(t, (0, nblk * bs - s), value=-math.inf)
    return t.reshape(n, nblk, bs).amax(dim=2)


def _block_mean(tok: torch.Tensor, seq_lens: torch.Tensor, bs: int) -> torch.Tensor:
    """Token scores ``[N, S]`` (exact integers) -> spec-4 block ``mean`` ``[N, NBLK]``:
    ``float32(sum) / float32(count)`` over valid tokens (``-inf`` if none). The sums are
    exact in float64 (integer scores), then rounded to float32 as the spec says."""
    n, s = tok.shape
    nblk = math.ceil(s / bs)
    valid = torch.arange(s, device=tok.device).unsqueeze(0) < seq_lens.to(tok.device).unsqueeze(1)
    pad = (0, nblk * bs - s)
    total = torch.nn.functional.pad(tok.double().masked_fill(~valid, 0.0), pad).reshape(n, nblk, bs).sum(dim=2)
    count = torch.nn.functional.pad(valid, pad).reshape(n, nblk, bs).sum(dim=2)
    mean = total.float() / count.clamp(min=1).float()
    return mean.masked_fill(count == 0, -math.inf)


_BLOCK_REPRE = {"max": _block_max, "mean": _block_mean}


def block_scores(tok: torch.Tensor, seq_lens: torch.Tensor, bs: int, method: str = "max") -> torch.Tensor:
    """Spec-4 block scores of token scores ``tok [N, S]`` (any float; row ``i`` valid up to
    ``seq_lens[i]``) in blocks of ``bs`` -> ``[N, NBLK]``: ``method`` ``"max"`` (largest valid
    token score) or ``"mean"`` (``float32(sum) / float32(count)``); ``-inf`` for a block with
    no valid token. GSA's selection uses it on code similarities (:func:`gsa_select`); the
    code-free references of ``benchmarks/mlp_codes_study.py --ceilings`` on exact scores."""
    if method not in _BLOCK_REPRE:
        raise ValueError(f"block_scores: method must be one of {sorted(_BLOCK_REPRE)}, got {method!r}")
    return _BLOCK_REPRE[method](tok, seq_lens, bs)


def gsa_block_scores(cfg, q_codes: torch.Tensor, k_codes: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
    """GSA's spec-4 block scores (what :func:`gsa_select` ranks): ``q_codes uint8 [N, Hq,
    C]``, ``k_codes uint8 [S, Hkv, C]``, ``seq_lens int64 [N]`` -> ``float32 [N, NBLK]``,
    the code similarity summed over each KV head's query group and the KV heads, per
    token, then the block ``max`` or ``mean`` (``cfg.chunk_repre_method``)."""
    if cfg.chunk_repre_method not in _BLOCK_REPRE:
        raise NotImplementedError(f"gsa_select: chunk_repre_method must be one of {sorted(_BLOCK_REPRE)}, "
                                  f"got {cfg.chunk_repre_method!r}")
    n, hq, c = q_codes.shape
    s, hkv, _ = k_codes.shape
    qs = unpack_signs(q_codes).reshape(n, hkv, hq // hkv, c * 8).sum(dim=2)  # [N, Hkv, R]: sum over the group
    ks = unpack_signs(k_codes)  # [S, Hkv, R]
    tok = torch.einsum("nhr,shr->ns", qs, ks)  # exact integers
    return block_scores(tok, seq_lens, cfg.chunk_size, cfg.chunk_repre_method)


def gsa_select(policy: GSAPolicy, layer: int, q_codes: torch.Tensor, k_codes: torch.Tensor,
               seq_lens: torch.Tensor, check_rows: int = 2) -> torch.Tensor:
    """GSA selection for ``N`` rows: ``q_codes uint8 [N, Hq, C]``, ``k_codes uint8
    [S, Hkv, C]`` (from ``gsa.ops.hash_encode``), ``seq_lens int64 [N]`` -> ``bool
    [N, NBLK]``, with the config's block score (``chunk_repre_method`` ``max`` or
    ``mean``, spec 4). ``check_rows`` rows (spread over N) are recomputed with
    ``gsa.ops.hamming_dist_top_k`` and must match exactly."""
    cfg = policy.config
    n = q_codes.shape[0]
    n_blocks, bud, forced = budgets_for(policy, layer, seq_lens)
    sel = select_top(gsa_block_scores(cfg, q_codes, k_codes, seq_lens), n_blocks, bud, forced)
    for i in torch.linspace(0, n - 1, steps=min(check_rows, n)).long().tolist():
        _check_row(cfg, q_codes[i], k_codes, int(seq_lens[i]), int(bud[i]), sel[i])
    return sel


def _check_row(cfg, q_code: torch.Tensor, k_codes: torch.Tensor, seq_len: int, budget: int,
               got: torch.Tensor) -> None:
    bs = cfg.chunk_size
    nblk = math.ceil(k_codes.shape[0] / bs)
    pad = nblk * bs - k_codes.shape[0]
    cache = torch.nn.functional.pad(k_codes, (0, 0, 0, 0, 0, pad)).reshape(nblk, bs, *k_codes.shape[1:])
    cache = cache.transpose(1, 2).contiguous()  # [NB, Hkv, bs, C]
    nb_row = math.ceil(seq_len / bs)
    table = torch.arange(nblk, dtype=torch.int32).unsqueeze(0)
    idx, n_sel = ops.hamming_dist_top_k(
        q_code.unsqueeze(0), cache, table, torch.tensor([seq_len], dtype=torch.int32),
        torch.tensor([budget], dtype=torch.int32), nb_row, list(cfg.must_select_blocks), cfg.chunk_repre_method)
    want = torch.zeros(got.shape[0], dtype=torch.bool)
    want[idx[0, : int(n_sel[0])].long()] = True
    if not torch.equal(want, got):
        raise AssertionError(f"gsa_select disagrees with gsa.ops.hamming_dist_top_k at seq_len {seq_len}: "
                             f"{got.nonzero()[:, 0].tolist()} vs {want.nonzero()[:, 0].tolist()}")


def dense_probs(q: torch.Tensor, k: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                softcap: Optional[float] = None) -> torch.Tensor:
    """Exact softmax ``float32 [N, Hq, S]`` of ``q [N, Hq, D]`` over ``k [S, Hkv, D]``, row
    ``i`` masked to its first ``seq_lens[i]`` tokens; ``scale`` and ``softcap`` as the
    model's attention uses them (logits ``softcap * tanh(scale q.k / softcap)``)."""
    n, hq, d = q.shape
    s, hkv, _ = k.shape
    logits = torch.einsum("nkgd,skd->nkgs", q.float().reshape(n, hkv, hq // hkv, d), k.float()) * scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    logits = logits.reshape(n, hq, s)
    valid = torch.arange(s, device=logits.device).unsqueeze(0) < seq_lens.to(logits.device).unsqueeze(1)
    return torch.softmax(logits.masked_fill(~valid.unsqueeze(1), -math.inf), dim=-1)


def block_mass(probs: torch.Tensor, bs: int) -> torch.Tensor:
    """``[N, Hq, S]`` -> per-head mass per block ``[N, Hq, NBLK]``."""
    n, h, s = probs.shape
    nblk = math.ceil(s / bs)
    p = torch.nn.functional.pad(probs, (0, nblk * bs - s))
    return p.reshape(n, h, nblk, bs).sum(dim=3)


def oracle_select(policy: GSAPolicy, layer: int, mass: torch.Tensor, seq_lens: torch.Tensor,
                  extra_budget: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Oracle at the same budget: blocks ranked by their exact attention mass summed
    over the layer's query heads (``mass [N, Hq, NBLK]`` from exact q.k): the
    selection with the most mass that the budget allows."""
    n_blocks, bud, forced = budgets_for(policy, layer, seq_lens)
    return select_top(mass.sum(dim=1), n_blocks, bud, forced)


def quest_scores(q: torch.Tensor, k: torch.Tensor, bs: int, scale: float) -> torch.Tensor:
    """Quest's block scores on ``q``'s device: ``q [N, Hq, D]``, keys ``k [S, Hkv, D]``
    -> float32 ``[N, NBLK]``, the upper bound ``sum_d max(q_d min_d, q_d max_d)`` of
    ``q . k`` per block (channel-wise min/max over its valid keys), summed over the
    query heads, times ``scale``."""
    n, hq, d = q.shape
    s, hkv, _ = k.shape
    nblk = math.ceil(s / bs)
    kp = torch.nn.functional.pad(k.float(), (0, 0, 0, 0, 0, nblk * bs - s)).reshape(nblk, bs, hkv, d)
    mn, mx = kp.amin(dim=1), kp.amax(dim=1)  # [NBLK, Hkv, D]; padding rows only touch the last block
    if s % bs:
        last = k[(nblk - 1) * bs:].float()
        mn[-1], mx[-1] = last.amin(dim=0), last.amax(dim=0)
    qf = q.float().reshape(n, hkv, hq // hkv, d)
    ub = torch.maximum(torch.einsum("nkgd,bkd->nkgbd", qf, mn), torch.einsum("nkgd,bkd->nkgbd", qf, mx))
    return ub.sum(dim=-1).sum(dim=(1, 2)) * scale


def quest_select(policy: GSAPolicy, layer: int, q: torch.Tensor, k: torch.Tensor,
                 seq_lens: torch.Tensor, scale: float, budget_add: float = 0.0) -> torch.Tensor:
    """Quest-style peer: per block and KV head, channel-wise min/max of the keys;
    a block's score is the upper bound ``sum_d max(q_d min_d, q_d max_d)`` of q.k,
    summed over the layer's query heads (one selection shared by the heads, as in
    GSA). ``budget_add``: the signed equal-bytes allowance as a fraction of
    ``n_blocks`` (:func:`gsa.eval.harness.quest_extra_fraction`): the budget becomes
    ``budget + ceil(budget_add * n_blocks)`` (rounded up, i.e. in Quest's favour;
    negative when Quest's metadata costs more than the GSA code), kept within
    ``[n_forced, n_blocks]`` (the forced blocks are read whatever the budget).
    Partial last blocks use their valid tokens; they are forced anyway with the
    shipped ``must_select_blocks``."""
    scores = quest_scores(q, k, policy.config.chunk_size, scale).cpu()
    n_blocks = torch.as_tensor(policy.n_blocks(seq_lens.cpu().numpy()))
    extra = torch.ceil(budget_add * n_blocks.double()).long() if budget_add else torch.zeros_like(n_blocks)
    return quest_select_extra(policy, layer, scores, seq_lens, extra)


def quest_select_extra(policy: GSAPolicy, layer: int, scores: torch.Tensor, seq_lens: torch.Tensor,
                       extra: torch.Tensor) -> torch.Tensor:
    """Quest's selection from its block ``scores float [N, NBLK]`` (:func:`quest_scores`)
    at the spec-8 budget plus ``extra int64 [N]`` blocks per row (signed), kept within
    ``[n_forced, n_blocks]`` -> ``bool [N, NBLK]``."""
    n_blocks, bud, forced = budgets_for(policy, layer, seq_lens)
    bud = torch.minimum(n_blocks, bud + extra.to(bud.dtype))
    bud = torch.maximum(bud, forced.sum(dim=1).to(bud.dtype))
    return select_top(scores, n_blocks, bud, forced)


def quest_equal_bytes_recall(policy: GSAPolicy, layer: int, scores: torch.Tensor, mass: torch.Tensor,
                             seq_lens: torch.Tensor, budget_add: float) -> tuple:
    """Quest's attention-mass recall at *exactly* GSA's bytes, without rounding blocks.

    The equal-bytes allowance ``a = budget_add * n_blocks`` (``budget_add`` from
    :func:`gsa.eval.harness.quest_extra_fraction`) is a fraction of a block in general;
    :func:`quest_select` rounds it up (Quest's favour). Here, per row, with ``f = a -
    floor(a)``: ``floor`` = the recall at ``floor(a)`` extra blocks (Quest never reads
    more bytes than GSA), ``exact = (1 - f) recall(floor(a)) + f recall(floor(a) + 1)``,
    the expected recall of a Quest that reads the one extra block with probability
    ``f``, i.e. exactly GSA's bytes on average. ``scores [N, NBLK]``, ``mass float [N,
    Hq, NBLK]`` (:func:`block_mass`) -> ``(floor, exact)``, each ``float [N]``."""
    n_blocks = torch.as_tensor(policy.n_blocks(seq_lens.cpu().numpy()))
    a = budget_add * n_blocks.double()
    lo = torch.floor(a)
    f = (a - lo).float()
    r_lo = mass_recall(mass, quest_select_extra(policy, layer, scores, seq_lens, lo.long()))
    r_hi = mass_recall(mass, quest_select_extra(policy, layer, scores, seq_lens, lo.long() + 1))
    return r_lo, (1 - f) * r_lo + f * r_hi
