"""Triton kernels (cuda_ops) against the reference under ``TRITON_INTERPRET=1``.

The backend-parametrised op tests (tests/test_ops_*.py) already run every op on
``triton`` when the interpreter is on; these add the cases that stress the
kernels' own tiling and masking: group sizes that are not a power of two, block
sizes that are not, code widths that take the other popcount path, forced
blocks past the budget, ``k`` below ``n_sel``, garbage in unused table entries,
slots past the cache, attention splits that hold no token. Small shapes: the
interpreter runs every program on the CPU.
"""
import math
import os

import pytest
import torch

from gsa import ops, reference as ref
from spec_literal import band_violations

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET", "0") in ("", "0") or __import__("importlib").util.find_spec("triton") is None,
    reason="needs triton with TRITON_INTERPRET=1 (CPU interpreter)",
)


@pytest.fixture(autouse=True)
def _triton():
    import gsa

    with gsa.use_backend("triton"):
        yield


@pytest.fixture
def gen():
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)


def test_registration_and_priority():
    from gsa import dispatch

    b = dispatch.backends()["triton"]
    assert b.available and b.serves("cpu") and b.serves("cuda")
    assert b.priority < 10  # below the C++ cpu backend on CPU tensors
    assert set(b.kernels) == set(dispatch.OP_NAMES)


def test_probe_reports_missing_triton(monkeypatch):
    import builtins

    import cuda_ops

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "triton":
            raise ImportError("no module named triton")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    ok, why = cuda_ops.probe()
    assert not ok and "triton" in why


def test_probe_without_cuda_or_interpreter(monkeypatch):
    import cuda_ops

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ok, why = cuda_ops.probe()
    assert not ok and "CUDA" in why and "TRITON_INTERPRET" in why


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_hash_encode_odd_sizes(gen, dtype):
    # D not a multiple of 16 (masked tile), R = 96 (12 bytes: padded byte lanes), 3 heads per weight
    x = torch.randn(37, 6, 40, generator=gen).to(dtype)
    w = torch.randn(2, 40, 96, generator=gen)
    codes = ops.hash_encode(x, w)
    assert codes.shape == (37, 6, 12)
    assert band_violations(x, w, codes) == 0


def test_hash_encode_long_d_and_wide_codes(gen):
    # MLA-like latent width: 3 D tiles; R = 384 bits: 3 column chunks of 16 bytes
    x = torch.randn(5, 3, 300, generator=gen).to(torch.bfloat16)
    w = torch.randn(300, 384, generator=gen)
    codes = ops.hash_encode(x, w)
    assert codes.shape == (5, 3, 48)
    assert band_violations(x, w, codes) == 0


def test_hash_encode_and_cache_skips_padding_and_out_of_range(gen):
    # the kernel itself (gsa.ops rejects slots past the cache on CPU): never writes them
    from cuda_ops import hashing

    nb, hkv, bs, d, r = 3, 2, 4, 16, 32
    k = torch.randn(6, hkv, d, generator=gen)
    w = torch.randn(hkv, d, r, generator=gen)
    cache = torch.full((nb, hkv, bs, r // 8), 0xAB, dtype=torch.uint8)
    slots = torch.tensor([0, -1, nb * bs, 11, 10**6, -5])
    hashing.hash_encode_and_cache(k, w, cache, slots)
    want = torch.full_like(cache, 0xAB)
    want[0, :, 0] = ref.hash_encode(k[0], w)
    want[2, :, 3] = ref.hash_encode(k[3], w)
    untouched = torch.ones(nb, bs, dtype=torch.bool)
    untouched[0, 0] = untouched[2, 3] = False
    assert bool((cache.permute(0, 2, 1, 3)[untouched] == 0xAB).all())
    assert band_violations(k[[0, 3]], w, torch.stack([cache[0, :, 0], cache[2, :, 3]])) == 0


def test_mla_byte_order_and_cache(gen):
    x_l, x_r = torch.randn(9, 48, generator=gen), torch.randn(9, 16, generator=gen)
    w_l, w_r = torch.randn(48, 64, generator=gen), torch.randn(16, 32, generator=gen)
    codes = ops.mla_hash_encode(x_l, x_r, w_l, w_r)
    assert band_violations(x_l, w_l, codes[:, :8]) == 0 and band_violations(x_r, w_r, codes[:, 8:]) == 0
    cache = torch.zeros(3, 1, 4, 12, dtype=torch.uint8)
    slots = torch.tensor([11, 0, -1, 5, 6, 7, 1, 2, 3])
    ops.mla_hash_encode_and_cache(x_l, x_r, w_l, w_r, cache, slots)
    for t, s in enumerate(slots.tolist()):
        if s >= 0:
            assert torch.equal(cache[s // 4, 0, s % 4], codes[t])


def _case(gen, b, hq, hkv, c, bs, m, alphabet=None):
    nb = b * m + 2
    if alphabet is None:
        cache = torch.randint(0, 256, (nb, hkv, bs, c), generator=gen, dtype=torch.int32).to(torch.uint8)
        q = torch.randint(0, 256, (b, hq, c), generator=gen, dtype=torch.int32).to(torch.uint8)
    else:  # few distinct codes: many ties
        pick = torch.tensor(alphabet, dtype=torch.uint8)
        cache = pick[torch.randint(len(alphabet), (nb, hkv, bs, c), generator=gen)]
        q = pick[torch.randint(len(alphabet), (b, hq, c), generator=gen)]
    table = torch.randperm(nb, generator=gen)[: b * m].reshape(b, m).to(torch.int32)
    seq = torch.randint(1, m * bs + 1, (b,), generator=gen).to(torch.int32)
    return q, cache, table, seq


@pytest.mark.parametrize("hq,hkv,c,bs", [(6, 2, 8, 6), (4, 4, 32, 8), (8, 1, 132, 4), (5, 5, 4, 16)])
@pytest.mark.parametrize("method", ["max", "mean"])
def test_top_k_tilings(gen, hq, hkv, c, bs, method):
    # G = 3 (masked group lanes), bs = 6 (masked token lanes), C = 32 / 132 (the
    # per-word popcount path: more than 31 words a byte field), G = 1
    b, m = 3, 7
    q, cache, table, seq = _case(gen, b, hq, hkv, c, bs, m, alphabet=[0, 255, 15, 51])
    budgets = torch.randint(1, m + 2, (b,), generator=gen).to(torch.int32)
    for forced in ([], [0, -1], [-3, 2, 2, 50, -50]):
        got = ops.hamming_dist_top_k(q, cache, table, seq, budgets, m, forced, method)
        want = ref.hamming_dist_top_k(q, cache, table, seq, budgets, m, forced, method)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (forced, got, want)


@pytest.mark.parametrize("hq,hkv,c,bs", [(8, 2, 16, 8), (6, 3, 16, 5), (4, 4, 32, 4)])
def test_score_kernel_paths_agree(gen, hq, hkv, c, bs):
    # GQA codes go through the Harley-Seal kernel; the per-word SWAR kernel
    # (MLA's path) must give the same block keys on the same input
    from cuda_ops import scoring

    b, m = 2, 4
    q, cache, table, seq = _case(gen, b, hq, hkv, c, bs, m)
    used = torch.arange(m).unsqueeze(0) < ((seq + bs - 1) // bs).unsqueeze(1)
    for method in ("max", "mean"):
        hs = scoring.block_score_keys(q, cache, table, seq, method, path="hs")
        swar = scoring.block_score_keys(q, cache, table, seq, method, path="swar")
        assert torch.equal(hs[used], swar[used])


@pytest.mark.parametrize("hq,hkv,bs", [(8, 2, 8), (6, 3, 5)])
def test_score_kernel_wide_loads_agree(gen, hq, hkv, bs):
    # R = 128: one 16-byte load per token split into its four words in registers
    from cuda_ops import scoring

    b, m = 2, 4
    q, cache, table, seq = _case(gen, b, hq, hkv, 16, bs, m)
    used = torch.arange(m).unsqueeze(0) < ((seq + bs - 1) // bs).unsqueeze(1)
    for method in ("max", "mean"):
        swar = scoring.block_score_keys(q, cache, table, seq, method, path="swar")
        for wide, unroll in ((True, False), (False, True), (True, True)):
            hs = scoring.block_score_keys(q, cache, table, seq, method, path="hs", wide=wide, unroll=unroll)
            assert torch.equal(hs[used], swar[used]), (wide, unroll)


@pytest.mark.parametrize("hq,hkv,bs", [(8, 2, 8), (12, 3, 5), (4, 1, 4)])
def test_score_planes_agree(gen, hq, hkv, bs):
    # G = 4, R = 128: the 4 query heads folded into bit planes first (score_kernels.py);
    # odd HKV pairs the last head with zero words; few distinct codes stress the carries
    from cuda_ops import scoring

    b, m = 2, 4
    for alphabet in (None, [0, 255, 15]):
        q, cache, table, seq = _case(gen, b, hq, hkv, 16, bs, m, alphabet=alphabet)
        used = torch.arange(m).unsqueeze(0) < ((seq + bs - 1) // bs).unsqueeze(1)
        for method in ("max", "mean"):
            swar = scoring.block_score_keys(q, cache, table, seq, method, path="swar")
            for unroll in (False, True):  # (planes always unrolls; the knob must not change it)
                got = scoring.block_score_keys(q, cache, table, seq, method, path="hs", planes=True, unroll=unroll)
                assert torch.equal(got[used], swar[used]), (alphabet, method)


def test_score_planes_and_fusion_refuse_other_shapes(gen):
    from cuda_ops import scoring

    q, cache, table, seq = _case(gen, 2, 6, 2, 16, 4, 3)  # G = 3
    with pytest.raises(ValueError, match="bit-plane"):
        scoring.block_score_keys(q, cache, table, seq, "max", planes=True)
    budgets = torch.ones(2, dtype=torch.int32)
    with pytest.raises(ValueError, match="fused selection"):  # the SWAR path has no fused kernel
        scoring.hamming_dist_top_k(q, cache, table, seq, budgets, 3, [], "max", 0, 1.0, fuse=True)
    q, cache, table, seq = _case(gen, 1, 8, 2, 16, 4, 3)
    wide = torch.zeros(1, 4097, dtype=torch.int32)  # next_pow2(M) = 8192 > 1024 * 4 warps
    with pytest.raises(ValueError, match="fused selection"):
        scoring.hamming_dist_top_k(q, cache, wide, seq, budgets[:1], 3, [], "max", 0, 1.0, fuse=True, num_warps=4)
    assert scoring.fused_select_ok(1024, 1) and not scoring.fused_select_ok(1025, 1)


@pytest.mark.parametrize("method", ["max", "mean"])
def test_fused_score_select_equals_reference(gen, method):
    # one launch: the last score program of each row selects (topk_kernels.py). Ties
    # (few distinct codes), forced blocks past the budget, budgets >= n_blocks, k < n_sel
    from cuda_ops import scoring

    b, m, bs = 3, 6, 4
    for alphabet, planes in ((None, True), ([0, 255, 15], False), ([0, 255, 15], True)):
        q, cache, table, seq = _case(gen, b, 8, 2, 16, bs, m, alphabet=alphabet)
        seq[0] = m * bs
        budgets = torch.randint(1, m + 2, (b,), generator=gen).to(torch.int32)
        budgets[1] = m + 3
        for forced, k in (([], m), ([0, -1], m), ([1, -2, 3], 3)):
            got = scoring.hamming_dist_top_k(q, cache, table, seq, budgets, k, forced, method, 0, 1.0, fuse=True,
                                             planes=planes)
            want = ref.hamming_dist_top_k(q, cache, table, seq, budgets, k, forced, method, 0, 1.0)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (alphabet, forced, k)


def test_fused_select_blocks_padding_rows_and_counter_reuse(gen):
    # the hot path's form (kv_select gathered): padding rows (seq_len 0) come back empty,
    # and the row counters are zero again after every launch, so calls can reuse them
    from cuda_ops import scoring

    b, m, bs, k = 5, 7, 4, 4
    counter = torch.zeros(b, dtype=torch.int32)
    keys = torch.empty(b, m, dtype=torch.int32)
    table_out = torch.full((b, k), 77, dtype=torch.int32)
    lens = torch.full((b,), 77, dtype=torch.int32)
    for _ in range(2):
        q, cache, table, seq = _case(gen, b, 8, 2, 16, bs, m)
        seq[2] = 0
        seq[4] = m * bs
        budgets = torch.randint(1, m + 2, (b,), generator=gen).to(torch.int32)
        scoring.select_blocks(q, cache, table, seq, budgets, k, [0, -1], "max", 0, 1.0, 5, keys, table_out, lens,
                              counter=counter, fuse=True, planes=True)
        assert bool((counter == 0).all())
        live = seq > 0
        idx, n = ref.hamming_dist_top_k(q[live], cache, table[live], seq[live], budgets[live], k, [0, -1], "max")
        want_t, want_l = ref.kv_select(idx, n, table[live], seq[live], bs, 5)
        assert torch.equal(table_out[live], want_t) and torch.equal(lens[live], want_l)
        assert lens[2] == 0 and bool((table_out[2] == 5).all())


@pytest.mark.parametrize("fanout", [2, 4, 16])
@pytest.mark.parametrize("method", ["max", "mean"])
def test_select_fanout_search_equals_reference(gen, fanout, method):
    # the FANOUT-ary threshold search must pick exactly the binary search's blocks,
    # ties included (few distinct codes), with forced blocks and k below n_sel
    from cuda_ops import scoring

    b, m = 3, 9
    for alphabet in (None, [0, 255, 15]):
        q, cache, table, seq = _case(gen, b, 8, 2, 16, 4, m, alphabet=alphabet)
        budgets = torch.randint(1, m + 2, (b,), generator=gen).to(torch.int32)
        for forced, k in (([], m), ([0, -1], m), ([1], 3)):
            got = scoring.hamming_dist_top_k(q, cache, table, seq, budgets, k, forced, method, 0, 1.0, fanout)
            want = ref.hamming_dist_top_k(q, cache, table, seq, budgets, k, forced, method, 0, 1.0)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (alphabet, forced, k)


def test_select_fanout_clamped_for_wide_rows():
    from cuda_ops import scoring

    assert scoring.select_fanout(64, 16) == 16 and scoring.select_fanout(64) == scoring.SELECT_FANOUT
    assert scoring.select_fanout(65536, 16) == 1 and scoring.select_fanout(2048, 16) == 8
    with pytest.raises(ValueError, match="power of two"):
        scoring.select_fanout(64, 3)


@pytest.mark.parametrize("w", [0.0, 0.0625, 1.0, 3.5, 16.0])
def test_mla_rope_weights(gen, w):
    q, cache, table, seq = _case(gen, 2, 6, 1, 20, 8, 5)
    budgets = torch.tensor([2, 3], dtype=torch.int32)
    for method in ("max", "mean"):
        got = ops.hamming_dist_top_k(q, cache, table, seq, budgets, 5, [0], method, 8, w)
        want = ref.hamming_dist_top_k(q, cache, table, seq, budgets, 5, [0], method, 8, w)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_top_k_k_below_n_sel_and_above(gen):
    # unchecked k < n_sel (called on the kernel directly): n_sel clamped, first k ascending
    from cuda_ops import scoring

    q, cache, table, seq = _case(gen, 2, 4, 2, 8, 4, 9)
    seq = torch.tensor([36, 30], dtype=torch.int32)
    budgets = torch.tensor([6, 9], dtype=torch.int32)
    for k in (3, 9, 12):
        got = scoring.hamming_dist_top_k(q, cache, table, seq, budgets, k, [0, -1], "max", 0, 1.0)
        want = ref.hamming_dist_top_k(q, cache, table, seq, budgets, k, [0, -1], "max", 0, 1.0)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), k


def test_top_k_ignores_garbage_in_unused_table_entries(gen):
    q, cache, table, seq = _case(gen, 2, 4, 2, 8, 4, 6)
    seq = torch.tensor([9, 17], dtype=torch.int32)  # 3 and 5 blocks used
    bad = table.clone()
    bad[0, 3:] = -7
    bad[1, 5:] = 10**6
    budgets = torch.tensor([2, 2], dtype=torch.int32)
    got = ops.hamming_dist_top_k(q, cache, bad, seq, budgets, 6, [-1], "mean")
    want = ref.hamming_dist_top_k(q, cache, table, seq, budgets, 6, [-1], "mean")
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_top_k_hand_case_mean_partial_block_and_ties():
    # one head, R = 32, zero query: sim = 32 - 2 * popcount(key); bs = 3
    # sims per block: [32, -32, -32], [0, 0, 0], [16, -16, 0], [24] (partial last block)
    pcs = [0, 32, 32, 16, 16, 16, 8, 24, 16, 4]
    nb = 4
    cache = torch.zeros(nb, 1, 3, 4, dtype=torch.uint8)
    for t, p in enumerate(pcs):
        v = (1 << p) - 1 if p < 32 else 0xFFFFFFFF
        cache[t // 3, 0, t % 3] = torch.tensor([(v >> (8 * i)) & 255 for i in range(4)], dtype=torch.uint8)
    q = torch.zeros(1, 1, 4, dtype=torch.uint8)
    table = torch.arange(nb, dtype=torch.int32).unsqueeze(0)
    seq = torch.tensor([10], dtype=torch.int32)
    idx, n = ops.hamming_dist_top_k(q, cache, table, seq, torch.tensor([2], dtype=torch.int32), 4, [], "mean")
    # means -10.7, 0, 0, 24 (the partial block averages its one token): 3, then the tie 1 vs 2 -> 1
    assert idx[0].tolist() == [1, 3, -1, -1] and n.tolist() == [2]
    # max: 32, 0, 16, 24 -> blocks 0, 3, 2
    idx, n = ops.hamming_dist_top_k(q, cache, table, seq, torch.tensor([3], dtype=torch.int32), 4, [], "max")
    assert idx[0].tolist() == [0, 2, 3, -1] and n.tolist() == [3]


def test_kv_select_kernel_clamps_bad_indices(gen):
    from cuda_ops import select

    table = torch.randperm(20, generator=gen)[:12].reshape(2, 6).to(torch.int32)
    seq = torch.tensor([21, 6], dtype=torch.int32)
    idx = torch.tensor([[0, 5, 99, 3], [1, -1, -1, -1]], dtype=torch.int32)
    n = torch.tensor([2, 1], dtype=torch.int32)
    got = select.kv_select(idx, n, table, seq, 4, 7)
    want = ref.kv_select(idx, n, table, seq, 4, 7)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert got[0][0].tolist() == [int(table[0, 0]), int(table[0, 5]), 7, 7] and got[1].tolist() == [4 + 1, 2]


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1.6e-2), (torch.float16, 2e-3), (torch.float32, 1e-5)])
def test_attention_odd_shapes(gen, dtype, tol):
    # G = 3, D = 40, bs = 5: every tile is masked somewhere; row 1 leaves splits empty
    b, hq, hkv, d, bs, m = 2, 6, 2, 40, 5, 30
    nb = b * m + 1
    kc = torch.randn(nb, bs, hkv, d, generator=gen).to(dtype)
    vc = torch.randn(nb, bs, hkv, d, generator=gen).to(dtype)
    q = torch.randn(b, hq, d, generator=gen).to(dtype)
    table = torch.randperm(nb, generator=gen)[: b * m].reshape(b, m).to(torch.int32)
    seq = torch.tensor([m * bs - 2, 3], dtype=torch.int32)
    out = ops.paged_decode_attention(q, kc, vc, table, seq, 0.2)
    want = ref.paged_decode_attention(q.double(), kc.double(), vc.double(), table, seq, 0.2)
    err = ((out.double() - want).norm() / want.norm()).item()
    assert out.dtype == dtype and err < tol, err


def test_attention_kernel_clamps_bad_block_ids(gen):
    from cuda_ops import attention

    kc = torch.randn(4, 4, 1, 16, generator=gen)
    vc = torch.randn(4, 4, 1, 16, generator=gen)
    q = torch.randn(1, 2, 16, generator=gen)
    table = torch.tensor([[2, 10**6]], dtype=torch.int32)  # second id out of range: clamped, never read OOB
    seq = torch.tensor([6], dtype=torch.int32)
    out = attention.paged_decode_attention(q, kc, vc, table, seq, None)
    want = ref.paged_decode_attention(q, kc, vc, table, seq, None)  # the reference clamps too
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_hash_launch_options_agree(gen, dtype):
    # bit pack by matrix product vs reshape; prefetching the next row tile vs not
    from cuda_ops import hashing

    x = torch.randn(90, 2, 48, generator=gen).to(dtype)
    w = torch.randn(2, 48, 160, generator=gen)  # 20 bytes: two column chunks, the second partial
    x3, w3, g = hashing._as_heads(x, w)
    a = torch.zeros(90, 2, 20, dtype=torch.uint8)
    b = torch.zeros_like(a)
    hashing._launch(x3, w3, g, a, 0, pack_dot=True, prefetch=True, block_m=16)  # 6 tiles, 2 programs
    hashing._launch(x3, w3, g, b, 0, pack_dot=False, prefetch=False, block_m=16)
    assert torch.equal(a, b)
    assert band_violations(x, w, a) == 0
