"""C++ CPU backend (cpu_ops): bit-exact against gsa.reference on every code path this CPU has.

Spec sections cited per test (docs/spec.md). Each selection case runs on every
path in ``cpu_ops.supported_paths()`` (portable, plus avx2 / avx512 where the
CPU has them) and with 1 and 2+ threads.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import cpu_ops
from gsa import dispatch, ops, reference as ref
from gsa.validate import GSAInputError

HAVE_EXT = cpu_ops.available()
PATHS = cpu_ops.supported_paths() if HAVE_EXT else []
needs_ext = pytest.mark.skipif(not HAVE_EXT, reason=f"cpu_ops extension not built: {cpu_ops.probe()[1]}")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _kernels():
    from cpu_ops import _kernels

    return _kernels


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# ---------------------------------------------------------------------------
# build, registration, probe
# ---------------------------------------------------------------------------

def test_extension_built_when_a_compiler_exists():
    """With a C++ compiler here, `pip install -e .` must have built the extension (no silent skip)."""
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        pytest.skip("no C++ compiler on this machine")
    ok, why = cpu_ops.probe()
    assert ok, f"a compiler exists but the CPU extension is not usable: {why}"


@needs_ext
def test_paths_match_cpu_flags():
    flags = _cpu_flags()
    assert PATHS[0] == "portable"
    if "avx2" in flags and "popcnt" in flags:
        assert "avx2" in PATHS
    if {"avx512f", "avx512_vpopcntdq"} <= flags:
        assert "avx512" in PATHS
    if "avx2" not in flags and flags:
        assert "avx2" not in PATHS and "avx512" not in PATHS


@needs_ext
def test_registered_as_cpu_backend():
    b = dispatch.backends()["cpu"]
    assert b.device_types == ("cpu",) and b.priority == 10 and b.available
    for op in dispatch.OP_NAMES:
        want = "reference" if op == "paged_decode_attention" else "cpu"
        assert dispatch.resolve(op, "cpu").name == want, op
    with dispatch.use_backend("cpu"):  # forced: attention still falls back to the reference
        assert dispatch.resolve("paged_decode_attention", "cpu").name == "reference"
        assert dispatch.resolve("hamming_dist_top_k", "cpu").name == "cpu"


@needs_ext
def test_force_unknown_or_missing_path_raises():
    with pytest.raises(ValueError, match="unknown code path"):
        cpu_ops.set_path("sse9")
    for p in ("avx2", "avx512"):
        if p not in PATHS:
            with pytest.raises(ValueError, match="not supported"):
                cpu_ops.set_path(p)
    with pytest.raises(ValueError):
        cpu_ops.set_num_threads(0)


def test_probe_says_why_when_not_built(tmp_path):
    """No compiled module: register() still works, probe() says 'not built' and the saved build error."""
    pkg = tmp_path / "cpu_ops"
    pkg.mkdir()
    for name in ("__init__.py", "_kernels.py"):
        shutil.copy(os.path.join(REPO, "cpu_ops", name), pkg / name)
    (pkg / "_gsa_cpu_build_error.txt").write_text("CompileError: command 'c++' failed: No such file or directory\n")
    # An editable install's import finder can map cpu_ops._gsa_cpu to the built
    # module of the installed tree whatever cpu_ops.__path__ says; a None entry in
    # sys.modules makes that import fail exactly as a missing build does.
    code = textwrap.dedent("""
        import sys
        sys.modules["cpu_ops._gsa_cpu"] = None
        import cpu_ops
        ok, why = cpu_ops.probe()
        print(ok)
        print(why)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), REPO]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    ok, why = out.stdout.strip().split("\n", 1)
    assert ok == "False"
    assert "not built" in why and "No such file or directory" in why and "failed" in why


# ---------------------------------------------------------------------------
# spec 1-3, 9: packing and hashing
# ---------------------------------------------------------------------------

SPECIAL = [0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-40, -1e-40, 1.0, -1.0, 65504.0, 3e38, -3e38]


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_sign_bits_pack_exact(dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 64, generator=g).to(dtype)
    x.view(-1)[: len(SPECIAL)] = torch.tensor(SPECIAL, dtype=torch.float64).to(dtype)
    x[1, 2] = 0
    got = _kernels().sign_bits_pack(x)
    want = np.packbits((x.double() > 0).numpy(), axis=-1, bitorder="little")
    assert got.dtype == torch.uint8 and tuple(got.shape) == (3, 5, 8)
    np.testing.assert_array_equal(got.numpy(), want)
    if dtype != torch.float64:  # the public op path (float64 is not a public input dtype)
        with dispatch.use_backend("cpu"):
            assert torch.equal(ops.sign_bits_pack(x), ref.sign_bits_pack(x))
    # a non-contiguous input
    xt = x.transpose(0, 1)
    np.testing.assert_array_equal(_kernels().sign_bits_pack(xt).numpy(),
                                  np.packbits((xt.double() > 0).numpy(), axis=-1, bitorder="little"))


def _band_mask(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Spec 2: bits whose projection lies within 1e-3 * |x| * |W[:, r]| may differ."""
    y = ref.project(x, weight)
    xn = x.double().norm(dim=-1, keepdim=True)
    wn = weight.double().norm(dim=-2)  # [R] or [Hw, R]
    if weight.dim() == 3:
        h = x.shape[-2]
        wn = wn.repeat_interleave(h // weight.shape[0], dim=0)
    return y.abs() <= 1e-3 * xn * wn


def _assert_codes_match(got: torch.Tensor, want: torch.Tensor, band: torch.Tensor) -> None:
    gb = np.unpackbits(got.numpy(), axis=-1, bitorder="little").astype(bool)
    wb = np.unpackbits(want.numpy(), axis=-1, bitorder="little").astype(bool)
    diff = gb != wb
    assert not (diff & ~band.numpy()).any(), "a bit outside the spec-2 band differs"


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("per_head", [False, True])
def test_hash_encode_matches_reference(dtype, per_head):
    g = torch.Generator().manual_seed(2)
    hkv, gq, d, r = 2, 3, 64, 128
    x = torch.randn(5, hkv * gq, d, generator=g).to(dtype)
    w = torch.randn(hkv, d, r, generator=g) if per_head else torch.randn(d, r, generator=g)
    with dispatch.use_backend("cpu"):
        got = ops.hash_encode(x, w)
    want = ref.hash_encode(x, w)
    assert got.shape == want.shape == (5, hkv * gq, r // 8)
    _assert_codes_match(got, want, _band_mask(x, w))


@needs_ext
@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("per_head", [False, True])
def test_hash_encode_and_cache_scatter(slot_dtype, per_head):
    g = torch.Generator().manual_seed(3)
    t, hkv, d, r, nb, bs = 9, 2, 32, 64, 4, 3
    k = torch.randn(t, hkv, d, generator=g, dtype=torch.float16)
    w = torch.randn(hkv, d, r, generator=g) if per_head else torch.randn(d, r, generator=g)
    slots = torch.tensor([5, -1, 0, 11, 7, -1, 2, 9, 1], dtype=slot_dtype)
    base = torch.randint(0, 256, (nb, hkv, bs, r // 8), generator=g, dtype=torch.uint8)
    got, want = base.clone(), base.clone()
    with dispatch.use_backend("cpu"):
        ops.hash_encode_and_cache(k, w, got, slots)
    ref.hash_encode_and_cache(k, w, want, slots)
    band = _band_mask(k, w)  # [T, Hkv, R]
    for ti, s in enumerate(slots.tolist()):
        if s >= 0:
            _assert_codes_match(got[s // bs, :, s % bs], want[s // bs, :, s % bs], band[ti])
    written = {s for s in slots.tolist() if s >= 0}
    for s in range(nb * bs):  # untouched slots keep their old bytes exactly
        if s not in written:
            assert torch.equal(got[s // bs, :, s % bs], base[s // bs, :, s % bs])


@needs_ext
def test_scatter_never_writes_out_of_range_slots():
    """Spec 3 through the kernel directly (gsa.ops rejects these first): past-the-cache slots are skipped."""
    nb, h, bs, c = 2, 1, 4, 4
    buf = torch.zeros(nb * h * bs * c + 256, dtype=torch.uint8)  # a guard zone right after the cache
    cache = buf[: nb * h * bs * c].view(nb, h, bs, c)
    x = torch.ones(3, h, 8 * c)
    w = torch.eye(8 * c)
    slots = torch.tensor([nb * bs, 10**9, 3], dtype=torch.int64)
    _kernels().hash_encode_and_cache(x, w, cache, slots)
    assert torch.equal(cache[0, 0, 3], torch.full((c,), 255, dtype=torch.uint8))
    cache[0, 0, 3] = 0
    assert int(buf.sum()) == 0  # nothing else written, the guard zone included
    with pytest.raises(GSAInputError, match="slot_mapping"):
        ops.hash_encode_and_cache(x, w, cache, slots)


@needs_ext
def test_mla_hash_encode_and_cache():
    g = torch.Generator().manual_seed(4)
    t, n, lr, pr, rl, rr, nb, bs = 6, 4, 64, 32, 96, 32, 3, 4  # 12 + 4 code bytes: rope not 8-aligned
    c_kv = torch.randn(t, lr, generator=g, dtype=torch.bfloat16)
    k_pe = torch.randn(t, pr, generator=g, dtype=torch.bfloat16)
    wl, wr = torch.randn(lr, rl, generator=g), torch.randn(pr, rr, generator=g)
    q_l, q_r = torch.randn(2, n, lr, generator=g), torch.randn(2, n, pr, generator=g)
    with dispatch.use_backend("cpu"):
        got_q = ops.mla_hash_encode(q_l, q_r, wl, wr)
        cache = torch.zeros(nb, 1, bs, (rl + rr) // 8, dtype=torch.uint8)
        slots = torch.tensor([0, 5, -1, 11, 2, 7], dtype=torch.int32)
        ops.mla_hash_encode_and_cache(c_kv, k_pe, wl, wr, cache, slots)
    want_q = ref.mla_hash_encode(q_l, q_r, wl, wr)
    band_q = torch.cat([_band_mask(q_l, wl), _band_mask(q_r, wr)], dim=-1)
    _assert_codes_match(got_q, want_q, band_q)
    want_cache = torch.zeros_like(cache)
    ref.mla_hash_encode_and_cache(c_kv, k_pe, wl, wr, want_cache, slots)
    band_k = torch.cat([_band_mask(c_kv, wl), _band_mask(k_pe, wr)], dim=-1)
    for ti, s in enumerate(slots.tolist()):
        if s >= 0:
            _assert_codes_match(cache[s // bs, 0, s % bs], want_cache[s // bs, 0, s % bs], band_k[ti])
    assert int(cache[0, 0, 1].sum()) == 0  # never-written slot


# ---------------------------------------------------------------------------
# spec 4-5: selection, every code path
# ---------------------------------------------------------------------------

def _select_both(args, path, threads=None):
    want = ref.hamming_dist_top_k(*args)
    old = cpu_ops.get_num_threads()
    try:
        if threads:
            cpu_ops.set_num_threads(threads)
        with cpu_ops.use_path(path):
            got = _kernels().hamming_dist_top_k(*args)
    finally:
        cpu_ops.set_num_threads(old)
    return got, want


def _assert_select(args, path, threads=None):
    (gi, gn), (wi, wn) = _select_both(args, path, threads)
    assert gi.dtype == torch.int32 and gn.dtype == torch.int32
    assert torch.equal(gn, wn), (path, gn, wn)
    assert torch.equal(gi, wi), (path, gi, wi)
    return gi, gn


def _random_case(g, b, hkv, gq, c, bs, m, *, nb=None, method="max", forced=(0, -1), rope_bytes=0, w=1.0,
                 full_budget_rows=True, key_levels=256):
    nb = nb or b * m + 3
    q = torch.randint(0, 256, (b, hkv * gq, c), generator=g, dtype=torch.uint8)
    kc = torch.randint(0, key_levels, (nb, hkv, bs, c), generator=g, dtype=torch.uint8)
    bt = torch.randperm(nb, generator=g)[: b * m].to(torch.int32).reshape(b, m)
    seq = torch.randint(1, m * bs + 1, (b,), generator=g, dtype=torch.int32)
    seq[0] = m * bs  # a full row
    if b > 1:
        seq[1] = 1  # a single token
    n_blocks = (seq + bs - 1) // bs
    bud = torch.randint(1, m + 1, (b,), generator=g, dtype=torch.int32)
    if full_budget_rows and b > 2:
        bud[2] = n_blocks[2] + 5  # budget >= n_blocks: everything
    bud[-1] = 1  # forced blocks beyond the budget
    k = m + 3  # more than enough: trailing -1 padding
    return (q, kc, bt, seq, bud, k, list(forced), method, rope_bytes, w)


GQA_GRID = [  # (B, Hkv, G, C bytes, bs, M)
    (4, 2, 4, 16, 16, 9),
    (3, 1, 1, 4, 1, 13),
    (5, 4, 2, 8, 5, 7),
    (2, 2, 3, 32, 3, 11),
    (3, 3, 2, 12, 7, 6),  # C not a multiple of 8: 32-bit units
    (2, 1, 40, 16, 4, 5),  # G > 31: AVX2 byte counters flush
]


@needs_ext
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", ["max", "mean"])
@pytest.mark.parametrize("shape", GQA_GRID, ids=lambda s: "B%dHkv%dG%dC%dbs%dM%d" % s)
def test_gqa_select_random(path, method, shape):
    g = torch.Generator().manual_seed(hash(shape) % 2**31)
    for forced in ([0, -1], [], [1, -2, 0, 0, 99, -99]):
        _assert_select(_random_case(g, *shape, method=method, forced=forced), path)


MLA_GRID = [  # (B, N heads, C bytes, rope_bytes, bs, M, w)
    (3, 4, 72, 8, 16, 6, 1.0),  # R_lora 512 + R_rope 64
    (2, 16, 20, 4, 4, 9, 0.5),  # rope part 32 bits: not 8-aligned
    (3, 2, 16, 8, 3, 7, 1.0625),
    (2, 3, 24, 12, 5, 5, 16.0),
    (2, 5, 40, 16, 2, 8, 0.0),
]


@needs_ext
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", ["max", "mean"])
@pytest.mark.parametrize("shape", MLA_GRID, ids=lambda s: "B%dN%dC%drope%dbs%dM%dw%g" % s)
def test_mla_select_random(path, method, shape):
    b, n, c, rope, bs, m, w = shape
    g = torch.Generator().manual_seed(hash(shape) % 2**31)
    for _ in range(2):
        _assert_select(_random_case(g, b, 1, n, c, bs, m, method=method, rope_bytes=rope, w=w), path)


@needs_ext
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", ["max", "mean"])
def test_ties_go_to_smaller_index(path, method):
    g = torch.Generator().manual_seed(7)
    # keys from {0, 1} only: many equal token and block scores
    for _ in range(3):
        _assert_select(_random_case(g, 4, 2, 2, 8, 4, 12, method=method, key_levels=2, forced=[-1]), path)
    # all keys equal: every block ties; the smallest indices win
    q = torch.zeros(1, 2, 8, dtype=torch.uint8)
    kc = torch.full((6, 1, 2, 8), 0x0F, dtype=torch.uint8)
    bt = torch.tensor([[5, 4, 3, 2, 1, 0]], dtype=torch.int32)
    args = (q, kc, bt, torch.tensor([12], dtype=torch.int32), torch.tensor([3], dtype=torch.int32), 4, [-1], method, 0, 1.0)
    gi, gn = _assert_select(args, path)
    assert gi.tolist() == [[0, 1, 5, -1]] and gn.tolist() == [3]


@needs_ext
@pytest.mark.parametrize("path", PATHS)
def test_hand_computed_selection(path):
    """R = 32, one head, bs = 2, 4 blocks, seq_len 7 (last block partial); scores by hand."""
    q = torch.zeros(1, 1, 4, dtype=torch.uint8)  # query code all zeros: sim = 32 - 2 * popcount(key)
    pops = [[32, 0], [8, 8], [30, 31], [1, 99]]  # popcount per token; block 3 has one valid token
    kc = torch.zeros(4, 1, 2, 4, dtype=torch.uint8)
    for blk, row in enumerate(pops):
        for s, p in enumerate(row):
            p = min(p, 32)
            bits = torch.tensor([1] * p + [0] * (32 - p), dtype=torch.uint8)
            kc[blk, 0, s] = torch.from_numpy(np.packbits(bits.numpy(), bitorder="little"))
    bt = torch.tensor([[0, 1, 2, 3]], dtype=torch.int32)
    seq = torch.tensor([7], dtype=torch.int32)
    # sims: block0 (-32, 32) max 32 mean 0; block1 (16, 16) max 16 mean 16;
    # block2 (-28, -30) max -28; block3 (30) max 30 mean 30
    cases = [
        ("max", 2, [], [0, 3]),
        ("mean", 2, [], [1, 3]),
        ("max", 1, [2], [2]),  # n_sel = max(budget, n_forced) = 1: the forced block only
        ("max", 2, [2], [0, 2]),  # forced block 2 plus the best other
        ("mean", 1, [0, -1, 2], [0, 2, 3]),  # 3 forced > budget 1
        ("max", 4, [], [0, 1, 2, 3]),  # budget >= n_blocks
    ]
    for method, budget, forced, want in cases:
        args = (q, kc, bt, seq, torch.tensor([budget], dtype=torch.int32), 5, forced, method, 0, 1.0)
        gi, gn = _assert_select(args, path)
        assert gi[0, : len(want)].tolist() == want and gn.tolist() == [len(want)]
        assert gi[0, len(want):].tolist() == [-1] * (5 - len(want))


@needs_ext
@pytest.mark.parametrize("path", PATHS)
def test_k_clamps_n_sel_and_stays_in_bounds(path):
    """Spec 5 (1.1): k below n_sel (unchecked, direct kernel): n_sel clamps to k, the first k ascending."""
    g = torch.Generator().manual_seed(8)
    args = list(_random_case(g, 3, 2, 2, 16, 4, 10, full_budget_rows=False))
    args[4] = torch.full((3,), 6, dtype=torch.int32)
    for k in (1, 2, 4):
        args[5] = k
        gi, gn = _assert_select(tuple(args), path)
        assert gi.shape == (3, k) and int(gn.max()) <= k


@needs_ext
@pytest.mark.parametrize("path", PATHS)
def test_block_table_garbage_past_the_row_is_never_read(path):
    g = torch.Generator().manual_seed(9)
    args = list(_random_case(g, 3, 2, 2, 16, 4, 8))
    bt = args[2].clone()
    n_blocks = (args[3] + 3) // 4
    for r in range(3):
        bt[r, int(n_blocks[r]):] = 2**30  # unused columns: would fault if read
    args[2] = bt
    _assert_select(tuple(args), path)
    # used columns out of range: clamped (as the reference does), never out of bounds
    bt2 = args[2].clone()
    bt2[0, 0] = -5
    bt2[0, 1] = 2**31 - 1
    args[2] = bt2
    _assert_select(tuple(args), path)


@needs_ext
@pytest.mark.parametrize("path", PATHS)
def test_threads_give_identical_results(path):
    g = torch.Generator().manual_seed(10)
    args = _random_case(g, 5, 2, 4, 16, 16, 40, method="mean")
    for threads in (1, 2, 3, 7):
        _assert_select(args, path, threads=threads)


@needs_ext
@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 4), hkv=st.integers(1, 3), gq=st.integers(1, 5), words=st.integers(1, 6),
    rope_words=st.integers(0, 3), bs=st.integers(1, 9), m=st.integers(1, 12), method=st.sampled_from(["max", "mean"]),
    w16=st.integers(0, 256), forced=st.lists(st.integers(-4, 4), max_size=4), levels=st.sampled_from([2, 256]),
    seed=st.integers(0, 2**31 - 1),
)
def test_select_property(b, hkv, gq, words, rope_words, bs, m, method, w16, forced, levels, seed):
    """Random shapes (C = 4 * words bytes, GQA or a rope part), every path: identical to the reference."""
    c = 4 * words
    rope = 4 * min(rope_words, words - 1)
    g = torch.Generator().manual_seed(seed)
    args = _random_case(g, b, hkv, gq, c, bs, m, method=method, forced=forced, rope_bytes=rope, w=w16 / 16,
                        key_levels=levels)
    for path in PATHS:
        _assert_select(args, path)


@needs_ext
def test_concurrent_callers_share_the_pool():
    """Several Python threads at once (the GIL is released; one worker pool): every result exact."""
    import threading

    g = torch.Generator().manual_seed(13)
    cases = [_random_case(g, 3, 2, 4, 16, 8, 30, method=m) for m in ("max", "mean", "max", "mean")]
    wants = [ref.hamming_dist_top_k(*a) for a in cases]
    errors = []
    old = cpu_ops.get_num_threads()
    cpu_ops.set_num_threads(3)

    def worker(i):
        try:
            for _ in range(5):
                got = _kernels().hamming_dist_top_k(*cases[i])
                if not (torch.equal(got[0], wants[i][0]) and torch.equal(got[1], wants[i][1])):
                    errors.append(i)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))

    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(cases))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        cpu_ops.set_num_threads(old)
    assert not errors


@needs_ext
def test_env_forces_path_and_threads():
    code = "import torch, cpu_ops; print(cpu_ops.get_path(), cpu_ops.get_num_threads())"
    env = dict(os.environ, GSA_CPU_PATH="portable", GSA_CPU_THREADS="3", PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["portable", "3"]
    env["GSA_CPU_PATH"] = "sse9"
    code = "import torch, cpu_ops; ok, why = cpu_ops.probe(); print(ok); print(why)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split("\n")[0] == "False" and "unknown code path" in out.stdout


@needs_ext
def test_public_op_through_dispatch():
    g = torch.Generator().manual_seed(11)
    args = _random_case(g, 4, 2, 2, 16, 8, 10)
    with dispatch.use_backend("cpu"):
        gi, gn = ops.hamming_dist_top_k(*args)
    wi, wn = ref.hamming_dist_top_k(*args)
    assert torch.equal(gi, wi) and torch.equal(gn, wn)
    with dispatch.use_backend("cpu"), pytest.raises(GSAInputError, match="'k'"):
        ops.hamming_dist_top_k(*args[:5], 1, *args[6:])


# ---------------------------------------------------------------------------
# spec 6: kv_select
# ---------------------------------------------------------------------------

@needs_ext
def test_kv_select_matches_reference():
    g = torch.Generator().manual_seed(12)
    for bs in (1, 4, 16):
        args = _random_case(g, 5, 2, 2, 16, bs, 9)
        idx, n_sel = ref.hamming_dist_top_k(*args)
        bt, seq = args[2], args[3]
        for pad in (0, -1, 7):
            with dispatch.use_backend("cpu"):
                got = ops.kv_select(idx, n_sel, bt, seq, bs, pad)
            want = ref.kv_select(idx, n_sel, bt, seq, bs, pad)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@needs_ext
def test_kv_select_hand_computed():
    bt = torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23]], dtype=torch.int32)
    seq = torch.tensor([14, 4], dtype=torch.int32)  # bs 4: row 0 last block holds 2 tokens
    idx = torch.tensor([[0, 3, -1], [0, -1, -1]], dtype=torch.int32)
    n_sel = torch.tensor([2, 0], dtype=torch.int32)
    table, lens = _kernels().kv_select(idx, n_sel, bt, seq, 4, 99)
    assert table.tolist() == [[10, 13, 99], [99, 99, 99]]
    assert lens.tolist() == [6, 0]
