"""Spec 1, 2, 3, 9: sign_bits_pack, hash_encode (+cache), MLA split hashing, per backend."""
import numpy as np
import pytest
import torch

import gsa
from gsa import ops, reference as ref
from conftest import assert_backend_ran
from spec_literal import band_violations


def test_sign_bits_pack_hand_case(backend):
    # spec 1: bit i (LSB first) of byte j is x[8j+i] > 0; 0, -0 and NaN give 0
    x = torch.tensor([[1.0, -1.0, 0.0, -0.0, float("nan"), 2.0, -3.0, float("inf")],
                      [-1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, 5e-8]])
    out = ops.sign_bits_pack(x)
    assert_backend_ran("sign_bits_pack", backend)
    assert out.dtype == torch.uint8 and out.shape == (2, 1)
    assert out[0, 0].item() == 0b10100001  # bits 0, 5, 7
    assert out[1, 0].item() == 0b10000000  # only the tiny positive last value


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sign_bits_pack_matches_numpy(backend, rng, dtype):
    x = torch.randn(3, 7, 64, generator=rng).to(dtype)
    x[0, 0, :8] = 0.0
    want = np.packbits((x.float() > 0).numpy(), axis=-1, bitorder="little")
    np.testing.assert_array_equal(ops.sign_bits_pack(x).numpy(), want)


def test_hash_encode_per_head_uses_kv_head_projection(backend):
    # 4 query heads, 2 KV heads: query head q uses W[q // 2]. Hand-built so that
    # W[0] and W[1] give opposite codes for the same vector.
    d, r = 4, 32
    w0 = torch.zeros(d, r)
    w0[0, :] = 1.0  # every bit = sign(x0)
    w = torch.stack([w0, -w0])  # [2, D, R]
    x = torch.zeros(1, 4, d)
    x[..., 0] = 1.0
    codes = ops.hash_encode(x, w)
    assert_backend_ran("hash_encode", backend)
    assert codes.shape == (1, 4, r // 8)
    assert codes[0, 0].tolist() == [255] * 4 and codes[0, 1].tolist() == [255] * 4
    assert codes[0, 2].tolist() == [0] * 4 and codes[0, 3].tolist() == [0] * 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("per_head", [False, True])
def test_hash_encode_band_rule(backend, rng, dtype, per_head):
    t, h, d, r = 33, 4, 64, 128
    x = torch.randn(t, h, d, generator=rng).to(dtype)
    w = torch.randn(2, d, r, generator=rng) if per_head else torch.randn(d, r, generator=rng)
    codes = ops.hash_encode(x, w)
    assert codes.shape == (t, h, r // 8)
    assert band_violations(x, w, codes) == 0
    # and the reference itself is exactly the float64 sign outside the band
    assert band_violations(x, w, ref.hash_encode(x, w)) == 0


def _fresh_cache(nb, h, bs, c):
    return torch.full((nb, h, bs, c), 0xAB, dtype=torch.uint8)


def _check_written(cache, slots, bs, violations):
    """Slots >= 0 hold codes that obey the band rule (spec 2); every other
    byte still holds the 0xAB poison: padding (-1) wrote nothing."""
    rows = [t for t, s in enumerate(slots.tolist()) if s >= 0]
    live = [slots[t].item() for t in rows]
    written = torch.zeros(cache.shape[0], cache.shape[2], dtype=torch.bool)
    for s in live:
        written[s // bs, s % bs] = True
    untouched = cache.permute(0, 2, 1, 3)[~written]
    assert bool((untouched == 0xAB).all())
    got = torch.stack([cache[s // bs, :, s % bs] for s in live])
    assert violations(rows, got) == 0


@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
def test_hash_encode_and_cache_slots_and_padding(backend, rng, slot_dtype):
    nb, hkv, bs, d, r = 5, 2, 4, 32, 64
    k = torch.randn(6, hkv, d, generator=rng)
    w = torch.randn(hkv, d, r, generator=rng)
    cache = _fresh_cache(nb, hkv, bs, r // 8)
    slots = torch.tensor([0, 7, -1, 19, 5, -1], dtype=slot_dtype)
    ops.hash_encode_and_cache(k, w, cache, slots)
    assert_backend_ran("hash_encode_and_cache", backend)
    _check_written(cache, slots, bs, lambda rows, got: band_violations(k[rows], w, got))


def test_mla_hash_encode_byte_order(backend, rng):
    # spec 3/9: the kv_lora code bytes first, then the rope code bytes
    t, n, lora, rope, r_l, r_r = 5, 3, 64, 16, 64, 32
    x_l = torch.randn(t, n, lora, generator=rng)
    x_r = torch.randn(t, n, rope, generator=rng)
    w_l = torch.randn(lora, r_l, generator=rng)
    w_r = torch.randn(rope, r_r, generator=rng)
    codes = ops.mla_hash_encode(x_l, x_r, w_l, w_r)
    assert_backend_ran("mla_hash_encode", backend)
    assert codes.shape == (t, n, (r_l + r_r) // 8)
    assert band_violations(x_l, w_l, codes[..., : r_l // 8]) == 0
    assert band_violations(x_r, w_r, codes[..., r_l // 8:]) == 0


def test_mla_hash_encode_and_cache(backend, rng):
    nb, bs, lora, rope, r_l, r_r = 3, 8, 64, 16, 64, 32
    c_kv = torch.randn(10, lora, generator=rng)
    k_pe = torch.randn(10, rope, generator=rng)
    w_l = torch.randn(lora, r_l, generator=rng)
    w_r = torch.randn(rope, r_r, generator=rng)
    cache = _fresh_cache(nb, 1, bs, (r_l + r_r) // 8)
    slots = torch.tensor([3, 4, 5, -1, 8, 9, 23, 0, -1, 12])
    ops.mla_hash_encode_and_cache(c_kv, k_pe, w_l, w_r, cache, slots)
    assert_backend_ran("mla_hash_encode_and_cache", backend)
    _check_written(cache, slots, bs, lambda rows, got: band_violations(c_kv[rows], w_l, got[:, 0, : r_l // 8])
                   + band_violations(k_pe[rows], w_r, got[:, 0, r_l // 8:]))
