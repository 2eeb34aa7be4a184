"""The MLA decode hot path (spec 9 through gsa.hotpath: query hash of the absorbed latent
query and q_pe, selection with the rope bytes weighted; key hashing of c_kv and k_pe as a
launch program) against the reference composition, on every backend that serves CPU
tensors (the triton backend in the interpreter when TRITON_INTERPRET=1): several steps
with changing lengths and tables, reused buffers, forced blocks, a graph-form step with an
engine padding row, and bad input after the signature was validated."""
import pytest
import torch

import gsa
from gsa import reference as R
from gsa.config import GSAConfig
from gsa.sparse import GSASparse
from gsa.weights import random_hash_weight
from test_hotpath import BS as HOT_BS, _layout  # the paged layout of the GQA hot-path tests

BS = 8
assert BS == HOT_BS
L, P, N = 32, 16, 4
CFG = dict(model_name="t/mla-hot", is_mla=True, num_hidden_layers=4, num_attention_heads=N, kv_lora_rank=L,
           qk_rope_head_dim=P, hash_bits_kv_lora=64, hash_bits_qk_rope=32, rope_score_weight=0.75, chunk_size=BS,
           top_k_ratio_per_layer=[1, .25, .5, .25], top_k_index_reuse=[-1, -1, -1, 1], must_select_blocks=[0, -1],
           gpu_seq_len_threshold=24, gpu_concurrency_threshold=1, seed=7)


def _weights(cfg, layer):
    return (random_hash_weight(cfg.seed, layer, 1, L, 64, "kv_lora")[0],
            random_hash_weight(cfg.seed, layer, 1, P, 32, "qk_rope")[0])


def _want(cfg, layer, q_lat, q_pe, cache, table, seq, budgets, k):
    w_lora, w_rope = _weights(cfg, layer)
    live = seq > 0
    idx, n = R.hamming_dist_top_k(R.mla_hash_encode(q_lat, q_pe, w_lora, w_rope), cache, table, seq.clamp(min=1),
                                  budgets, k, cfg.must_select_blocks, cfg.chunk_repre_method,
                                  rope_bytes=cfg.rope_bytes, rope_score_weight=cfg.rope_score_weight)
    t, lens = R.kv_select(idx, n, table, seq.clamp(min=1), BS)
    return t.masked_fill(~live[:, None], 0), lens.masked_fill(~live, 0)


def test_mla_hot_path_steps_equal_reference(backend, rng):
    cfg = GSAConfig(**CFG)
    gs = GSASparse(cfg)
    b, m = 5, 12
    nb = b * m + 4
    caches = gs.allocate_hash_caches(nb)
    keep = []
    for step_i in range(4):
        graph = step_i == 3  # graph form: the table's full width, a padding row (seq_len 0)
        seq = torch.randint(1, m * BS + 1, (b,), generator=rng).tolist()
        seq[0] = m * BS  # a full row, sparse every step
        table, slots = _layout(seq, m, nb, rng)
        c_kv, k_pe = torch.randn(slots.numel(), L, generator=rng), torch.randn(slots.numel(), P, generator=rng)
        for l in gs.scoring_layers:
            gs.cache_keys(l, caches[l], slots, c_kv, k_pe)
            want_cache = torch.zeros_like(caches[l])
        if step_i == 0:
            assert gs._hot_keys.get(1), "no MLA key-hashing program: the fast path is not exercised"
        step = gs.begin_step(seq, k=m, graph=True) if graph else gs.begin_step(seq)
        seq_t = torch.tensor(seq, dtype=torch.int32)
        if graph:
            seq_t[-1] = 0  # the engine's padding row
        # the absorbed query and q_pe as vLLM hands them: views of one [B, N, L + P] tensor
        q = torch.randn(b, N, L + P, generator=rng)
        q_lat, q_pe = q.split([L, P], dim=-1)
        for l in range(cfg.num_hidden_layers):
            got_t, got_l = gs.select(l, step, table, seq_t, caches.get(l), q_lat, q_pe)
            src = gs.policy.layer(l).selection_layer
            if src < 0 or not (step.plan.sparse or graph):
                assert got_t is table and got_l is seq_t
                continue
            if l != src:
                continue
            w_lora, w_rope = _weights(cfg, src)
            want_cache.zero_()
            R.mla_hash_encode_and_cache(c_kv, k_pe, w_lora, w_rope, want_cache, slots)
            written = caches[src].reshape(-1, cfg.code_bytes)[slots]
            assert torch.equal(written, want_cache.reshape(-1, cfg.code_bytes)[slots]), (step_i, l)
            want_t, want_l = _want(cfg, src, q_lat, q_pe, caches[src], table, seq_t, step.budgets[src], step.plan.k)
            assert torch.equal(got_t, want_t), (step_i, l)
            assert torch.equal(got_l, want_l), (step_i, l)
            keep.append(got_t)
    assert any(t.data_ptr() == keep[0].data_ptr() for t in keep[1:-1])  # reused buffers (eager steps)


def test_mla_hot_path_rejects_bad_input_after_validation(backend, rng):
    cfg = GSAConfig(**CFG)
    gs = GSASparse(cfg)
    caches = gs.allocate_hash_caches(32)
    step = gs.begin_step([40, 40])
    table = torch.arange(12, dtype=torch.int32).reshape(2, 6)
    seq = torch.tensor([40, 40], dtype=torch.int32)
    q_lat, q_pe = torch.randn(2, N, L), torch.randn(2, N, P)
    gs.select(1, step, table, seq, caches[1], q_lat, q_pe)  # the signature is now validated
    with pytest.raises(ValueError, match="q_rope"):
        gs.select(1, step, table, seq, caches[1], q_lat, torch.randn(2, N, P + 1))
    with pytest.raises(ValueError, match="q_rope"):
        gs.select(1, step, table, seq, caches[1], q_lat, None)
    with pytest.raises(gsa.GSAInputError, match="seq_lens"):  # a value check on CPU tensors
        gs.select(1, step, table, torch.tensor([40, 999], dtype=torch.int32), caches[1], q_lat, q_pe)
    _, slots = _layout([20, 13], 4, 32, rng)
    c_kv, k_pe = torch.randn(slots.numel(), L), torch.randn(slots.numel(), P)
    gs.cache_keys(1, caches[1], slots, c_kv, k_pe)
    bad = slots.clone()
    bad[0] = 32 * BS
    with pytest.raises(gsa.GSAInputError, match="slot"):  # the program's own call: slot values checked
        gs.cache_keys(1, caches[1], bad, c_kv, k_pe)
    with pytest.raises(gsa.GSAInputError, match="feature dim"):  # k_pe of another width
        gs.cache_keys(1, caches[1], slots, c_kv, torch.randn(slots.numel(), P + 2))
