"""benchmarks/offload_bench.py --smoke runs on CPU in seconds and writes the headline
keys and every row; benchmarks/offload_traces.py's rate and lag helpers on
hand-computed sequences (no model needed)."""
import importlib.util
import json
import pathlib

import pytest
import torch

from gsa.config import GSAConfig
from gsa.policy import GSAPolicy

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_smoke_writes_headline_and_rows(tmp_path):
    res = _load("offload_bench").main(["--smoke", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "offload_smoke.json").read_text())
    for key in ("concurrency_gain", "throughput_gain_vs_dense", "hit_rate_1_8", "per_request_vs_gsa_in_hbm"):
        assert key in saved
    mm, mode = res["memory_model"], saved["headline_mode"]
    assert mode == "eager" and {r.get("mode") for r in saved["rows"]} == {"eager"}  # CPU: no graph rows
    best = saved["headline_by_mode"][mode]
    assert saved["concurrency_gain"] == best["concurrency_gain"]
    assert best["concurrency_gain_memory_model"] in {mm[f"offload_pool{f}_max_batch"] / mm["dense_max_batch"]
                                                     for f in ("0.5", "0.25")}
    # the headline row is the fastest offload row of its mode, against dense at dense's largest batch
    off = [r for r in saved["rows"] if r["row"].startswith(("offload", "cpu")) and r.get("tok_s")]
    dense = max((r for r in saved["rows"] if r["row"] == "dense_hbm"), key=lambda r: r["batch"])
    assert saved["throughput_gain_vs_dense"] == pytest.approx(max(r["tok_s"] for r in off) / dense["tok_s"])
    names = {r["row"] for r in saved["rows"] if "tok_s" in r}
    assert names == {"dense_hbm", "dense_host_streamed", "gsa_hbm", "offload_ondemand", "offload_prefetch",
                     "offload_score", "offload_lookahead", "cpu_topk_lag1"}
    for r in saved["rows"]:
        if r["row"].startswith(("offload", "cpu")) and "tok_s" in r:
            assert 0 <= r["hit_rate"] <= 1 and r["tok_s"] > 0
    assert (tmp_path / "offload_smoke.md").read_text().startswith("# GSA offload benchmark")
    # every row replays the same query chain, and a "previous" prediction is the still-resident last
    # selection (it relabels recency uniformly, evicts nothing): the same hits as on demand
    for b in {r["batch"] for r in off}:
        pair = {r["row"]: r for r in off if r["batch"] == b and r["row"] in ("offload_ondemand", "offload_prefetch")
                and r["pool_frac"] == max(x["pool_frac"] for x in off if x["batch"] == b)}
        assert pair["offload_prefetch"]["hit_rate"] == pair["offload_ondemand"]["hit_rate"], b
    # the score-eviction row ran on the same pools and requests: the same blocks wanted
    for b in {r["batch"] for r in off}:
        rows = {r["row"]: r for r in off if r["batch"] == b and r["pool_frac"] == max(
            x["pool_frac"] for x in off if x["batch"] == b)}
        assert rows["offload_score"]["wanted_blocks_per_layer_step"] == rows["offload_ondemand"][
            "wanted_blocks_per_layer_step"], b


def test_bench_rows_replay_the_same_queries():
    """Workload.restart: two timed rows see identical queries (before it, one chain ran on
    across rows and later rows' queries had drifted further from the planted hot set)."""
    ob = _load("offload_bench")
    cfg = ob.config(0.125)
    w = ob.Workload(cfg, 2, 300, 4, torch.device("cpu"), 2, torch.bfloat16)
    args = type("A", (), dict(steps=2, warmup=1, drift=0.2))()
    seen = [[], []]
    for run in seen:
        ob.timed_steps(w, args, torch.device("cpu"), lambda i, g: None,
                       lambda run=run: run.append(torch.stack([q.clone() for q in w.qs])), False)
    assert len(seen[0]) == 3 and all(torch.equal(a, b) for a, b in zip(*seen))
    assert not torch.equal(seen[0][0], seen[0][2])  # the queries do drift within a row


def test_trace_rates_by_hand():
    pytest.importorskip("transformers", reason="the trace script imports gsa.eval.model (the eval extra)")
    mod = _load("offload_traces")
    sel = [{0, 1}, {1, 2}, {2, 3}]
    wide = [{0, 1, 2}, {1, 2, 3}, {2, 3, 4}]
    r = mod.rates(sel, wide, 8, [0.25])
    # steps 1, 2 want 4 blocks: previous selection covers {1} and {2}; the wide one all four
    assert r["prev_overlap"] == 0.5 and r["lookahead_overlap"] == 1.0
    # 2-slot pool: step 1 hits block 1 (block 2 evicts block 0), step 2 hits block 2
    assert r["pool_hit_0.25"] == 0.5 and r["pool_slots_0.25"] == 2
    # with block 1 forced at step 1 and block 2 at step 2, the unforced blocks are 2 then 3
    r = mod.rates(sel, wide, 8, [0.25], forced=[set(), {1}, {2}])
    assert r["prev_overlap_unforced"] == 0.0 and r["lookahead_overlap_unforced"] == 1.0
    assert r["pool_hit_0.25_unforced"] == 0.0 and r["pool_hit_0.25"] == 0.5


def test_trace_lagged_rows_add_the_new_forced_blocks():
    pytest.importorskip("transformers", reason="the trace script imports gsa.eval.model (the eval extra)")
    mod = _load("offload_traces")
    cfg = GSAConfig(model_name="t", num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                    hash_bits=32, chunk_size=4, top_k_ratio_per_layer=[1.0, 0.25], must_select_blocks=[0, -1],
                    gpu_seq_len_threshold=1)
    pol = GSAPolicy(cfg, "cpu")
    prev = torch.zeros(2, 6, dtype=torch.bool)
    prev[0, [0, 2, 3]] = True   # step i-1 at 13 tokens (4 blocks)
    prev[1, [0, 2, 4]] = True   # at 17 tokens (5 blocks); now 21 tokens: block 5 is new and forced
    got = mod.lagged_rows(pol, 1, prev, torch.tensor([16, 21]))
    assert got[0].nonzero()[:, 0].tolist() == [0, 2, 3]
    assert got[1].nonzero()[:, 0].tolist() == [0, 2, 4, 5]


def test_bench_counts_steady_state_steps_only(tmp_path):
    # the counters cover the timed steps, not the warm-up whose first step fills an empty pool: with
    # cpu_lag=1 every request after the first step was prefetched, so the timed steps hit every block
    res = _load("offload_bench").main(["--smoke", "--out", str(tmp_path), "--batches", "1",
                                      "--skip-rows", "offload_lookahead", "offload_prefetch"])
    assert res["counted_steps"] == res["args"]["steps"]
    lag = [r for r in res["rows"] if r["row"] == "cpu_topk_lag1"]
    assert lag and all(r["hit_rate"] == 1.0 and r["predicted_rate"] == 1.0 for r in lag)


def test_projection_steady_state_by_hand():
    mod = _load("offload_projection")
    # W = 100 wanted blocks per layer-step over n = 6 counted steps; the first misses all 100, the next five
    # 10 each: reported fetched = 150 / 6 = 25, hit = 450 / 600 = 0.75; steady: hit 0.9, 10 fetched per step
    bb, pcie = mod.block_bytes({}), 50.0
    bench = {"args": {"warmup": 2, "steps": 4}, "pcie_h2d_gbs": pcie, "rows": [
        {"row": "dense_hbm", "batch": 2, "t_layer_ms": 1.0, "tok_s": 2 / 0.036},
        {"row": "gsa_hbm", "batch": 2, "t_layer_ms": 0.5, "tok_s": 2 / (0.003 + 33 * 0.0005)},
        {"row": "offload_ondemand", "batch": 2, "pool_frac": 0.25, "t_layer_ms": 2.0,
         "tok_s": 2 / (0.003 + 33 * 0.002), "hit_rate": 0.75, "fetched_blocks_per_layer_step": 25.0}]}
    rows = mod.steady_rows(bench)
    r = rows[0]
    assert r["wanted_per_layer_step"] == pytest.approx(100) and r["hit_ss"] == pytest.approx(0.9)
    assert r["fetched_ss"] == pytest.approx(10)
    assert r["h2d_ss_gbs"] == pytest.approx(10 * bb / 2e-3 / 1e9)
    # at a real hit rate of 0.95 five blocks fewer are fetched, each worth bb / pcie of PCIe time
    p = mod.project(bench, rows, {0.25: 0.95}, "t")[0]
    assert p["t_projected_ms"] == pytest.approx(2.0 - 5 * bb / pcie / 1e6)
    assert p["t_no_fetch_ms"] == pytest.approx(2.0 - 10 * bb / pcie / 1e6)
    assert p["tok_s_projected"] == pytest.approx(2 / (0.003 + 33 * p["t_projected_ms"] * 1e-3))
    assert p["per_request_vs_gsa_hbm"] == pytest.approx(0.5 / p["t_projected_ms"])


def test_eviction_replay_by_hand():
    mod = _load("offload_eviction_replay")
    seq = [{0, 1}, {2}, {0}, {1}]
    # 2 slots: recency (and, tied, fewest uses) evicts block 0 at step 1, block 1 at step 2: no hits;
    # the offline optimum keeps block 0 (needed sooner) and hits it at step 2
    assert mod.hits_engine(seq, 2, 4) == 0
    assert mod.hits_keyed(seq, 2, lambda b, lu, n, w: (n, lu)) == 0
    assert mod.hits_belady(seq, 2) == 1
    # 3 slots hold every block after step 1; an unbounded pool misses only first-time blocks
    assert mod.hits_engine(seq, 3, 4) == mod.hits_belady(seq, 3) == mod.hits_unbounded(seq) == 2
    # frequency first: block 0 selected twice survives where recency would evict it
    seq = [{0}, {0}, {1}, {2}, {0}]
    assert mod.hits_keyed(seq, 2, lambda b, lu, n, w: (n, lu)) == 2
    assert mod.hits_engine(seq, 2, 4) == 1
    # recency order, but block 0 in the wide selection of step 3 is kept over block 1: the last step hits
    wide = [set(), set(), set(), {0, 2}, set()]
    assert mod.hits_keyed(seq, 2, lambda b, lu, n, w: (w, lu, n), wide) == 2
    assert mod.hits_keyed(seq, 2, lambda b, lu, n, w: (lu, n)) == 1


def test_bench_headline_hit_rate_is_the_lowest_trace(tmp_path):
    import argparse
    mod = _load("offload_bench")
    paths = []
    for name, hit in (("a", 0.95), ("b", 0.91), ("c", None)):
        p = tmp_path / f"offload_traces_{name}.json"
        p.write_text(json.dumps({"headline": {"hit_rate_1_8": hit}}))
        paths.append(str(p))
    args = argparse.Namespace(pool_fracs=[0.25], modes=["eager"], traces=paths + [str(tmp_path / "missing.json")])
    res = {"memory_model": {"offload_pool0.25_max_batch": 6, "dense_max_batch": 2}, "rows": []}
    h = mod.headline(res, args)
    assert h["hit_rate_1_8"] == 0.91 and "offload_traces_b.json" in h["hit_rate_1_8_source"]
    assert sorted(h["hit_rate_1_8_by_trace"].values()) == [0.91, 0.95]
    args.traces = [str(tmp_path / "missing.json")]
    assert mod.headline(res, args)["hit_rate_1_8"] is None


def test_policy_replay_by_hand():
    mod = _load("offload_policy_replay")
    seq = [{0, 1}, {1, 2}, {2, 3}]
    # 2 slots, on demand: step 1 hits block 1, step 2 hits block 2 (the other block is new each step)
    assert mod.replay_pool(seq, 2) == dict(hits=2, wanted=4, misses=2, prefetched=0)
    # predicting {2, 3} before step 1 (a "wide" runner-up list): block 3 fetched ahead hits at step 2;
    # block 2 too; step 1's block 2 was prefetched, so it is a hit as well
    wide = [{1, 2}, {2, 3}, {3, 4}]
    out = mod.replay_pool(seq, 3, predict=lambda t: wide[t - 1])
    assert out["wanted"] == 4 and out["hits"] == 4 and out["misses"] == 0 and out["prefetched"] == 2
    # 2 slots: at step 2 block 3 evicts 2 (lfu: 1 use against block 0's 2; lru: tied recency, then uses)
    seq2 = [{0, 1}, {0, 2}, {3}, {0}]
    assert mod.replay_pool(seq2, 2, "lfu")["hits"] == 2  # block 0 at steps 1 and 3
    assert mod.replay_pool(seq2, 2, "lru")["hits"] == 2


def test_policy_replay_score_rows_by_hand():
    """The replay's score rows: the engine's ResidencyMap with set_priority evicts the block the
    step scores lowest (least-recent would evict the other); the prefetch replay fetches the
    highest-priority block that is not resident."""
    pr = _load("offload_policy_replay")
    seq = [{0, 1, 2}, {0, 3}, {2}]
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0], [3.0, 5.0, 1.0, 4.0], [0.0, 0.0, 9.0, 0.0]])
    # step 1 needs one slot among blocks 1 and 2 (same recency and uses): score evicts 2 (scored 1 < 5)
    assert pr.hits_score_engine(seq, scores, 3, 0.0) == 1  # step 1: block 0; step 2: block 2 was evicted
    lru = _load("offload_eviction_replay").hits_keyed(seq, 3, lambda b, lu, n, w: (lu, n))
    assert lru == 2  # least recent (tie -> smaller block id) evicts block 1, so block 2 hits at step 2
    prio = pr.priorities(scores, 0.0)
    # after step 0 the best non-resident block is 3 (z of 0.0 is the lowest of the row: no room
    # in a 3-slot pool holding 0, 1, 2 with higher priority): nothing is prefetched
    o = pr.replay_score_prefetch(seq, prio, 3, None)
    assert o["prefetched"] == 0 and o["hits"] == 1
    # a 4-slot pool has room: after step 0 block 3 is prefetched, so step 1 hits both blocks
    o = pr.replay_score_prefetch(seq, prio, 4, 1)
    assert o["prefetched"] == 1 and o["hits"] == 3 and o["misses"] == 0


def test_capture_check_runs_its_fix_variant_on_cpu_and_chains_errors(capsys):
    # benchmarks/offload_capture_check.py (the H200 diagnostic) with its CPU dry run: the same
    # setup, steps and comparisons, the "replay" rerunning the body (nothing is captured on CPU)
    mod = _load("offload_capture_check")
    assert mod.main(["--cpu-dry-run", "--variants", "fix:previous"]) == 0
    out = capsys.readouterr().out
    assert "[ok] fix:previous" in out and "CAPTURE CHECK: PASS" in out
    try:
        try:
            raise RuntimeError("Cannot copy between CPU and CUDA tensors\nmore")
        except RuntimeError:
            raise ValueError("capturing stream has unjoined work")
    except ValueError as e:
        lines = mod.chain(e).splitlines()
    assert lines[0] == "ValueError: capturing stream has unjoined work"
    assert lines[1].strip() == "caused while handling: RuntimeError: Cannot copy between CPU and CUDA tensors"


def test_online_policy_replay_by_hand():
    """benchmarks/offload_policy_online.py: the per-layer pool (on demand, with the 'top' prefetch
    and with a per-step prefetch cap), the shared pool of the global rows, hysteresis keys and the
    greedy per-layer split, on hand-computed sequences."""
    np = pytest.importorskip("numpy")
    m = _load("offload_policy_online")
    sel = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 0, 1]], bool)
    keep = np.array([[3, 2, 1, 0], [0, 5, 4, 1], [9, 0, 0, 9]], float)
    # 2 slots on demand: step 1 hits block 1, evicts block 0 for block 2; step 2 misses both
    assert m.replay(sel, keep, 2).tolist() == [1, 4, 3, 0]
    # 3 slots: step 2's block 3 evicts block 1 or 2 (tied keep 0: the lower id, 1)
    assert m.replay(sel, keep, 3).tolist() == [2, 4, 2, 0]
    # 'top' prefetch: after step 0 block 2 (best outside the selection) fills the free slot; after
    # step 1 block 3 (keep 1 > block 0's 0) replaces block 0: steps 1 and 2 hit 2 + 1
    assert m.replay(sel, keep, 3, keep).tolist() == [3, 4, 1, 2]
    assert m.replay(sel, keep, 3, keep, limit=0).tolist() == m.replay(sel, keep, 3).tolist()
    # a target of the selection alone prefetches nothing
    assert m.replay(sel, keep, 3, keep, target=2).tolist() == [2, 4, 2, 0]
    # shared pool of 2 + 2 slots: layer 0 selects {0} every step, layer 1 {0}, {1}, {2}; after
    # each step the 2 free slots go to the highest prob: layer 1's next block is predicted by prob
    tr = dict(layers=[0, 1], slots={0: 2, 1: 2},
              sel={0: np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0]], bool),
                   1: np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], bool)})
    prob = {0: np.zeros((3, 3)), 1: np.array([[0, 0.9, 0.1], [0, 0, 0.8], [0, 0, 0]])}
    # after step 0 layer 1 holds 3 slots (its blocks 1 and 2 prefetched: prob 0.9, 0.1 > layer 0's 0);
    # after step 1 the fourth slot goes to the first zero-prob pair (layer 0, block 1): 3 prefetches;
    # every request hits
    assert m.replay_global(tr, prob).tolist() == [4, 4, 0, 3]
    # hysteresis: block 2 ranked within 1 x k = 1 at step 0 stays protected at step 1 (window 2)
    prio = np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    assert (m.hyst_keep(prio, 1, 1.0, 2) - prio).tolist() == [[0, 0, 1e3], [1e3, 0, 1e3]]
    assert (m.hyst_keep(prio, 1, 1.0, 1) - prio).tolist() == [[0, 0, 1e3], [1e3, 0, 0]]
    # greedy split: the slot goes where the hits grow most
    assert m.greedy_split({0: {1: 5, 2: 6, 3: 6}, 1: {1: 3, 2: 7, 3: 8}}, 4) == {0: 2, 1: 2}
    assert m.greedy_split({0: {1: 5, 2: 6, 3: 6}, 1: {1: 3, 2: 7, 3: 8}}, 3) == {0: 1, 1: 2}
    z = m.zscore(np.array([[1.0, 3.0, -np.inf]]))
    assert z.tolist() == [[-1.0, 1.0, -10.0]]
