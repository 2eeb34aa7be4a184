"""Spec 7: paged decode attention (dense and sparse tables), per backend."""
import math

import pytest
import torch

from gsa import ops, reference as ref


def contiguous_attention(q, k_cache, v_cache, table, seq_lens, scale):
    """float64 attention over each row's tokens gathered into contiguous K/V."""
    b, hq, d = q.shape
    _, bs, hkv, _ = k_cache.shape
    g = hq // hkv
    out = torch.empty(b, hq, d, dtype=torch.float64)
    for row in range(b):
        n = int(seq_lens[row])
        ids = [int(table[row, t // bs]) for t in range(n)]
        offs = [t % bs for t in range(n)]
        k = k_cache[ids, offs].double()  # [n, Hkv, D]
        v = v_cache[ids, offs].double()
        for h in range(hq):
            logits = (k[:, h // g] @ q[row, h].double()) * scale
            out[row, h] = torch.softmax(logits, 0) @ v[:, h // g]
    return out


def make_cache(gen, nb, bs, hkv, d, dtype):
    k = torch.randn(nb, bs, hkv, d, generator=gen).to(dtype)
    v = torch.randn(nb, bs, hkv, d, generator=gen).to(dtype)
    return k, v


TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dense_paged_matches_contiguous(backend, rng, dtype):
    b, hq, hkv, d, bs, m = 3, 8, 2, 32, 4, 5
    nb = 17
    k_cache, v_cache = make_cache(rng, nb, bs, hkv, d, dtype)
    q = torch.randn(b, hq, d, generator=rng).to(dtype)
    table = torch.randperm(nb, generator=rng)[: b * m].reshape(b, m).to(torch.int32)
    seq = torch.tensor([m * bs, 1, 9], dtype=torch.int32)  # full, single token, partial last block
    out = ops.paged_decode_attention(q, k_cache, v_cache, table, seq)
    want = contiguous_attention(q, k_cache, v_cache, table, seq, 1 / math.sqrt(d))
    assert out.dtype == dtype and out.shape == (b, hq, d)
    err = (out.double() - want).norm() / want.norm()
    assert err < TOL[dtype], f"relative error {err:.2e}"


def test_sparse_attention_is_attention_over_selected_blocks(backend, rng):
    b, hq, hkv, d, bs, m = 2, 4, 2, 16, 4, 6
    nb = 12
    k_cache, v_cache = make_cache(rng, nb, bs, hkv, d, torch.float32)
    q = torch.randn(b, hq, d, generator=rng)
    table = torch.randperm(nb, generator=rng)[: b * m].reshape(b, m).to(torch.int32)
    seq = torch.tensor([23, 18], dtype=torch.int32)
    idx = torch.tensor([[0, 2, 5, -1], [1, 4, -1, -1]], dtype=torch.int32)
    n_sel = torch.tensor([3, 2], dtype=torch.int32)
    sp_table, sp_lens = ops.kv_select(idx, n_sel, table, seq, bs)
    assert sp_lens.tolist() == [4 + 4 + 3, 4 + 2]
    out = ops.paged_decode_attention(q, k_cache, v_cache, sp_table, sp_lens, 0.3)
    # by hand: the selected tokens of each row, in order
    for row, blocks in enumerate([[0, 2, 5], [1, 4]]):
        n = int(seq[row])
        toks = [(int(table[row, j]), o) for j in blocks for o in range(bs) if j * bs + o < n]
        kk = torch.stack([k_cache[p, o] for p, o in toks]).double()
        vv = torch.stack([v_cache[p, o] for p, o in toks]).double()
        for h in range(hq):
            p = torch.softmax(kk[:, h // 2] @ q[row, h].double() * 0.3, 0)
            torch.testing.assert_close(out[row, h].double(), p @ vv[:, h // 2], rtol=1e-5, atol=1e-5)


def test_scale_default_is_inverse_sqrt_d(rng):
    q = torch.randn(1, 2, 16, generator=rng)
    k_cache, v_cache = make_cache(rng, 2, 4, 1, 16, torch.float32)
    table = torch.tensor([[1, 0]], dtype=torch.int32)
    seq = torch.tensor([7], dtype=torch.int32)
    torch.testing.assert_close(ref.paged_decode_attention(q, k_cache, v_cache, table, seq),
                               ref.paged_decode_attention(q, k_cache, v_cache, table, seq, 0.25))
