"""The Triton backend's decode hot path (``gsa.hotpath`` calls it through ``gsa.dispatch``).

The same kernels as the ops, without the op layer: the caller has validated one
signature (shapes, strides, dtypes, devices and its persistent tensors) and owns
the output buffers; for that signature each method here returns a
:class:`~cuda_ops.program.Program` (the wrappers' launches recorded once, replayed
by calling the compiled kernels directly). A sparse layer's selection is three
launches: query hash, block scores, selection with ``kv_select`` fused (or two:
scores and selection in one kernel, the ``select.fuse`` tuning choice); new-key
hashing one; attention two (split, reduce) or one (``attention.fuse``).
"""
from __future__ import annotations

import torch

from . import attention, hashing, scoring
from .program import Program, Recorder

__all__ = ["TritonHotPath"]


class TritonHotPath:
    """Builds launch programs for validated signatures (one instance per process)."""

    name = "triton"
    # select_program writes every block's order key into its ``keys [B, M]`` buffer (scores and
    # selection, fused or not): gsa.offload's score-aware eviction reads them there
    fills_block_keys = True

    def select_program(self, q, weight, hash_cache, block_table, seq_lens, budgets, k, must_select_blocks,
                       chunk_repre_method, pad_id, q_codes, keys, table, lens, rope=None):
        """``run(q, block_table, seq_lens, budgets)``: spec 2 (query codes into ``q_codes``),
        spec 4-6 into ``table int32 [B, k]`` / ``lens int32 [B]`` (``keys int32 [B, M]`` scratch).
        ``weight`` and ``hash_cache`` are fixed for the program. MLA (spec 9): ``weight`` is
        ``w_lora [L, R_lora]``, ``rope = (q_rope [B, N, P], w_rope [P, R_rope], rope_bytes,
        rope_score_weight)`` and the program is ``run(q, block_table, seq_lens, budgets, q_rope)``:
        two hash launches (latent bytes, then rope bytes), every head sharing one projection."""
        rec = Recorder()
        # zeros the fused score + selection kernel counts finished blocks in (it leaves them zero)
        counter = torch.zeros(block_table.shape[0], dtype=torch.int32, device=q.device)
        inputs = [("q", q), ("block_table", block_table), ("seq_lens", seq_lens), ("budgets", budgets)]
        fixed = [weight, hash_cache, q_codes, keys, table, lens, counter]
        if rope is None:
            pdl = scoring.use_pdl(q.device)  # the score kernel may start while the query hash runs
            hashing._launch(q, weight, q.shape[1] // weight.shape[0], q_codes, 0, cache=rec, launch_dependents=pdl)
            rope_bytes, rope_w = 0, 1.0
        else:
            q_rope, w_rope, rope_bytes, rope_w = rope
            pdl = False  # two hash launches: the score kernel must wait for both
            n = q.shape[1]
            hashing._launch(q, weight.unsqueeze(0), n, q_codes, 0, cache=rec)
            hashing._launch(q_rope, w_rope.unsqueeze(0), n, q_codes, weight.shape[1] // 8, cache=rec)
            inputs.append(("q_rope", q_rope))
            fixed.append(w_rope)
        scoring.select_blocks(q_codes, hash_cache, block_table, seq_lens, budgets, k, must_select_blocks,
                              chunk_repre_method, rope_bytes, rope_w, pad_id, keys, table, lens, cache=rec,
                              counter=counter, pdl=pdl)
        return Program(rec, inputs, fixed, q.device)

    def cache_program(self, k, weight, hash_cache, slots, rope=None):
        """``run(k, slots)``: spec 3 into the fixed ``hash_cache`` with the fixed ``weight``.
        MLA (spec 9): ``k = c_kv [T, L]``, ``weight = w_lora``, ``rope = (k_pe [T, P], w_rope)``
        and the program is ``run(k, slots, k_rope)``."""
        rec = Recorder()
        if rope is None:
            hashing._launch(k, weight, k.shape[1] // weight.shape[0], hash_cache, 0, slots, cache=rec)
            return Program(rec, [("k", k), ("slots", slots)], [weight, hash_cache], k.device)
        k_pe, w_rope = rope
        hashing._launch(k.unsqueeze(1), weight.unsqueeze(0), 1, hash_cache, 0, slots, cache=rec)
        hashing._launch(k_pe.unsqueeze(1), w_rope.unsqueeze(0), 1, hash_cache, weight.shape[1] // 8, slots, cache=rec)
        return Program(rec, [("k", k), ("slots", slots), ("k_rope", k_pe)], [weight, w_rope, hash_cache], k.device)

    def attention_program(self, q, k_cache, v_cache, block_table, seq_lens, scale, out, work):
        """``run(q, k_cache, v_cache, block_table, seq_lens, out)``: spec 7 into ``out``
        (``work``: a dict that keeps the fp32 partials, fixed for the program)."""
        rec = Recorder()
        attention.paged_decode_attention(q, k_cache, v_cache, block_table, seq_lens, scale, out=out, work=work,
                                         cache=rec)
        return Program(rec, [("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("block_table", block_table),
                             ("seq_lens", seq_lens), ("out", out)],
                       [work["o"], work["ml"][0], work["ml"][1], work["cnt"]],
                       q.device)

    # offload (gsa.offload's "uva" mover): the GPU reads / writes pinned host memory itself
    def gather_blocks(self, host_k, host_v, pool_k, pool_v, src, dst, n_miss):
        from .offload_copy import gather_blocks

        gather_blocks(host_k, host_v, pool_k, pool_v, src, dst, n_miss)

    def scatter_rows(self, host_k, host_v, slots, k, v):
        from .offload_copy import scatter_rows

        scatter_rows(host_k, host_v, slots, k, v)

    def residency_admit(self, state, work, blocks, src, dst, n_miss, request):
        from .offload_residency import residency_admit

        residency_admit(state, work, blocks, src, dst, n_miss, request)

    # gsa.offload's score-aware eviction: the priority update and the eviction keys in one launch each
    def priority_update(self, keys, block_table, seq_lens, prio, decay, block_size, mean):
        from .offload_residency import priority_update

        priority_update(keys, block_table, seq_lens, prio, decay, block_size, mean)

    def priority_keys(self, block_of, prio, last_used):
        from .offload_residency import priority_keys

        priority_keys(block_of, prio, last_used)
