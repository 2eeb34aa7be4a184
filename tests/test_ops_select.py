"""Spec 4, 5, 6: scores, hamming_dist_top_k and kv_select, per backend.

Hand-computed cases use one query head and one KV head with an all-zero query,
so a key byte pattern with ``p`` set bits out of R = 32 has ``sim = 32 - 2p``.
"""
import pytest
import torch

from gsa import ops, reference as ref
from conftest import assert_backend_ran

R = 32


def key_with_popcount(p: int) -> torch.Tensor:
    """A 4-byte code with exactly ``p`` bits set (LSB first)."""
    bits = torch.zeros(R, dtype=torch.bool)
    bits[:p] = True
    weights = 2 ** torch.arange(8)
    return (bits.reshape(4, 8).long() * weights).sum(-1).to(torch.uint8)


def one_head_case(popcounts, bs):
    """Cache holding one token per popcount, blocks in order; identity block table."""
    n = len(popcounts)
    nb = (n + bs - 1) // bs
    cache = torch.zeros(nb, 1, bs, 4, dtype=torch.uint8)
    for t, p in enumerate(popcounts):
        cache[t // bs, 0, t % bs] = key_with_popcount(p)
    q = torch.zeros(1, 1, 4, dtype=torch.uint8)
    table = torch.arange(nb, dtype=torch.int32).unsqueeze(0)
    return q, cache, table


def select(q, cache, table, seq_len, budget, k, forced=(), method="max", **kw):
    idx, n = ops.hamming_dist_top_k(q, cache, table, torch.tensor([seq_len], dtype=torch.int32),
                                    torch.tensor([budget], dtype=torch.int32), k, forced, method, **kw)
    return idx[0].tolist(), int(n[0])


# popcounts per token, bs = 2 -> block sims (max): [32, 24, 32, 16]; token 7 (sim 32)
# lies past seq_len 7 and must not count.
CASE = [0, 32, 4, 4, 0, 0, 8, 0]


def test_max_ties_go_to_smaller_index(backend):
    q, cache, table = one_head_case(CASE, bs=2)
    assert select(q, cache, table, 8, budget=1, k=4) == ([0, -1, -1, -1], 1)  # blocks 0, 2 tie at 32
    assert select(q, cache, table, 8, budget=2, k=4) == ([0, 2, -1, -1], 2)
    assert_backend_ran("hamming_dist_top_k", backend)


def test_partial_last_block_ignores_tokens_past_seq_len(backend):
    q, cache, table = one_head_case(CASE, bs=2)
    # seq_len 7: block 3 holds token 6 only (sim 16) -> third pick is block 1 (24)
    assert select(q, cache, table, 7, budget=3, k=4) == ([0, 1, 2, -1], 3)
    # seq_len 8: token 7 (sim 32) counts -> block 3 scores 32 and beats block 1
    assert select(q, cache, table, 8, budget=3, k=4) == ([0, 2, 3, -1], 3)


def test_mean_scores_and_ties(backend):
    q, cache, table = one_head_case(CASE, bs=2)
    # block means (seq 8): [(32-32)/2, 24, 32, (16+32)/2] = [0, 24, 32, 24]
    assert select(q, cache, table, 8, budget=1, k=4, method="mean") == ([2, -1, -1, -1], 1)
    assert select(q, cache, table, 8, budget=2, k=4, method="mean") == ([1, 2, -1, -1], 2)  # 1 and 3 tie
    # seq 7: block 3's mean is over its one valid token = 16 -> [0, 24, 32, 16]
    assert select(q, cache, table, 7, budget=3, k=4, method="mean") == ([1, 2, 3, -1], 3)
    assert select(q, cache, table, 7, budget=2, k=4, method="mean") == ([1, 2, -1, -1], 2)


def test_forced_blocks_beyond_budget(backend):
    q, cache, table = one_head_case(CASE, bs=2)
    # forced {0, 2, 3} exceed budget 1: all three selected, n_sel = 3
    assert select(q, cache, table, 8, budget=1, k=4, forced=[0, -2, -1]) == ([0, 2, 3, -1], 3)
    # forced {3} plus the best other block (0 beats 2 on the tie)
    assert select(q, cache, table, 8, budget=2, k=4, forced=[-1]) == ([0, 3, -1, -1], 2)


def test_forced_out_of_range_dropped_and_duplicates_merge(backend):
    q, cache, table = one_head_case(CASE, bs=2)
    assert select(q, cache, table, 8, budget=1, k=4, forced=[5, -9]) == ([0, -1, -1, -1], 1)
    assert select(q, cache, table, 8, budget=1, k=4, forced=[3, -1]) == ([3, -1, -1, -1], 1)
    # seq_len 3 -> 2 blocks: -1 names block 1, 3 is out of range
    assert select(q, cache, table, 3, budget=1, k=2, forced=[3, -1]) == ([1, -1], 1)


def test_budget_at_or_above_block_count_selects_all(backend):
    q, cache, table = one_head_case(CASE, bs=2)
    assert select(q, cache, table, 8, budget=4, k=4) == ([0, 1, 2, 3], 4)
    assert select(q, cache, table, 5, budget=99, k=4) == ([0, 1, 2, -1], 3)


def test_gqa_score_sums_heads_and_group():
    # Hkv = 2, G = 2: query heads 0, 1 read KV head 0; 2, 3 read KV head 1
    ones, zeros = torch.full((4,), 255, dtype=torch.uint8), torch.zeros(4, dtype=torch.uint8)
    q = torch.stack([zeros, ones, zeros, zeros]).unsqueeze(0)  # [1, 4, 4]
    cache = torch.zeros(1, 2, 2, 4, dtype=torch.uint8)
    cache[0, 0, 1] = ones
    cache[0, 1, 1] = ones
    scores, valid = ref.token_scores(q, cache, torch.zeros(1, 1, dtype=torch.int32), torch.tensor([2]))
    # token 0: head 0 (32 - 32) + head 1 (32 + 32) = 64; token 1: (-32 + 32) + (-32 - 32) = -64
    assert scores.tolist() == [[16 * 64, 16 * -64]] and valid.all()


def test_mla_rope_weight(backend):
    # C = 8: 4 main ("lora") bytes, then 4 rope bytes. bs = 1.
    z, f = torch.zeros(4, dtype=torch.uint8), torch.full((4,), 255, dtype=torch.uint8)
    cache = torch.zeros(2, 1, 1, 8, dtype=torch.uint8)
    cache[0, 0, 0] = torch.cat([z, f])  # main sim 32, rope sim -32
    cache[1, 0, 0] = torch.cat([key_with_popcount(8), z])  # main sim 16, rope sim 32
    q = torch.zeros(1, 1, 8, dtype=torch.uint8)
    table = torch.tensor([[0, 1]], dtype=torch.int32)
    # w = 0.5: block 0 = 32 - 16 = 16, block 1 = 16 + 16 = 32 -> block 1
    assert select(q, cache, table, 2, 1, 2, rope_bytes=4, rope_score_weight=0.5) == ([1, -1], 1)
    # w = 0: block 0 = 32, block 1 = 16 -> block 0
    assert select(q, cache, table, 2, 1, 2, rope_bytes=4, rope_score_weight=0.0) == ([0, -1], 1)
    # w = 1 equals scoring the whole 64-bit code: 0 vs 48 -> block 1
    assert select(q, cache, table, 2, 1, 2, rope_bytes=4, rope_score_weight=1.0) == ([1, -1], 1)
    assert select(q, cache, table, 2, 1, 2) == ([1, -1], 1)


def test_physical_block_table_indirection(backend):
    # logical block j lives in physical block table[j]; selection reports logical ids
    q, cache, _ = one_head_case(CASE, bs=2)
    perm = torch.tensor([3, 0, 2, 1])
    shuffled = torch.empty_like(cache)
    shuffled[perm] = cache
    table = perm.to(torch.int32).unsqueeze(0)
    assert select(q, shuffled, table, 8, budget=2, k=4) == ([0, 2, -1, -1], 2)


def test_kv_select_partial_and_full_last_block(backend):
    bs = 4
    table = torch.tensor([[7, 3, 9, 1], [2, 5, 6, 8]], dtype=torch.int32)
    seq = torch.tensor([14, 16], dtype=torch.int32)  # row 0: last block holds 2; row 1: full
    idx = torch.tensor([[0, 3, -1], [1, 3, -1]], dtype=torch.int32)
    n = torch.tensor([2, 2], dtype=torch.int32)
    t, lens = ops.kv_select(idx, n, table, seq, bs)
    assert_backend_ran("kv_select", backend)
    assert t.tolist() == [[7, 1, 0], [5, 8, 0]]
    assert lens.tolist() == [4 + 2, 4 + 4]
    t, lens = ops.kv_select(idx, n, table, seq, bs, pad_id=-7)
    assert t.tolist() == [[7, 1, -7], [5, 8, -7]]
    # a selection without the last block: all full blocks
    t, lens = ops.kv_select(torch.tensor([[1, 2, -1]] * 2, dtype=torch.int32), n, table, seq, bs)
    assert lens.tolist() == [8, 8]


def random_case(gen, b=3, hkv=2, g=2, c=8, bs=4, max_blocks=9, alphabet=(0, 255, 15, 170)):
    """Ragged rows, shuffled physical blocks, codes from a small alphabet (many ties)."""
    m = max_blocks
    nb = b * m + 3
    pick = torch.tensor(alphabet, dtype=torch.uint8)
    cache = pick[torch.randint(len(alphabet), (nb, hkv, bs, c), generator=gen)]
    q = pick[torch.randint(len(alphabet), (b, hkv * g, c), generator=gen)]
    table = torch.randperm(nb, generator=gen)[: b * m].reshape(b, m).to(torch.int32)
    seq = torch.randint(1, m * bs + 1, (b,), generator=gen).to(torch.int32)
    seq[0] = m * bs  # one full-width row
    budgets = torch.randint(1, m + 2, (b,), generator=gen).to(torch.int32)
    return q, cache, table, seq, budgets


@pytest.mark.parametrize("method", ["max", "mean"])
@pytest.mark.parametrize("mla", [False, True])
def test_backend_matches_reference_on_random_grid(backend, rng, method, mla):
    for _ in range(4):
        if mla:
            q, cache, table, seq, bud = random_case(rng, hkv=1, g=4, c=12)
            kw = dict(rope_bytes=4, rope_score_weight=float(torch.randint(0, 33, (1,), generator=rng)) / 16)
        else:
            q, cache, table, seq, bud = random_case(rng)
            kw = {}
        forced = [0, -2, -1]
        k = table.shape[1]
        got = ops.hamming_dist_top_k(q, cache, table, seq, bud, k, forced, method, **kw)
        want = ref.hamming_dist_top_k(q, cache, table, seq, bud, k, forced, method, **kw)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        sparse = ops.kv_select(got[0], got[1], table, seq, cache.shape[2])
        want_sparse = ref.kv_select(want[0], want[1], table, seq, cache.shape[2])
        assert torch.equal(sparse[0], want_sparse[0]) and torch.equal(sparse[1], want_sparse[1])
