"""Score-aware eviction of the offload pool (``OffloadedGSA(eviction="score")``,
gsa/offload/scores.py) on CPU: attention and selection still equal the all-in-HBM
GSA step for pool sizes from the minimum to everything; the decayed z-score priority
by hand and against numpy on fresh random inputs; the map evicts the lowest priority;
the block scores reproduce the selection; clear errors. (The Triton hot path's keys and fused priority kernels:
tests/test_offload_residency.py, in the interpreter or on CUDA.)"""
import math

import numpy as np
import pytest
import torch

from gsa.config import GSAConfig
from gsa.offload import OffloadedGSA, ResidencyMap, min_pool_blocks
from gsa.offload.scores import block_scores, new_priority, update_priority
from gsa.sparse import GSASparse
from test_offload import BS, CFG, D, HKV, HQ, _layout, _run, _slots


@pytest.mark.parametrize("pool_slack", [0, 1, 3, 1000])
@pytest.mark.parametrize("prefetch", [None, "previous"])
def test_score_eviction_matches_all_in_hbm_gsa(pool_slack, prefetch):
    # _run compares every layer's selection (bit for bit) and attention (bf16 tolerance)
    off, tables, nb = _run(pool_slack, prefetch, "direct", eviction="score")
    st = off.stats()
    assert st["wanted"] == sum(len(s) for ts in tables.values() for s in ts)
    assert st["fetched"] == st["wanted"] - st["hits"]
    if pool_slack == 0:
        assert st["fetched"] > off.s  # the pool evicted
    if pool_slack == 1000:  # nothing is ever evicted: hits are exactly the re-selections
        for l in off.layers:
            seen, hits = set(), 0
            for sel in tables[l]:
                hits += len(sel & seen)
                seen |= sel
            assert off.stats([l])["hits"] == hits
    for l in off.layers:  # every block a step scored has a priority; the padding dummy none
        p = off.priority[l]
        assert torch.isnan(p[-1]) and torch.isfinite(p[:-1]).any()


def test_score_and_lru_eviction_differ_on_a_tight_pool_but_not_on_a_full_one():
    full = [_run(1000, None, "direct", eviction=e)[0].stats() for e in ("lru", "score")]
    assert full[0] == full[1]
    tight = [_run(0, None, "direct", eviction=e, steps=9, seed=s)[0].stats() for e in ("lru", "score") for s in (0, 1)]
    assert any(tight[i]["hits"] != tight[i + 2]["hits"] for i in (0, 1))


def test_update_priority_by_hand():
    prio = new_priority(6, "cpu")
    table = torch.tensor([[4, 2, 5, 0], [1, 3, 0, 0]], dtype=torch.int32)
    inf = math.inf
    s1 = torch.tensor([[1.0, 3.0, 2.0, -inf], [5.0, 5.0, -inf, -inf]])
    update_priority(prio, table, s1, 0.5)
    # row 0: mean 2, std sqrt(2/3) -> z = (-1.2247, 1.2247, 0); row 1: equal scores -> z = 0
    z = 1 / math.sqrt(2 / 3)
    want = [math.nan, 0.0, z, 0.0, -z, 0.0, math.nan]
    torch.testing.assert_close(prio, torch.tensor(want), equal_nan=True)
    s2 = torch.tensor([[3.0, 1.0, 2.0, -inf], [-inf, -inf, -inf, -inf]])
    update_priority(prio, table, s2, 0.5)
    want = [math.nan, 0.0, 0.5 * z - 0.5 * z, 0.0, -0.5 * z + 0.5 * z, 0.0, math.nan]
    torch.testing.assert_close(prio, torch.tensor(want), equal_nan=True)


def test_update_priority_matches_numpy_on_random_inputs(rng):
    nb, b, m, decay = 50, 3, 9, 0.7
    prio = new_priority(nb, "cpu")
    want = np.full(nb + 1, np.nan)
    for _ in range(6):
        perm = torch.randperm(nb, generator=rng)
        table = torch.stack([perm[:m], perm[:m], perm[m: 2 * m]]).to(torch.int32)
        # rows 0 and 1 share their blocks (a shared prefix): either row's value may win, so they agree
        sc = torch.randint(-40, 40, (b, m), generator=rng).float()
        sc[1] = sc[0]
        lens = torch.randint(1, m + 1, (b,), generator=rng)
        lens[1] = lens[0]
        sc[torch.arange(m)[None, :] >= lens[:, None]] = -math.inf
        update_priority(prio, table, sc, decay)
        old = want.copy()  # every row updates from the step's old values
        for r in range(b):
            v = sc[r, : lens[r]].double().numpy()
            z = (v - v.mean()) / max(v.std(), 1e-6)
            for j, blk in enumerate(table[r, : lens[r]].tolist()):
                want[blk] = z[j] if np.isnan(old[blk]) else decay * old[blk] + (1 - decay) * z[j]
    np.testing.assert_allclose(prio.double().numpy(), want, rtol=1e-5, atol=1e-5)


def test_set_priority_evicts_the_lowest_priority_first():
    m = ResidencyMap(8, 3)
    m.request(torch.tensor([0, 1, 2]), 1)
    prio = new_priority(8, "cpu")
    prio[torch.tensor([0, 1, 2])] = torch.tensor([0.5, -1.0, 2.0])
    m.set_priority(prio)
    src, dst, n = m.request(torch.tensor([2, 5, -1]), 2)  # one miss: evicts block 1 (lowest), not 0
    assert int(n) == 1 and int(src[0]) == 5
    assert m.resident().nonzero()[:, 0].tolist() == [0, 2, 5]
    prio[torch.tensor([0, 2, 5])] = torch.tensor([-3.0, 1.0, math.nan])
    m.set_priority(prio)
    m.request(torch.tensor([6]), 3)  # never-scored (NaN) block 5 goes before block 0 at -3
    assert m.resident().nonzero()[:, 0].tolist() == [0, 2, 6]


def test_block_scores_reproduce_the_selection(rng):
    cfg = GSAConfig(**CFG)
    gs = GSASparse(cfg, "cpu", block_size=BS)
    nb, table = _layout(40, 2, seed=3)
    hc = gs.allocate_hash_caches(nb)
    lens = [37, 29]
    sl = _slots(table, [0, 0], lens)
    k = torch.randn(sl.shape[0], HKV, D, generator=rng)
    gs.cache_keys(1, hc[1], sl, k)
    q = torch.randn(2, HQ, D, generator=rng)
    step = gs.begin_step(lens)
    seq = torch.tensor(lens, dtype=torch.int32)
    t, ln = gs.select(1, step, table, seq, hc[1], q)
    sc = block_scores(gs, 1, q, hc[1], table, seq)
    assert sc.shape == table.shape and sc.dtype == torch.float32
    for r in range(2):
        nbr = math.ceil(lens[r] / BS)
        assert torch.isinf(sc[r, nbr:]).all() and torch.isfinite(sc[r, :nbr]).all()
        forced = {0, nbr - 1}
        budget = int(step.budgets[1][r])
        order = sorted((b for b in range(nbr) if b not in forced), key=lambda b: (-float(sc[r, b]), b))
        want = sorted(forced | set(order[: max(budget, len(forced)) - len(forced)]))
        got = sorted(t[r, : math.ceil(int(ln[r]) / BS)].tolist())
        assert got == sorted(table[r, want].tolist())


def test_score_eviction_errors_name_the_argument():
    gs = GSASparse(GSAConfig(**CFG), "cpu", block_size=BS)
    need = min_pool_blocks(gs, 3, 48, lookahead=2.0)
    with pytest.raises(ValueError, match="'eviction' must be 'lru' or 'score', got 'lfu'"):
        OffloadedGSA(gs, 64, need, 3, 48, HKV, D, eviction="lfu")
    with pytest.raises(ValueError, match="eviction 'score' needs the device selector and prefetch None, 'previous' "
                                         "or 'speculative'"):
        OffloadedGSA(gs, 64, need, 3, 48, HKV, D, eviction="score", prefetch="lookahead")
    with pytest.raises(ValueError, match="eviction 'score' needs the device selector"):
        OffloadedGSA(gs, 64, need, 3, 48, HKV, D, eviction="score", selector="cpu")
    with pytest.raises(ValueError, match=r"'score_decay' must be a number in \[0, 1\), got 1.0"):
        OffloadedGSA(gs, 64, need, 3, 48, HKV, D, eviction="score", score_decay=1.0)

