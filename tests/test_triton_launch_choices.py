"""Launch choices of the Triton kernels (issue 12), each against the reference, in the interpreter.

The tuning file (``cuda_ops/tuning/<device>.json``) may pick any of these on a GPU, so each one
must compute what the default launch computes:

* the score kernel scoring several logical blocks per program (``score.blocks``), for the
  plain and the bit-plane Harley-Seal paths, both block representations, rows that end inside a
  program's group of blocks, and a table width that is not a multiple of the group;
* the selection program's warp count (``select.num_warps``): argument checks;
* paged decode attention with the reduction fused into the split kernel (``attention.fuse``):
  equal to the two-launch form and to the reference over several calls that reuse one ``work``
  dict (the counter must come back to zero), with splits that hold no token.
"""
import os

import pytest
import torch

from gsa import reference as ref
from spec_literal import band_violations

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET", "0") in ("", "0") or __import__("importlib").util.find_spec("triton") is None,
    reason="needs triton with TRITON_INTERPRET=1 (CPU interpreter)",
)


@pytest.fixture
def gen():
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)


def _codes(gen, b, hq, hkv, bs, m, c):
    nb = b * m + 3
    cache = torch.randint(0, 256, (nb, hkv, bs, c), generator=gen, dtype=torch.int32).to(torch.uint8)
    table = torch.randperm(nb, generator=gen)[: b * m].reshape(b, m).to(torch.int32)
    q = torch.randint(0, 256, (b, hq, c), generator=gen, dtype=torch.int32).to(torch.uint8)
    return cache, table, q


@pytest.mark.parametrize("planes", [False, True])
@pytest.mark.parametrize("method", ["max", "mean"])
@pytest.mark.parametrize("blocks", [2, 4])
def test_score_blocks_per_program_equal_one(gen, planes, method, blocks):
    from cuda_ops import scoring

    b, hq, hkv, bs, m = 3, 8, 2, 8, 7  # M = 7: the last program's group is partial for 2 and 4
    cache, table, q = _codes(gen, b, hq, hkv, bs, m, 16)  # G = 4, R = 128: the bit-plane path applies
    seq = torch.tensor([m * bs, 3 * bs + 5, 1], dtype=torch.int32)  # full, mid-group, one token
    one = scoring.block_score_keys(q, cache, table, seq, method, path="hs", planes=planes, blocks=1)
    got = scoring.block_score_keys(q, cache, table, seq, method, path="hs", planes=planes, blocks=blocks)
    swar = scoring.block_score_keys(q, cache, table, seq, method, path="swar")
    for r in range(b):  # entries past a row's blocks are unwritten (garbage): compare the row's own
        n = (int(seq[r]) + bs - 1) // bs
        assert torch.equal(got[r, :n], one[r, :n]) and torch.equal(got[r, :n], swar[r, :n]), (r, got[r], one[r])


@pytest.mark.parametrize("blocks", [1, 2, 4])
def test_select_with_blocks_matches_reference(gen, blocks):
    from cuda_ops import scoring

    b, hq, hkv, bs, m = 2, 4, 2, 4, 10
    cache, table, q = _codes(gen, b, hq, hkv, bs, m, 16)
    seq = torch.tensor([m * bs - 1, 5 * bs], dtype=torch.int32)
    budgets = torch.tensor([4, 3], dtype=torch.int32)
    idx, n = scoring.hamming_dist_top_k(q, cache, table, seq, budgets, 5, [0, -1], "max", 0, 1.0, path="hs",
                                        blocks=blocks)
    want_idx, want_n = ref.hamming_dist_top_k(q, cache, table, seq, budgets, 5, [0, -1], "max", 0, 1.0)
    assert torch.equal(idx, want_idx) and torch.equal(n, want_n)


def test_score_blocks_rejects_bad_values(gen):
    from cuda_ops import scoring

    cache, table, q = _codes(gen, 1, 4, 2, 4, 4, 16)
    seq = torch.tensor([16], dtype=torch.int32)
    with pytest.raises(ValueError, match="power of two"):
        scoring.block_score_keys(q, cache, table, seq, "max", path="hs", blocks=3)
    with pytest.raises(ValueError, match="one block per program"):
        budgets = torch.tensor([2], dtype=torch.int32)
        scoring.hamming_dist_top_k(q, cache, table, seq, budgets, 2, [], "max", 0, 1.0, fuse=True, path="hs",
                                   blocks=2)


def test_select_num_warps_choice():
    from cuda_ops import scoring

    assert scoring.select_num_warps(256) == 4 and scoring.select_num_warps(4096) == 8
    assert scoring.select_num_warps(256, None, 1) == 1
    with pytest.raises(ValueError, match="num_warps"):
        scoring.select_num_warps(256, None, 3)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1.6e-2), (torch.float32, 1e-5)])
def test_attention_fused_reduce_equals_two_launches(gen, dtype, tol):
    from cuda_ops import attention

    b, hq, hkv, d, bs, m = 3, 6, 2, 32, 4, 9  # G = 3; the interpreter plans 2 splits
    nb = b * m + 2
    kc = torch.randn(nb, bs, hkv, d, generator=gen).to(dtype)
    vc = torch.randn(nb, bs, hkv, d, generator=gen).to(dtype)
    table = torch.randperm(nb, generator=gen)[: b * m].reshape(b, m).to(torch.int32)
    work_f, work_u = {}, {}
    for step in range(3):  # one work dict across calls: the fused counter must return to zero
        q = torch.randn(b, hq, d, generator=gen).to(dtype)
        # row 1 ends in the first split (the second holds no token); lengths change every call
        seq = torch.tensor([m * bs - step, 3 + step, 17], dtype=torch.int32)
        fused = attention.paged_decode_attention(q, kc, vc, table, seq, 0.3, work=work_f, fuse=True, block_n=16)
        plain = attention.paged_decode_attention(q, kc, vc, table, seq, 0.3, work=work_u, fuse=False, block_n=16)
        want = ref.paged_decode_attention(q.double(), kc.double(), vc.double(), table, seq, 0.3)
        assert work_f["o"].shape[2] == 2, "the interpreter's split plan changed: this test needs >= 2 splits"
        assert torch.count_nonzero(work_f["cnt"]) == 0
        torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)
        err = ((fused.double() - want).norm() / want.norm()).item()
        assert fused.dtype == dtype and err < tol, err
    # the op path (no work dict) allocates its own zeroed counter
    once = attention.paged_decode_attention(q, kc, vc, table, seq, 0.3, fuse=True, block_n=16)
    torch.testing.assert_close(once, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fuse", [False, True])
def test_attention_row_without_tokens_gives_zeros(gen, fuse):
    # an engine's padding row (seq_len 0) through the kernels the hot path launches: zeros, not NaN
    from cuda_ops import attention

    kc = torch.randn(6, 4, 1, 16, generator=gen)
    vc = torch.randn(6, 4, 1, 16, generator=gen)
    q = torch.randn(2, 2, 16, generator=gen)
    table = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)
    seq = torch.tensor([9, 0], dtype=torch.int32)
    out = attention.paged_decode_attention(q, kc, vc, table, seq, None, fuse=fuse, block_n=16)
    want = ref.paged_decode_attention(q[:1], kc, vc, table[:1], seq[:1], None)
    torch.testing.assert_close(out[:1], want, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[1], torch.zeros_like(out[1]))


@pytest.mark.parametrize("method", ["max", "mean"])
@pytest.mark.parametrize("hq,hkv,c,rope,w", [
    (16, 1, 72, 8, 1.0),     # DeepSeek-V2-Lite MLA: 16 heads, 64 latent + 8 rope bytes
    (16, 1, 72, 8, 0.5),     # rope weighted (1/16 units)
    (5, 1, 20, 4, 2.0),      # 5 heads: planes for counts up to 5
    (12, 4, 8, 0, 1.0),      # GQA, 64-bit codes (W = 2), G = 3
    (8, 8, 32, 0, 1.0),      # MHA, 256-bit... W = 8 with G = 1
    (40, 1, 12, 4, 1.0),     # 40 heads: 6 planes; W_MAIN = 2, rope 1 word
])
def test_group_planes_score_path_equals_swar_and_reference(gen, method, hq, hkv, c, rope, w):
    from cuda_ops import scoring

    b, bs, m = 3, 8, 6
    cache, table, q = _codes(gen, b, hq, hkv, bs, m, c)
    seq = torch.tensor([m * bs, 2 * bs + 3, 1], dtype=torch.int32)
    swar = scoring.block_score_keys(q, cache, table, seq, method, rope, w, path="swar")
    got = scoring.block_score_keys(q, cache, table, seq, method, rope, w, path="group_planes")
    for r in range(b):
        n = (int(seq[r]) + bs - 1) // bs
        assert torch.equal(got[r, :n], swar[r, :n]), (r, got[r, :n], swar[r, :n])
    budgets = torch.tensor([3, 2, 1], dtype=torch.int32)
    idx, nsel = scoring.hamming_dist_top_k(q, cache, table, seq, budgets, 4, [0, -1], method, rope, w,
                                           path="group_planes")
    want = ref.hamming_dist_top_k(q, cache, table, seq, budgets, 4, [0, -1], method, rope, w)
    assert torch.equal(idx, want[0]) and torch.equal(nsel, want[1])


def test_group_planes_hand_computed():
    # one token, one KV head, 3 query heads, one word: counts per bit c = [3, 1, 0, 2] on bits 0..3
    from cuda_ops import scoring

    q = torch.zeros(1, 3, 4, dtype=torch.uint8)
    q[0, 0, 0], q[0, 1, 0], q[0, 2, 0] = 0b1011, 0b0001, 0b1001  # bit0: 3 heads, bit1: 1, bit3: 2
    cache = torch.zeros(1, 1, 1, 4, dtype=torch.uint8)
    cache[0, 0, 0, 0] = 0b0011  # key bits 0 and 1
    table = torch.zeros(1, 1, dtype=torch.int32)
    seq = torch.ones(1, dtype=torch.int32)
    # differing bits over the heads: bit0 (k=1): 3-3 = 0; bit1 (k=1): 3-1 = 2; bit3 (k=0): 2 -> 4
    # S = sum_g (R - 2 popcount) = 3 * 32 - 2 * 4 = 88; S16 = 16 * 88
    key = scoring.block_score_keys(q, cache, table, seq, "max", path="group_planes")
    assert int(key[0, 0]) == 16 * 88


@pytest.mark.parametrize("blocks", [2, 4])
@pytest.mark.parametrize("method", ["max", "mean"])
def test_group_planes_blocks_per_program(gen, blocks, method):
    # several blocks per bit-plane program (score_planes.blocks): M = 7 leaves the last group partial,
    # rows end mid-group and at one token
    from cuda_ops import scoring

    b, hq, bs, m = 3, 16, 8, 7
    cache, table, q = _codes(gen, b, hq, 1, bs, m, 72)
    seq = torch.tensor([m * bs, 3 * bs + 5, 1], dtype=torch.int32)
    swar = scoring.block_score_keys(q, cache, table, seq, method, 8, 1.0, path="swar")
    got = scoring.block_score_keys(q, cache, table, seq, method, 8, 1.0, path="group_planes", blocks=blocks)
    for r in range(b):
        n = (int(seq[r]) + bs - 1) // bs
        assert torch.equal(got[r, :n], swar[r, :n]), (r, got[r, :n], swar[r, :n])
    with pytest.raises(ValueError, match="power of two"):
        scoring.block_score_keys(q, cache, table, seq, method, 8, 1.0, path="group_planes", blocks=3)


@pytest.mark.parametrize("hq,hkv,c,rope", [(16, 1, 72, 8), (2, 1, 8, 4), (8, 2, 12, 4), (32, 1, 8, 0),
                                           (128, 1, 20, 4), (64, 2, 8, 0)])
def test_group_planes_pow2_counts_equal_general(gen, hq, hkv, c, rope):
    # G a power of two: the two's-complement plane counts (m popcounts per word) against the general
    # plane counts (m + 2) and the SWAR path; G = 2 ... 128, with and without rope words
    from cuda_ops import scoring

    b, bs, m = 2, 8, 5
    cache, table, q = _codes(gen, b, hq, hkv, bs, m, c)
    # few distinct codes make every count from 0 to G occur (all heads equal or opposite per bit)
    q[:, ::2] = q[:, :1]
    seq = torch.tensor([m * bs, 2 * bs + 1], dtype=torch.int32)
    swar = scoring.block_score_keys(q, cache, table, seq, "max", rope, 1.0, path="swar")
    for pow2 in (True, False):
        got = scoring.block_score_keys(q, cache, table, seq, "max", rope, 1.0, path="group_planes", pow2=pow2)
        for r in range(b):
            n = (int(seq[r]) + bs - 1) // bs
            assert torch.equal(got[r, :n], swar[r, :n]), (pow2, r, got[r, :n], swar[r, :n])


@pytest.mark.parametrize("block_c", [1, 4, 16])
def test_hash_block_c_choices_agree(gen, block_c):
    # code bytes per hash program (hash.decode_block_c for a decode step's few rows): MLA's wide latent
    # projection (64 code bytes) and a GQA key projection, into a cache at scattered slots
    from cuda_ops import hashing

    x = torch.randn(5, 1, 64, generator=gen).to(torch.bfloat16)
    w = torch.randn(1, 64, 256, generator=gen)
    cache_a = torch.zeros(4, 1, 4, 32, dtype=torch.uint8)
    cache_b = torch.zeros_like(cache_a)
    slots = torch.tensor([3, 9, -1, 14, 0])
    hashing._launch(x, w, 1, cache_a, 0, slots, block_c=16)
    hashing._launch(x, w, 1, cache_b, 0, slots, block_c=block_c)
    assert torch.equal(cache_a, cache_b)
    got = cache_b.reshape(-1, 32)[torch.tensor([3, 9, 14, 0])]  # the rows' slots (row 2 skipped: -1)
    assert band_violations(x[torch.tensor([0, 1, 3, 4])].reshape(4, 64), w[0], got) == 0
    assert torch.count_nonzero(cache_b.reshape(-1, 32)[torch.tensor([1, 2, 4, 5])]) == 0  # untouched slots
    with pytest.raises(ValueError, match="block_c"):
        hashing._launch(x, w, 1, cache_b, 0, slots, block_c=3)


def _wide_range_keys(gen, t, h, d):
    """bf16 keys whose rows span magnitudes from 1e-6 to 1e5 (above fp16's 65504: a plain
    fp16 cast would overflow), with one row of zeros."""
    x = torch.randn(t, h, d, generator=gen)
    mag = 10.0 ** (torch.rand(t, h, 1, generator=gen) * 11 - 6)
    x = x * mag
    x[0, 0] = 0
    x[1, 0, 3] = 9.0e4
    return x.to(torch.bfloat16)


@pytest.mark.parametrize("centred", [False, True])
def test_hash_prec16_band_rule(gen, centred):
    # hash.prec16: one fp16 product on power-of-two scaled rows and columns; every bit outside spec 2's
    # band matches float64, for rows and weight columns far outside fp16's range
    from cuda_ops import hashing

    t, hkv, g, d, r = 37, 2, 2, 128, 128
    k = _wide_range_keys(gen, t, hkv * g, d)
    w = torch.randn(hkv, d, r, generator=gen)
    w[:, :, :8] *= 1e4  # columns past fp16's range once multiplied out
    w[:, :, 8:16] *= 1e-4
    thr = torch.randn(hkv, r, generator=gen) * 3 if centred else None
    got = hashing.hash_encode(k, w, thr, prec16=True)
    assert band_violations(k, w, got, thr) == 0
    split = hashing.hash_encode(k, w, thr, prec16=False)
    assert band_violations(k, w, split, thr) == 0
    # cache form, scattered slots and a skipped one
    cache = torch.zeros(10, hkv * g, 4, r // 8, dtype=torch.uint8)
    slots = torch.randperm(40, generator=gen)[:t]
    slots[5] = -1
    hashing.hash_encode_and_cache(k, w.repeat_interleave(g, 0), cache, slots, None if thr is None else
                                  thr.repeat_interleave(g, 0), prec16=True)
    keep = slots >= 0
    rows = cache.permute(0, 2, 1, 3).reshape(40, hkv * g, r // 8)[slots[keep]]
    assert torch.equal(rows, got[keep])


def test_hash_prec16_takes_the_fp16_product():
    # hand-computed: column [1, -(1 - 2**-12)] against x = [1, 1] gives y = 2**-12 > 0 (bit 1) in fp32 and in
    # the bf16 split (W_lo holds the 2**-12); in fp16, 2**14 * (1 - 2**-12) = 16380 is halfway between 16376
    # and 16384 and rounds to even (16384), so y = 0 and the bit is 0. |y| is inside spec 2's band
    # (1e-3 * sqrt(2) * sqrt(2)), so both are allowed; the test shows which product ran
    from cuda_ops import hashing

    x = torch.ones(1, 2, dtype=torch.bfloat16)
    w = torch.zeros(2, 8)
    w[0, 0], w[1, 0] = 1.0, -(1.0 - 2.0 ** -12)
    w[:, 1] = torch.tensor([1.0, 1.0])  # bit 1: y = 2 > 0 either way
    assert int(hashing.hash_encode(x, w, prec16=False)[0, 0]) == 0b11
    assert int(hashing.hash_encode(x, w, prec16=True)[0, 0]) == 0b10
    # fp32 input: prec16 does not apply (the fp32 product runs)
    assert int(hashing.hash_encode(x.float(), w, prec16=True)[0, 0]) == 0b11


@pytest.mark.parametrize("num_stages, prefetch", [(1, True), (3, False)])
def test_hash_pipelined_tiles_equal_hand_prefetch(gen, num_stages, prefetch):
    # hash.num_stages / hash.prefetch: Triton's pipelining of the row tiles instead of the hand prefetch
    # (a program walks several tiles: 5 tiles of 16 rows over the interpreter's 2 programs)
    from cuda_ops import hashing

    k = torch.randn(80, 2, 64, generator=gen).to(torch.bfloat16)
    w = torch.randn(2, 64, 128, generator=gen)
    base = torch.zeros(10, 2, 8, 16, dtype=torch.uint8)
    got = torch.zeros_like(base)
    slots = torch.randperm(80, generator=gen)
    hashing.hash_encode_and_cache(k, w, base, slots, block_m=16)
    hashing.hash_encode_and_cache(k, w, got, slots, block_m=16, num_stages=num_stages, prefetch=prefetch)
    assert torch.equal(got, base)
    assert band_violations(k, w, got.permute(0, 2, 1, 3).reshape(80, 2, 16)[slots]) == 0


@pytest.mark.parametrize("num_stages", [1, 2, 4])
def test_score_num_stages_choice_equal_default(gen, num_stages):
    # score.num_stages: the Harley-Seal launch's pipelining depth (a compile option: same keys)
    from cuda_ops import scoring

    b, hq, hkv, bs, m = 2, 8, 4, 8, 5
    cache, table, q = _codes(gen, b, hq, hkv, bs, m, 16)
    seq = torch.tensor([m * bs, 2 * bs + 3], dtype=torch.int32)
    base = scoring.block_score_keys(q, cache, table, seq, "max", path="hs")
    got = scoring.block_score_keys(q, cache, table, seq, "max", path="hs", num_stages=num_stages)
    swar = scoring.block_score_keys(q, cache, table, seq, "max", path="swar")
    for r in range(b):
        n = (int(seq[r]) + bs - 1) // bs
        assert torch.equal(got[r, :n], base[r, :n]) and torch.equal(got[r, :n], swar[r, :n])


@pytest.mark.parametrize("hq,hkv,c,rope,w", [
    (16, 1, 72, 8, 0.5),     # DeepSeek-V2-Lite MLA, rope weighted
    (5, 1, 20, 4, 2.0),      # 5 heads (general planes), rope
    (12, 4, 8, 0, 1.0),      # GQA, G = 3, several KV heads (the accumulators run over the head loop)
    (64, 2, 8, 4, 1.0),      # G = 64 (power of two), two KV heads, rope
])
@pytest.mark.parametrize("pow2", [False, True])
@pytest.mark.parametrize("blocks", [1, 2])
def test_group_planes_reduce_once_equal_swar(gen, hq, hkv, c, rope, w, pow2, blocks):
    # score_planes.reduce_once: every plane's per-word counts added elementwise over the heads and summed
    # over the words once per program; the same keys as the SWAR path and as the per-plane sums
    from cuda_ops import scoring

    b, bs, m = 2, 8, 5
    cache, table, q = _codes(gen, b, hq, hkv, bs, m, c)
    q[:, ::3] = q[:, :1]  # repeated heads: large per-bit counts occur
    seq = torch.tensor([m * bs, 2 * bs + 3], dtype=torch.int32)
    for method in ("max", "mean"):
        swar = scoring.block_score_keys(q, cache, table, seq, method, rope, w, path="swar")
        plain = scoring.block_score_keys(q, cache, table, seq, method, rope, w, path="group_planes", pow2=pow2,
                                         blocks=blocks, once=False)
        got = scoring.block_score_keys(q, cache, table, seq, method, rope, w, path="group_planes", pow2=pow2,
                                       blocks=blocks, once=True)
        for r in range(b):
            n = (int(seq[r]) + bs - 1) // bs
            assert torch.equal(got[r, :n], swar[r, :n]) and torch.equal(plain[r, :n], swar[r, :n]), (method, r)
