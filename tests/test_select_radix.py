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


def _rows(gen, b, m, bs, nf=None):
    """Sequence lengths (one padding row when b > 1, some past the table), budgets, k, forced
    (``nf``: exactly that many distinct entries, so that compiled runs share one kernel; else a
    random count with an exact duplicate)."""
    seq = torch.randint(-3, m * bs + bs + 1, (b,), generator=gen).to(torch.int32)
    if b > 1:
        seq[int(torch.randint(b, (1,), generator=gen))] = int(torch.randint(-2, 1, (1,), generator=gen))
    budgets = torch.randint(-1, m + 3, (b,), generator=gen).to(torch.int32)
    k = int(torch.randint(1, m + 3, (1,), generator=gen))
    if nf is not None:  # distinct values (two may still name one block: 0 and -n_blocks)
        return seq, budgets, k, [int(x) - m - 2 for x in torch.randperm(2 * m + 5, generator=gen)[:nf]]
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
    """``_select_kernel`` with ``radix=bits`` and the launch choices ``kw`` gives the binary search's
    outputs (default launch) bit for bit, and the oracle's."""
    want = _select(keys, seq, budgets, bt, k, bs, forced, False, prefetch=False)
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
        edge = ((torch.full((b,), m + 5, dtype=torch.int32), m), (torch.tensor([0, -3, 1, 2], dtype=torch.int32), 1))
        for budgets, k in edge:
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
@pytest.mark.parametrize("bits", [0, 5, 8])
def test_prefetch_equals_plain_loads(gen, bits):
    # select.prefetch: the row's keys, budget and table entries loaded first and whole (cols < M):
    # entries past a row's blocks hold garbage (random keys and table ids here) and must not matter
    for kind in KINDS:
        for b, m, bs in ((3, 7, 4), (4, 50, 2)):
            keys = _keys(gen, b, m, kind)
            bt = torch.randperm(b * m + 3, generator=gen)[: b * m].reshape(b, m).to(torch.int32)
            seq, budgets, k, forced = _rows(gen, b, m, bs)
            _check(keys, seq, budgets, bt, k, bs, forced, bits, prefetch=True)


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
    assert consts["PREFETCH"] is False and scoring._select_consts(bt, 8, [0], 1, True, False, cpu, 0, True)["PREFETCH"]
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
@pytest.mark.parametrize("prefetch", [False, True])
def test_select_blocks_radix_on_equals_off_and_reference(gen, fuse, method, prefetch, monkeypatch):
    from cuda_ops import scoring

    monkeypatch.setattr(scoring, "SELECT_PREFETCH", prefetch)  # the CPU's default (no tuning file off CUDA)
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

DEV = "cuda"

def _gpu_gen():
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)


# 32K and 128K tokens at bs = 128 (M = 256, 1024), a width that is not a power of two, and a wide row
# (bits 0: the binary search with prefetch; widths 6 and 7 run in the interpreter tests). Rows narrower
# than the program's threads (M = 16, 37) hold each key in several threads: the histogram must count it once
GPU_CASES = [(m, bits, warps, pre) for m in (256, 1000, 1024) for bits in (0, 5, 8) for warps in (1, 2, 4, 8)
             for pre in (False, True) if bits or pre] + [(4096, 8, 8, True), (4096, 5, 16, False), (16, 5, 4, False),
                                                          (16, 8, 1, True), (37, 8, 8, False), (37, 5, 2, True)]


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("m,bits,warps,pre", GPU_CASES)
def test_gpu_radix_equals_binary(m, bits, warps, pre):
    gen = _gpu_gen()
    b, bs = 16, 128
    for kind in KINDS:
        # no non-forced INT32_MAX key here: such a row selects more than n_sel blocks and its
        # slots past n_sel get two stores from different threads (see _oracle)
        keys = _keys(gen, b, m, kind, top=False).to(DEV)
        bt = torch.randperm(b * m, generator=gen).reshape(b, m).to(torch.int32).to(DEV)
        # one forced count and one k for every kind: each launch choice compiles once per test
        seq, budgets, _, forced = _rows(gen, b, m, bs, nf=3)
        seq[3] = m * bs  # full rows at the decode budget of 1/8
        budgets[3] = m // 8
        k = max(m // 8, 2)
        oracle = m <= 1024  # the Python oracle is slow at 4096 x 16 rows
        _check(keys, seq.to(DEV), budgets.to(DEV), bt, k, bs, forced, bits, oracle=oracle, num_warps=warps, prefetch=pre)


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("m", [256, 1024])
@pytest.mark.parametrize("bits", [5, 8])
@pytest.mark.parametrize("prefetch", [False, True])
def test_gpu_select_blocks_radix_fused_and_not(m, bits, prefetch, monkeypatch):
    # the hot path's selection at 32K / 128K: two launches and the fused one, radix off and on
    from cuda_ops import scoring, tuning

    monkeypatch.setitem(tuning.load(torch.device(DEV)), "select", dict(
        tuning.load(torch.device(DEV)).get("select", {}), prefetch=prefetch))  # select.prefetch for this test
    gen = _gpu_gen()
    b, hq, hkv, bs, k = 16, 32, 8, 128, m // 8
    q, cache, table = (t.to(DEV) for t in _codes(gen, b, hq, hkv, bs, m, 16))
    seq = torch.full((b,), m * bs, dtype=torch.int32)
    seq[5] = 0
    seq[6] = 1000
    seq = seq.to(DEV)
    budgets = torch.full((b,), k, dtype=torch.int32, device=DEV)
    counter = torch.zeros(b, dtype=torch.int32, device=DEV)
    want = {}
    for method in ("max", "mean"):  # the result to match: the binary search with plain loads on the same keys
        keys = scoring.block_score_keys(q, cache, table, seq, method, path="hs")
        want[method] = _select(keys, seq, budgets, table, k, bs, [0, -2, -1], False, prefetch=False)[:2]
    for fuse, radix in ((False, False), (False, bits), (True, False), (True, bits)):
        keys = torch.empty(b, m, dtype=torch.int32, device=DEV)
        tab = torch.full((b, k), -9, dtype=torch.int32, device=DEV)
        lens = torch.full((b,), -9, dtype=torch.int32, device=DEV)
        for method in ("max", "mean"):
            scoring.select_blocks(q, cache, table, seq, budgets, k, [0, -2, -1], method, 0, 1.0, PAD, keys, tab, lens,
                                  counter=counter, fuse=fuse, radix=radix, path="hs")
            ok = torch.equal(tab, want[method][0]) and torch.equal(lens, want[method][1])
            assert ok, (fuse, radix, prefetch, method)
        assert bool((counter == 0).all())


# ---- the sweep's selection rows and choice (benchmarks/kernel_sweep_select.py; no GPU) ----

def _sweep():
    import sys

    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")
    if here not in sys.path:
        sys.path.insert(0, here)
    import kernel_sweep
    import kernel_sweep_report
    import kernel_sweep_select

    return kernel_sweep, kernel_sweep_select, kernel_sweep_report


def _srow(method, fan, bits, nw, ms, same=True, err=False, pre=False):
    r = dict(method=method, fanout=fan, radix=bits, prefetch=pre, num_warps=nw)
    return dict(r, ms=float("inf"), same=False, error="OutOfResources") if err else dict(r, ms=ms, same=same)


def test_sweep_chooses_radix_only_if_correct_everywhere_and_fastest():
    ks, kss, _ = _sweep()

    def rows(radix8_same_mean, radix5_ms):
        return [_srow("max", 1, 0, 0, 10.0), _srow("mean", 1, 0, 0, 10.0), _srow("int32", 1, 0, 0, 1.0),
                _srow("max", 4, 0, 0, 11.0), _srow("mean", 4, 0, 0, 9.5),
                _srow("max", 1, 8, 4, 4.0), _srow("mean", 1, 8, 4, 4.0, same=radix8_same_mean),
                _srow("max", 1, 5, 4, radix5_ms, pre=True), _srow("mean", 1, 5, 4, radix5_ms, pre=True),
                _srow("int32", 1, 5, 4, 99.0, pre=True),
                _srow("max", 1, 6, 1, 0.0, err=True), _srow("mean", 1, 6, 1, 0.0, err=True)]

    # radix 8 is fastest but differs once (never chosen); radix 5 beats the searches; int32 keys do not count
    res = {"select": {"32768": rows(True, 7.0), "131072": rows(False, 7.0)}}
    assert kss.choose_select_kernel(res) == {"fanout": 1, "num_warps": 4, "radix": True, "radix_bits": 5,
                                             "prefetch": True}
    assert ks.choose(res) == {"select": kss.choose_select_kernel(res)}  # --parts select alone
    assert kss.best_select(res, radix=False) == {"fanout": 1, "radix": 0, "prefetch": False, "num_warps": 0}
    assert kss.choose_select_kernel(res, False) == {"fanout": 1, "num_warps": 0, "radix": False, "prefetch": False}
    # radix slower than the binary search: off
    res = {"select": {"32768": rows(False, 12.0), "131072": rows(False, 12.0)}}
    assert kss.choose_select_kernel(res)["radix"] is False
    # rows of an older sweep (no radix, no same) still choose
    old = {"select": {"32768": [dict(method="max", fanout=1, num_warps=0, ms=2.0),
                                dict(method="max", fanout=4, num_warps=2, ms=1.0)]}}
    assert kss.choose_select_kernel(old) == {"fanout": 4, "num_warps": 2, "radix": False, "prefetch": False}


def test_sweep_whole_selection_choice_carries_radix():
    ks, kss, rep = _sweep()

    score = dict(ks.SCORE_BEFORE, ms=1.0, tbs=1.0, same=True)
    op = [dict(ks.SCORE_BEFORE, fuse=f, maxnreg=0, radix=rx, method=m, ms=ms, tbs=1.0, same=True)
          for f, rx, ms in ((False, 0, 10.0), (False, 5, 8.0), (True, 0, 9.0), (True, 5, 8.5)) for m in ("max", "mean")]
    sel = [_srow(m, 1, b, w, ms) for m in ("max", "mean") for b, w, ms in ((0, 0, 5.0), (0, 2, 4.0), (5, 4, 3.0))]
    res = {"score": {"131072": [score]}, "op": {"131072": op}, "select": {"131072": sel}, "pdl": {}}
    res["selection_choice"] = kss.pick_selection(res)
    assert (res["selection_choice"]["fuse"], res["selection_choice"]["radix"]) == (False, 5)
    assert ks.choose(res)["select"] == {"fanout": 1, "num_warps": 4, "radix": True, "radix_bits": 5, "prefetch": False,
                                        "fuse": False, "fuse_maxnreg": 0}
    # the whole selection faster with the binary search: radix off, and the best non-radix warps
    for r in op:
        r["ms"] += 5.0 if r["radix"] else 0.0
    res["selection_choice"] = kss.pick_selection(res)
    assert ks.choose(res)["select"] == {"fanout": 1, "num_warps": 2, "radix": False, "prefetch": False, "fuse": True,
                                        "fuse_maxnreg": 0}
    # the report: the chosen whole-selection row, its radix column, the selection table
    res.update(device="H", torch="t", triton="3", when="now", copy_tbs=4.0, knobs=ks.choose(res))
    text = rep.markdown(res)
    assert "| 128K | max | False | True (chosen) | - | off | no | 2 warps" in text
    assert "| 128K | max | False | False | - | 5 | no | 2 warps" in text
    assert "| 1 | off (chosen) | no | 2 | 4000.0 | 4000.0 |" in text


def test_sweep_report_select_table():
    _, _, rep = _sweep()

    rows = [_srow("max", 1, 0, 0, 0.0060), _srow("max", 1, 8, 4, 0.0030, same=False), _srow("max", 1, 5, 4, 0.0040),
            _srow("max", 1, 6, 1, 0.0, err=True)]
    res = dict(device="H", torch="t", triton="3", when="now", copy_tbs=4.0, select={"32768": rows},
               knobs={"select": {"fanout": 1, "num_warps": 4, "radix": True, "radix_bits": 5}})
    text = rep.markdown(res)
    assert "| fan-out | radix | prefetch | warps | 32K max |" in text
    assert "| 1 | off | no | 0 | 6.0 |" in text and "| 1 | 8 | no | 4 | 3.0 DIFFERENT |" in text
    assert "| 1 | 5 (chosen) | no | 4 | 4.0 |" in text and "| 1 | 6 | no | 1 | error |" in text


@interp
def test_sweep_select_rows_run_and_agree(gen, monkeypatch):
    # the sweep's selection rows end to end at a tiny shape in the interpreter (timing stubbed):
    # every variant runs, and every one gives the binary search's table and lengths
    _, kss, _ = _sweep()
    monkeypatch.setattr(kss, "graph_ms", lambda fn: (fn(), 1e-3)[1])
    monkeypatch.setattr(kss, "SELECT_WARPS", (0, 4))
    monkeypatch.setattr(kss, "SELECT_FANOUT", (4,))
    monkeypatch.setattr(kss, "SELECT_RADIX", (5, 8))
    b, m, bs = 3, 19, 4
    q, cache, table = _codes(gen, b, 8, 2, bs, m, 16)
    seq = torch.tensor([m * bs, 30, 1], dtype=torch.int32)
    monkeypatch.setattr(kss, "BS", bs)
    rows = []
    kss.select_rows(rows, 4096, q, cache, table, seq, gen)
    # binary and radix 5 / 8, each with and without prefetch, at 2 warp counts; fan-out 4 once
    assert len(rows) == len(kss.SELECT_KEYS) * (3 * 2 * 2 + 1) and all(r["same"] for r in rows), rows
    assert {(r["fanout"], r["radix"], r["prefetch"]) for r in rows} == {
        (1, b, p) for b in (0, 5, 8) for p in (False, True)} | {(4, 0, False)}
