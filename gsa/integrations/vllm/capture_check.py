"""Check one captured sparse decode against the reference (tests and GPU engine runs).

:meth:`GSAVllmRuntime.enable_capture` makes a layer record its next sparse step
(``runtime.captured``: the sparse rows' queries, outputs, dense and sparse tables and
lengths, the hash cache, the hash weights and the KV). This module recomputes that step
with :mod:`gsa.reference`, on the CPU:

* the selection (spec 3-5): the reference top-k and ``kv_select`` from the captured
  queries' codes and the captured hash cache must give the engine's sparse table and
  lengths **bit for bit**;
* the attention: the reference paged decode over the engine's sparse table, to compare
  with the backend kernel's output within a tolerance.

GQA captures hold ``k_cache`` / ``v_cache`` ``[NB, bs, Hkv, D]``; MLA captures hold the
latent cache ``kv_cache [NB, bs, L + P]`` (``c_kv`` then ``k_pe``), the absorbed query
``q [R, N, L + P]`` and ``weight = (W_lora, W_rope)``; the MLA output is the ``L``
latent channels (``V`` is ``c_kv``). Both for TP = 1 (the TP tests slice heads themselves).
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
from torch import Tensor

__all__ = ["query_codes", "reference_selection", "reference_output", "check_capture"]


def _cpu(t: Tensor) -> Tensor:
    return t.detach().cpu()


def query_codes(cap: Dict[str, Any], cfg: Any) -> Tensor:
    """The captured queries' codes, ``uint8 [R, H, code bytes]`` (GQA: spec 2 on ``q [R, Hq, D]``;
    MLA: spec 9 on the absorbed ``q [R, N, L + P]``)."""
    from gsa import reference as R
    from gsa.dispatch import use_backend

    q = _cpu(cap["q"])
    with use_backend("reference"):
        if getattr(cfg, "is_mla", False):
            lora = int(cfg.kv_lora_rank)
            w_lora, w_rope = (_cpu(w) for w in cap["weight"])
            return R.mla_hash_encode(q[..., :lora], q[..., lora:], w_lora, w_rope)
        return R.hash_encode(q, _cpu(cap["weight"]))


def reference_selection(cap: Dict[str, Any], cfg: Any, q_codes: Tensor, block: int) -> Tuple[Tensor, Tensor]:
    """``(block_table int32 [R, k], seq_lens int32 [R])`` the reference selects for the
    captured rows from ``q_codes`` and the captured hash cache (spec 3-5, config's forced
    blocks, representation and rope weight)."""
    from gsa import reference as R
    from gsa.dispatch import use_backend

    lens = _cpu(cap["seq_lens"])
    table = _cpu(cap["block_table"])
    weight = 1.0 if cfg.rope_score_weight is None else cfg.rope_score_weight  # GQA configs leave it unset
    with use_backend("reference"):
        idx, n_sel = R.hamming_dist_top_k(_cpu(q_codes), _cpu(cap["hash_cache"]), table, lens, _cpu(cap["budgets"]),
                                          cap["k"], cfg.must_select_blocks, cfg.chunk_repre_method, cfg.rope_bytes,
                                          weight)
        return R.kv_select(idx, n_sel, table, lens, block, 0)


def reference_output(cap: Dict[str, Any], cfg: Any) -> Tensor:
    """The reference paged decode over the engine's sparse table, float32 ``[R, H, Dv]``."""
    from gsa import reference as R
    from gsa.dispatch import use_backend

    q = _cpu(cap["q"]).float()
    table, lens = _cpu(cap["sparse_block_table"]), _cpu(cap["sparse_seq_lens"])
    with use_backend("reference"):
        if getattr(cfg, "is_mla", False):
            kv = _cpu(cap["kv_cache"]).float().unsqueeze(2)  # [NB, bs, 1, L + P]: one latent head
            return R.paged_decode_attention(q, kv, kv, table, lens, cap["scale"])[..., : int(cfg.kv_lora_rank)]
        return R.paged_decode_attention(q, _cpu(cap["k_cache"]).float(), _cpu(cap["v_cache"]).float(), table, lens,
                                        cap["scale"])


def check_capture(cap: Dict[str, Any], cfg: Any, block: int, atol: float = 2e-2) -> Dict[str, Any]:
    """Summary of one capture: ``table_equal`` / ``lens_equal`` (the engine's sparse table and
    lengths vs the reference selection, exact), ``max_abs_err`` of the backend's output vs
    :func:`reference_output` and ``ok`` (both equal and the error within ``atol``)."""
    want_t, want_l = reference_selection(cap, cfg, query_codes(cap, cfg), block)
    got_t, got_l = _cpu(cap["sparse_block_table"]), _cpu(cap["sparse_seq_lens"])
    k = want_t.shape[1]
    table_equal = k <= got_t.shape[1] and bool(torch.equal(want_t, got_t[:, :k]))
    lens_equal = bool(torch.equal(want_l.to(got_l.dtype), got_l))
    out = _cpu(cap["out"]).float()
    err = float((out - reference_output(cap, cfg)).abs().max()) if out.numel() else 0.0
    return dict(layer=cap["layer"], rows=int(out.shape[0]), max_abs_err=err, reference_table_equal=table_equal,
                reference_lens_equal=lens_equal, ok=table_equal and lens_equal and err <= atol)
