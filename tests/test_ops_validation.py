"""Bad input: one clear error naming the argument, expected vs got; nothing written."""
import re

import pytest
import torch

import gsa
from gsa import GSAInputError, ops


def good_select_args(b=2, m=4, bs=4, c=16):
    return dict(
        q_codes=torch.zeros(b, 4, c, dtype=torch.uint8),
        key_cache=torch.zeros(10, 2, bs, c, dtype=torch.uint8),
        block_table=torch.arange(b * m, dtype=torch.int32).reshape(b, m) % 10,
        seq_lens=torch.full((b,), 13, dtype=torch.int32),
        budgets=torch.full((b,), 2, dtype=torch.int32),
        k=4,
    )


def raises(arg, *fragments):
    pattern = f"argument '{arg}'.*" + ".*".join(re.escape(f) for f in fragments)
    return pytest.raises(GSAInputError, match=pattern)


SELECT_CASES = [
    ("q_codes", dict(q_codes=torch.zeros(2, 4, 16)), ["dtype uint8", "got float32"]),
    ("q_codes", dict(q_codes=torch.zeros(2, 16, dtype=torch.uint8)), ["3-D tensor", "(2, 16)"]),
    ("q_codes", dict(q_codes=torch.zeros(2, 4, 6, dtype=torch.uint8)), ["multiple of 4", "got 6"]),
    ("key_cache", dict(key_cache=torch.zeros(10, 3, 4, 16, dtype=torch.uint8)), ["dividing Hq = 4", "Hkv = 3"]),
    ("key_cache", dict(key_cache=torch.zeros(10, 2, 4, 8, dtype=torch.uint8)), ["shape[3] == 16"]),
    ("block_table", dict(block_table=torch.zeros(2, 4, dtype=torch.int64)), ["dtype int32", "int64"]),
    ("block_table", dict(block_table=torch.zeros(3, 4, dtype=torch.int32)), ["shape[0] == 2"]),
    ("seq_lens", dict(seq_lens=torch.tensor([13, 0], dtype=torch.int32)), ["lengths >= 1", "got 0"]),
    ("seq_lens", dict(seq_lens=torch.tensor([13, 17], dtype=torch.int32)), ["M*bs = 16", "got 17"]),
    ("block_table", dict(block_table=torch.tensor([[0, 1, 2, 3], [4, 5, 6, 10]], dtype=torch.int32)),
     ["of the cache's 10 blocks", "got 10"]),
    ("budgets", dict(budgets=torch.tensor([2, 0], dtype=torch.int32)), ["budgets >= 1", "got 0"]),
    ("k", dict(k=1), ["at least the largest n_sel (2)", "got 1"]),
    ("k", dict(k=0), ["int >= 1", "got 0"]),
    ("chunk_repre_method", dict(chunk_repre_method="avg"), ["'max' or 'mean'", "'avg'"]),
    ("rope_bytes", dict(rope_bytes=3), ["multiple of 4", "got 3"]),
    ("rope_score_weight", dict(rope_bytes=4, rope_score_weight=0.3), ["multiple of 1/16", "got 0.3"]),
    ("block_table", dict(block_table=torch.zeros(2, 4, dtype=torch.int32, device="meta")), ["device cpu"]),
]


@pytest.mark.parametrize("arg,override,fragments", SELECT_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(SELECT_CASES)])
def test_hamming_dist_top_k_errors(arg, override, fragments):
    args = good_select_args()
    args.update(override)
    with raises(arg, *fragments):
        ops.hamming_dist_top_k(**args)


def test_good_select_args_pass():
    idx, n = ops.hamming_dist_top_k(**good_select_args())
    assert n.tolist() == [2, 2]


def test_cache_errors_write_nothing():
    k = torch.randn(3, 2, 8)
    w = torch.randn(2, 8, 32)
    cache = torch.full((2, 2, 4, 4), 7, dtype=torch.uint8)
    before = cache.clone()
    with raises("slot_mapping", "NB*bs = 8", "got 8"):
        ops.hash_encode_and_cache(k, w, cache, torch.tensor([0, 8, -1]))
    with raises("slot_mapping", "dtype int32 or int64", "float32"):
        ops.hash_encode_and_cache(k, w, cache, torch.tensor([0.0, 1.0, 2.0]))
    with raises("slot_mapping", "shape[0] == 3"):
        ops.hash_encode_and_cache(k, w, cache, torch.tensor([0, 1]))
    with raises("cache", "shape[3] == 4"):
        ops.hash_encode_and_cache(k, w, torch.zeros(2, 2, 4, 8, dtype=torch.uint8), torch.tensor([0, 1, 2]))
    with raises("cache", "dtype uint8"):
        ops.hash_encode_and_cache(k, w, torch.zeros(2, 2, 4, 4, dtype=torch.int8), torch.tensor([0, 1, 2]))
    with raises("weight", "one projection per KV head"):
        ops.hash_encode_and_cache(k, torch.randn(1, 8, 32), cache, torch.tensor([0, 1, 2]))
    assert torch.equal(cache, before)


def test_hash_encode_errors():
    with raises("weight", "positive multiple of 32", "got 48"):
        ops.hash_encode(torch.randn(3, 16), torch.randn(16, 48))
    with raises("weight", "shape[-2] == 16"):
        ops.hash_encode(torch.randn(3, 16), torch.randn(8, 32))
    with raises("x", "dtype float16 or bfloat16 or float32", "int64"):
        ops.hash_encode(torch.ones(3, 16, dtype=torch.int64), torch.randn(16, 32))
    with raises("weight", "dividing the input's 3 heads"):
        ops.hash_encode(torch.randn(2, 3, 16), torch.randn(2, 16, 32))
    with raises("x", "last dim a multiple of 8"):
        ops.sign_bits_pack(torch.randn(4, 12))


def test_mla_errors():
    c_kv, k_pe = torch.randn(4, 64), torch.randn(4, 16)
    w_l, w_r = torch.randn(64, 64), torch.randn(16, 32)
    with raises("x_rope", "leading dims (4,)"):
        ops.mla_hash_encode(c_kv, torch.randn(5, 16), w_l, w_r)
    with raises("w_rope", "shape[0] == 16"):
        ops.mla_hash_encode(c_kv, k_pe, w_l, torch.randn(8, 32))
    cache = torch.zeros(2, 1, 4, 12, dtype=torch.uint8)
    with raises("cache", "shape[1] == 1"):
        ops.mla_hash_encode_and_cache(c_kv, k_pe, w_l, w_r, torch.zeros(2, 2, 4, 12, dtype=torch.uint8), torch.arange(4))
    with raises("slot_mapping", "NB*bs = 8", "got 9"):
        ops.mla_hash_encode_and_cache(c_kv, k_pe, w_l, w_r, cache, torch.tensor([0, 1, 9, -1]))
    assert int(cache.sum()) == 0


def test_kv_select_errors():
    table = torch.tensor([[3, 4, 5]], dtype=torch.int32)
    seq = torch.tensor([9], dtype=torch.int32)
    n = torch.tensor([2], dtype=torch.int32)
    with raises("indices", "logical blocks in [0, n_blocks = 3)", "[0, 3]"):
        ops.kv_select(torch.tensor([[0, 3]], dtype=torch.int32), n, table, seq, 4)
    with raises("n_sel", "width K = 2", "got 3"):
        ops.kv_select(torch.tensor([[0, 1]], dtype=torch.int32), torch.tensor([3], dtype=torch.int32), table, seq, 4)
    with raises("seq_lens", "lengths >= 1", "got 0"):
        ops.kv_select(torch.tensor([[0, 1]], dtype=torch.int32), n, table, torch.tensor([0], dtype=torch.int32), 4)
    with raises("block_size", "int >= 1", "got 0"):
        ops.kv_select(torch.tensor([[0, 1]], dtype=torch.int32), n, table, seq, 0)


def test_attention_errors():
    q = torch.randn(1, 4, 8, dtype=torch.bfloat16)
    kc = torch.randn(3, 4, 2, 8, dtype=torch.bfloat16)
    table = torch.tensor([[0, 2]], dtype=torch.int32)
    with raises("k_cache", "dtype bfloat16", "float32"):
        ops.paged_decode_attention(q, kc.float(), kc.float(), table, torch.tensor([5], dtype=torch.int32))
    with raises("seq_lens", "lengths >= 1", "got 0"):
        ops.paged_decode_attention(q, kc, kc, table, torch.tensor([0], dtype=torch.int32))
    with raises("block_table", "cache's 3 blocks", "got 7"):
        ops.paged_decode_attention(q, kc, kc, torch.tensor([[0, 7]], dtype=torch.int32), torch.tensor([5], dtype=torch.int32))
    with raises("v_cache", "shape (3, 4, 2, 8)"):
        ops.paged_decode_attention(q, kc, kc[:2], table, torch.tensor([5], dtype=torch.int32))


def test_unchecked_violations_stay_in_bounds():
    """With range checks off (as on an accelerator without debug mode), bad
    slots are skipped rather than written out of bounds, and a too-small k clamps."""
    from gsa import validate

    k = torch.randn(2, 1, 8)
    w = torch.randn(1, 8, 32)
    cache = torch.zeros(1, 1, 2, 4, dtype=torch.uint8)
    orig = validate.range_checks_on
    validate.range_checks_on = lambda *t: False
    try:
        ops.hash_encode_and_cache(k, w, cache, torch.tensor([1, 5]))  # 5 is past the cache
        idx, n = ops.hamming_dist_top_k(**dict(good_select_args(), k=1))
    finally:
        validate.range_checks_on = orig
    assert cache[0, 0, 0].tolist() == [0, 0, 0, 0]  # only slot 1 written
    assert idx.shape == (2, 1) and n.tolist() == [1, 1]
