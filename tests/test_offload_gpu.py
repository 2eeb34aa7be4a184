"""GPU (skipped without CUDA): an offloaded multi-layer decode step (pinned host KV, a
device pool smaller than the KV, the uva mover, the fused residency kernel) captured once
in a CUDA graph and replayed with new queries, lengths and block tables equals the same
step run eagerly (the residency maps end identical) and the all-in-HBM GSA step
(selection bit for bit, attention within bf16 tolerance)."""
import pytest
import torch

from gsa import use_backend
from gsa.config import GSAConfig
from gsa.offload import OffloadedGSA, ResidencyMap, min_pool_blocks
from gsa.sparse import GSASparse

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

BS, HQ, HKV, D = 16, 8, 2, 64
CFG = dict(model_name="t/offload-graph", num_hidden_layers=6, num_attention_heads=HQ, num_key_value_heads=HKV,
           head_dim=D, hash_bits=128, chunk_size=BS, top_k_ratio_per_layer=[1, .25, .5, .25, .125, 1],
           top_k_index_reuse=[-1, -1, -1, 1, -1, -1], must_select_blocks=[0, -2, -1], gpu_seq_len_threshold=64,
           gpu_concurrency_threshold=1, seed=4)
B, M = 8, 40
NB = B * M + 8
SEQS = [[640, 639, 600, 70, 33, 640, 129, 400], [640, 20, 601, 71, 34, 640, 130, 401],
        [100, 639, 1, 512, 64, 63, 630, 16], [640, 500, 450, 90, 80, 600, 200, 300],
        [50, 60, 40, 30, 20, 10, 5, 1]]  # the last: a dense step (every row under the threshold)


def _offloaded(cfg, dev, ref, caches, kv, pool, prefetch, eviction, torch_map=False):
    off = OffloadedGSA(GSASparse(cfg, dev), NB, pool, B, M * BS, HKV, D, torch.bfloat16, prefetch=prefetch,
                       eviction=eviction)
    assert off.maps[off.layers[0]].backend is not None and off.movers[off.layers[0]].mode == "uva"
    if torch_map:  # the torch ResidencyMap on CUDA (no fused kernel): capturable too
        for l in off.layers:
            off.maps[l] = ResidencyMap(NB, pool, dev, backend=False)
            off.maps[l].now_t = off.now_t
    off.load_prefilled(kv, caches)
    return off


@pytest.mark.parametrize("prefetch,eviction,torch_map", [(None, "lru", False), ("previous", "lru", False),
                                                         (None, "score", False), ("previous", "score", False)])
def test_offloaded_step_graph_replay_equals_eager_and_all_in_hbm(prefetch, eviction, torch_map):
    # ("previous" failed to capture on the H200 until ResidencyMap.mark_predicted stopped writing a
    # Python number by item assignment: docs/offload_h200.md, "Graph capture with prefetch")
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    cfg = GSAConfig(**CFG)
    with use_backend("triton"):
        ref = GSASparse(cfg, dev)
        caches = ref.allocate_hash_caches(NB)
        for hc in caches.values():  # a filled history
            hc.copy_(torch.randint(0, 256, hc.shape, dtype=torch.uint8, generator=gen))
        kv = {l: [torch.randn(NB, BS, HKV, D, generator=gen).to(torch.bfloat16) for _ in range(2)] for l in range(6)}
        k = ref.begin_step([M * BS] * B).plan.k  # the captured width: the largest selection
        pool = min_pool_blocks(ref, B, M * BS) + 7  # far below NB: evictions every step
        # [0] captured and replayed, [1] eager: the same calls in the same order
        offs = [_offloaded(cfg, dev, ref, caches, kv, pool, prefetch, eviction, torch_map) for _ in range(2)]
        layers = offs[0].layers
        assert layers == (1, 2, 3, 4) and pool < NB
        dkv = {l: (a.to(dev), b.to(dev)) for l, (a, b) in kv.items()}
        # the static inputs a captured step reads
        table_p = torch.zeros(B, M, dtype=torch.int32, device=dev)
        seq_p = torch.zeros(B, dtype=torch.int32, device=dev)
        q_p = [torch.zeros(B, HQ, D, dtype=torch.bfloat16, device=dev) for _ in range(6)]

        def load(seq):
            table_p.copy_(torch.randperm(NB, generator=gen)[: B * M].reshape(B, M).to(torch.int32))
            seq_p.copy_(torch.tensor(seq, dtype=torch.int32))
            for q in q_p:
                q.copy_(torch.randn(B, HQ, D, generator=gen).to(torch.bfloat16))

        def body(off, step):
            return [off.decode_attention(l, step, q_p[l], table_p, seq_p) for l in layers]

        load(SEQS[0])
        steps = [off.begin_step(SEQS[0], k=k, graph=True) for off in offs]
        for _ in range(2):  # warm-up: validation, compiled kernels, the residency kernel's buffers
            for off, st in zip(offs, steps):
                body(off, st)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            outs_g = body(offs[0], steps[0])
        sels_g = {l: steps[0]._selections[l] for l in ref.scoring_layers}
        for seq in SEQS[1:]:
            load(seq)
            offs[0].begin_step(seq, k=k, graph=True)
            g.replay()
            torch.cuda.synchronize()
            got = [o.clone() for o in outs_g]
            got_sel = {l: (t.clone(), n.clone()) for l, (t, n) in sels_g.items()}
            st_eager = offs[1].begin_step(seq, k=k, graph=True)
            eager = [o.clone() for o in body(offs[1], st_eager)]
            st_ref = ref.begin_step(seq, k=k, graph=True)
            for i, l in enumerate(layers):
                src = ref.policy.layer(l).selection_layer
                want = ref.decode_attention(l, st_ref, q_p[l], *dkv[l], table_p, seq_p, caches[src])
                torch.testing.assert_close(got[i].float(), want.float(), atol=2e-2, rtol=2e-2)
                torch.testing.assert_close(got[i].float(), eager[i].float(), atol=1e-3, rtol=1e-3)
            for l in ref.scoring_layers:
                want_t, want_l = st_ref._selections[l]
                assert torch.equal(got_sel[l][0], want_t) and torch.equal(got_sel[l][1], want_l), (seq, l)
        torch.cuda.synchronize()
        for l in layers:  # identical decisions in graph and eager: the maps and counters end equal
            a, b = offs[0].maps[l], offs[1].maps[l]
            for name in ("slot_of", "block_of", "last_used", "uses", "_counts"):
                assert torch.equal(getattr(a, name), getattr(b, name)), (l, name)
            if eviction == "score":  # the priorities too (the scores came from the hot path's keys)
                assert torch.equal(offs[0].priority[l], offs[1].priority[l]) or torch.allclose(
                    offs[0].priority[l], offs[1].priority[l], equal_nan=True), l
        st = offs[0].stats()
        assert st["fetched"] > 0 and 0 < st["hit_rate"] < 1  # the pool really evicted and refetched
        assert int(offs[0].now_t) == len(SEQS)



def test_an_error_inside_a_captured_offloaded_layer_surfaces_as_itself(monkeypatch):
    """An exception between a layer's fetch (forked onto the copy stream) and its join used to
    end the capture with "capturing stream has unjoined work", hiding the error (the H200's
    prefetch rows). Now every fork is joined first: the caller sees its own exception, and
    the next capture of the same offloaded model works."""
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(1)
    cfg = GSAConfig(**CFG)
    with use_backend("triton"):
        ref = GSASparse(cfg, dev)
        caches = ref.allocate_hash_caches(NB)
        for hc in caches.values():
            hc.copy_(torch.randint(0, 256, hc.shape, dtype=torch.uint8, generator=gen))
        kv = {l: [torch.randn(NB, BS, HKV, D, generator=gen).to(torch.bfloat16) for _ in range(2)] for l in range(6)}
        k = ref.begin_step([M * BS] * B).plan.k
        off = _offloaded(cfg, dev, ref, caches, kv, min_pool_blocks(ref, B, M * BS) + 7, "previous", "lru")
        table = torch.randperm(NB, generator=gen)[: B * M].reshape(B, M).to(torch.int32).to(dev)
        seq = torch.tensor(SEQS[0], dtype=torch.int32, device=dev)
        q = torch.randn(B, HQ, D, generator=gen).to(torch.bfloat16).to(dev)
        step = off.begin_step(SEQS[0], k=k, graph=True)
        for _ in range(2):
            [off.decode_attention(l, step, q, table, seq) for l in off.layers]
        torch.cuda.synchronize()

        def boom(self, layer):
            raise ValueError("prefetch failed inside the capture")
        with monkeypatch.context() as mp:
            mp.setattr(OffloadedGSA, "_predict", boom)
            with pytest.raises(ValueError, match="prefetch failed"):
                with torch.cuda.graph(torch.cuda.CUDAGraph()):
                    off.decode_attention(off.layers[0], step, q, table, seq)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            outs = [off.decode_attention(l, step, q, table, seq) for l in off.layers]
        g.replay()
        torch.cuda.synchronize()
        st_r = ref.begin_step(SEQS[0], k=k, graph=True)
        for i, l in enumerate(off.layers):
            src = ref.policy.layer(l).selection_layer
            want = ref.decode_attention(l, st_r, q, kv[l][0].to(dev), kv[l][1].to(dev), table, seq, caches[src])
            torch.testing.assert_close(outs[i].float(), want.float(), atol=2e-2, rtol=2e-2)
