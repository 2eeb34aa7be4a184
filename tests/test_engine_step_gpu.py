"""GPU: a vLLM-shaped multi-layer decode step captured once in a CUDA graph and replayed
with new lengths, tables, keys and queries equals the same step run eagerly, and its
selections equal the reference's bit for bit (issue 12). Skipped without CUDA."""
import math

import pytest
import torch

from gsa import reference as R
from gsa import use_backend
from gsa.config import GSAConfig
from gsa.integrations.vllm.runtime import GSAVllmRuntime
from gsa.integrations.vllm.settings import PluginSettings
from gsa.sparse import GSASparse

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

BS, HQ, HKV, D = 16, 8, 2, 64
CFG = dict(model_name="t/graph", num_hidden_layers=6, num_attention_heads=HQ, num_key_value_heads=HKV, head_dim=D,
           hash_bits=128, chunk_size=BS, top_k_ratio_per_layer=[1, .25, .5, .25, .125, 1],
           top_k_index_reuse=[-1, -1, -1, 1, -1, -1], must_select_blocks=[0, -2, -1], gpu_seq_len_threshold=64,
           gpu_concurrency_threshold=1, seed=4)
B, M = 8, 40
NB = B * M + 8


def _inputs(gen, seq, dev):
    table = torch.randperm(NB, generator=gen)[: B * M].reshape(B, M).to(torch.int32).to(dev)
    slots = (table[:, :].long() * BS)[torch.arange(B), torch.tensor([(s - 1) // BS for s in seq])] + \
        torch.tensor([(s - 1) % BS for s in seq], device=dev)
    k = torch.randn(B, HKV, D, generator=gen).to(dev, torch.bfloat16)
    qs = [torch.randn(B, HQ, D, generator=gen).to(dev, torch.bfloat16) for _ in range(6)]
    return table, slots, k, qs


def _step(gs, step, caches, kc, vc, table, seq, slots, k, qs):
    outs = []
    for l in range(6):
        gs.cache_keys(l, caches.get(l), slots, k)
        src = gs.policy.layer(l).selection_layer
        outs.append(gs.decode_attention(l, step, qs[l], kc, vc, table, seq, caches.get(src if src >= 0 else l)))
    return outs


def test_graph_replay_equals_eager_and_reference():
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    cfg = GSAConfig(**CFG)
    with use_backend("triton"):
        gs = GSASparse(cfg, dev)
        caches = gs.allocate_hash_caches(NB)
        kc = torch.randn(NB, BS, HKV, D, generator=gen).to(dev, torch.bfloat16)
        vc = torch.randn(NB, BS, HKV, D, generator=gen).to(dev, torch.bfloat16)
        for l, hc in caches.items():  # a filled history
            hc.copy_(torch.randint(0, 256, hc.shape, dtype=torch.uint8, generator=gen))
        seqs = [[640, 639, 600, 70, 33, 640, 129, 400], [640, 20, 601, 71, 34, 640, 130, 401],
                [100, 639, 1, 512, 64, 63, 630, 16], [50, 60, 40, 30, 20, 10, 5, 1]]  # the last: a dense step
        # persistent inputs a captured step reads
        table_p = torch.zeros(B, M, dtype=torch.int32, device=dev)
        seq_p = torch.zeros(B, dtype=torch.int32, device=dev)
        slots_p = torch.zeros(B, dtype=torch.int64, device=dev)
        k_p = torch.zeros(B, HKV, D, dtype=torch.bfloat16, device=dev)
        q_p = [torch.zeros(B, HQ, D, dtype=torch.bfloat16, device=dev) for _ in range(6)]

        def load(seq):
            table, slots, k, qs = _inputs(gen, seq, dev)
            table_p.copy_(table)
            seq_p.copy_(torch.tensor(seq, dtype=torch.int32))
            slots_p.copy_(slots)
            k_p.copy_(k)
            for a, b in zip(q_p, qs):
                a.copy_(b)
            return gs.begin_step(seq, k=M, graph=True)

        step = load(seqs[0])
        for _ in range(2):  # warm-up: validation, bound launches
            _step(gs, step, caches, kc, vc, table_p, seq_p, slots_p, k_p, q_p)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            outs_g = _step(gs, step, caches, kc, vc, table_p, seq_p, slots_p, k_p, q_p)
            sels_g = {l: step._selections[l] for l in gs.scoring_layers}
        for seq in seqs[1:]:
            step = load(seq)
            before = {l: hc.clone() for l, hc in caches.items()}
            g.replay()
            torch.cuda.synchronize()
            got = [o.clone() for o in outs_g]
            got_sel = {l: (t.clone(), n.clone()) for l, (t, n) in sels_g.items()}
            after = {l: hc.clone() for l, hc in caches.items()}
            for l, hc in caches.items():  # eager, from the same cache state
                hc.copy_(before[l])
            eager_step = gs.begin_step(seq, k=M, graph=True)
            want = _step(gs, eager_step, caches, kc, vc, table_p, seq_p, slots_p, k_p, q_p)
            for l in caches:
                assert torch.equal(after[l], caches[l]), f"layer {l}: graph and eager key hashing differ"
            for l, o in enumerate(want):
                torch.testing.assert_close(got[l].float(), o.float(), atol=2e-2, rtol=2e-2)
            for l in gs.scoring_layers:  # selection: bit-exact vs the reference on the same codes
                qc = gs._hot[l].q_codes.cpu()  # the kernels' query codes (hashing: tests/test_triton_gpu.py)
                nblk = torch.tensor([math.ceil(x / BS) for x in seq])
                idx, n = R.hamming_dist_top_k(qc, caches[l].cpu(), table_p.cpu(), seq_p.cpu(),
                                              eager_step.budgets[l].cpu(), M, cfg.must_select_blocks)
                want_t, want_l = R.kv_select(idx, n, table_p.cpu(), seq_p.cpu(), BS)
                t, n_ = got_sel[l]
                assert torch.equal(n_.cpu(), want_l), (seq, l)
                assert torch.equal(t.cpu(), want_t), (seq, l)
                if seq == seqs[-1]:  # a dense step: every block kept
                    assert torch.equal(want_l, seq_p.cpu()) and bool((n.cpu() == nblk).all())


def test_vllm_runtime_static_step_on_cuda():
    """The vLLM runtime's graph-form step on CUDA (padding rows with length 0) equals the reference."""
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(1)
    cfg = GSAConfig(**CFG)
    with use_backend("triton"):
        rt = GSAVllmRuntime(PluginSettings(cfg, 0, "test"), device=dev, num_layers=6)
        seq = [640, 0, 70, 33, 640, 0, 129, 400]
        table, slots, k, qs = _inputs(gen, [max(s, 1) for s in seq], dev)
        for l in rt.policy.scoring_layers:
            rt.cache_keys(l, torch.randn(B * 4, HKV, D, generator=gen).to(dev, torch.bfloat16),
                          torch.randperm(NB * BS, generator=gen)[: B * 4].to(dev), NB)
        import numpy as np

        state = rt.plan(np.array(seq), np.array([1 if s else 0 for s in seq]), torch.zeros(B + 1, device=dev),
                        static_width=M)
        seq_t = torch.tensor(seq, dtype=torch.int32, device=dev)
        live = seq_t.cpu() > 0
        for l in range(6):
            if not rt.is_sparse(l, state):
                continue
            t, n = rt.select(l, state, qs[l], table, seq_t)
            src = rt.policy.layer(l).selection_layer
            qc = rt.sparse._hot[src].q_codes.cpu()[live]  # the kernels' query codes
            idx, ns = R.hamming_dist_top_k(qc, rt.hash_caches[src].cpu(), table.cpu()[live], seq_t.cpu()[live],
                                           state.step.budgets[src].cpu()[live], M, cfg.must_select_blocks)
            want_t, want_l = R.kv_select(idx, ns, table.cpu()[live], seq_t.cpu()[live], BS)
            assert torch.equal(t.cpu()[live], want_t) and torch.equal(n.cpu()[live], want_l), l
            assert bool((n.cpu()[~live] == 0).all())
