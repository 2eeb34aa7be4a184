"""npu_ops.triton (Ascend-shaped Triton kernels) vs the reference, bit-exact.

Runs wherever Triton can launch the kernels: the CPU interpreter
(``TRITON_INTERPRET=1``; upstream Triton in the main CI, triton-ascend 3.2 in
ci/triton_ascend.sh), a CUDA GPU, or an Ascend NPU. Shapes stay small because
the interpreter is slow; every kernel still strides (more items than programs).
"""
import os

import pytest
import torch

DEV = "cuda" if torch.cuda.is_available() else "cpu"
if DEV == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    # not set here on purpose: the variable is read when kernels are decorated and
    # when backends register, so flipping it mid-session would change other tests
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)

triton = pytest.importorskip("triton")

from gsa import reference  # noqa: E402

T = pytest.importorskip("npu_ops.triton")


@pytest.fixture(autouse=True)
def _few_programs(monkeypatch):
    # 3 programs: every kernel's stride loop runs several rounds and a ragged last one
    monkeypatch.setenv("GSA_NPU_NPROG", "3")
    T._cores.cache_clear()
    yield
    T._cores.cache_clear()


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _band_ok(x, w, got, want):
    """Spec 2: codes may differ only where |x.W| <= 1e-3 ||x|| ||W[:, r]||."""
    from gsa.reference import project

    y = project(x, w)
    xn = x.double().norm(dim=-1, keepdim=True)
    wn = w.double().norm(dim=-2)
    if w.dim() == 3:  # per head: [..., H, R]
        hw = w.shape[0]
        wn = wn.repeat_interleave(x.shape[-2] // hw, dim=0)
    band = y.abs() <= 1e-3 * xn * wn
    diff = torch.from_numpy(__import__("numpy").unpackbits((got ^ want).cpu().numpy(), axis=-1, bitorder="little")).bool()
    return bool((diff & ~band.cpu()).sum() == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_hash_encode_matches_outside_band(dtype):
    g = _g(1)
    x = torch.randn(5, 4, 40, generator=g).to(dtype)
    w = torch.randn(2, 40, 64, generator=g)
    got, want = T.hash_encode(x.to(DEV), w.to(DEV)).cpu(), reference.hash_encode(x, w)
    assert got.shape == want.shape and got.dtype == torch.uint8
    assert _band_ok(x, w, got, want)
    w2 = torch.randn(40, 96, generator=g)
    got = T.hash_encode(x.to(DEV), w2.to(DEV)).cpu()
    assert torch.equal(got, reference.hash_encode(x, w2)) or _band_ok(x, w2, got, reference.hash_encode(x, w2))


def test_hash_encode_signs_exact_cases():
    # identity projection: code bits are the signs of x itself, 0 and -0 give 0
    x = torch.tensor([[1.0, -1.0, 0.0, -0.0, 2.0, 3.0, -5.0, 0.5] * 4])
    w = torch.eye(32)
    got = T.hash_encode(x.to(DEV), w.to(DEV)).cpu()
    assert got.tolist() == [[0b10110001] * 4]


def test_hash_encode_and_cache_slots():
    g = _g(2)
    k = torch.randn(9, 2, 32, generator=g)
    w = torch.randn(2, 32, 64, generator=g)
    cache = torch.randint(0, 256, (4, 2, 8, 8), dtype=torch.uint8, generator=g)
    ref = cache.clone()
    slots = torch.tensor([0, 7, -1, 31, 9, 16, -5, 3, 8], dtype=torch.int64)
    got = cache.to(DEV)
    T.hash_encode_and_cache(k.to(DEV), w.to(DEV), got, slots.to(DEV))
    reference.hash_encode_and_cache(k, w, ref, slots)
    assert torch.equal(got.cpu(), ref)  # padding slots leave the cache untouched


def test_mla_hash_encode_and_cache():
    g = _g(3)
    c_kv, k_pe = torch.randn(6, 64, generator=g), torch.randn(6, 16, generator=g)
    wl, wr = torch.randn(64, 128, generator=g), torch.randn(16, 32, generator=g)
    codes = T.mla_hash_encode(c_kv.to(DEV), k_pe.to(DEV), wl.to(DEV), wr.to(DEV)).cpu()
    want = reference.mla_hash_encode(c_kv, k_pe, wl, wr)
    assert codes.shape == (6, 20)
    assert _band_ok(c_kv, wl, codes[:, :16], want[:, :16]) and _band_ok(k_pe, wr, codes[:, 16:], want[:, 16:])
    cache = torch.zeros(3, 1, 4, 20, dtype=torch.uint8)
    ref = cache.clone()
    slots = torch.tensor([11, 0, -1, 5, 6, 1], dtype=torch.int32)
    got = cache.to(DEV)
    T.mla_hash_encode_and_cache(c_kv.to(DEV), k_pe.to(DEV), wl.to(DEV), wr.to(DEV), got, slots.to(DEV))
    reference.mla_hash_encode_and_cache(c_kv, k_pe, wl, wr, ref, slots)
    assert torch.equal(got.cpu(), ref)


def _sel_case(seed, b=4, hq=4, hkv=2, c=8, bs=4, m=6, nb=30, ties=False):
    g = _g(seed)
    q = torch.randint(0, 256, (b, hq, c), dtype=torch.uint8, generator=g)
    kc = torch.randint(0, 256, (nb, hkv, bs, c), dtype=torch.uint8, generator=g)
    if ties:  # few distinct codes: many equal block scores
        kc = kc & 0x01
        q = q & 0x01
    bt = torch.randint(0, nb, (b, m), dtype=torch.int32, generator=g)
    seq = torch.randint(1, m * bs + 1, (b,), dtype=torch.int32, generator=g)
    seq[0] = m * bs
    seq[-1] = 1
    budgets = torch.randint(1, m + 2, (b,), dtype=torch.int32, generator=g)
    return q, kc, bt, seq, budgets


def _check_sel(q, kc, bt, seq, budgets, k, forced, method, rope_bytes=0, w=1.0):
    want = reference.hamming_dist_top_k(q, kc, bt, seq, budgets, k, forced, method, rope_bytes, w)
    d = [t.to(DEV) for t in (q, kc, bt, seq, budgets)]
    got = T.hamming_dist_top_k(*d, k, forced, method, rope_bytes, w)
    assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1]), (forced, method, got, want)
    return want


@pytest.mark.parametrize("method", ["max", "mean"])
@pytest.mark.parametrize("seed", [0, 1])
def test_top_k_gqa_random_and_ties(method, seed):
    for ties in (False, True):
        args = _sel_case(seed, ties=ties)
        for forced in ([], [0, -1], [-1, -1, 2, 99, -99]):
            _check_sel(*args, 6, forced, method)


@pytest.mark.parametrize("method", ["max", "mean"])
def test_top_k_mla_rope_weight(method):
    g = _g(5)
    q, kc, bt, seq, budgets = _sel_case(5, hq=3, hkv=1, c=12, m=5)
    for w in (1.0, 0.0, 0.5, 2.0625, 16.0):
        _check_sel(q, kc, bt, seq, budgets, 5, [0, -1], method, rope_bytes=4, w=w)
    del g


def test_top_k_hand_case_ties_to_smaller_index():
    # one head, 32-bit codes; all keys equal except block 2 -> scores tie for blocks 0, 1, 3
    q = torch.zeros(1, 1, 4, dtype=torch.uint8)
    kc = torch.full((4, 1, 2, 4), 0xFF, dtype=torch.uint8)
    kc[2] = 0  # block 2 matches the query exactly: the best block
    bt = torch.tensor([[0, 1, 2, 3]], dtype=torch.int32)
    seq = torch.tensor([8], dtype=torch.int32)
    idx, n = _check_sel(q, kc, bt, seq, torch.tensor([2], dtype=torch.int32), 4, [], "max")
    assert idx.tolist() == [[0, 2, -1, -1]] and n.tolist() == [2]
    idx, n = _check_sel(q, kc, bt, seq, torch.tensor([2], dtype=torch.int32), 4, [-1], "max")
    assert idx.tolist() == [[2, 3, -1, -1]] and n.tolist() == [2]


def test_top_k_clamps_to_k_and_bad_ids_stay_in_bounds():
    q, kc, bt, seq, budgets = _sel_case(7)
    budgets[:] = 100  # every block: n_sel = n_blocks, up to 6 > k
    _check_sel(q, kc, bt, seq, budgets, 3, [0, -1], "max")
    bt[0, 2] = 10_000  # out-of-range id: clamped, never read out of bounds
    bt[1, 0] = -7
    _check_sel(q, kc, bt, seq, budgets, 8, [], "mean")


@pytest.mark.parametrize("seed", [0, 3])
def test_kv_select(seed):
    q, kc, bt, seq, budgets = _sel_case(seed)
    for k, forced in ((6, [0, -1]), (2, []), (9, [-1])):
        idx, n = reference.hamming_dist_top_k(q, kc, bt, seq, budgets, k, forced)
        want = reference.kv_select(idx, n, bt, seq, 4, 0)
        got = T.kv_select(idx.to(DEV), n.to(DEV), bt.to(DEV), seq.to(DEV), 4, 0)
        assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])
    # pad id and a hand case: blocks 0 and 2 of a 9-token sequence (bs 4): 4 + 1 tokens
    idx = torch.tensor([[0, 2, -1]], dtype=torch.int32)
    got = T.kv_select(idx.to(DEV), torch.tensor([2], dtype=torch.int32).to(DEV),
                      torch.tensor([[5, 6, 7]], dtype=torch.int32).to(DEV),
                      torch.tensor([9], dtype=torch.int32).to(DEV), 4, -1)
    assert got[0].cpu().tolist() == [[5, 7, -1]] and got[1].cpu().tolist() == [5]


@pytest.mark.parametrize("method", ["max", "mean"])
def test_top_k_padding_tokens_never_count(method):
    # block 2 is partial (2 of 4 tokens): medium valid tokens, perfect-match padding slots
    q = torch.zeros(1, 2, 4, dtype=torch.uint8)
    kc = torch.full((3, 1, 4, 4), 0x0F, dtype=torch.uint8)
    kc[1, 0, 0] = 0x0E
    kc[2, 0, 2:] = 0x00
    bt = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    seq = torch.tensor([10], dtype=torch.int32)
    idx, n = _check_sel(q, kc, bt, seq, torch.tensor([1], dtype=torch.int32), 3, [], method)
    assert idx.tolist() == [[1, -1, -1]]


@pytest.mark.parametrize("per_head", [False, True])
def test_hash_encode_threshold_spec13(per_head):
    # spec 13: keys with a large common component, threshold t = mu W; band rule on x.W - t
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    from spec_literal import band_violations

    g = _g(7)
    mu = 3 * torch.randn(40, generator=g)
    x = torch.randn(9, 4, 40, generator=g) + mu
    w = torch.randn(2, 40, 64, generator=g) if per_head else torch.randn(40, 64, generator=g)
    thr = torch.einsum("d,hdr->hr", mu, w) if per_head else mu @ w
    got = T.hash_encode(x.to(DEV), w.to(DEV), thr.to(DEV)).cpu()
    assert band_violations(x, w, got, thr) == 0
    assert not torch.equal(got, T.hash_encode(x.to(DEV), w.to(DEV)).cpu())
    zero = torch.zeros_like(thr)
    assert torch.equal(T.hash_encode(x.to(DEV), w.to(DEV), zero.to(DEV)).cpu(), T.hash_encode(x.to(DEV), w.to(DEV)).cpu())


def test_hash_encode_and_cache_threshold_spec13():
    g = _g(8)
    nb, hkv, bs, d, r = 4, 2, 4, 24, 32
    mu = 2 * torch.randn(hkv, d, generator=g)
    k = torch.randn(11, hkv, d, generator=g) + mu
    w = torch.randn(hkv, d, r, generator=g)
    thr = torch.einsum("hd,hdr->hr", mu, w)
    slots = torch.randperm(nb * bs, generator=g)[:11].to(torch.int32)
    slots[2] = -1
    got = torch.full((nb, hkv, bs, r // 8), 0xAB, dtype=torch.uint8)
    want = got.clone()
    got = got.to(DEV)
    T.hash_encode_and_cache(k.to(DEV), w.to(DEV), got, slots.to(DEV), thr.to(DEV))
    reference.hash_encode_and_cache(k, w, want, slots, thr)
    assert torch.equal(got.cpu(), want)  # random inputs: no projection lands in the band here
