"""Speculative prefetch in the offload engine (``OffloadedGSA(prefetch="speculative")`` and
:meth:`OffloadedGSA.speculate`) on CPU, where the "device" pool is another CPU tensor:

* speculation never changes results: with the exact query, a random one or the negated one
  (which ranks the blocks roughly in reverse, so it admits blocks the selection does not use),
  every layer's selection equals the all-in-HBM GSA step bit for bit and attention within bf16
  tolerance, for pool sizes from the minimum up, LRU and score eviction, width 1 and 1.5;
* with the exact query it is a perfect prefetch (every selected block resident at the request,
  nothing fetched on demand), and a reusing layer is always prefetched exactly;
* the pool's content after speculate + select, written out by hand on a tiny pool;
* the engine's counters equal ``benchmarks/offload_speculative.replay`` (the CPU replay behind
  docs/offload_policies.md's speculative numbers) fed the engine's selections, speculative sets
  and score priorities;
* the graph-form step with speculation keeps capture's rules (no host copy or read, every copy
  stream fork joined), on the fake capturing device of tests/offload_capture_sim.py;
* one clear error per bad argument.
"""
import math
import os
import sys

import numpy as np
import pytest
import torch

from gsa import hash_codes
from gsa.config import GSAConfig
from gsa.offload import OffloadedGSA, PoolTooSmallError, min_pool_blocks
from gsa.sparse import GSASparse
from test_offload import BS, CFG, D, HKV, HQ, _check_layer, _layout, _workload

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import offload_speculative  # noqa: E402  (benchmarks/: the CPU replay)


def _spec_query(mode, q, g):
    """The speculative query of a test run: the real one, a random one, or the negated real one
    (sign-random-projection codes of ``-q`` are the complement of ``q``'s: it prefers the blocks
    ``q`` scores lowest, so it admits blocks that the selection then does not use)."""
    if mode == "exact":
        return q.clone()
    if mode == "random":
        return torch.randn(q.shape, generator=g).to(q.dtype)
    return -q


def _run_spec(pool_slack, mode, eviction="lru", width=1.0, steps=7, seed=0, dtype=torch.bfloat16, first=0,
              hook=None, spec_first=False):
    """``test_offload._run``'s workload (3 rows, one dense until it grows, prefill then ``steps``
    decode steps) with speculation on every scoring layer from step ``first`` on; every selection
    and attention compared with the all-in-HBM GSASparse step. ``hook(t, off)`` after each step.
    ``spec_first``: speculate before the step's new keys are written (as in a model, where layer
    ``l``'s key of the current token does not exist yet while layer ``l - 1`` runs).
    Returns the engine, per offloaded layer the selected and the speculated host block sets per
    step, and per layer the counters after step 0."""
    cfg = GSAConfig(**CFG)
    start = [29, 11, 40]
    batch, seq_max = len(start), max(start) + steps
    nb, table = _layout(seq_max, batch, seed=seed)
    pool = lambda ref: math.ceil(min_pool_blocks(ref, batch, seq_max) * width) + pool_slack  # noqa: E731
    ref, hc, kc, vc, off, g, write = _workload(cfg, nb, table, pool, batch, seq_max, dtype, seed,
                                               prefetch="speculative", mover_mode="direct", eviction=eviction)

    write([0] * batch, start)
    lens = list(start)
    sel = {l: [] for l in off.layers}
    spec = {l: [] for l in off.layers}
    after0 = {}
    for t in range(steps):
        grow = [1, 2 if t % 3 == 0 else 1, 1]
        old, lens = lens, [a + b for a, b in zip(lens, grow)]
        if not spec_first:
            write(old, lens)
        seq = torch.tensor(lens, dtype=torch.int32)
        step_ref, step_off = ref.begin_step(lens), off.begin_step(lens)
        qs = {l: torch.randn(batch, HQ, D, generator=g).to(dtype) for l in off.layers}
        for l in off.layers:
            src = ref.policy.layer(l).selection_layer
            if src == l and t >= first:
                # (in a model: before layer l - 1 runs, from the hidden state entering it)
                before = off.maps[l].resident().clone()
                off.speculate(l, step_off, _spec_query(mode, qs[l], g), table, seq, width=width)
                spec[l].append(set(torch.nonzero(off.maps[l]._predicted[:nb]).flatten().tolist()))
                assert (off.maps[l].resident() | ~before).all() or pool_slack < 1000  # a full pool never evicts
        if spec_first:
            write(old, lens)  # (write_kv waits for the layer's prefetch, then writes through to the pool)
        for l in off.layers:
            src = ref.policy.layer(l).selection_layer
            sel[l].append(_check_layer(ref, off, l, step_ref, step_off, table, seq, qs[l], hc, kc, vc, t))
            if src != l:  # a reusing layer: its source's real selection, admitted after the source's request
                spec[l].append(set(torch.nonzero(off.maps[l]._predicted[:nb]).flatten().tolist()))
        if hook is not None:
            hook(t, off)
        if t == 0:
            after0 = {l: off.maps[l].stats() for l in off.layers}
    return off, sel, spec, after0, nb


# ---------------------------------------------------------------- results never change
@pytest.mark.parametrize("pool_slack", [0, 3, 1000])
@pytest.mark.parametrize("mode", ["exact", "random", "negated"])
@pytest.mark.parametrize("eviction", ["lru", "score"])
def test_speculation_never_changes_selection_or_attention(pool_slack, mode, eviction):
    # _run_spec compares every layer's selection (bit for bit) and attention (bf16 tolerance);
    # on the tight pools the speculation runs before the step's keys are written
    spec_first = pool_slack < 1000
    off, sel, spec, _, nb = _run_spec(pool_slack, mode, eviction, spec_first=spec_first)
    st = off.stats()
    assert st["wanted"] == sum(len(s) for ss in sel.values() for s in ss)
    assert st["fetched"] == st["wanted"] - st["hits"]
    assert st["prefetched"] > 0
    scoring = [l for l in off.layers if off.gsa.policy.layer(l).selection_layer == l]
    extra = sum(len(p - s) for l in scoring for p, s in zip(spec[l], sel[l]))  # admitted, then not selected
    if mode == "exact":
        # (before the writes, a row that grew by 2 tokens may have completed a block whose new key
        # is not hashed yet; in a decode step only the new last block, which is forced, has one)
        assert extra == 0 or spec_first
    else:
        assert extra > 0  # the speculation did admit blocks the selection did not use
    if pool_slack == 0 and mode != "exact":
        assert st["fetched"] + st["prefetched"] > off.s  # the pool evicted


@pytest.mark.parametrize("mode", ["exact", "negated"])
def test_wider_speculation_never_changes_results_and_contains_the_plain_one(mode):
    off, sel, spec, _, _ = _run_spec(2, mode, width=1.5, steps=5)
    if mode == "exact":  # the same scores with larger budgets: a superset of the selection
        for l in off.layers:
            assert all(s <= p for p, s in zip(spec[l], sel[l])), l
        st = off.stats()
        assert st["hits"] == st["wanted"] and st["fetched"] == 0


@pytest.mark.parametrize("pool_slack", [0, 3])
@pytest.mark.parametrize("eviction", ["lru", "score"])
def test_exact_speculation_is_a_perfect_prefetch(pool_slack, eviction):
    """The pool holds one step's selection (min_pool_blocks), so admitting the layer's own
    selection before its request leaves nothing to fetch on demand, from the first step on;
    the reusing layer (3, from 1) is exact by construction, whatever the speculation."""
    off, sel, spec, _, _ = _run_spec(pool_slack, "exact", eviction)
    st = off.stats()
    assert st["fetched"] == 0 and st["hits"] == st["wanted"] > 0
    assert st["predicted_hits"] == st["wanted"]
    for mode in ("random", "negated"):
        off, sel, spec, _, _ = _run_spec(pool_slack, mode, eviction)
        s3 = off.stats([3])
        assert s3["fetched"] == 0 and s3["hits"] == s3["wanted"] == s3["predicted_hits"] > 0
        assert spec[3] == sel[3]
        assert off.stats([1, 2])["fetched"] > 0  # (the scoring layers did miss)


# ---------------------------------------------------------------- by hand
HAND = dict(model_name="t/offload-hand", num_hidden_layers=2, num_attention_heads=HQ, num_key_value_heads=HKV,
            head_dim=D, hash_bits=32, chunk_size=BS, top_k_ratio_per_layer=[1, .25], top_k_index_reuse=[-1, -1],
            must_select_blocks=[0, -1], gpu_seq_len_threshold=12, gpu_concurrency_threshold=1, seed=5)


def _hand_codes(cfg, q, good, bad, hc):
    """Key codes of layer 1 that make ``q``'s selection the forced blocks plus ``good`` and the
    negated query's the forced blocks plus ``bad``: per KV head, ``good`` blocks carry the code of
    the head group's query (similarity R for ``q``, 0 for ``-q``), ``bad`` blocks its complement,
    every other block half the bits flipped (R / 2 for both)."""
    codes = hash_codes.query_codes(cfg, 1, q)[0]  # [Hq, C]: heads of a group share one vector
    grp = HQ // HKV
    for j in range(HKV):
        c = codes[j * grp]
        hc[:, j] = (c ^ 0x0F)[None, None, :]
        hc[good, j] = c[None, None, :]
        hc[bad, j] = (~c)[None, None, :]


def test_pool_content_after_speculate_and_select_by_hand():
    cfg = GSAConfig(**HAND)
    nb = 20
    off = OffloadedGSA(GSASparse(cfg, "cpu", block_size=BS), nb, 6, 1, 64, HKV, D, torch.float32,
                       prefetch="speculative", mover_mode="direct")
    g = torch.Generator().manual_seed(3)
    v = torch.randn(D, generator=g)
    q = v.expand(1, HQ, D).contiguous()  # every head the same vector (one code per head group)
    table, seq = torch.arange(16, dtype=torch.int32)[None], torch.tensor([64], dtype=torch.int32)
    hc = off.hash_caches[1]
    m = off.maps[1]

    def step(good, bad, want_sel):
        st = off.begin_step([64])
        _hand_codes(cfg, q, good, bad, hc)
        off.speculate(1, st, -q, table, seq)  # selects the forced blocks 0, 15 and `bad`
        t, n = off.select(1, st, table, seq, q)
        assert sorted(t[0].tolist()) == want_sel and int(n[0]) == 16  # the real selection: 4 full blocks
        off.decode_attention(1, st, q, table, seq)

    # step 1: speculation admits 0, 5, 9, 15 into free slots 0-3 (missing blocks ascending); the
    # request {0, 3, 7, 15} hits 0 and 15 and fetches 3, 7 into the free slots 4, 5
    step([3, 7], [5, 9], [0, 3, 7, 15])
    assert m.block_of[:6].tolist() == [0, 5, 9, 15, 3, 7]
    assert m.stats() == {"wanted": 4, "hits": 2, "predicted_hits": 2, "fetched": 2, "prefetched": 4}
    # step 2: speculation {0, 12, 13, 15}: 12, 13 evict the least recent and least used outside it:
    # 5 and 9 (stamped at step 1 by the prediction, never requested: key (1, 0) < (1, 1) of 3, 7),
    # slots 1, 2. The request {0, 3, 11, 15}: 11 evicts 7 (slot 5: (1, 1) < (2, 0) of 12, 13)
    step([3, 11], [12, 13], [0, 3, 11, 15])
    assert m.block_of[:6].tolist() == [0, 12, 13, 15, 3, 11]
    assert sorted(torch.nonzero(m.resident()).flatten().tolist()) == [0, 3, 11, 12, 13, 15]
    assert m.stats() == {"wanted": 8, "hits": 5, "predicted_hits": 4, "fetched": 3, "prefetched": 6}
    # the pool holds the host KV of the blocks the map says
    for s, b in enumerate(m.block_of[:6].tolist()):
        assert torch.equal(off.pool_k[1][s], off.host_k[1][b])


# ---------------------------------------------------------------- against the CPU replay
@pytest.mark.parametrize("mode,seed", [("random", 0), ("negated", 1), ("random", 2)])
def test_engine_counts_equal_the_replay(mode, seed):
    """``offload_speculative.replay`` on the engine's own trace: per layer the selections, the
    speculative sets (target key 1 inside, ``-inf`` outside, ``N`` = its size: all of it is
    admitted, as the engine admits the whole prediction) and the score priorities after each step
    (``keep[t]``). The replay's victims are the lowest priority, ties to the lower block id; the
    map's are the lowest quantised priority, ties by fewer uses and the lower slot. The case is
    tie-free: every candidate victim was scored (every block of the table is scored every step,
    and only table blocks enter the pool), so its priority is a decayed z-score of random codes
    (distinct; NaN, never scored, only for blocks the step just created: the last, forced, kept)."""
    steps = 8
    keeps = {}

    def snap(t, off):
        for l in off.layers:
            keeps.setdefault(l, []).append(off.priority[l][:-1].double().nan_to_num(nan=-64.0).numpy().copy())

    off, sel, spec, after0, nb = _run_spec(0, mode, "score", steps=steps, seed=seed, first=1, hook=snap)
    for l in off.layers:
        reuse = off.gsa.policy.layer(l).selection_layer != l
        s = np.zeros((steps, nb), bool)
        for t, blocks in enumerate(sel[l]):
            s[t, sorted(blocks)] = True
        p = np.full((steps, nb), -np.inf)
        n = np.zeros(steps, np.int64)
        sp = spec[l] if reuse else [set()] + spec[l]  # (scoring layers speculate from step 1 on)
        for t in range(1, steps):
            p[t, sorted(sp[t])] = 1.0
            n[t] = len(sp[t])
        got = offload_speculative.replay(s, np.stack(keeps[l]), off.s, p, n)
        st, st0 = off.maps[l].stats(), after0[l]
        eng = [st[c] - st0[c] for c in ("hits", "wanted", "fetched", "prefetched")]
        assert eng == got.tolist(), (l, eng, got.tolist())
        assert got[2] > 0 or reuse  # the pool did miss (a case where eviction decides)


# ---------------------------------------------------------------- graph form
def test_graph_form_speculation_keeps_capture_rules_and_equals_eager(monkeypatch):
    """The graph-form step with speculation (fixed k, persistent budgets; width 1 on one layer,
    1.5 on the other: budgets widened on the device) inside the fake capture: no host copy or host
    read from offload code, the copy stream's forks joined, and every layer's output, map and
    counter equal to the same steps on direct movers outside any capture."""
    import test_offload_capture as TC
    from offload_capture_sim import HostCopyGuard, uva_movers
    # a pool for 2x the widest selection (the 1.5-wide prediction), still far below the host blocks
    monkeypatch.setattr(TC, "min_pool_blocks", lambda *a, **kw: 2 * min_pool_blocks(*a, **kw))
    ref, caches, kv, k, (cap, eager), table, qs, gen = TC._setup("speculative", "score")
    dev = uva_movers(cap)

    def body(off, step, seq, q_spec):
        out = []
        for l in off.layers:
            if l in q_spec:
                off.speculate(l, step, q_spec[l], table, seq, width=1.0 if l % 2 else 1.5)
            out.append(off.decode_attention(l, step, qs[l], table, seq))
        return out

    for i, lens in enumerate(TC.SEQS):
        seq = torch.tensor(lens, dtype=torch.int32)
        for q in qs.values():
            q.copy_(torch.randn(q.shape, generator=gen).to(q.dtype))
        q_spec = {l: torch.randn(qs[l].shape, generator=gen).to(qs[l].dtype) for l in cap.gsa.scoring_layers}
        st_c, st_e = cap.begin_step(lens, k=k, graph=True), eager.begin_step(lens, k=k, graph=True)
        if i == 0:
            got = body(cap, st_c, seq, q_spec)
        else:
            guard = HostCopyGuard(strict=True)
            with dev.graph(), guard:
                got = body(cap, st_c, seq, q_spec)
            assert guard.violations == []
        want = body(eager, st_e, seq, q_spec)
        for a, b in zip(got, want):
            assert torch.equal(a, b), i
    for l in cap.layers:
        for name in ("slot_of", "block_of", "last_used", "uses", "_counts"):
            assert torch.equal(getattr(cap.maps[l], name), getattr(eager.maps[l], name)), (l, name)
    assert cap.stats()["prefetched"] > 0


# ---------------------------------------------------------------- errors
def _small(prefetch="speculative", **kw):
    cfg = GSAConfig(**CFG)
    return OffloadedGSA(GSASparse(cfg, "cpu", block_size=BS), 40, 40, 2, 40, HKV, D, torch.float32,
                        prefetch=prefetch, mover_mode="direct", **kw)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="prefetch 'speculative' needs the device selector, got selector 'cpu'"):
        _small(selector="cpu")
    with pytest.raises(ValueError, match="'prefetch' must be None, 'previous', 'lookahead' or 'speculative'"):
        _small(prefetch="speculate")
    off = _small(eviction="score")  # score eviction is fine with it
    lens = [33, 30]
    seq, table = torch.tensor(lens, dtype=torch.int32), torch.arange(20, dtype=torch.int32).reshape(2, 10)
    st = off.begin_step(lens)
    q = torch.randn(2, HQ, D)
    with pytest.raises(ValueError, match="layer 0 is not offloaded"):  # the dense layer
        off.speculate(0, st, q, table, seq)
    with pytest.raises(ValueError, match="layer 7 is not offloaded"):
        off.speculate(7, st, q, table, seq)
    with pytest.raises(ValueError, match="'layer' must be a scoring layer; layer 3 reuses layer 1's selection"):
        off.speculate(3, st, q, table, seq)
    with pytest.raises(ValueError, match=r"'q_spec' must be \[B, H, 16\].*got \(2, 4, 8\)"):
        off.speculate(1, st, torch.randn(2, HQ, 8), table, seq)
    with pytest.raises(ValueError, match=r"'q_spec' must have the step's B = 2 rows, got shape \(3, 4, 16\)"):
        off.speculate(1, st, torch.randn(3, HQ, D), table, seq)
    with pytest.raises(ValueError, match=r"'block_table, seq_lens' must be \[B, M\] and \[B\]"):
        off.speculate(1, st, q, table[:1], seq)
    with pytest.raises(ValueError, match="'width' must be a number >= 1, got 0.5"):
        off.speculate(1, st, q, table, seq, width=0.5)
    assert off.stats()["prefetched"] == 0  # nothing admitted by a refused call
    with pytest.raises(PoolTooSmallError, match="at least"):  # 2 rows x all 10 blocks > 8 slots
        OffloadedGSA(GSASparse(GSAConfig(**CFG), "cpu", block_size=BS), 40, 8, 2, 40, HKV, D, torch.float32,
                     prefetch="speculative", mover_mode="direct").speculate(1, st, q, table, seq, width=4.0)
    other = _small(prefetch="previous")
    with pytest.raises(ValueError, match="needs prefetch 'speculative'.*got prefetch 'previous'"):
        other.speculate(1, other.begin_step(lens), q, table, seq)


def test_reset_residency_switches_to_and_from_speculative():
    off = _small(prefetch="previous", eviction="score")
    off.reset_residency(prefetch="speculative")
    assert off.prefetch == "speculative" and off.eviction == "score"
    off.reset_residency(prefetch=None, eviction="lru")
    assert off.prefetch is None
    with pytest.raises(ValueError, match="lookahead is fixed at construction"):
        off.reset_residency(prefetch="lookahead")
    cpu = _small(prefetch=None, selector="cpu")
    with pytest.raises(ValueError, match="needs the device selector, got selector 'cpu'"):
        cpu.reset_residency(prefetch="speculative")
    assert cpu.prefetch is None
