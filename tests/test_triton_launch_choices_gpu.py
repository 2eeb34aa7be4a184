"""The Triton launch choices of issue 12 on a CUDA GPU at realistic shapes (skipped without CUDA).

``tests/test_triton_launch_choices.py`` checks the same choices in the interpreter at small
shapes; here they run compiled: several blocks per score program (``score.blocks``) with and
without a register cap (``score.maxnreg``), the
selection program's warps (``select.num_warps``) and the attention reduction fused into the split
kernel (``attention.fuse``), the last also captured in a CUDA graph and replayed over new lengths,
tables and queries (its counter must come back to zero on every replay).
"""
import pytest
import torch

from gsa import reference as ref

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
DEV = "cuda"


@pytest.fixture
def gen():
    seed = int.from_bytes(__import__("os").urandom(4), "little")
    print(f"seed={seed}")
    return torch.Generator(device=DEV).manual_seed(seed)


def _codes(gen, b, hq, hkv, bs, m, c):
    nb = b * m + 5
    cache = torch.randint(0, 256, (nb, hkv, bs, c), device=DEV, generator=gen, dtype=torch.int32).to(torch.uint8)
    table = torch.randperm(nb, device=DEV, generator=gen)[: b * m].reshape(b, m).to(torch.int32)
    q = torch.randint(0, 256, (b, hq, c), device=DEV, generator=gen, dtype=torch.int32).to(torch.uint8)
    return cache, table, q


@pytest.mark.parametrize("planes", [False, True])
@pytest.mark.parametrize("method", ["max", "mean"])
@pytest.mark.parametrize("blocks", [1, 2, 4])
@pytest.mark.parametrize("warps", [1, 2, 4])
@pytest.mark.parametrize("cap", [0, 32])  # score.maxnreg: a register cap changes the code, not the keys
def test_score_blocks_realistic(gen, planes, method, blocks, warps, cap):
    from cuda_ops import scoring

    b, hq, hkv, bs, m = 5, 32, 8, 128, 203
    cache, table, q = _codes(gen, b, hq, hkv, bs, m, 16)
    seq = torch.tensor([m * bs, 77 * bs + 3, 1, 130 * bs, 2 * bs + 127], dtype=torch.int32, device=DEV)
    swar = scoring.block_score_keys(q, cache, table, seq, method, path="swar")
    got = scoring.block_score_keys(q, cache, table, seq, method, path="hs", planes=planes, blocks=blocks,
                                   num_warps=warps, unroll=planes, maxnreg=cap)
    for r in range(b):
        n = (int(seq[r]) + bs - 1) // bs
        assert torch.equal(got[r, :n], swar[r, :n]), r


@pytest.mark.parametrize("warps", [1, 2, 8])
@pytest.mark.parametrize("fanout", [1, 4])
def test_select_num_warps_realistic(gen, warps, fanout):
    b, hq, hkv, bs, m = 6, 32, 8, 16, 1500
    cache, table, q = _codes(gen, b, hq, hkv, bs, m, 16)
    seq = torch.randint(1, m * bs + 1, (b,), device=DEV, generator=gen, dtype=torch.int32)
    budgets = torch.randint(1, m // 4, (b,), device=DEV, generator=gen, dtype=torch.int32)
    k = m // 4
    want = ref.hamming_dist_top_k(q, cache, table, seq, budgets, k, [0, -1], "max", 0, 1.0)
    from cuda_ops import scoring

    keys = scoring.block_score_keys(q, cache, table, seq, "max")
    idx = torch.empty(b, k, dtype=torch.int32, device=DEV)
    nsel = torch.empty(b, dtype=torch.int32, device=DEV)
    forced, fs = scoring._forced_args([0, -1])
    scoring._launch_select(keys, seq, budgets, table, k, bs, forced, fs, None, None, idx, nsel, 0, None, fanout, warps)
    assert torch.equal(idx, want[0]) and torch.equal(nsel, want[1])


def test_attention_fused_reduce_graph_realistic(gen):
    from cuda_ops import attention

    b, hq, hkv, d, bs, m = 8, 32, 8, 128, 128, 96
    nb = b * m + 3
    kc = torch.randn(nb, bs, hkv, d, device=DEV, generator=gen).to(torch.bfloat16)
    vc = torch.randn(nb, bs, hkv, d, device=DEV, generator=gen).to(torch.bfloat16)
    table = torch.randperm(nb, device=DEV, generator=gen)[: b * m].reshape(b, m).to(torch.int32)
    q = torch.randn(b, hq, d, device=DEV, generator=gen).to(torch.bfloat16)
    seq = torch.full((b,), m * bs, dtype=torch.int32, device=DEV)
    out = torch.empty_like(q)
    work = {}
    run = lambda: attention.paged_decode_attention(q, kc, vc, table, seq, None, out=out, work=work,  # noqa: E731
                                                   fuse=True, per_sm=32, min_tokens=256)
    run()
    assert work["o"].shape[2] > 1, "needs several splits"
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        run()
    for step in range(4):
        q.copy_(torch.randn(b, hq, d, device=DEV, generator=gen).to(torch.bfloat16))
        seq.copy_(torch.randint(1, m * bs + 1, (b,), device=DEV, generator=gen, dtype=torch.int32))
        table.copy_(torch.randperm(nb, device=DEV, generator=gen)[: b * m].reshape(b, m).to(torch.int32))
        out.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        assert torch.count_nonzero(work["cnt"]) == 0
        two = attention.paged_decode_attention(q, kc, vc, table, seq, None, fuse=False, per_sm=32, min_tokens=256)
        want = ref.paged_decode_attention(q.double(), kc.double(), vc.double(), table, seq, None)
        torch.testing.assert_close(out.float(), two.float(), rtol=0, atol=1e-2)
        err = ((out.double() - want).norm() / want.norm()).item()
        assert err < 1.6e-2, (step, err)


@pytest.mark.parametrize("blocks,pow2,once", [(1, True, False), (1, False, False), (4, True, False), (1, True, True),
                                             (1, False, True)])
@pytest.mark.parametrize("method", ["max", "mean"])
@pytest.mark.parametrize("hq,c,rope,w", [(16, 72, 8, 1.0), (16, 72, 8, 0.5), (128, 72, 8, 1.0), (64, 40, 8, 1.0),
                                         (12, 72, 8, 1.0)])
def test_group_planes_mla_realistic(gen, method, hq, c, rope, w, blocks, pow2, once):
    # MLA codes (one cache head; DeepSeek-V2-Lite 16 heads, R1 128 heads): the bit-plane path, now the
    # default for them, against the SWAR path and the reference; `once`: score_planes.reduce_once
    from cuda_ops import scoring

    b, bs, m = 4, 128, 300
    cache, table, q = _codes(gen, b, hq, 1, bs, m, c)
    seq = torch.tensor([m * bs, 100 * bs + 17, 1, 257 * bs], dtype=torch.int32, device=DEV)
    swar = scoring.block_score_keys(q, cache, table, seq, method, rope, w, path="swar")
    got = scoring.block_score_keys(q, cache, table, seq, method, rope, w, blocks=blocks, pow2=pow2, once=once)
    for r in range(b):
        n = (int(seq[r]) + bs - 1) // bs
        assert torch.equal(got[r, :n], swar[r, :n]), r
    budgets = torch.tensor([37, 12, 1, 64], dtype=torch.int32, device=DEV)
    idx, nsel = scoring.hamming_dist_top_k(q, cache, table, seq, budgets, 64, [0, -1], method, rope, w)
    want = ref.hamming_dist_top_k(q, cache, table, seq, budgets, 64, [0, -1], method, rope, w)
    assert torch.equal(idx, want[0]) and torch.equal(nsel, want[1])


@pytest.mark.parametrize("centred", [False, True])
@pytest.mark.parametrize("rows", [16, 5000])
def test_hash_prec16_band_rule_realistic(gen, centred, rows):
    # hash.prec16 compiled (one fp16 tensor-core product on power-of-two scaled rows and columns): every
    # bit outside spec 2's band equals float64, for a decode step's few rows and a prefill's many, with
    # rows and weight columns far outside fp16's range; the cache form writes the same codes
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from spec_literal import band_violations

    from cuda_ops import hashing

    hkv, g, d, r = 8, 1, 128, 128
    x = torch.randn(rows, hkv, d, device=DEV, generator=gen)
    x = x * 10.0 ** (torch.rand(rows, hkv, 1, device=DEV, generator=gen) * 11 - 6)
    x[0, 0] = 0
    x[1, 0, 3] = 9.0e4
    x = x.to(torch.bfloat16)
    w = torch.randn(hkv, d, r, device=DEV, generator=gen)
    w[:, :, :8] *= 1e4
    w[:, :, 8:16] *= 1e-4
    thr = torch.randn(hkv, r, device=DEV, generator=gen) * 3 if centred else None
    got = hashing.hash_encode(x, w, thr, prec16=True)
    assert band_violations(x, w, got, thr) == 0
    cache = torch.zeros((rows + 127) // 128 + 1, hkv, 128, r // 8, dtype=torch.uint8, device=DEV)
    slots = torch.arange(rows, device=DEV) + 128
    hashing.hash_encode_and_cache(x, w, cache, slots, thr, prec16=True)
    assert torch.equal(cache.permute(0, 2, 1, 3).reshape(-1, hkv, r // 8)[128:128 + rows], got)
