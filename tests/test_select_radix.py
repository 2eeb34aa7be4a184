"""The radix-select threshold search of the selection kernel (``select.radix``, issue 12s).

``topk_kernels._radix_threshold`` must find exactly the threshold key of the binary search, so
every output of ``_select_kernel`` (table, lens, idx, n_sel) is the same bit for bit. Checked on
the block keys directly (``scoring._launch_select``) over fresh random rows: several B, widths M
that are not powers of two, budgets below / at / above the row's blocks, forced sets with negative,
duplicate and out-of-range entries, narrow (many ties), medium, full-int32 and extreme key ranges,
all-equal keys, padding rows (``seq_len <= 0``) and ``k`` below ``n_sel``; against a per-row
Python oracle of the selection rule as well, and on one hand-computed batch. Then at the hot-path
level: ``select_blocks`` (two launches and the fused one) and ``hamming_dist_top_k`` with the
radix search on equal the search off and the reference.

The interpreter tests run with ``TRITON_INTERPRET=1``; the ``gpu`` tests (skipped without CUDA
or in the interpreter) repeat the comparison compiled, at decode shapes, over the selection
program's warp counts and every digit width, for the H200.
"""
import importlib.util
import os

import pytest
import torch

from gsa import reference as ref

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
PAD = 7
_INTERP = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_TRITON = importlib.util.find_spec("triton") is not None
interp = pytest.mark.skipif(not (_INTERP and _TRITON), reason="needs triton with TRITON_INTERPRET=1 (CPU interpreter)")
on_gpu = pytest.mark.skipif(_INTERP or not _TRITON or not torch.cuda.is_available(),
                            reason="needs a CUDA device (and no interpreter)")
# key ranges: few values (ties everywhere), a small range, every int32, the extremes
KINDS = ("narrow", "medium", "wide", "extreme", "equal")


@pytest.fixture
def gen():
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)


def _keys(gen, b, m, kind, top=True):
    """``int32 [b, m]`` keys of one range ``kind``; ``top``: the extremes include ``INT32_MAX``
    (a non-forced key at the forced blocks' value)."""
    if kind == "narrow":
        return torch.randint(0, 3, (b, m), generator=gen).to(torch.int32)
    if kind == "medium":
        return torch.randint(-1000, 1000, (b, m), generator=gen).to(torch.int32)
    if kind == "wide":
        return torch.randint(INT32_MIN, INT32_MAX + 1, (b, m), generator=gen, dtype=torch.int64).to(torch.int32)
    if kind == "extreme":
        vals = torch.tensor([INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX - 1] + ([INT32_MAX] if top else []),
                            dtype=torch.int64)
        return vals[torch.randint(len(vals), (b, m), generator=gen)].to(torch.int32)
    assert kind == "equal"
    v = int(torch.randint(INT32_MIN, INT32_MAX + 1, (1,), generator=gen, dtype=torch.int64))
    return torch.full((b, m), v, dtype=torch.int32)


def _rows(gen, b, m, bs):
    """Sequence lengths (one padding row when b > 1, some past the table), budgets, k, forced."""
    seq = torch.randint(-3, m * bs + bs + 1, (b,), generator=gen).to(torch.int32)
    if b > 1:
        seq[int(torch.randint(b, (1,), generator=gen))] = int(torch.randint(-2, 1, (1,), generator=gen))
    budgets = torch.randint(-1, m + 3, (b,), generator=gen).to(torch.int32)
    k = int(torch.randint(1, m + 3, (1,), generator=gen))
    nf = int(torch.randint(0, 9, (1,), generator=gen))
    forced = [int(x) for x in torch.randint(-m - 2, m + 3, (nf,), generator=gen)]
    if nf > 1:
        forced[-1] = forced[0]  # an exact duplicate
    return seq, budgets, k, list(dict.fromkeys(forced))[:8]


def _select(keys, seq, budgets, bt, k, bs, forced, radix, **kw):
    """``_select_kernel`` with every output: ``(table, lens, idx, nsel)``; outputs start as garbage."""
    from cuda_ops import scoring

    b = keys.shape[0]
    f, fs = scoring._forced_args(forced)
    outs = (torch.full((b, k), -9, dtype=torch.int32, device=keys.device),
            torch.full((b,), -9, dtype=torch.int32, device=keys.device),
            torch.full((b, k), -9, dtype=torch.int32, device=keys.device),
            torch.full((b,), -9, dtype=torch.int32, device=keys.device))
    scoring._launch_select(keys, seq, budgets, bt, k, bs, f, fs, *outs, PAD, None, radix=radix, **kw)
    return outs


def _oracle(keys, seq, budgets, bt, k, bs, forced):
    """The selection rule row by row (spec 5 + 6): forced blocks first, then larger keys, ties to
    the smaller index; ``n_sel`` clamped to ``k``. A row with more valid non-forced ``INT32_MAX``
    keys and forced blocks than ``n_sel`` is outside the rule (no real score key is
    ``INT32_MAX``); it comes back as None and only the radix-vs-binary comparison covers it."""
    b, m = keys.shape
    out = []
    for r in range(b):
        row = keys[r].tolist()
        nblk = min(-(-max(int(seq[r]), 0) // bs), m)
        fset = {t for t in ((f if f >= 0 else nblk + f) for f in forced) if 0 <= t < nblk}
        bud = int(budgets[r])
        nsel = nblk if bud >= nblk else max(bud, len(fset))
        if sum(1 for j in range(nblk) if j in fset or row[j] == INT32_MAX) > nsel:
            out.append(None)
            continue
        chosen = sorted(sorted(range(nblk), key=lambda j: (j not in fset, -row[j], j))[:nsel])[:k]
        n = min(nsel, k)
        table = [int(bt[r, j]) for j in chosen] + [PAD] * (k - n)
        lens = sum(min(max(int(seq[r]) - j * bs, 0), bs) for j in chosen)
        out.append((table, lens, chosen + [-1] * (k - n), n))
    return out


def _check(keys, seq, budgets, bt, k, bs, forced, bits, oracle=True, **kw):
    want = _select(keys, seq, budgets, bt, k, bs, forced, False)
    got = _select(keys, seq, budgets, bt, k, bs, forced, bits, **kw)
    ctx = (bits, kw, forced, k, seq.tolist(), budgets.tolist())
    for name, w, g in zip(("table", "lens", "idx", "nsel"), want, got):
        assert torch.equal(g, w), (name, ctx, keys.tolist(), w.tolist(), g.tolist())
    if oracle:
        for r, o in enumerate(_oracle(keys.cpu(), seq.cpu(), budgets.cpu(), bt.cpu(), k, bs, forced)):
            if o is not None:
                assert (got[0][r].tolist(), int(got[1][r]), got[2][r].tolist(), int(got[3][r])) == o, (r, ctx)


@interp
@pytest.mark.parametrize("bits", [5, 8])
@pytest.mark.parametrize("kind", KINDS)
def test_radix_equals_binary_on_random_keys(gen, bits, kind):
    for b, m, bs in ((1, 1, 4), (3, 5, 1), (4, 33, 4), (2, 100, 16), (5, 37, 2), (2, 257, 1)):
        keys = _keys(gen, b, m, kind)
        bt = torch.randperm(b * m + 3, generator=gen)[: b * m].reshape(b, m).to(torch.int32)
        seq, budgets, k, forced = _rows(gen, b, m, bs)
        _check(keys, seq, budgets, bt, k, bs, forced, bits)


@interp
@pytest.mark.parametrize("bits", [6, 7])
def test_radix_other_widths_and_edge_budgets(gen, bits):
    # the other digit widths; budgets >= every row's blocks, <= 0, and k of 1
    b, m, bs = 4, 45, 3
    for kind in KINDS:
        keys = _keys(gen, b, m, kind)
        bt = torch.randperm(b * m, generator=gen).reshape(b, m).to(torch.int32)
        seq, _, _, forced = _rows(gen, b, m, bs)
        for budgets, k in ((torch.full((b,), m + 5, dtype=torch.int32), m), (torch.tensor([0, -3, 1, 2], dtype=torch.int32), 1)):
            _check(keys, seq, budgets, bt, k, bs, forced, bits)


@interp
@pytest.mark.parametrize("bits", [5, 8])
def test_radix_hand_case(bits):
    # six rows of six blocks (bs = 4), forced [-1] (each row's last block), k = 4
    keys = torch.tensor([
        [5, 9, 9, 1, 9, 3],                   # forced 5, then the 9s at 1 and 2 (the 9 at 4 loses the tie)
        [4, 4, 4, 4, 4, 4],                   # padding row (seq 0): nothing
        [1, 2, 3, 0, 0, 0],                   # 3 blocks, budget 7 >= 3: all of them
        [INT32_MIN, INT32_MAX - 1, INT32_MIN, 0, 0, 0],  # 4 blocks: forced 3, then INT32_MAX - 1 at 1
        [0, 0, 0, 0, 0, 0],                   # all equal, budget 5 > k = 4: forced 5 + ties 0-3, first 4 kept
        [INT32_MIN, INT32_MIN, 6, INT32_MIN, 2, 0],  # 5 blocks (seq 17): forced 4, then 6 at 2, INT32_MIN ties at 0, 1
    ], dtype=torch.int32)
    seq = torch.tensor([22, 0, 9, 16, 24, 17], dtype=torch.int32)
    budgets = torch.tensor([3, 2, 7, 2, 5, 4], dtype=torch.int32)
    bt = (torch.arange(36, dtype=torch.int32) + 10).reshape(6, 6)
    want_idx = [[1, 2, 5, -1], [-1] * 4, [0, 1, 2, -1], [1, 3, -1, -1], [0, 1, 2, 3], [0, 1, 2, 4]]
    want_n = [3, 0, 3, 2, 4, 4]
    want_lens = [4 + 4 + 2, 0, 4 + 4 + 1, 4 + 4, 16, 4 + 4 + 4 + 1]
    want_table = [[bt[r, j].item() if j >= 0 else PAD for j in row] for r, row in enumerate(want_idx)]
    for radix in (False, bits):
        table, lens, idx, n = _select(keys, seq, budgets, bt, 4, 4, [-1], radix)
        assert idx.tolist() == want_idx and n.tolist() == want_n, (radix, idx, n)
        assert table.tolist() == want_table and lens.tolist() == want_lens, (radix, table, lens)


@interp
def test_radix_choice_and_bad_values():
    from cuda_ops import scoring

    cpu = torch.device("cpu")
    assert scoring.select_radix() == 0 and scoring.select_radix(None, cpu) == 0  # default off
    assert scoring.select_radix(False) == 0 and scoring.select_radix(0) == 0
    assert scoring.select_radix(True) == scoring.SELECT_RADIX_BITS == 8 and scoring.select_radix(5) == 5
    for bad in (1, 4, 9, 12, "8"):
        with pytest.raises(ValueError, match="select radix .* got"):
            scoring.select_radix(bad)
    bt = torch.zeros(2, 300, dtype=torch.int32)
    consts = scoring._select_consts(bt, 8, [0], 4, True, False, cpu, 6)
    assert consts["RADIX"] == 6 and consts["FANOUT"] == 1  # the radix search ignores the fan-out
    assert scoring._select_consts(bt, 8, [0], 4, True, False, cpu)["RADIX"] == 0


def _codes(gen, b, hq, hkv, bs, m, c, alphabet=None):
    nb = b * m + 3
    if alphabet is None:
        cache = torch.randint(0, 256, (nb, hkv, bs, c), generator=gen, dtype=torch.int32).to(torch.uint8)
        q = torch.randint(0, 256, (b, hq, c), generator=gen, dtype=torch.int32).to(torch.uint8)
    else:  # few distinct codes: tied block scores
        pick = torch.tensor(alphabet, dtype=torch.uint8)
        cache = pick[torch.randint(len(alphabet), (nb, hkv, bs, c), generator=gen)]
        q = pick[torch.randint(len(alphabet), (b, hq, c), generator=gen)]
    table = torch.randperm(nb, generator=gen)[: b * m].reshape(b, m).to(torch.int32)
    return q, cache, table


@interp
@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("method", ["max", "mean"])
def test_select_blocks_radix_on_equals_off_and_reference(gen, fuse, method):
    from cuda_ops import scoring

    b, hq, hkv, bs, m, k = 4, 8, 2, 4, 11, 5  # G = 4, R = 128: the Harley-Seal path (fusable)
    forced = [0, -2, -1]
    for alphabet in (None, [0, 255, 15]):
        q, cache, table = _codes(gen, b, hq, hkv, bs, m, 16, alphabet)
        seq = torch.randint(1, m * bs + 1, (b,), generator=gen).to(torch.int32)
        seq[1] = 0  # an engine's padding row
        budgets = torch.randint(1, m + 2, (b,), generator=gen).to(torch.int32)
        budgets[2] = m + 4
        outs = {}
        for radix in (False, 5, 8):
            keys = torch.empty(b, m, dtype=torch.int32)
            tab = torch.full((b, k), -9, dtype=torch.int32)
            lens = torch.full((b,), -9, dtype=torch.int32)
            scoring.select_blocks(q, cache, table, seq, budgets, k, forced, method, 0, 1.0, PAD, keys, tab, lens,
                                  fuse=fuse, radix=radix)
            outs[radix] = (tab, lens)
        for radix in (5, 8):
            assert torch.equal(outs[radix][0], outs[False][0]) and torch.equal(outs[radix][1], outs[False][1])
        live = seq > 0
        idx, n = ref.hamming_dist_top_k(q[live], cache, table[live], seq[live], budgets[live], k, forced, method)
        want_t, want_l = ref.kv_select(idx, n, table[live], seq[live], bs, PAD)
        assert torch.equal(outs[8][0][live], want_t) and torch.equal(outs[8][1][live], want_l)
        assert outs[8][1][1] == 0 and bool((outs[8][0][1] == PAD).all())


@interp
def test_top_k_op_radix_equals_reference(gen):
    from cuda_ops import scoring

    b, m = 3, 9
    q, cache, table = _codes(gen, b, 6, 2, 4, m, 8, [0, 255, 15])  # G = 3: the SWAR score path
    seq = torch.randint(1, m * 4 + 1, (b,), generator=gen).to(torch.int32)
    budgets = torch.randint(1, m + 2, (b,), generator=gen).to(torch.int32)
    for forced, k in (([], m), ([0, -1], m), ([1, -3, 1], 3)):
        got = scoring.hamming_dist_top_k(q, cache, table, seq, budgets, k, forced, "mean", 0, 1.0, radix=5)
        want = ref.hamming_dist_top_k(q, cache, table, seq, budgets, k, forced, "mean", 0, 1.0)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (forced, k)


# ---- compiled, on a CUDA GPU (the lead runs these on the H200) ----

def _gpu_gen():
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)


# 32K and 128K tokens at bs = 128 (M = 256, 1024), a width that is not a power of two, and a wide row
GPU_CASES = [(m, bits, warps) for m in (256, 1000, 1024) for bits in (5, 6, 8) for warps in (1, 2, 4, 8)] + [
    (4096, 8, 8), (4096, 5, 16)]


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("m,bits,warps", GPU_CASES)
def test_gpu_radix_equals_binary(m, bits, warps):
    gen = _gpu_gen()
    b, bs = 16, 128
    for kind in KINDS:
        # no non-forced INT32_MAX key here: such a row selects more than n_sel blocks and its
        # slots past n_sel get two stores from different threads (see _oracle)
        keys = _keys(gen, b, m, kind, top=False).cuda()
        bt = torch.randperm(b * m, generator=gen).reshape(b, m).to(torch.int32).cuda()
        seq, budgets, _, forced = _rows(gen, b, m, bs)
        seq[3] = m * bs  # full rows at the decode budget of 1/8
        budgets[3] = m // 8
        k = m // 8 if kind != "equal" else m // 4
        oracle = m <= 1024  # the Python oracle is slow at 4096 x 16 rows
        _check(keys, seq.cuda(), budgets.cuda(), bt, k, bs, forced, bits, oracle=oracle, num_warps=warps)


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("m", [256, 1024])
@pytest.mark.parametrize("bits", [5, 8])
def test_gpu_select_blocks_radix_fused_and_not(m, bits):
    # the hot path's selection at 32K / 128K: two launches and the fused one, radix off and on
    from cuda_ops import scoring

    gen = _gpu_gen()
    b, hq, hkv, bs, k = 16, 32, 8, 128, m // 8
    q, cache, table = (t.cuda() for t in _codes(gen, b, hq, hkv, bs, m, 16))
    seq = torch.full((b,), m * bs, dtype=torch.int32)
    seq[5] = 0
    seq[6] = 1000
    seq = seq.cuda()
    budgets = torch.full((b,), k, dtype=torch.int32, device="cuda")
    counter = torch.zeros(b, dtype=torch.int32, device="cuda")
    want = None
    for fuse, radix in ((False, False), (False, bits), (True, False), (True, bits)):
        keys = torch.empty(b, m, dtype=torch.int32, device="cuda")
        tab = torch.full((b, k), -9, dtype=torch.int32, device="cuda")
        lens = torch.full((b,), -9, dtype=torch.int32, device="cuda")
        for method in ("max", "mean"):
            scoring.select_blocks(q, cache, table, seq, budgets, k, [0, -2, -1], method, 0, 1.0, PAD, keys, tab, lens,
                                  counter=counter, fuse=fuse, radix=radix, path="hs")
            got = (tab.clone(), lens.clone())
            if want is None or method not in want:
                want = dict(want or {}, **{method: got})
            assert torch.equal(got[0], want[method][0]) and torch.equal(got[1], want[method][1]), (fuse, radix, method)
        assert bool((counter == 0).all())
