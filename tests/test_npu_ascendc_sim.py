"""The AscendC kernels' logic, run on the CPU through a host stub of the AscendC API.

npu_ops/ascendc/sim/kernel_operator.h stubs the few AscendC calls the kernels
make (with bounds checks on every GM and UB access and the 192 KiB UB budget);
sim_harness.cpp runs each kernel body once per simulated core. This checks
index math, the split of work over cores, the selection rule and byte layouts
against the reference, bit for bit. It does not check the real API's
semantics (pipe sync, DMA, alignment, AI-core float division): that needs an
Ascend machine (npu_ops/README.md). Skipped without a C++ compiler.
"""
import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from gsa import reference

SIM = Path(__file__).resolve().parents[1] / "npu_ops" / "ascendc" / "sim"
CXX = shutil.which("g++") or shutil.which("c++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler")

I64 = ctypes.c_int64


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    out = tmp_path_factory.mktemp("gsa_sim") / "gsa_sim.so"
    cmd = [CXX, "-std=c++17", "-O1", "-shared", "-fPIC", "-I", str(SIM), "-I", str(SIM.parent / "op_kernel"),
           "-o", str(out), str(SIM / "sim_harness.cpp")]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(out))


def _p(t: torch.Tensor):
    assert t.is_contiguous()
    return ctypes.c_void_p(t.data_ptr())


def _hash_cache(lib, k, w, cache, slots, col_off, cores):
    """k [T, H, D], w [H, D, R] (the binding's fp32 per-head form)."""
    x = k.float().contiguous()
    wf = w.float().contiguous()
    s = slots.to(torch.int64).contiguous()
    t, h, d = x.shape
    lib.sim_hash_encode_and_cache(_p(x), _p(wf), _p(cache), _p(s), I64(t), I64(h), I64(d), I64(wf.shape[2]),
                                  I64(cache.shape[0]), I64(cache.shape[2]), I64(cache.shape[3]), I64(col_off),
                                  I64(cores))


def _band_ok(x, w, got, want):
    y = reference.project(x, w)
    band = y.abs() <= 1e-3 * x.double().norm(dim=-1, keepdim=True) * w.double().norm(dim=-2)
    diff = torch.from_numpy(np.unpackbits((got ^ want).numpy(), axis=-1, bitorder="little")).bool()
    return not bool((diff & ~band).any())


@pytest.mark.parametrize("cores", [1, 3, 40])
def test_hash_encode_and_cache(lib, cores):
    g = torch.Generator().manual_seed(cores)
    k = torch.randn(9, 2, 64, generator=g).to(torch.bfloat16)
    w = torch.randn(2, 64, 128, generator=g)
    cache = torch.randint(0, 256, (4, 2, 8, 16), dtype=torch.uint8, generator=g)
    want = cache.clone()
    slots = torch.tensor([0, 31, -1, 9, 8, 100, 17, 3, 30])  # -1 padding, 100 past the cache
    _hash_cache(lib, k, w, cache, slots, 0, cores)
    reference.hash_encode_and_cache(k, w, want, slots)
    assert torch.equal(cache, want) or _band_ok(k[:, 0], w[0], cache[0, 0, :1], want[0, 0, :1])
    untouched = torch.ones(4, 8, dtype=torch.bool)
    for s in slots.tolist():
        if 0 <= s < 32:
            untouched[s // 8, s % 8] = False
    assert torch.equal(cache.permute(0, 2, 1, 3)[untouched], want.permute(0, 2, 1, 3)[untouched])


def test_mla_cache_two_parts(lib):
    g = torch.Generator().manual_seed(5)
    c_kv, k_pe = torch.randn(6, 512, generator=g), torch.randn(6, 64, generator=g)
    wl, wr = torch.randn(512, 512, generator=g), torch.randn(64, 64, generator=g)
    cache = torch.zeros(3, 1, 4, 72, dtype=torch.uint8)
    want = cache.clone()
    slots = torch.tensor([11, 0, -1, 5, 6, 1], dtype=torch.int32)
    # the binding's MLA path: two launches, the rope bytes at column R_lora / 8
    _hash_cache(lib, c_kv.unsqueeze(1), wl.unsqueeze(0), cache, slots, 0, 7)
    _hash_cache(lib, k_pe.unsqueeze(1), wr.unsqueeze(0), cache, slots, 64, 7)
    reference.mla_hash_encode_and_cache(c_kv, k_pe, wl, wr, want, slots)
    got_codes = cache.reshape(12, 72)[[11, 0, 5, 6, 1]]
    want_codes = want.reshape(12, 72)[[11, 0, 5, 6, 1]]
    x = torch.cat([c_kv, k_pe], dim=1)[[0, 1, 3, 4, 5]]
    assert _band_ok(x[:, :512], wl, got_codes[:, :64], want_codes[:, :64])
    assert _band_ok(x[:, 512:], wr, got_codes[:, 64:], want_codes[:, 64:])


def _top_k(lib, q, kc, bt, seq, budgets, k, forced, method, rope_bytes, w, cores):
    b, hq, c = q.shape
    nb, hkv, bs, _ = kc.shape
    m = bt.shape[1]
    f = torch.tensor(forced or [0], dtype=torch.int32)
    scores = torch.empty(b, m, dtype=torch.float32 if method == "mean" else torch.int32)
    idx = torch.full((b, k), 123, dtype=torch.int32)
    nsel = torch.full((b,), 123, dtype=torch.int32)
    lib.sim_hamming_dist_top_k(_p(q), _p(kc), _p(bt), _p(seq), _p(budgets), _p(f), _p(scores), _p(idx), _p(nsel),
                               I64(b), I64(m), I64(nb), I64(hkv), I64(hq // hkv), I64(c), I64(c - rope_bytes),
                               I64(int(round(w * 16))), I64(bs), I64(method == "mean"), I64(k), I64(len(forced)),
                               I64(cores))
    return idx, nsel


def _case(seed, b=5, hq=8, hkv=2, c=16, bs=8, m=7, ties=False):
    g = torch.Generator().manual_seed(seed)
    nb = b * m + 2
    q = torch.randint(0, 256, (b, hq, c), dtype=torch.uint8, generator=g)
    kc = torch.randint(0, 256, (nb, hkv, bs, c), dtype=torch.uint8, generator=g)
    if ties:
        kc, q = (kc & 1) * 0xFF, q & 0
    bt = torch.randperm(nb, generator=g)[: b * m].reshape(b, m).to(torch.int32)
    seq = torch.randint(1, m * bs + 1, (b,), dtype=torch.int32, generator=g)
    seq[0], seq[1] = m * bs, 1
    budgets = torch.randint(1, m + 2, (b,), dtype=torch.int32, generator=g)
    return q, kc, bt, seq, budgets


@pytest.mark.parametrize("method", ["max", "mean"])
@pytest.mark.parametrize("cores", [1, 4, 48])
def test_hamming_dist_top_k_gqa(lib, method, cores):
    for seed, ties in ((cores, False), (cores + 100, True)):
        q, kc, bt, seq, budgets = _case(seed, ties=ties)
        for forced in ([], [0, -1], [-1, 2, 99, -99, -1]):
            for k in (7, 3):  # 3: n_sel clamped to K (unchecked caller, spec 5 amendment)
                got = _top_k(lib, q, kc, bt, seq, budgets, k, forced, method, 0, 1.0, cores)
                want = reference.hamming_dist_top_k(q, kc, bt, seq, budgets, k, forced, method)
                assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (forced, k, got, want)


@pytest.mark.parametrize("method", ["max", "mean"])
def test_hamming_dist_top_k_mla(lib, method):
    q, kc, bt, seq, budgets = _case(9, hq=16, hkv=1, c=72, bs=16, m=5)
    for w in (1.0, 0.0, 0.5, 16.0):
        got = _top_k(lib, q, kc, bt, seq, budgets, 5, [0, -1], method, 8, w, 6)
        want = reference.hamming_dist_top_k(q, kc, bt, seq, budgets, 5, [0, -1], method, 8, w)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), w


def test_bad_block_ids_stay_in_bounds(lib):
    q, kc, bt, seq, budgets = _case(3)
    bt[0, 1], bt[2, 0] = 10_000, -4  # clamped, never read out of bounds (the stub aborts otherwise)
    got = _top_k(lib, q, kc, bt, seq, budgets, 7, [0], "max", 0, 1.0, 4)
    want = reference.hamming_dist_top_k(q, kc, bt, seq, budgets, 7, [0], "max")
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("cores", [1, 5])
def test_kv_select(lib, cores):
    q, kc, bt, seq, budgets = _case(11)
    for k, forced, pad in ((7, [0, -1], 0), (2, [], -1)):
        idx, n = reference.hamming_dist_top_k(q, kc, bt, seq, budgets, k, forced)
        table = torch.empty_like(idx)
        lens = torch.empty_like(n)
        lib.sim_kv_select(_p(idx), _p(n), _p(bt), _p(seq), _p(table), _p(lens), I64(idx.shape[0]), I64(k),
                          I64(bt.shape[1]), I64(kc.shape[2]), I64(pad), I64(cores))
        want = reference.kv_select(idx, n, bt, seq, kc.shape[2], pad)
        assert torch.equal(table, want[0]) and torch.equal(lens, want[1])


@pytest.mark.parametrize("method", ["max", "mean"])
def test_padding_tokens_of_the_last_block_never_count(lib, method):
    q, kc, bt, seq, budgets = _padding_case()
    got = _top_k(lib, q, kc, bt, seq, budgets, 3, [], method, 0, 1.0, 2)
    want = reference.hamming_dist_top_k(q, kc, bt, seq, budgets, 3, [], method)
    assert want[0].tolist() == [[1, -1, -1]]
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def _padding_case():
    """Block 2 is partial (2 of 4 tokens): its valid tokens are medium, its padding
    slots a perfect match. Counting padding would make block 2 win (max and mean)."""
    q = torch.zeros(1, 2, 4, dtype=torch.uint8)
    kc = torch.full((3, 1, 4, 4), 0x0F, dtype=torch.uint8)  # blocks 0, 1: medium
    kc[1, 0, 0] = 0x0E  # block 1 slightly better than block 0 on max and mean
    kc[2, 0, 2:] = 0x00  # padding slots: a perfect match
    bt = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    seq = torch.tensor([10], dtype=torch.int32)
    return q, kc, bt, seq, torch.tensor([1], dtype=torch.int32)
