"""The transposed hash kernel (launch choice ``hash.transposed``, ``cuda_ops/hash_tiles.py``).

It computes the same bf16-split projection as ``_hash_kernel`` with the operands swapped
(``W^T @ x^T``), so its codes must equal the default launch's (the products are exact and
each output sums the same terms) and obey spec 2's band against float64, in codes mode and
cache mode (slots ``-1`` and past the cache skipped), with thresholds (spec 13), grouped
weights, two programs along the code bytes (R = 256) and several row tiles per program.
Runs in the Triton interpreter (CI) and compiled on a GPU.
"""
import os

import pytest
import torch

from spec_literal import band_violations

INTERP = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
pytestmark = pytest.mark.skipif(
    __import__("importlib").util.find_spec("triton") is None or not (INTERP or torch.cuda.is_available()),
    reason="needs triton with TRITON_INTERPRET=1 (CPU interpreter) or a CUDA device",
)
DEV = "cpu" if INTERP else "cuda"


@pytest.fixture
def gen():
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)


def _x(gen, *shape):
    return torch.randn(*shape, generator=gen).to(torch.bfloat16).to(DEV)


@pytest.mark.parametrize("t,h,hw,d,r,centred", [
    (80, 2, 2, 64, 128, False),   # 5 tiles of 16 rows over 2 programs (interpreter)
    (37, 4, 2, 128, 128, True),   # grouped weight (G = 2), a ragged last tile, thresholds
    (48, 1, 1, 96, 256, False),   # D not a power of two; R = 256: two programs along the code bytes
])
def test_transposed_codes_equal_default(gen, t, h, hw, d, r, centred):
    from cuda_ops import hashing

    x = _x(gen, t, h, d)
    w = torch.randn(hw, d, r, generator=gen).to(DEV)
    thr = (0.3 * torch.randn(hw, r, generator=gen)).to(DEV) if centred else None
    base = hashing.hash_encode(x, w, thr, transposed=False)
    got = hashing.hash_encode(x, w, thr, transposed=True, block_m=16)
    assert got.shape == base.shape == (t, h, r // 8)
    assert torch.equal(got, base)
    assert band_violations(x, w, got, thr) == 0


@pytest.mark.parametrize("centred", [False, True])
def test_transposed_cache_equal_default(gen, centred):
    from cuda_ops import hashing

    t, hkv, d, r, bs = 70, 2, 64, 128, 8
    k = _x(gen, t, hkv, d)
    w = torch.randn(hkv, d, r, generator=gen).to(DEV)
    thr = (0.3 * torch.randn(hkv, r, generator=gen)).to(DEV) if centred else None
    nb = 12
    slots = torch.randperm(nb * bs, generator=gen)[:t]
    slots[3] = -1  # skipped
    slots[5] = nb * bs + 4  # past the cache: skipped, nothing written out of bounds
    slots = slots.to(DEV)
    fill = torch.randint(0, 256, (nb, hkv, bs, r // 8), generator=gen, dtype=torch.int32).to(torch.uint8).to(DEV)
    base, got = fill.clone(), fill.clone()
    hashing.hash_encode_and_cache(k, w, base, slots, thr, transposed=False)
    hashing.hash_encode_and_cache(k, w, got, slots, thr, transposed=True, block_m=16)
    assert torch.equal(got, base)
    ok = (slots >= 0) & (slots < nb * bs)
    s = slots[ok].long()
    codes = got.permute(0, 2, 1, 3).reshape(nb * bs, hkv, r // 8)[s]
    assert band_violations(k[ok], w, codes, thr) == 0
    untouched = torch.ones(nb * bs, dtype=torch.bool, device=DEV)
    untouched[s] = False
    assert torch.equal(got.permute(0, 2, 1, 3).reshape(nb * bs, hkv, r // 8)[untouched],
                       fill.permute(0, 2, 1, 3).reshape(nb * bs, hkv, r // 8)[untouched])


def test_transposed_hand_computed():
    # one key, D = 16, 8 bits: projection column r is +x[r] or -x[r] by hand (bit r = sign)
    from cuda_ops import hashing

    x = torch.tensor([[1.0, -2.0, 3.0, -4.0, 0.5, -0.5, 2.0, 1.0] + [0.0] * 8]).to(torch.bfloat16).to(DEV)
    w = torch.zeros(16, 8)
    signs = [1, 1, -1, -1, 1, -1, -1, 1]
    for r in range(8):
        w[r, r] = signs[r]
    # y = [1, -2, -3, 4, 0.5, 0.5, -2, 1] -> bits 0, 3, 4, 5, 7 set
    got = hashing.hash_encode(x, w.to(DEV), transposed=True, block_m=16)
    assert int(got[0, 0]) == 0b10111001


def test_transposed_ignored_where_it_does_not_apply(gen):
    # fp32 input (the FMA path) and D > 128 (several weight tiles) run the default kernel
    from cuda_ops import hashing

    x = torch.randn(20, 1, 200, generator=gen).to(DEV)
    w = torch.randn(1, 200, 64, generator=gen).to(DEV)
    assert torch.equal(hashing.hash_encode(x, w, transposed=True), hashing.hash_encode(x, w, transposed=False))
    xb = x.to(torch.bfloat16)
    assert torch.equal(hashing.hash_encode(xb, w, transposed=True), hashing.hash_encode(xb, w, transposed=False))
