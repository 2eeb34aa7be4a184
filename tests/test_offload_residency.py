"""The fused residency kernel (cuda_ops/offload_residency.py) against the torch
ResidencyMap (the reference): on fresh random request / predict sequences (padding
-1, duplicates, a full pool, prefetch then request, misses beyond the free slots)
every tensor of the map, the mover's src / dst / n_miss and every counter are equal
after every call. Runs the kernels in the Triton interpreter on CPU (TRITON_INTERPRET=1;
ci/test.sh's interpreter stage) or on CUDA."""
import os
import sys

import pytest
import torch

from gsa.offload import ResidencyMap

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
pytestmark = pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(),
                                reason="the residency kernel runs on CUDA, or on the CPU under TRITON_INTERPRET=1")


def _dev():
    return torch.device("cpu" if INTERPRET else "cuda")


def _pair(nb, s):
    from cuda_ops.hotpath import TritonHotPath

    dev = _dev()
    ref = ResidencyMap(nb, s, dev, backend=False)
    fused = ResidencyMap(nb, s, dev, backend=TritonHotPath())
    assert ref.backend is None and fused.backend is not None
    return ref, fused


def _assert_same(ref, fused, out_ref, out_fused, what):
    for name in ("slot_of", "block_of", "last_used", "uses", "_predicted", "_counts"):
        a, b = getattr(ref, name), getattr(fused, name)
        assert torch.equal(a, b), f"{what}: {name} differs\nref   {a.tolist()}\nfused {b.tolist()}"
    for name, a, b in zip(("src", "dst", "n_miss"), out_ref, out_fused):
        assert a.shape == b.shape and torch.equal(a, b), f"{what}: {name} differs\nref   {a.tolist()}\nfused {b.tolist()}"


def _random_blocks(g, nb, n, pad_frac, dup_frac):
    """``n`` entries: distinct ids, some repeated, some padding (-1)."""
    blocks = torch.randperm(nb, generator=g)[:n].clone()
    if n < 2:
        return blocks
    r = torch.rand(n, generator=g)
    dup = r < dup_frac
    blocks[dup] = blocks[torch.randint(0, n, (int(dup.sum()),), generator=g)]
    blocks[(r >= dup_frac) & (r < dup_frac + pad_frac)] = -1
    return blocks


@pytest.mark.parametrize("nb,s", [(7, 7), (40, 12), (3000, 300)])
def test_fused_residency_equals_torch_map_on_random_sequences(rng, nb, s):
    # the (3000, 300) case spans several host-block chunks and slot programs of the kernel
    ref, fused = _pair(nb, s)
    dev = _dev()
    steps = 12 if nb < 1000 else 5
    for t in range(1, steps + 1):
        for kind in ("predict", "request") if t % 3 else ("request",):
            n = int(torch.randint(1, s + 1, (1,), generator=rng))
            if t == steps:
                n = s  # a request as wide as the pool
            blocks = _random_blocks(rng, nb, min(n, nb), 0.2, 0.2)
            if blocks.shape[0] < n:  # more entries than host blocks: pad
                blocks = torch.cat([blocks, blocks.new_full((n - blocks.shape[0],), -1)])
            blocks = blocks.to(dev)
            out_r = getattr(ref, kind)(blocks, t)
            out_f = getattr(fused, kind)(blocks, t)
            _assert_same(ref, fused, out_r, out_f, f"step {t} {kind} n={n}")
    assert ref.stats() == fused.stats()
    assert fused.stats()["wanted"] > 0


def test_fused_residency_full_pool_and_eviction_order_by_hand():
    # every slot taken, then a request keeping some and missing as many as the rest
    ref, fused = _pair(10, 4)
    dev = _dev()
    seq = [("request", [0, 1, 2, 3], 1), ("request", [1, 1, -1, 2], 2), ("predict", [5, 6, 1, -1], 3),
           ("request", [5, 7, 8, 1], 4), ("request", [9, 9, 9, 9], 5), ("request", [-1, -1, -1, -1], 6),
           ("predict", [0, 2, 4, 6], 7), ("request", [0, 2, 4, 6], 7)]
    for kind, blocks, now in seq:
        b = torch.tensor(blocks, device=dev)
        out_r = getattr(ref, kind)(b, now)
        out_f = getattr(fused, kind)(b, now)
        _assert_same(ref, fused, out_r, out_f, f"{kind} {blocks} at {now}")
    # the last request was predicted exactly: all hits, nothing fetched
    assert int(out_f[2]) == 0
    st = fused.stats()
    assert st["predicted_hits"] >= 4 and st["wanted"] == st["hits"] + st["fetched"]


def test_fused_residency_now_as_device_tensor(rng):
    # a step counter kept on the device (what a captured CUDA graph reads at replay)
    ref, fused = _pair(30, 10)
    now = torch.zeros(1, dtype=torch.int64, device=_dev())
    for t in range(1, 6):
        now += 1
        blocks = _random_blocks(rng, 30, 8, 0.1, 0.1).to(_dev())
        out_r = ref.request(blocks, int(t))
        out_f = fused.request(blocks, now)
        _assert_same(ref, fused, out_r, out_f, f"step {t}")
    assert int(fused.now_t) == 5


def test_residency_backend_argument_is_checked():
    with pytest.raises(ValueError, match="backend"):
        ResidencyMap(4, 2, backend=object())
    assert ResidencyMap(4, 2).backend is None  # CPU: the torch ops


def test_uva_gather_with_fewer_lanes_than_misses(rng, monkeypatch):
    # the gather kernel's grid is sized by the device, not by N: one lane loops over every miss
    import cuda_ops.offload_copy as oc

    monkeypatch.setattr(oc, "PROGRAMS_PER_SM", 1)
    dev = _dev()
    nb, s, bs, hkv, d = 9, 6, 2, 2, 3
    hk, hv = (torch.randn(nb, bs, hkv, d, generator=rng) for _ in range(2))
    pk, pv = torch.zeros(s + 1, bs, hkv, d), torch.zeros(s + 1, bs, hkv, d)
    src = torch.tensor([8, 3, 0, 5, 0, 0])
    dst = torch.tensor([1, 4, 0, 2, 6, 6])
    want_k, want_v = pk.clone(), pv.clone()
    want_k[dst[:4]], want_v[dst[:4]] = hk[src[:4]], hv[src[:4]]
    pk, pv = pk.to(dev), pv.to(dev)
    oc.gather_blocks(hk.to(dev) if not INTERPRET else hk, hv.to(dev) if not INTERPRET else hv, pk, pv,
                     src.to(dev), dst.to(dev), torch.tensor(4, device=dev))
    assert torch.equal(pk.cpu(), want_k) and torch.equal(pv.cpu(), want_v)


@pytest.mark.skipif(not INTERPRET, reason="on CUDA, tests/test_offload_gpu.py runs the offloaded step end to end")
@pytest.mark.parametrize("prefetch,eviction", [(None, "lru"), ("previous", "lru"), (None, "score")])
def test_offloaded_steps_with_the_fused_maps_equal_the_torch_maps(rng, prefetch, eviction):
    # OffloadedGSA end to end (shared device step counter, per-kind output buffers, the
    # prediction buffers): the fused kernel in every map gives the torch maps' outputs and state
    from cuda_ops.hotpath import TritonHotPath
    from gsa.config import GSAConfig
    from gsa.offload import OffloadedGSA, min_pool_blocks
    from gsa.sparse import GSASparse

    bs, hq, hkv, d, b = 4, 4, 2, 16, 3
    cfg = GSAConfig(model_name="t/offload-fused", num_hidden_layers=4, num_attention_heads=hq, num_key_value_heads=hkv,
                    head_dim=d, hash_bits=32, chunk_size=bs, top_k_ratio_per_layer=[1, .3, .25, .3],
                    top_k_index_reuse=[-1, -1, -1, 1], must_select_blocks=[0, -1], gpu_seq_len_threshold=12,
                    gpu_concurrency_threshold=1, seed=5)
    dev = _dev()
    lens = [29, 40, 33]
    m = 16
    nb = b * m + 3
    table = torch.randperm(nb, generator=rng)[: b * m].reshape(b, m).to(torch.int32).to(dev)
    pool = min_pool_blocks(GSASparse(cfg, dev, block_size=bs), b, m * bs) + 2
    offs = [OffloadedGSA(GSASparse(cfg, dev, block_size=bs), nb, pool, b, m * bs, hkv, d, torch.float32,
                         prefetch=prefetch, eviction=eviction) for _ in range(2)]
    for l in offs[1].layers:
        offs[1].maps[l].backend = TritonHotPath()
    kv = {l: [torch.randn(nb + 1, bs, hkv, d, generator=rng) for _ in range(2)] for l in offs[0].layers}
    codes = {l: torch.randint(0, 256, offs[0].hash_caches[l].shape, dtype=torch.uint8, generator=rng)
             for l in offs[0].hash_caches}
    for off in offs:
        for l in off.layers:
            off.host_k[l].copy_(kv[l][0])
            off.host_v[l].copy_(kv[l][1])
        for l, c in codes.items():
            off.hash_caches[l].copy_(c)
    for t in range(3):
        seq = [x + 2 * t for x in lens]
        qs = {l: torch.randn(b, hq, d, generator=rng).to(dev) for l in offs[0].layers}
        outs = []
        for off in offs:
            st = off.begin_step(seq)
            outs.append([off.decode_attention(l, st, qs[l], table, torch.tensor(seq, dtype=torch.int32, device=dev))
                         for l in off.layers])
        for l, a, c in zip(offs[0].layers, *outs):
            assert torch.equal(a, c), (t, l)
        for l in offs[0].layers:
            _assert_same(offs[0].maps[l], offs[1].maps[l], (), (), f"step {t} layer {l}")
    assert offs[1].stats() == offs[0].stats() and offs[1].stats()["fetched"] > 0


@pytest.mark.parametrize("nb,s", [(40, 12), (3000, 300)])
def test_fused_residency_equals_torch_map_with_score_priorities(rng, nb, s):
    """Score-aware eviction writes priorities (up to 2^31) into last_used before each
    request (ResidencyMap.set_priority); the fused kernel must order them as the torch map."""
    ref, fused = _pair(nb, s)
    dev = _dev()
    prio = torch.full((nb + 1,), float("nan"), device=dev)
    for t in range(1, 9):
        scored = torch.rand(nb, generator=rng) < 0.7  # some blocks never scored (NaN: kept least)
        prio[:nb] = torch.where(scored, torch.randn(nb, generator=rng) * 3, prio[:nb].cpu()).to(dev)
        if t == 4:
            prio[: nb // 2] = 0.5  # ties: fewest uses, then the lowest slot
        for m in (ref, fused):
            m.set_priority(prio)
        n = int(torch.randint(1, s + 1, (1,), generator=rng))
        blocks = _random_blocks(rng, nb, min(n, nb), 0.2, 0.2).to(dev)
        _assert_same(ref, fused, ref.request(blocks, t), fused.request(blocks, t), f"step {t} n={n}")
    assert ref.stats() == fused.stats() and fused.stats()["fetched"] > s


@pytest.mark.parametrize("mean", [False, True])
def test_fused_priority_update_equals_the_torch_update(rng, mean):
    """cuda_ops' priority_update (one launch from the select program's keys) against
    gsa.offload.scores.update_priority on the decoded scores: the same priorities up to float32
    rounding of the z-score sums, the same never-scored (NaN) entries, the dummy untouched."""
    import math

    from cuda_ops.offload_residency import priority_update
    from gsa.offload.scores import new_priority, update_priority

    dev, nb, b, m, bs = _dev(), 300, 5, 40, 16
    fused, ref = new_priority(nb, dev), new_priority(nb, dev)
    for step in range(4):
        table = torch.randperm(nb, generator=rng)[: b * m].reshape(b, m).to(torch.int32)
        seq = torch.randint(-3, m * bs + 1, (b,), generator=rng).to(torch.int32)  # <= 0: padding rows
        if mean:
            vals = torch.randn(b, m, generator=rng) * 50
            bits = vals.view(torch.int32)
            keys = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # the kernels' monotone image of a float32
        else:
            keys = torch.randint(-4000, 4000, (b, m), generator=rng, dtype=torch.int32) * 16
            vals = keys.float()
        keys[0, 3] = -(2 ** 31)  # a block the kernel left unscored
        live = torch.arange(m)[None, :] < ((seq.long() + bs - 1) // bs).clamp(min=0)[:, None]
        live &= keys != -(2 ** 31)
        scores = torch.where(live, vals, -math.inf)
        update_priority(ref, table.to(dev), scores.to(dev), 0.7)
        priority_update(keys.to(dev), table.to(dev), seq.to(dev), fused, 0.7, bs, mean)
        assert torch.equal(fused.isnan(), ref.isnan()), step
        torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert int((~ref.isnan()).sum()) > b * m


@pytest.mark.parametrize("method", ["max", "mean"])
def test_hot_path_block_keys_equal_the_reference_block_scores(method):
    """Score-aware eviction reads the Triton select program's block keys (no recomputation):
    decoded and masked past each row's last block (the kernel leaves those stale), they
    equal the pure-torch reference block scores exactly."""
    from gsa import hash_codes, use_backend
    from gsa.config import GSAConfig
    from gsa.offload.scores import block_scores, fast_block_scores_available
    from gsa.reference import scoring as ref_scoring
    from gsa.sparse import GSASparse
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
    # the offload GPU checks' scenario (shapes, config, lengths): tests/test_offload_gpu.py uses it too
    from offload_capture_check import B, CFG as GCFG, HQ as GHQ, D as GD, M, NB, SEQS, BS as GBS

    dev = torch.device("cpu" if INTERPRET else "cuda")
    gen = torch.Generator().manual_seed(1)
    cfg = GSAConfig(**dict(GCFG, chunk_repre_method=method))
    with use_backend("triton"):
        gs = GSASparse(cfg, dev)
        hc = gs.allocate_hash_caches(NB)[1]
        hc.copy_(torch.randint(0, 256, hc.shape, dtype=torch.uint8, generator=gen))
        table = torch.randperm(NB, generator=gen)[: B * M].reshape(B, M).to(torch.int32).to(dev)
        seq_t = torch.tensor(SEQS[0], dtype=torch.int32, device=dev)
        q = torch.randn(B, GHQ, GD, generator=gen).to(torch.bfloat16).to(dev)
        gs.select(1, gs.begin_step(SEQS[0]), table, seq_t, hc, q)
        assert fast_block_scores_available(gs, 1, B, M)
        got = block_scores(gs, 1, q, hc, table, seq_t)
        tok, valid = ref_scoring.token_scores(hash_codes.query_codes(cfg, 1, q), hc, table, seq_t)
        want = ref_scoring.block_scores(tok, valid, GBS, method).to(torch.float32)
        assert torch.equal(got, want)  # both in spec 4's 1/16 units; -inf past each row


def test_score_eviction_on_the_triton_hot_path_equals_the_reference_path():
    """End to end (outputs vs all-in-HBM GSA inside _run): the priorities, maps and counters
    built from the hot path's keys equal those from the reference scores."""
    if not INTERPRET:
        pytest.skip("_run builds CPU pools; on CUDA tests/test_offload_gpu.py covers the hot path")
    from gsa import use_backend
    from gsa.offload.scores import fast_block_scores_available
    from test_offload import _run
    with use_backend("triton"):
        fast, _, _ = _run(0, None, "direct", eviction="score", steps=4)
        keys = fast.gsa._hot[1].cur.keys
        assert fast_block_scores_available(fast.gsa, 1, *keys.shape)  # the keys path really ran
    slow, _, _ = _run(0, None, "direct", eviction="score", steps=4)
    for l in fast.layers:
        assert torch.equal(fast.priority[l].isnan(), slow.priority[l].isnan())
        torch.testing.assert_close(fast.priority[l], slow.priority[l], equal_nan=True, rtol=1e-6, atol=1e-6)
        for name in ("slot_of", "block_of", "last_used", "uses", "_counts"):
            assert torch.equal(getattr(fast.maps[l], name), getattr(slow.maps[l], name)), (l, name)
