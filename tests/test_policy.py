"""Spec 8 policy: hand-computed cases and a cross-check against the reference's counting rules."""
import dataclasses
import math
import random
from fractions import Fraction

import numpy as np
import pytest
import torch

from gsa.config import GSAConfig
from gsa.policy import GSAPolicy, device_kind
from gsa.reference import forced_block_mask, selection_counts

BASE = dict(model_name="t/p", num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            hash_bits=32, chunk_size=16, top_k_ratio_per_layer=[1, .3, .3, .5, 1, .3],
            top_k_index_reuse=[-1, -1, -1, 1, -1, 2], gpu_seq_len_threshold=100, gpu_concurrency_threshold=2,
            npu_seq_len_threshold=200, npu_concurrency_threshold=1)


def pol(device="gpu", **changes):
    return GSAPolicy(GSAConfig(**{**BASE, **changes}), device)


def test_layer_roles():
    p = pol()
    assert [l.dense for l in p.layers] == [True, False, False, False, True, False]
    assert [l.reuse_source for l in p.layers] == [-1, -1, -1, 1, -1, 2]
    assert [l.scores for l in p.layers] == [False, True, True, False, False, False]
    assert [p.needs_hash_cache(l) for l in range(6)] == [False, True, True, False, False, False]
    assert [l.selection_layer for l in p.layers] == [-1, 1, 2, 1, -1, 2]
    assert p.scoring_layers == (1, 2)
    assert p.is_dense(4) and p.reuse_source(5) == 2


def test_device_kind_picks_thresholds():
    for dev in ("gpu", "cuda", "cpu", "cuda:1", torch.device("cpu"), None):
        assert device_kind(dev) == "gpu"
    assert device_kind("npu") == device_kind("npu:3") == "npu"
    assert (pol("cuda").seq_len_threshold, pol("cuda").concurrency_threshold) == (100, 2)
    assert (pol("npu").seq_len_threshold, pol("npu").concurrency_threshold) == (200, 1)


def test_thresholds_gpu_and_npu():
    seq = [150, 250, 50]
    g = pol("gpu").plan_step(seq)
    assert g.sparse and g.sparse_rows.tolist() == [True, True, False]  # 2 rows >= 100, 2 >= concurrency 2
    n = pol("npu").plan_step(seq)
    assert n.sparse and n.sparse_rows.tolist() == [False, True, False]  # only 250 >= 200; concurrency 1
    d = pol("gpu").plan_step([150, 50])  # one row reaches 100 < concurrency 2: the whole step is dense
    assert not d.sparse and d.sparse_rows.tolist() == [False, False] and dict(d.budgets) == {}
    assert d.k == 1
    assert not pol("gpu").plan_step([99, 99, 99]).sparse  # seq_len < threshold is dense
    assert pol("gpu").plan_step([100, 100]).sparse  # == threshold counts


def test_prefill_rows_are_dense():
    p = pol("gpu")
    plan = p.plan_step([150, 250, 300], query_lens=[1, 7, 1])
    assert plan.sparse_rows.tolist() == [True, False, True]
    plan = p.plan_step([150, 250, 300], query_lens=[1, 7, 2])  # one decode row < concurrency 2
    assert not plan.sparse


def test_budgets_from_ratio_hand_computed():
    p = pol("gpu", gpu_concurrency_threshold=1, gpu_seq_len_threshold=1)
    # bs 16: 160 tokens -> 10 blocks; ceil(0.3 * 10) = 3 exactly (float 0.3*10 = 3.0000000000000004 would give 4)
    # 161 -> 11 blocks: ceil(3.3) = 4; 17 -> 2 blocks: ceil(0.6) = 1, raised to the 2 forced blocks (= n_blocks)
    # 1 -> 1 block: ceil(0.3) = 1; 1600 -> 100 blocks: 30
    plan = p.plan_step([160, 161, 17, 1, 1600])
    assert plan.n_blocks.tolist() == [10, 11, 2, 1, 100]
    assert plan.n_forced.tolist() == [3, 3, 2, 1, 3]
    assert plan.budgets[1].tolist() == [3, 4, 2, 1, 30]
    assert plan.n_sel[1].tolist() == [3, 4, 2, 1, 30]
    assert plan.budgets[1].dtype == np.int32
    assert plan.budgets[1] is plan.budgets[2], "layers with one ratio share one budget vector"
    assert plan.k == 30
    assert set(plan.budgets) == {1, 2}, "only scoring layers carry budgets"


def test_budget_per_layer_ratio():
    p = pol("gpu", gpu_concurrency_threshold=1, gpu_seq_len_threshold=1,
            top_k_ratio_per_layer=[1, .3, .55, .5, 1, .3])
    plan = p.plan_step([1600, 800])  # 100 and 50 blocks
    assert plan.budgets[1].tolist() == [30, 15] and plan.budgets[2].tolist() == [55, 28]  # ceil(27.5) = 28
    assert plan.k == 55


def test_budget_from_top_k_tokens_and_forced_floor():
    p = pol("gpu", gpu_concurrency_threshold=1, gpu_seq_len_threshold=1, top_k_tokens=64)
    plan = p.plan_step([1600, 48])  # 64 // 16 = 4 blocks; the 3-block row keeps all 3
    assert plan.budgets[1].tolist() == [4, 4] and plan.n_sel[1].tolist() == [4, 3]
    p = pol("gpu", gpu_concurrency_threshold=1, gpu_seq_len_threshold=1, top_k_tokens=32,
            must_select_blocks=[0, 1, 2, -1, -2])
    plan = p.plan_step([1600, 50])  # budget 2 < 5 forced -> 5; row 2 has 4 blocks, forced {0,1,2,3} -> 4
    assert plan.n_forced.tolist() == [5, 4]
    assert plan.budgets[1].tolist() == [5, 4] and plan.n_sel[1].tolist() == [5, 4]


def test_dense_rows_get_all_blocks_and_set_k():
    p = pol("gpu")  # threshold 100, concurrency 2
    plan = p.plan_step([1600, 1600, 50, 800], query_lens=[1, 1, 1, 9])
    assert plan.sparse_rows.tolist() == [True, True, False, False]
    assert plan.budgets[1].tolist() == [30, 30, 4, 50]  # dense rows: budget = n_blocks
    assert plan.n_sel[1].tolist() == [30, 30, 4, 50]
    assert plan.k == 50


def test_fixed_k():
    p = pol("gpu", gpu_concurrency_threshold=1, gpu_seq_len_threshold=1)
    assert p.plan_step([160], k=64).k == 64
    with pytest.raises(ValueError, match=r"'k' must be an int >= the largest n_sel of this step \(30\), got 29"):
        p.plan_step([1600], k=29)
    with pytest.raises(ValueError, match="'k'"):
        p.plan_step([1600], k=30.0)
    assert pol("gpu").plan_step([10], k=7).k == 7  # dense step: any k


def test_all_dense_config_is_never_sparse():
    p = pol("gpu", top_k_ratio_per_layer=[1] * 6, top_k_index_reuse=[-1] * 6, gpu_concurrency_threshold=1)
    assert p.scoring_layers == () and not p.plan_step([10_000]).sparse


def test_host_side_inputs_only():
    p = pol()
    for seq in ([150, 250], np.array([150, 250], dtype=np.int32), torch.tensor([150, 250])):
        assert p.plan_step(seq).seq_lens.tolist() == [150, 250]
    with pytest.raises(ValueError, match="host-side .* got a tensor on meta"):
        p.plan_step(torch.empty(2, dtype=torch.int64, device="meta"))
    with pytest.raises(ValueError, match="'seq_lens' must be a 1-D sequence of integers"):
        p.plan_step([[1, 2]])
    with pytest.raises(ValueError, match="'seq_lens' must be >= 1"):
        p.plan_step([0, 5])
    with pytest.raises(ValueError, match="'query_lens' must have one entry per row \\(2\\), got 3"):
        p.plan_step([5, 5], [1, 1, 1])


def test_plan_is_immutable():
    plan = pol("gpu", gpu_concurrency_threshold=1).plan_step([1600])
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.k = 3
    with pytest.raises(ValueError):
        plan.budgets[1][0] = 7
    with pytest.raises(ValueError):
        plan.seq_lens[0] = 7
    with pytest.raises(TypeError):
        plan.budgets[9] = plan.budgets[1]


def test_random_plans_match_spec_rules():
    """Random configs and lengths: budgets from exact rationals, n_sel and n_forced from the reference rules."""
    rng = random.Random(0)
    for trial in range(30):
        bs = rng.choice([1, 4, 16])
        ratio = rng.choice([0.1, 0.25, 0.3, 0.7, 0.9, 0.05])
        msb = rng.sample([0, 1, 2, -1, -2, -3], rng.randint(0, 4))
        tokens = rng.choice([None, bs * rng.randint(1, 6)])
        c = GSAConfig(model_name="r", num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
                      head_dim=8, chunk_size=bs, top_k_ratio_per_layer=[1, ratio, 1], must_select_blocks=msb,
                      top_k_tokens=tokens, gpu_seq_len_threshold=rng.randint(1, 40), gpu_concurrency_threshold=1)
        p = GSAPolicy(c, "cpu")
        seq = [rng.randint(1, 200) for _ in range(rng.randint(1, 6))]
        ql = [rng.choice([1, 1, 2]) for _ in seq]
        plan = p.plan_step(seq, ql)
        nb = torch.tensor([math.ceil(s / bs) for s in seq])
        forced = forced_block_mask(nb, int(nb.max()), msb).sum(1)
        assert plan.n_forced.tolist() == forced.tolist()
        rows = [q == 1 and s >= c.gpu_seq_len_threshold for s, q in zip(seq, ql)]
        assert plan.sparse == any(rows)
        if not plan.sparse:
            continue
        for b, s in enumerate(seq):
            n = int(nb[b])
            want = (tokens // bs if tokens else math.ceil(Fraction(str(ratio)) * n)) if rows[b] else n
            want = max(want, int(forced[b])) if rows[b] else want
            assert plan.budgets[1][b] == want, (trial, b)
        expect_sel = selection_counts(nb, torch.tensor(plan.budgets[1].astype(np.int64)), forced)
        assert plan.n_sel[1].tolist() == expect_sel.tolist()
        assert plan.k == max(1, int(expect_sel.max()))
