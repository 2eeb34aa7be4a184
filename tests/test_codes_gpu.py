"""The issue-17 code kernels on a CUDA GPU (Triton): the MLP encoder (spec 12) and
centred key thresholds (spec 13), at realistic shapes, against the float64 reference."""
import math

import pytest
import torch

from gsa import ops, reference as ref
from gsa.eval.selectors import unpack_signs
from spec_literal import band_violations

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(int.from_bytes(__import__("os").urandom(4), "little"))


def _stack(gen, heads, d, hidden, bits, depth):
    widths = [d] + [hidden] * (depth - 1) + [bits]
    ws = [torch.randn(heads, widths[i], widths[i + 1], generator=gen) / math.sqrt(widths[i]) for i in range(depth)]
    bs = [0.3 * torch.randn(heads, widths[i + 1], generator=gen) for i in range(depth)]
    return ws, bs


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mlp_hash_encode_and_cache_cuda(gen, depth, dtype):
    t, hkv, d, bits, bs, nb = 2048, 8, 128, 128, 16, 160
    ws, b = _stack(gen, hkv, d, 128, bits, depth)
    x = torch.randn(t, hkv, d, generator=gen).to(dtype)
    codes = ops.mlp_hash_encode(x.cuda(), [w.cuda() for w in ws], [v.cuda() for v in b])
    y = ref.mlp_project(x, ws, b)
    band = y.abs() <= ref.BAND * ref.mlp_band(x, ws, b)
    bad = ((unpack_signs(codes.cpu()) > 0) != (y > 0)) & ~band
    assert not bool(bad.any()) and float(band.float().mean()) < 0.01
    cache = torch.full((nb, hkv, bs, bits // 8), 0xAB, dtype=torch.uint8, device="cuda")
    slots = torch.randperm(nb * bs, generator=gen)[:t].cuda()
    slots[::7] = -1
    ops.mlp_hash_encode_and_cache(x.cuda(), [w.cuda() for w in ws], [v.cuda() for v in b], cache, slots)
    live = slots >= 0
    s = slots[live].long()
    assert torch.equal(cache[s // bs, :, s % bs], codes[live])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_centred_hash_encode_and_cache_cuda(gen, dtype):
    t, hkv, d, r, bs, nb = 4096, 8, 128, 128, 16, 300
    mu = 3 * torch.randn(hkv, d, generator=gen)
    x = (torch.randn(t, hkv, d, generator=gen) + mu).to(dtype)
    w = torch.linalg.qr(torch.randn(hkv, d, r, generator=gen))[0]
    thr = torch.einsum("hd,hdr->hr", mu, w)
    codes = ops.hash_encode(x.cuda(), w.cuda(), thr.cuda()).cpu()
    assert band_violations(x, w, codes, thr) == 0
    assert torch.equal(ops.hash_encode(x.cuda(), w.cuda(), torch.zeros_like(thr).cuda()),
                       ops.hash_encode(x.cuda(), w.cuda()))
    cache = torch.zeros(nb, hkv, bs, r // 8, dtype=torch.uint8, device="cuda")
    slots = torch.randperm(nb * bs, generator=gen)[:t].cuda()
    ops.hash_encode_and_cache(x.cuda(), w.cuda(), cache, slots, thr.cuda())
    s = slots.long()
    assert torch.equal(cache[s // bs, :, s % bs].cpu(), codes)
