"""GPU (skipped without CUDA): an offloaded multi-layer decode step (pinned host KV, a
device pool smaller than the KV, the uva mover, the fused residency kernel) captured once
in a CUDA graph and replayed with new queries, lengths and block tables equals the same
step run eagerly (the residency maps end identical) and the all-in-HBM GSA step
(selection bit for bit, attention within bf16 tolerance)."""
import os
import sys

import pytest
import torch

from gsa import use_backend
from gsa.offload import OffloadedGSA

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
# one scenario for this test and the H200 capture diagnostic (shapes, KV, pool, replay checks)
import offload_capture_check as occ  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _offloaded(data, prefetch, eviction, torch_map=False):
    off = occ.make_offloaded(data, prefetch, eviction, torch_map)
    if not torch_map:  # the fused residency kernel and the uva mover: what runs on a GPU by default
        assert off.maps[off.layers[0]].backend is not None and off.movers[off.layers[0]].mode == "uva"
    return off


@pytest.mark.parametrize("prefetch,eviction,torch_map", [(None, "lru", False), ("previous", "lru", False),
                                                         (None, "score", False), ("previous", "score", False),
                                                         ("speculative", "lru", False), ("speculative", "score", False)])
def test_offloaded_step_graph_replay_equals_eager_and_all_in_hbm(prefetch, eviction, torch_map):
    # ("previous" failed to capture on the H200 until ResidencyMap.mark_predicted stopped writing a
    # Python number by item assignment: docs/offload_h200.md, "Graph capture with prefetch")
    dev = torch.device("cuda")
    with use_backend("triton"):
        data = occ.build_scenario(dev)
        # [0] captured and replayed, [1] eager: the same calls in the same order
        offs = [_offloaded(data, prefetch, eviction, torch_map) for _ in range(2)]
        assert offs[0].layers == (1, 2, 3, 4) and data["pool"] < occ.NB
        inp = occ.StepInputs(data)
        inp.load(occ.SEQS[0])
        steps = [off.begin_step(occ.SEQS[0], k=data["k"], graph=True) for off in offs]
        for _ in range(2):  # warm-up: validation, compiled kernels, the residency kernel's buffers
            for off, st in zip(offs, steps):
                inp.body(off, st)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            outs_g = inp.body(offs[0], steps[0])
        sels_g = {l: steps[0]._selections[l] for l in data["ref"].scoring_layers}
        bad, detail = occ.check_replays(data, offs, steps, inp, g.replay, outs_g, sels_g)
        assert bad is None, bad


def test_an_error_inside_a_captured_offloaded_layer_surfaces_as_itself(monkeypatch):
    """An exception between a layer's fetch (forked onto the copy stream) and its join used to
    end the capture with "capturing stream has unjoined work", hiding the error (the H200's
    prefetch rows). Now every fork is joined first: the caller sees its own exception, and
    the next capture of the same offloaded model works."""
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(1)
    B, M, NB, SEQS = occ.B, occ.M, occ.NB, occ.SEQS
    with use_backend("triton"):
        data = occ.build_scenario(dev, seed=1)
        ref, caches, kv, k = data["ref"], data["caches"], data["kv"], data["k"]
        off = _offloaded(data, "previous", "lru")
        table = torch.randperm(NB, generator=gen)[: B * M].reshape(B, M).to(torch.int32).to(dev)
        seq = torch.tensor(SEQS[0], dtype=torch.int32, device=dev)
        q = torch.randn(B, occ.HQ, occ.D, generator=gen).to(torch.bfloat16).to(dev)
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
