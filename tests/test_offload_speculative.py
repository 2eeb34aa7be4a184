"""Speculative (InfiniGen-style) prefetch: the replay logic by hand and against
offload_policy_online's replay, the recall count by hand, and the speculative query
math on a tiny random-weight Qwen 2 model (CPU, seconds)."""
from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="the trace script imports gsa.eval.model (the eval extra)")

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SP = _load("offload_speculative")
OPO = _load("offload_policy_online")

# 5 blocks, a pool of 3, 3 steps; priority: block 0 kept most, block 4 least (every step)
SEL = np.array([[1, 1, 0, 0, 0], [1, 0, 1, 0, 0], [0, 1, 0, 0, 1]], bool)
KEEP = np.tile(np.array([5.0, 4.0, 3.0, 2.0, 1.0]), (3, 1))
SPEC = np.array([[0, 0, 0, 0, 0], [1, 0, 9, 8, -np.inf], [0, 0, 0, 5, 7]], float)


def test_replay_by_hand_on_demand():
    # t0 {0,1} cold; t1 {0,2}: hit 0, miss 2 -> {0,1,2}; t2 {1,4}: hit 1, miss 4 evicts 2 (keep 3 < 5)
    assert SP.replay(SEL, KEEP, 3).tolist() == [2, 4, 2, 0]


def test_replay_by_hand_speculative_prefetch():
    # t1: target top-2 of SPEC[1] = {2, 3}: one free slot, evict block 1 (keep 4 < 5) -> {0,2,3};
    #     selection {0,2}: 2 hits. t2: target {4, 3}: fetch 4, evict 2 (keep 3 < 5) -> {0,3,4};
    #     selection {1,4}: hit 4, miss 1 evicts 3 (keep 2 < 5) -> {0,1,4}. Prefetched 2 + 1.
    assert SP.replay(SEL, KEEP, 3, SPEC, np.array([2, 2, 2])).tolist() == [3, 4, 1, 3]
    # a target of one block: t1 {2}: free slot, no eviction -> {0,1,2}, 2 hits; t2 {4}: evict 2 -> {0,1,4}: 2 hits
    assert SP.replay(SEL, KEEP, 3, SPEC, np.array([1, 1, 1])).tolist() == [4, 4, 0, 2]


def test_replay_by_hand_top_refill():
    # after t0 the pool is {0,1} + best outside = block 2 (1 prefetch); t1 {0,2}: 2 hits, refill wants
    # block 1 (resident); t2 {1,4}: hit 1, miss 4 evicts 2; no refill after the last step
    assert SP.replay(SEL, KEEP, 3, post=KEEP).tolist() == [3, 4, 1, 1]


def test_forced_blocks_rank_first_and_inf_blocks_never():
    key = SP.spec_rank(np.array([[3.0, -np.inf, 1.0, 2.0]]), np.array([[False, False, True, False]]))
    assert SP.top_n(key[0], 2).tolist() == [True, False, True, False]
    assert SP.top_n(key[0], 9).tolist() == [True, False, True, True]  # -inf (past the length) never taken


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_replay_equals_policy_online_replay_without_speculation(seed):
    rng = np.random.default_rng(seed)
    t_n, n, k, slots = 40, 30, 5, 11
    sel = np.zeros((t_n, n), bool)
    for t in range(t_n):
        sel[t, rng.choice(n, k, replace=False)] = True
    keep = rng.normal(size=(t_n, n))
    assert SP.replay(sel, keep, slots).tolist() == OPO.replay(sel, keep, slots).tolist()
    assert SP.replay(sel, keep, slots, post=keep).tolist() == OPO.replay(sel, keep, slots, keep).tolist()
    # a perfect speculation (the selection itself) leaves no miss but the cold start
    spec = SP.spec_rank(sel.astype(float), np.zeros_like(sel))
    h = SP.replay(sel, keep, slots, spec, sel.sum(1))
    assert h[0] == h[1] and h[2] == 0


def test_recall_by_hand():
    sel = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1]], bool)
    forced = np.array([[1, 0, 0, 0]] * 3, bool)
    key = SP.spec_rank(np.array([[0, 0, 0, 0], [0, 5, 1, 0], [0, 0, 0, 3]], float), forced)
    # t1 top-2 {0, 1}: 1 of 2 selected (0 of 1 unforced); t2 top-2 {0, 3}: 2 of 2 (1 of 1)
    assert SP.recall(key, np.array([2, 2, 2]), sel, forced).tolist() == [3, 4, 1, 2]


# ---------------------------------------------------------------- the speculative query math
@pytest.fixture(scope="module")
def tiny_qwen():
    import transformers
    from gsa.eval.model import ATTN_NAME, _register
    _register()
    cfg = transformers.Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    cfg._attn_implementation = ATTN_NAME
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # non-zero q biases (Qwen 2 has them) and larger weights: a real test of the math
        for name, p in model.named_parameters():
            if name.endswith("q_proj.bias"):
                p.normal_(0.0, 0.5)
            elif p.dim() >= 2 and "embed" not in name:
                p.normal_(0.0, 1.5 / p.shape[-1] ** 0.5)
    return model


def test_speculative_query_from_the_real_layer_input_is_the_real_query(tiny_qwen):
    from gsa.eval.model import TeacherForcedRun
    from offload_speculative_query import SpeculativeQueries
    seen = {}
    with SpeculativeQueries(tiny_qwen) as spec:
        def observer(layer, q, k_all, v_all, pos0):
            var = {v: spec.query(layer, v) for v in ("in_prev", "attn_prev", "in_prev2")} if layer > 1 else None
            seen[(layer, pos0)] = (q.clone(), spec.query(layer, "in_cur"), var,
                                   spec.layer_in[layer], spec.after_attn.get(layer - 1))
        run = TeacherForcedRun(tiny_qwen, observer=observer)
        ids = torch.randint(0, 256, (40,))
        run.feed(ids[:29])  # two forwards: the second at positions 29.. (RoPE at the current position)
        run.feed(ids[29:])
    assert len(seen) == 8
    layers = tiny_qwen.model.layers
    for (layer, pos0), (q, q_spec, var, h_in, h_attn_prev) in seen.items():
        assert q_spec.shape == q.shape and torch.allclose(q_spec, q, atol=1e-6, rtol=0)
        if layer < 1:
            continue
        # the states are what the model computed: after layer l-1's attention + its MLP = layer l's input
        lp = layers[layer - 1]
        with torch.no_grad():
            rest = h_attn_prev + lp.mlp(lp.post_attention_layernorm(h_attn_prev))
        assert torch.allclose(rest, h_in, atol=1e-5, rtol=1e-5)
        for v, qv in (var or {}).items():  # a prediction, not the query (different state), same shape
            assert qv.shape == q.shape and not torch.allclose(qv, q, atol=1e-3)
    # the hooks are gone after close: a new forward records nothing new
    n_before = len(spec.layer_in)
    spec.layer_in.clear()
    TeacherForcedRun(tiny_qwen).feed(ids[:5])
    assert not spec.layer_in and n_before == 4


def test_tracer_scores_a_speculative_query_as_the_real_one(tiny_qwen):
    """offload_traces' Tracer (--speculative): a "speculative" query that is the real layer input's
    gives block scores equal to the real ones (same hash weights, key codes, block score)."""
    from gsa.eval.load import default_config
    from gsa.eval.model import TeacherForcedRun
    from offload_speculative_query import SpeculativeQueries
    OT = _load("offload_traces")

    class Exact(SpeculativeQueries):
        def query(self, layer, variant):
            return super().query(layer, "in_cur")

    cfg = default_config(tiny_qwen.config, "tiny", ratio=0.25).replace(chunk_size=8)
    with Exact(tiny_qwen) as spec:
        tracer = OT.Tracer(cfg, [0.25], 1.5, 32, 16 ** -0.5, spec=spec)
        run = TeacherForcedRun(tiny_qwen, block_size=8)
        ids = torch.randint(0, 256, (48,))
        run.feed(ids[:32])
        run.observer = tracer
        run.feed(ids[32:40])
        run.feed(ids[40:])
    assert tracer.sparse == [2] and set(tracer.spec_scores) == {"in_prev", "attn_prev", "in_prev2"}
    for var in tracer.spec_scores:
        got, want = tracer.spec_scores[var][2], tracer.scores[2]
        assert [g.shape for g in got] == [(8, 5), (8, 6)]
        assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_main_on_a_synthetic_trace(tmp_path):
    """The script end to end on a trace file whose selections are select_top of random block scores:
    a speculative score equal to the real one prefetches exactly the selection (hit 1, recall 1),
    a random one does not; the references are the replays above."""
    from gsa.eval.selectors import select_top
    gen = torch.Generator().manual_seed(0)
    t_n, n, budget = 30, 16, 4
    forced = torch.zeros(t_n, n, dtype=torch.bool)
    forced[:, [0, n - 1]] = True
    d = dict(n_blocks_final=n, forced=[{0, n - 1}] * t_n, sel={}, scores={}, spec_scores={"same": {}, "noise": {}})
    for layer in (2, 3):
        sc = torch.randn(t_n, n, generator=gen).cumsum(0)  # drifting scores: selections change slowly
        d["scores"][layer] = sc.float()
        d["sel"][(0.125, layer)] = select_top(sc, torch.full((t_n,), n), torch.full((t_n,), budget), forced)
        d["spec_scores"]["same"][layer] = sc.float()
        d["spec_scores"]["noise"][layer] = torch.randn(t_n, n, generator=gen)
    path = tmp_path / "trace.pt"
    torch.save(d, path)
    res = SP.main([str(path), "--ratios", "0.125", "--pool-fracs", "0.5", "--out", str(tmp_path), "--tag", "t"])
    case = res["cases"]["r0.125_p0.5"]
    rows, rec = case["rows"], case["recall"]
    assert case["slots"] == 8 and (tmp_path / "offload_speculative_t.md").exists()
    assert rows["spec_same_x1"]["hit"] == 1.0 and rows["oracle_x1"]["hit"] == 1.0
    assert rec["spec_same_top1k"]["recall"] == 1.0 and rec["real_scores_topk (= the selection?)"]["recall"] == 1.0
    assert rec["spec_noise_top1k"]["recall_unforced"] < 0.6 and rows["spec_noise_x1"]["hit"] < 1.0
    sel = {l: d["sel"][(0.125, l)].numpy() for l in (2, 3)}
    prio = {l: OPO.ema(OPO.zscore(d["scores"][l].double().numpy()), 0.7) for l in (2, 3)}
    want = sum(OPO.replay(sel[l], prio[l], 8) for l in (2, 3))
    assert rows["score"]["hit"] == want[0] / want[1] and rows["score"]["wanted"] == (t_n - 1) * budget * 2
