"""GSA offload (gsa.offload) on CPU, where the "device" pool is another CPU tensor:
outputs equal the all-in-HBM GSASparse step (selection bit for bit, attention within
bf16 tolerance) for every pool size from the minimum up, over decode steps with
growing lengths, with eviction, prefetch on/off and both copy modes; the residency
map's hit/eviction accounting on hand-computed cases; the CPU top-k mode (lag 0 =
exact, lag 1 = the previous selection fixed up for the new lengths)."""
import math
import os

import numpy as np
import pytest
import torch

from gsa import ops
from gsa.config import GSAConfig
from gsa.offload import (CPUTopK, OffloadedGSA, PoolTooSmallError, ResidencyMap, merge_lagged,
                         min_pool_blocks)
from gsa.sparse import GSASparse

BS = 4
CFG = dict(model_name="t/offload", num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
           hash_bits=32, chunk_size=BS, top_k_ratio_per_layer=[1, .3, .25, .3], top_k_index_reuse=[-1, -1, -1, 1],
           must_select_blocks=[0, -1], gpu_seq_len_threshold=12, gpu_concurrency_threshold=1, seed=5)
HQ, HKV, D = 4, 2, 16


# ---------------------------------------------------------------- residency map, by hand
def _req(m, blocks, now):
    return m.request(torch.tensor(blocks), now)


def test_residency_hits_fetches_and_lru_eviction_by_hand():
    m = ResidencyMap(num_host_blocks=10, num_slots=3)
    src, dst, n = _req(m, [2, -1, 1], 1)               # two misses into free slots 0, 1
    assert int(n) == 2 and src[:2].tolist() == [1, 2] and dst[:2].tolist() == [0, 1]
    assert dst[2:].tolist() == [3]                      # padding -> scratch slot S
    assert m.slot_of[:10].tolist() == [-1, 0, 1] + [-1] * 7
    _req(m, [2, 3], 2)                                  # 2 hits, 3 -> free slot 2
    assert m.slot_of[3].item() == 2
    src, dst, n = _req(m, [4, 3], 3)                    # 3 hits; 4 evicts block 1 (least recent)
    assert int(n) == 1 and src[0].item() == 4 and dst[0].item() == 0
    assert m.slot_of[1].item() == -1 and m.slot_of[4].item() == 0 and m.block_of[:3].tolist() == [4, 2, 3]
    assert m.stats() == {"wanted": 6, "hits": 2, "predicted_hits": 0, "fetched": 4, "prefetched": 0}
    _req(m, [2, 2, 2], 4)                               # duplicates count once
    assert m.stats()["wanted"] == 7 and m.stats()["hits"] == 3
    assert m.table(torch.tensor([[4, 2, 3, -1]])).tolist() == [[0, 1, 2, 0]]


def test_residency_ties_in_recency_evict_the_fewer_used_block():
    m = ResidencyMap(num_host_blocks=8, num_slots=2)
    _req(m, [5], 1)
    _req(m, [5, 6], 2)           # both last used at step 2; block 5 used twice, 6 once
    _, dst, n = _req(m, [7], 3)  # evicts 6 (slot 1)
    assert int(n) == 1 and dst[0].item() == 1 and m.slot_of[6].item() == -1 and m.slot_of[5].item() == 0


def test_residency_prediction_counts_predicted_hits():
    m = ResidencyMap(num_host_blocks=8, num_slots=4)
    _, _, n = m.predict(torch.tensor([1, 2, -1]), 1)
    assert int(n) == 2
    _req(m, [1, 3, 1], 1)  # 1 predicted and resident; 3 neither
    assert m.stats() == {"wanted": 2, "hits": 1, "predicted_hits": 1, "fetched": 1, "prefetched": 2}


def test_residency_mark_predicted_counts_without_admitting():
    m = ResidencyMap(num_host_blocks=8, num_slots=4)
    _req(m, [1, 2], 1)
    state = [t.clone() for t in (m.slot_of, m.block_of, m.last_used, m.uses)]
    m.mark_predicted(torch.tensor([2, 5, -1]))  # 5 is not resident: it stays so (nothing fetched)
    assert all(torch.equal(a, b) for a, b in zip(state, (m.slot_of, m.block_of, m.last_used, m.uses)))
    _req(m, [2, 5, 6], 2)  # 2 predicted and resident; 5 predicted but a miss; 6 neither
    assert m.stats() == {"wanted": 5, "hits": 1, "predicted_hits": 2, "fetched": 4, "prefetched": 0}
    m.mark_predicted(torch.tensor([6]))  # a new mark replaces the old one
    _req(m, [2, 6], 3)
    assert m.stats()["predicted_hits"] == 3


def test_residency_slots_remaps_a_padded_list_like_table():
    # slots(): the -1-padded list of decode_attention -> pool slots, padding -> slot 0, as table() does
    m = ResidencyMap(num_host_blocks=8, num_slots=4)
    _req(m, [6, 2, 7], 1)  # free slots in order: 2 -> 0, 6 -> 1, 7 -> 2 (missing blocks ascending)
    got = m.slots(torch.tensor([[6, 2, -1], [7, -1, -1]]))
    assert got.dtype == torch.int32 and got.tolist() == [[1, 0, 0], [2, 0, 0]]
    assert torch.equal(got, m.table(torch.tensor([[6, 2, -1], [7, -1, -1]])))
    assert m.slots(torch.tensor([5])).tolist() == [0]  # not resident: slot 0 (never read)
    assert int(m.slot_of[8]) == -1  # the dummy entry that -1 indexes


def test_residency_request_wider_than_the_pool_names_the_minimum():
    m = ResidencyMap(num_host_blocks=8, num_slots=2)
    with pytest.raises(PoolTooSmallError, match="at least 3 slots"):
        _req(m, [1, 2, 2], 1)  # the list's width must fit (no host sync to count distinct blocks)


# ---------------------------------------------------------------- end to end vs all-in-HBM GSA
def _layout(seq_max, batch, nb_extra=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = math.ceil(seq_max / BS)
    nb = batch * m + nb_extra
    return nb, torch.randperm(nb, generator=g)[: batch * m].reshape(batch, m).to(torch.int32)


def _slots(table, starts, ends):
    out = []
    for b, (s0, s1) in enumerate(zip(starts, ends)):
        t = torch.arange(s0, s1)
        out.append(table[b].long()[t // BS] * BS + t % BS)
    return torch.cat(out)


def _workload(cfg, nb, table, pool, batch, seq_max, dtype, seed, **offload_kw):
    """The all-in-HBM reference (``GSASparse``, its hash caches, full K / V per layer) beside an
    :class:`OffloadedGSA` with ``pool(ref)`` slots and ``offload_kw``, and ``write(starts, ends)``
    that writes random keys and values of those token ranges into both. Returns ``(ref, hash
    caches, k caches, v caches, offloaded, generator, write)``."""
    ref = GSASparse(cfg, "cpu", block_size=BS)
    hc = ref.allocate_hash_caches(nb)
    kc = {l: torch.zeros(nb, BS, HKV, D, dtype=dtype) for l in range(cfg.num_hidden_layers)}
    vc = {l: torch.zeros(nb, BS, HKV, D, dtype=dtype) for l in range(cfg.num_hidden_layers)}
    off = OffloadedGSA(GSASparse(cfg, "cpu", block_size=BS), nb, pool(ref), batch, seq_max, HKV, D, dtype,
                       **offload_kw)
    g = torch.Generator().manual_seed(seed + 1)

    def write(starts, ends):
        sl = _slots(table, starts, ends)
        for l in range(cfg.num_hidden_layers):
            k = torch.randn(sl.shape[0], HKV, D, generator=g).to(dtype)
            v = torch.randn(sl.shape[0], HKV, D, generator=g).to(dtype)
            ref.cache_keys(l, hc.get(l), sl, k)
            kc[l].view(-1, HKV, D)[sl] = k
            vc[l].view(-1, HKV, D)[sl] = v
            if l in off.layers:
                off.write_kv(l, sl, k, v)

    return ref, hc, kc, vc, off, g, write


def _run(pool_slack, prefetch, mover_mode, selector="device", steps=7, seed=0, dtype=torch.bfloat16, cpu_lag=0,
         eviction="lru"):
    """Prefill 3 rows, decode ``steps`` steps; compare with GSASparse over the full KV
    (with ``cpu_lag=1``: attention over the full KV with the offload's own tables)."""
    cfg = GSAConfig(**CFG)
    start = [29, 11, 40]                      # row 1 is dense (under the threshold) until it grows
    batch, seq_max = len(start), max(start) + steps
    nb, table = _layout(seq_max, batch, seed=seed)
    pool = lambda ref: min_pool_blocks(ref, batch, seq_max, cpu_lag,  # noqa: E731
                                       2.0 if prefetch == "lookahead" else 1.0) + pool_slack
    ref, hc, kc, vc, off, g, write = _workload(cfg, nb, table, pool, batch, seq_max, dtype, seed, prefetch=prefetch,
                                               selector=selector, mover_mode=mover_mode, cpu_lag=cpu_lag,
                                               eviction=eviction)
    write([0] * batch, start)
    lens = list(start)
    tables = {l: [] for l in off.layers}
    for t in range(steps):
        grow = [1, 2 if t % 3 == 0 else 1, 1]  # row 1 jumps: lengths change unevenly
        write(lens, [a + b for a, b in zip(lens, grow)])
        lens = [a + b for a, b in zip(lens, grow)]
        seq = torch.tensor(lens, dtype=torch.int32)
        step_ref, step_off = ref.begin_step(lens), off.begin_step(lens, block_table_host=table)
        for l in off.layers:
            q = torch.randn(batch, HQ, D, generator=g).to(dtype)
            src = ref.policy.layer(l).selection_layer
            if cpu_lag:
                got = off.decode_attention(l, step_off, q, table, seq)
                got_t, got_l = off.cpu_topk._sel[src]
                want = ops.paged_decode_attention(q, kc[l], vc[l], got_t, got_l)
                torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=1.6e-2)
                used = torch.arange(got_t.shape[1])[None, :] < ((got_l + BS - 1) // BS)[:, None]
                tables[l].append(set(got_t[used].tolist()))
            else:
                tables[l].append(_check_layer(ref, off, l, step_ref, step_off, table, seq, q, hc, kc, vc, t))
    return off, tables, nb


def _check_layer(ref, off, l, step_ref, step_off, table, seq, q, hc, kc, vc, t):
    """Layer ``l``'s selection (bit for bit) and attention (bf16 tolerance) through the offload
    engine against the all-in-HBM ``ref``; returns the host blocks the selection used."""
    src = ref.policy.layer(l).selection_layer
    want_t, want_l = ref.select(l, step_ref, table, seq, hc.get(src), q)
    got_t, got_l = off.select(l, step_off, table, seq, q)
    assert torch.equal(got_t, want_t) and torch.equal(got_l, want_l), f"step {t} layer {l}"
    want = ref.decode_attention(l, step_ref, q, kc[l], vc[l], table, seq, hc.get(src))
    got = off.decode_attention(l, step_off, q, table, seq)
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=1.6e-2)
    used = torch.arange(got_t.shape[1])[None, :] < ((got_l + BS - 1) // BS)[:, None]
    return set(got_t[used].tolist())


@pytest.mark.parametrize("pool_slack", [0, 3, 1000])
@pytest.mark.parametrize("prefetch", [None, "previous", "lookahead"])
def test_offload_matches_all_in_hbm_gsa(pool_slack, prefetch):
    off, tables, nb = _run(pool_slack, prefetch, "direct")
    st = off.stats()
    assert st["wanted"] == sum(len(s) for ts in tables.values() for s in ts)
    assert st["fetched"] == st["wanted"] - st["hits"]
    if pool_slack == 0:  # more distinct blocks went through the pool than it holds: eviction happened
        assert st["fetched"] + st["prefetched"] > off.s
    if prefetch == "lookahead":
        assert st["prefetched"] > 0


@pytest.mark.parametrize("pool_slack", [0, 3])
def test_previous_prefetch_hits_and_fetches_exactly_as_on_demand(pool_slack):
    """In a per-layer pool the previous selection is still resident when it is predicted (only
    that layer's request evicts), so the prediction fetches nothing and relabels every resident
    block's recency by the same step: eviction, hits and fetches equal on-demand's, also when
    the pool is tight and evicts (the benchmark's prefetch rows can only differ through their
    workload). docs/offload_h200.md, "Why the graph rows were slower"."""
    ond, prev = (_run(pool_slack, p, "direct")[0].stats() for p in (None, "previous"))
    assert prev["prefetched"] == 0 and ond["fetched"] > 0
    assert {k: prev[k] for k in ("wanted", "hits", "fetched")} == {k: ond[k] for k in ("wanted", "hits", "fetched")}
    assert prev["predicted_hits"] > 0


def test_lookahead_predicts_at_least_what_the_previous_selection_does():
    """The wide selection contains the step's selection (same scores, larger budget),
    so it covers at least as much of the next request."""
    prev, look = (_run(1000, p, "direct")[0].stats() for p in ("previous", "lookahead"))
    assert prev["wanted"] == look["wanted"]
    assert look["predicted_hits"] >= prev["predicted_hits"] and look["hits"] >= prev["hits"]


def test_cpu_topk_lag1_prefetches_every_block_it_attends_to():
    off, tables, _ = _run(2, "previous", "direct", selector="cpu", cpu_lag=1, steps=5)
    # the first step has no lagged selection (a synchronous fallback) for the scoring layers;
    # the reusing layer 3 is predicted from layer 1's selection of the same step; later steps exactly
    first = sum(len(tables[l][0]) for l in off.gsa.scoring_layers)
    st = off.stats()
    assert off.cpu_topk.fallbacks == len(off.gsa.scoring_layers)
    assert st["predicted_hits"] == st["wanted"] - first
    assert st["hits"] >= st["predicted_hits"]


def test_offload_staged_copies_match_too():
    off, _, _ = _run(2, True, "staged")
    st = off.stats()
    assert off.movers[off.layers[0]].bytes_h2d > 0 and st["hits"] <= st["wanted"]


def test_hit_and_prediction_counts_match_the_selection_sequence():
    """A pool holding every block never evicts: a selected block is a hit iff some
    earlier step selected it; with prefetch it was predicted iff the previous step
    selected it (same layer). Both counted independently from the tables."""
    off, tables, nb = _run(10_000, True, "direct")
    for l in off.layers:
        seen, hits, pred = set(), 0, 0
        for t, sel in enumerate(tables[l]):
            hits += len(sel & seen)
            pred += len(sel & tables[l][t - 1]) if t else 0
            seen |= sel
        wanted = sum(len(s) for s in tables[l])
        st = off.stats([l])
        # prefill writes are not requests: a block first selected counts as a miss
        assert (st["wanted"], st["hits"], st["predicted_hits"]) == (wanted, hits, pred), f"layer {l}"
        assert st["fetched"] == wanted - hits


def test_pool_below_the_minimum_is_a_clear_error():
    cfg = GSAConfig(**CFG)
    gs = GSASparse(cfg, "cpu", block_size=BS)
    need = min_pool_blocks(gs, 3, 48)
    assert need == 3 * 4  # 12 blocks at 48 tokens: ceil(.3 * 12) = 4 > 2 forced; dense rows < 12 tokens: 3
    with pytest.raises(PoolTooSmallError, match=f"minimum is {need} slots"):
        OffloadedGSA(gs, 64, need - 1, 3, 48, HKV, D)
    off = OffloadedGSA(gs, 64, need, 3, 48, HKV, D, prefetch=False)
    with pytest.raises(PoolTooSmallError, match="at least"):
        off.begin_step([48] * 4)  # more rows than the pool was sized for
    with pytest.raises(ValueError, match=r"'kv_heads, head_dim' must be .*\(2, .* \(16\), got 2, 8"):
        OffloadedGSA(gs, 64, need, 3, 48, HKV, 8)
    with pytest.raises(ValueError, match=r"'layers' must include the layers they reuse the selection of \(missing \[1\]\)"):
        OffloadedGSA(gs, 64, need, 3, 48, HKV, D, layers=[3])
    with pytest.raises(ValueError, match=r"'layers' must be sparse layers .* got \[0\]"):
        OffloadedGSA(gs, 64, need, 3, 48, HKV, D, layers=[0, 1])
    with pytest.raises(ValueError, match="'prefetch' must be None, 'previous', 'lookahead' or 'speculative', got 'x'"):
        OffloadedGSA(gs, 64, need, 3, 48, HKV, D, prefetch="x")
    with pytest.raises(ValueError, match="layer 0 is not offloaded"):
        off.write_kv(0, torch.tensor([0]), torch.zeros(1, HKV, D), torch.zeros(1, HKV, D))


# ---------------------------------------------------------------- CPU top-k mode
def test_cpu_topk_lag0_matches_device_selection():
    off, _, _ = _run(1, True, "direct", selector="cpu", steps=4)
    assert off.cpu_topk.fallbacks == 0


def test_merge_lagged_by_hand():
    idx = torch.tensor([[0, 3, 5, -1], [0, 1, 2, -1]], dtype=torch.int32)
    # row 0: sparse, now 8 blocks (forced 0 and 7 added); row 1: dense now (budget >= n_blocks)
    got, n = merge_lagged(idx, np.array([8, 4]), np.array([3, 4]), [0, -1], k=4)
    assert got.shape == (2, 6)
    assert got[0].tolist() == [0, 3, 5, 7, -1, -1] and got[1].tolist() == [0, 1, 2, 3, -1, -1]
    assert n.tolist() == [4, 4]


def test_cpu_topk_lag1_uses_the_previous_steps_query():
    cfg = GSAConfig(**CFG)
    gs = GSASparse(cfg, "cpu", block_size=BS)
    nb, table = _layout(60, 2)
    lagged, exact = CPUTopK(gs, nb, lag=1), CPUTopK(gs, nb, lag=0)
    g = torch.Generator().manual_seed(3)
    sl = _slots(table, [0, 0], [40, 50])
    k = torch.randn(sl.shape[0], HKV, D, generator=g)
    for c in (lagged, exact):
        c.cache_keys(1, sl, k)
    prev_q, prev_lens, lens = None, None, [40, 50]
    for t in range(3):
        step = gs.begin_step(lens)
        q = torch.randn(2, HQ, D, generator=g)
        for c in (lagged, exact):
            c.begin_step(step)
        seq = torch.tensor(lens, dtype=torch.int32)
        got = lagged.select(1, step, table, seq, q, "cpu")
        if prev_q is None:
            assert lagged.fallbacks == 1 and torch.equal(got[0], exact.select(1, step, table, seq, q, "cpu")[0])
        else:  # exact selection of the previous query at the previous lengths, plus this step's forced blocks
            prev_step = gs.begin_step(prev_lens)
            exact.begin_step(prev_step)
            prev_sel = exact.select(1, prev_step, table, torch.tensor(prev_lens, dtype=torch.int32), prev_q, "cpu")
            nbk = [math.ceil(s / BS) for s in lens]
            for b in range(2):
                pt, pl = prev_sel[0][b], int(prev_sel[1][b])
                blocks = {int(x) for x in pt[: math.ceil(pl / BS)]}
                want = blocks | {int(table[b, 0]), int(table[b, nbk[b] - 1])}
                n_used = math.ceil(int(got[1][b]) / BS)
                assert set(got[0][b, :n_used].tolist()) == want
        prev_q, prev_lens = q, list(lens)
        lens = [s + 1 for s in lens]
    lagged.close()
    exact.close()


def test_no_host_reads_inside_a_step_with_a_direct_pool():
    """On the meta device any .item()/.tolist()/.cpu() would raise: selection,
    residency bookkeeping, copies, remapping and attention read no device data
    on the host (the staged mover's one sync per fetch is its documented cost)."""
    cfg = GSAConfig(**CFG)
    gs = GSASparse(cfg, "meta", block_size=BS)
    off = OffloadedGSA(gs, 40, 20, 3, 44, HKV, D, torch.bfloat16, prefetch="lookahead", lookahead=1.5,
                       mover_mode="direct", host_device="meta")
    lens = [29, 11, 40]
    table = torch.empty(3, 10, dtype=torch.int32, device="meta")
    seq = torch.empty(3, dtype=torch.int32, device="meta")
    for l in off.layers:
        off.write_kv(l, torch.empty(3, dtype=torch.int64, device="meta"),
                     torch.empty(3, HKV, D, dtype=torch.bfloat16, device="meta"),
                     torch.empty(3, HKV, D, dtype=torch.bfloat16, device="meta"))
    for _ in range(2):
        step = off.begin_step(lens)
        for l in off.layers:
            out = off.decode_attention(l, step, torch.empty(3, HQ, D, dtype=torch.bfloat16, device="meta"), table, seq)
            assert out.shape == (3, HQ, D) and out.device.type == "meta"
        lens = [s + 1 for s in lens]


class _FakeDeviceModule:
    """Stands in for torch.cuda in BlockMover's stream path (CPU tensors, no real streams)."""

    def __init__(self):
        self.synced = 0
        fake = self

        class Event:
            def record(self, stream=None):
                pass

            def synchronize(self):
                fake.synced += 1

        class Stream:
            def wait_event(self, ev):
                pass

        self.Event, self.Stream = Event, Stream

    def stream(self, s):
        import contextlib
        return contextlib.nullcontext()

    def current_stream(self, device=None):
        return self.Stream()


def test_staged_mover_stream_path_copies_flushes_and_double_buffers():
    """The accelerator branch of BlockMover (host gather into staging, copy-stream scatter,
    deferred host writes landed before a gather) with a fake device module on CPU."""
    from gsa.offload import BlockMover
    g = torch.Generator().manual_seed(0)
    host_k, host_v = torch.randn(6, BS, HKV, D, generator=g), torch.randn(6, BS, HKV, D, generator=g)
    pool_k, pool_v = torch.zeros(4, BS, HKV, D), torch.zeros(4, BS, HKV, D)
    mv = BlockMover(host_k, host_v, pool_k, pool_v, mode="staged")
    mv._dev_mod = fake = _FakeDeviceModule()
    mv.stream = fake.Stream()
    # a deferred write of token 2 of block 5, then a fetch of block 5: the write lands first
    k_new, v_new = torch.full((1, HKV, D), 7.0), torch.full((1, HKV, D), 8.0)
    mv.write_host(torch.tensor([5 * BS + 2]), k_new, v_new, torch.tensor([5 * BS + 2]))
    assert mv._pending and not torch.equal(host_k[5, 2], k_new[0])
    mv.fetch(torch.tensor([5, 1, 0]), torch.tensor([2, 0, 3]), torch.tensor(2))
    assert not mv._pending and torch.equal(host_k[5, 2], k_new[0]) and torch.equal(host_v[5, 2], v_new[0])
    assert torch.equal(pool_k[2], host_k[5]) and torch.equal(pool_v[0], host_v[1])
    assert torch.equal(pool_k[3], torch.zeros_like(pool_k[3]))  # padding entries are not copied
    mv.fetch(torch.tensor([3, 0, 0]), torch.tensor([1, 3, 3]), torch.tensor(1))
    mv.fetch(torch.tensor([4, 0, 0]), torch.tensor([2, 3, 3]), torch.tensor(1))  # reuses buffer 1: waits on it
    assert torch.equal(pool_k[1], host_k[3]) and torch.equal(pool_k[2], host_k[4])
    assert fake.synced == 2  # the deferred write, then the reused staging buffer
    assert mv.bytes_h2d == 4 * 2 * host_k[0].numel() * host_k.element_size()


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") in ("", "0"),
                    reason="the uva copy kernels run on CUDA, or on the CPU under TRITON_INTERPRET=1")
def test_uva_mover_kernels_equal_direct_copies():
    # cuda_ops/offload_copy.py through BlockMover(mode="uva"): the same pool and host
    # contents as the direct mode's index copies, padding entries ignored, bad ids clamped
    from cuda_ops.hotpath import TritonHotPath
    from gsa.offload.mover import BlockMover

    g = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    nb, s, bs, hkv, d = 6, 4, 3, 2, 5
    hk = torch.randn(nb + 1, bs, hkv, d, generator=g)
    hv = torch.randn(nb + 1, bs, hkv, d, generator=g)
    mk = [BlockMover(hk.clone(), hv.clone(), torch.zeros(s + 1, bs, hkv, d), torch.zeros(s + 1, bs, hkv, d),
                     mode=m, copier=TritonHotPath() if m == "uva" else None) for m in ("direct", "uva")]
    src = torch.tensor([4, 1, 0, 0], dtype=torch.int64)
    dst = torch.tensor([2, 0, 3, 3], dtype=torch.int64)
    for mv in mk:
        mv.fetch(src, dst, torch.tensor(2))
    want_k = torch.zeros(s + 1, bs, hkv, d)
    want_k[2], want_k[0] = hk[4], hk[1]
    assert torch.equal(mk[1].pool_k, want_k) and torch.equal(mk[1].pool_v[2], hv[4])
    assert torch.equal(mk[1].pool_k[:3], mk[0].pool_k[:3])  # direct also copies the padding entries
    slots = torch.tensor([0, 7, -1, 3 * bs + 2], dtype=torch.int64)
    k = torch.randn(4, hkv, d, generator=g)
    v = torch.randn(4, hkv, d, generator=g)
    for mv in mk:
        mv.write_host(slots, k, v)
    assert torch.equal(mk[0].host_k[:nb], mk[1].host_k[:nb]) and torch.equal(mk[0].host_v[:nb], mk[1].host_v[:nb])
    assert torch.equal(mk[1].host_k[3, 2], k[3]) and torch.equal(mk[1].host_v[2, 1], v[1])
    with pytest.raises(ValueError, match="uva"):
        BlockMover(hk, hv, torch.zeros(s + 1, bs, hkv, d), torch.zeros(s + 1, bs, hkv, d), mode="uva")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_uva_mover_on_cuda_equals_staged():
    # pinned host KV read and written by the GPU (no host sync) == the staged copies
    from gsa.offload.mover import BlockMover

    g = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    nb, s, bs, hkv, d = 40, 12, 16, 4, 64
    hk = torch.randn(nb + 1, bs, hkv, d, generator=g).to(torch.bfloat16)
    hv = torch.randn(nb + 1, bs, hkv, d, generator=g).to(torch.bfloat16)
    movers = [BlockMover(hk.clone().pin_memory(), hv.clone().pin_memory(),
                         torch.zeros(s + 1, bs, hkv, d, dtype=torch.bfloat16, device="cuda"),
                         torch.zeros(s + 1, bs, hkv, d, dtype=torch.bfloat16, device="cuda"), mode=m)
              for m in (None, "staged")]
    assert movers[0].mode == "uva"
    src = torch.randperm(nb, generator=g)[:s].cuda()
    dst = torch.randperm(s, generator=g).cuda()
    slots = torch.tensor([5, -1, 17, nb * bs - 1, 3 * bs], device="cuda")
    k = torch.randn(5, hkv, d, generator=g).to(torch.bfloat16).cuda()
    v = torch.randn(5, hkv, d, generator=g).to(torch.bfloat16).cuda()
    for mv in movers:
        mv.write_host(slots, k, v)
        mv.fetch(src, dst, torch.tensor(s - 3, device="cuda"))
        mv.wait()
        mv.flush_writes()
    torch.cuda.synchronize()
    used = dst[: s - 3]
    assert torch.equal(movers[0].pool_k[used], movers[1].pool_k[used])
    assert torch.equal(movers[0].pool_v[used], movers[1].pool_v[used])
    assert torch.equal(movers[0].host_k[:nb], movers[1].host_k[:nb])
    assert torch.equal(movers[0].host_v[:nb], movers[1].host_v[:nb])


@pytest.mark.parametrize("selector", ["device", "cpu"])
def test_load_prefilled_fills_host_tier_and_codes(selector):
    # a prefilled model's paged KV (fewer blocks than the host tier) and the scoring layers' codes:
    # into host_k / host_v and into the device hash caches or the CPU top-k host codes
    cfg = GSAConfig(**CFG)
    gs = GSASparse(cfg, "cpu", block_size=BS)
    off = OffloadedGSA(gs, 64, min_pool_blocks(gs, 3, 48), 3, 48, HKV, D, prefetch=None, selector=selector)
    gen = torch.Generator().manual_seed(3)
    kv = {l: [torch.randn(40, BS, HKV, D, generator=gen).to(torch.bfloat16) for _ in range(2)] for l in off.layers}
    caches = gs.allocate_hash_caches(64)
    for hc in caches.values():
        hc.copy_(torch.randint(0, 256, hc.shape, dtype=torch.uint8, generator=gen))
    off.load_prefilled(kv, caches)
    codes = off.cpu_topk.codes if selector == "cpu" else off.hash_caches
    assert set(codes) == {1, 2} and off.layers == (1, 2, 3)  # layer 3 reuses layer 1's selection
    for l in off.layers:
        assert torch.equal(off.host_k[l][:40], kv[l][0]) and torch.equal(off.host_v[l][:40], kv[l][1])
        assert torch.count_nonzero(off.host_k[l][40:]) == 0
    for l in codes:
        assert torch.equal(codes[l], caches[l])
