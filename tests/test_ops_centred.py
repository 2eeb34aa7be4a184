"""Spec 13: centred key codes (a per-bit threshold), per backend, against the reference."""
import pytest
import torch

import gsa
from gsa import ops, reference as ref
from conftest import assert_backend_ran
from spec_literal import band_violations


def test_threshold_hand_case(backend):
    # D = 2, R = 32: column r projects onto e0 (r even) or e1 (r odd); thresholds
    # chosen so that bits flip exactly where x . W[:, r] <= t[r]
    d, r = 2, 32
    w = torch.zeros(d, r)
    w[0, 0::2] = 1.0
    w[1, 1::2] = 1.0
    t = torch.zeros(r)
    t[0], t[1], t[2], t[3] = 0.5, -0.5, 2.0, 3.0  # bit 0: 1 > 0.5; bit 1: -1 > -0.5 no; bit 2: 1 > 2 no; bit 3: -1 > 3 no
    t[4:] = -10.0  # every other bit: projection (+-1) > -10
    x = torch.tensor([[1.0, -1.0]])
    codes = ops.hash_encode(x, w, t)
    assert_backend_ran("hash_encode", backend)
    assert codes.tolist() == [[0b11110001, 255, 255, 255]]
    # without the threshold: bit r = x[r % 2] > 0, i.e. the even bits
    assert ops.hash_encode(x, w).tolist() == [[0b01010101] * 4]


def test_threshold_hand_case_per_head(backend):
    # 4 query heads over 2 KV heads: head h uses t[h // 2]; equal projections, opposite thresholds
    d, r = 4, 32
    w = torch.zeros(2, d, r)
    w[:, 0, :] = 1.0  # every bit projects x0
    t = torch.stack([torch.full((r,), 0.5), torch.full((r,), 1.5)])
    x = torch.zeros(3, 4, d)
    x[..., 0] = 1.0  # x0 = 1: 1 > 0.5 (KV head 0), 1 > 1.5 false (KV head 1)
    codes = ops.hash_encode(x, w, t)
    assert codes[:, :2].eq(255).all() and codes[:, 2:].eq(0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("per_head", [False, True])
def test_threshold_matches_reference_outside_band(backend, rng, dtype, per_head):
    t_, h, d, r = 41, 4, 64, 128
    mu = 3 * torch.randn(d, generator=rng)  # a large common component, as real keys have
    x = (torch.randn(t_, h, d, generator=rng) + mu).to(dtype)
    w = torch.randn(2, d, r, generator=rng) if per_head else torch.randn(d, r, generator=rng)
    thr = (mu @ w) if not per_head else torch.einsum("d,hdr->hr", mu, w)
    codes = ops.hash_encode(x, w, thr)
    assert_backend_ran("hash_encode", backend)
    assert codes.shape == (t_, h, r // 8)
    assert band_violations(x, w, codes, thr) == 0
    assert band_violations(x, w, ref.hash_encode(x, w, thr), thr) == 0
    # centring changes codes (the common component dominated every sign before)
    assert not torch.equal(codes, ops.hash_encode(x, w))


@pytest.mark.parametrize("per_head", [False, True])
def test_zero_threshold_is_todays_code_bit_for_bit(backend, rng, per_head):
    t_, h, d, r = 37, 4, 32, 64
    x = torch.randn(t_, h, d, generator=rng)
    x[0, 0] = 0.0  # zero projections: 0 - 0 > 0 is false, like 0 > 0
    x[1, 1, 0] = float("nan")
    w = torch.randn(2, d, r, generator=rng) if per_head else torch.randn(d, r, generator=rng)
    zero = torch.zeros(*w.shape[:-2], r)
    assert torch.equal(ops.hash_encode(x, w, zero), ops.hash_encode(x, w))
    nb, bs = 6, 8
    slots = torch.randperm(nb * bs, generator=rng)[:t_]
    c1 = torch.zeros(nb, h, bs, r // 8, dtype=torch.uint8)
    c2 = c1.clone()
    if per_head:
        w = torch.randn(h, d, r, generator=rng)
        zero = torch.zeros(h, r)
    ops.hash_encode_and_cache(x, w, c1, slots)
    ops.hash_encode_and_cache(x, w, c2, slots, zero)
    assert torch.equal(c1, c2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_threshold_cache_matches_reference(backend, rng, dtype):
    nb, hkv, bs, d, r = 5, 2, 4, 32, 64
    t_ = 13
    mu = 2 * torch.randn(hkv, d, generator=rng)
    k = (torch.randn(t_, hkv, d, generator=rng) + mu).to(dtype)
    w = torch.randn(hkv, d, r, generator=rng)
    thr = torch.einsum("hd,hdr->hr", mu, w)
    slots = torch.randperm(nb * bs, generator=rng)[:t_].to(torch.int32)
    slots[3] = -1  # padding: nothing written
    cache = torch.full((nb, hkv, bs, r // 8), 0xAB, dtype=torch.uint8)
    ops.hash_encode_and_cache(k, w, cache, slots, thr)
    assert_backend_ran("hash_encode_and_cache", backend)
    want = torch.full_like(cache, 0xAB)
    ref.hash_encode_and_cache(k, w, want, slots, thr)
    live = [i for i in range(t_) if slots[i] >= 0]
    got = torch.stack([cache[int(slots[i]) // bs, :, int(slots[i]) % bs] for i in live])
    assert band_violations(k[live], w, got, thr) == 0
    written = torch.zeros(nb, bs, dtype=torch.bool)
    for i in live:
        written[int(slots[i]) // bs, int(slots[i]) % bs] = True
    assert cache.permute(0, 2, 1, 3)[~written].eq(0xAB).all()


def test_raw_custom_op_takes_threshold(backend, rng):
    x = torch.randn(3, 2, 16, generator=rng)
    w = torch.randn(2, 16, 32, generator=rng)
    t = torch.randn(2, 32, generator=rng)
    assert torch.equal(torch.ops.gsa.hash_encode(x, w, t), ref.hash_encode(x, w, t)) or \
        band_violations(x, w, torch.ops.gsa.hash_encode(x, w, t), t) == 0
    assert torch.equal(torch.ops.gsa.hash_encode(x, w), ops.hash_encode(x, w, None))


@pytest.mark.parametrize("bad, expected", [
    (torch.zeros(3, 32), "shape (2, 32) [Hw, R]"),
    (torch.zeros(2, 64), "shape (2, 32) [Hw, R]"),
    (torch.zeros(32), "shape (2, 32) [Hw, R]"),
    (torch.zeros(2, 32, dtype=torch.int32), "dtype"),
    ("0.5", "a torch.Tensor"),
])
def test_bad_threshold_is_one_clear_error(bad, expected):
    x, w = torch.randn(3, 2, 16), torch.randn(2, 16, 32)
    with pytest.raises(gsa.GSAInputError, match=r"argument 'threshold'") as e:
        ops.hash_encode(x, w, bad)
    assert expected in str(e.value)
    cache = torch.zeros(2, 2, 4, 4, dtype=torch.uint8)
    with pytest.raises(gsa.GSAInputError, match=r"gsa.hash_encode_and_cache: argument 'threshold'"):
        ops.hash_encode_and_cache(x, w, cache, torch.arange(3), bad)


def test_bad_threshold_shared_weight():
    with pytest.raises(gsa.GSAInputError, match=r"argument 'threshold': expected shape \(32,\) \[R\]"):
        ops.hash_encode(torch.randn(3, 16), torch.randn(16, 32), torch.zeros(1, 32))
