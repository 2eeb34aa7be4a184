"""gsa train-hash --method mlp (spec 12 encoders) on synthetic queries/keys: training beats
the random HATA codes on held-out queries, and the bundle loads through hash_weight_type 'mlp'."""
import torch

from gsa import ops
from gsa.config import GSAConfig
from gsa.eval.train_mlp import heldout_top_recall, top_key_targets, train_mlp_hash
from gsa.weights import clear_cache, load_mlp_hash_weights


def _structured(t=640, d=16, seed=0):
    """Keys mostly in a 4-dim subspace plus a large shared offset (random hyperplanes
    waste bits on it); queries in the same subspace."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    k = torch.randn(t, 1, 4, generator=g) @ basis[:, :4].T * 3 + 4 * basis[:, 4]
    q = (torch.randn(t, 2, 4, generator=g) @ basis[:, :4].T) * 3
    return q, k


def _cfg(path=None):
    kw = dict(model_name="tiny", num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
              hash_bits=32, chunk_size=8, top_k_ratio_per_layer=[1.0, 0.25])
    if path is not None:
        kw.update(hash_weight_type="mlp", hash_weight=str(path))
    return GSAConfig(**kw)


def test_top_key_targets_known_answer():
    # key t has logit t (q = e0, k_t = t e0) for the query at position 40: its top 3 among
    # [edge, 40 - edge] = [4, 36] are 36, 35, 34 (the last `edge` tokens are excluded)
    k = torch.zeros(64, 1, 2)
    k[:, 0, 0] = torch.arange(64.0)
    q = torch.zeros(64, 1, 2)
    q[:, 0, 0] = 1.0
    got = top_key_targets(q, k, torch.tensor([40]), top=3, edge=4)
    assert sorted(got[0, 0].tolist()) == [34, 35, 36]


def test_heldout_top_recall_known_answer():
    # codes that match exactly the target key rank it first: recall 1; opposite codes: 0
    t, r = 40, 32
    ck = -torch.ones(t, 1, r)
    ck[10] = 1.0
    cq = torch.ones(1, 1, r)
    tgt = torch.tensor([[[10]]])
    assert heldout_top_recall(cq, ck, tgt, torch.tensor([39]), g=1, edge=4, ratio=0.1) == 1.0
    assert heldout_top_recall(-cq, ck, tgt, torch.tensor([39]), g=1, edge=4, ratio=0.1) == 0.0


def test_train_mlp_beats_random_and_bundle_loads(tmp_path):
    q, k = _structured()
    store = {1: (q, k)}
    out = tmp_path / "mlp.safetensors"
    res = train_mlp_hash(_cfg(), store, 32, out, depth=2, hidden=32, steps=60, queries=16, top=8, edge=16,
                         lr=1e-2, n_train=256, target="top", log=lambda *a: None)
    rnd, mlp = res["heldout"][1]
    assert mlp > rnd and 1 - mlp < 0.5 * (1 - rnd), (rnd, mlp)  # at least half the misses gone
    clear_cache()
    cfg = _cfg(out)
    m = load_mlp_hash_weights(cfg, 1)
    assert m.depth == (2, 2) and m.key_weights[0].shape == (1, 16, 32) and m.query_weights[1].shape == (2, 32, 32)
    codes = ops.mlp_hash_encode(k, m.key_weights, m.key_biases)
    assert codes.shape == (k.shape[0], 1, 4)


def test_block_mass_targets_known_answer_and_loop_reference():
    from gsa.eval.train_mlp import block_mass_targets
    # q = 0: uniform attention over keys 0..p. p = 3, blocks of 2: 1/2 per block per head,
    # summed over 2 heads -> [1, 1]; p = 2: keys 0..2 at 1/3 -> [2/3, 1/3] x 2 heads
    q, k = torch.zeros(4, 2, 3), torch.randn(4, 1, 3)
    got = block_mass_targets(q, k, torch.tensor([3, 2]), block=2)
    assert torch.allclose(got, torch.tensor([[1.0, 1.0], [4 / 3, 2 / 3]]), atol=1e-6)
    # random inputs against a per-query, per-head loop over the dense softmax
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(37, 4, 8, generator=g), torch.randn(37, 2, 8, generator=g)
    pos = torch.tensor([0, 5, 16, 36])
    got = block_mass_targets(q, k, pos, block=8, chunk=3)
    for i, p in enumerate(pos.tolist()):
        want = torch.zeros(5)
        for h in range(4):
            w = torch.softmax(k[: p + 1, h // 2] @ q[p, h] * 8 ** -0.5, dim=0)
            for t in range(p + 1):
                want[t // 8] += w[t]
        assert torch.allclose(got[i], want, atol=1e-5), (p, got[i], want)


def test_block_loss_known_answer_masks_forced_and_future_tokens():
    import math
    from gsa.eval.train_mlp import block_loss
    # 8 keys, blocks of 2, query at position 6 (n_blocks 4; token 7 is in its future).
    # Block 0 is forced and token 7 unseen: their huge scores must not count. With tau = kappa = 1
    # the block scores are log-sum-exps: block 1 (s 0, 0) -> log 2, block 2 (0, 0) -> log 2,
    # block 3 (s6 = log 2) -> log 2: a uniform softmax over the 3 free blocks, so the
    # cross-entropy is log 3 whatever the (renormalised) target mass
    score = torch.tensor([[[50.0, 50.0, 0, 0, 0, 0, math.log(2), 50.0]]], requires_grad=True)
    mass = torch.tensor([[[5.0, 1.0, 2.0, 1.0]]])
    loss = block_loss(score, torch.tensor([6]), mass, block=2, forced=(0,), tau=1.0, kappa=1.0)
    assert abs(loss.item() - math.log(3)) < 1e-5
    loss.backward()
    assert score.grad[0, 0, [0, 1, 7]].abs().max() == 0  # forced block and future token: no gradient
    # unequal block scores: block 2 doubled in exp -> softmax (1/4, 1/2, 1/4); target (1, 2, 1) / 4
    s2 = torch.tensor([[[0.0, 0, 0, 0, math.log(2), math.log(2), math.log(2), 0]]])
    want = -(0.25 * math.log(0.25) + 0.5 * math.log(0.5) + 0.25 * math.log(0.25))
    got = block_loss(s2, torch.tensor([6]), mass, block=2, forced=(0,), tau=1.0, kappa=1.0)
    assert abs(got.item() - want) < 1e-5
    # a query with fewer than two free blocks (shipped forced blocks 0, -2, -1 at 4 blocks) adds
    # nothing; rows whose blocks are all in the future keep finite gradients
    s3 = torch.randn(2, 3, 16, requires_grad=True)
    m3 = torch.rand(2, 3, 8)
    l3 = block_loss(s3, torch.tensor([6, 3, 15]), m3, block=2)
    l3.backward()
    assert torch.isfinite(l3) and torch.isfinite(s3.grad).all()
    assert s3.grad[:, :2].abs().max() == 0  # positions 6 and 3: 4 and 2 blocks, none free beyond forced


def test_block_loss_mean_known_answer():
    import math
    from gsa.eval.train_mlp import block_loss
    # repre "mean": block score = tau x the mean of its causal tokens. Query at 6 (n_blocks 4),
    # forced block 0, token 7 in the future: free blocks 1 (0, 2 -> mean 1), 2 (log 2 twice ->
    # log 2), 3 (token 6 only: 1 + log 3; token 7's 50 is ignored). tau = 1: softmax over
    # (1, log 2, 1 + log 3) = (e, 2, 3e) / (4e + 2); target mass (2, 1, 1) / 4
    score = torch.tensor([[[50.0, 50.0, 0.0, 2.0, math.log(2), math.log(2), 1 + math.log(3), 50.0]]],
                         requires_grad=True)
    mass = torch.tensor([[[5.0, 2.0, 1.0, 1.0]]])
    z = 4 * math.e + 2
    want = -(0.5 * math.log(math.e / z) + 0.25 * math.log(2 / z) + 0.25 * math.log(3 * math.e / z))
    got = block_loss(score, torch.tensor([6]), mass, block=2, forced=(0,), tau=1.0, repre="mean")
    assert abs(got.item() - want) < 1e-5
    got.backward()
    assert score.grad[0, 0, [0, 1, 7]].abs().max() == 0  # forced block and future token: no gradient
    import pytest
    with pytest.raises(ValueError, match="repre"):
        block_loss(score, torch.tensor([6]), mass, block=2, repre="sum")


def test_heldout_block_recall_mean_known_answer():
    from gsa.eval.train_mlp import heldout_block_recall
    # 8 keys, blocks of 2, query at 7, forced (0, -1), one free pick of blocks 1 / 2 (as the max
    # test). 2-bit codes, q = (+1, +1): block 1 keys (+1, +1), (-1, -1) -> sims 2, -2 (max 2,
    # mean 0); block 2 keys (+1, +1), (-1, +1) -> sims 2, 0 (max 2, mean 1). Max: a tie, block 1
    # (smaller index) -> 0.1 + 0.5 + 0.2 = 0.8; mean: block 2 -> 0.1 + 0.2 + 0.2 = 0.5
    ck = torch.tensor([[1.0, 1], [1, 1], [1, 1], [-1, -1], [1, 1], [-1, 1], [1, 1], [1, 1]]).view(8, 1, 2)
    q = torch.ones(1, 1, 2)
    mass = torch.tensor([[0.1, 0.5, 0.2, 0.2]])
    pos = torch.tensor([7])
    assert abs(heldout_block_recall(q, ck, mass, pos, block=2, forced=(0, -1), ratio=0.75) - 0.8) < 1e-6
    assert abs(heldout_block_recall(q, ck, mass, pos, block=2, forced=(0, -1), ratio=0.75, repre="mean") - 0.5) < 1e-6
    # q = -(1, 1): means 0 and -1 -> block 1 (0.8)
    assert abs(heldout_block_recall(-q, ck, mass, pos, block=2, forced=(0, -1), ratio=0.75, repre="mean") - 0.8) < 1e-6


def test_heldout_block_recall_known_answer():
    from gsa.eval.train_mlp import heldout_block_recall
    # 8 keys, blocks of 2, query at 7, forced (0, -1), budget ceil(0.75 * 4) = 3: one free pick of
    # blocks 1 / 2. Key codes (1 bit): block 1 (-1, -1), block 2 (+1, -1)
    ck = torch.tensor([1.0, 1, -1, -1, 1, -1, 1, 1]).view(8, 1, 1)
    mass = torch.tensor([[0.1, 0.5, 0.2, 0.2]])
    pos = torch.tensor([7])
    up = heldout_block_recall(torch.ones(1, 1, 1), ck, mass, pos, block=2, forced=(0, -1), ratio=0.75)
    assert abs(up - 0.5) < 1e-6  # q = +1 picks block 2 (max +1 vs -1): 0.1 + 0.2 + 0.2
    down = heldout_block_recall(-torch.ones(1, 1, 1), ck, mass, pos, block=2, forced=(0, -1), ratio=0.75)
    assert abs(down - 0.8) < 1e-6  # q = -1: both blocks reach +1, the tie goes to block 1


def test_train_mlp_block_target_runs_and_improves_block_recall(tmp_path):
    q, k = _structured()
    out = tmp_path / "mlp_block.safetensors"
    res = train_mlp_hash(_cfg(), {1: (q, k)}, 32, out, depth=1, hidden=32, steps=60, queries=16, top=8, edge=16,
                         lr=1e-2, n_train=256, target="block", block=8, log=lambda *a: None)
    rnd, mlp = res["heldout_block"][1]
    assert mlp > rnd + 0.02, (rnd, mlp)  # 0.344 -> 0.395 when written
    clear_cache()
    assert load_mlp_hash_weights(_cfg(out), 1).depth == (1, 1)
    import pytest
    with pytest.raises(ValueError, match="target"):
        train_mlp_hash(_cfg(), {1: (q, k)}, 32, out, depth=1, steps=1, top=8, edge=16, target="blocks")
    for bad in ({"block": 0}, {"tau": 0.0}, {"block_weight": -1.0}, {"queries": 0}, {"repre": "sum"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            train_mlp_hash(_cfg(), {1: (q, k)}, 32, out, depth=1, steps=1, top=8, edge=16, **bad)


def test_train_hash_cli_passes_the_target_options(monkeypatch, tmp_path):
    # `gsa train-hash --method mlp --target ...` reaches train_mlp_hash with the parsed options;
    # the default is top+block (measured better than top on Qwen and SmolLM2, docs/accuracy.md)
    import argparse
    from gsa.eval import assets, model as model_mod, train as train_mod, train_mlp as tm
    seen = []
    monkeypatch.setattr(model_mod, "load_model", lambda name: (None, None, _cfg()))
    monkeypatch.setattr(assets, "austen_texts", lambda: {"prideprejudice": "text"})
    monkeypatch.setattr(train_mod, "capture", lambda m, t, text, n: {})
    monkeypatch.setattr(tm, "train_mlp_hash", lambda cfg, store, b, out, **kw: seen.append(kw))
    ap = argparse.ArgumentParser()
    train_mod.add_arguments(ap)
    base = ["--model", "qwen", "--method", "mlp", "--text", "prideprejudice", "--out", str(tmp_path)]
    assert train_mod.run(ap.parse_args(base)) == 0
    assert seen[-1]["target"] == "top+block" and seen[-1]["queries"] == 8
    assert train_mod.run(ap.parse_args(base + ["--target", "block", "--tau", "30", "--block", "16",
                                               "--block-weight", "2", "--queries", "12"])) == 0
    assert {k: seen[-1][k] for k in ("target", "tau", "block", "block_weight", "queries")} == \
        {"target": "block", "tau": 30.0, "block": 16, "block_weight": 2.0, "queries": 12}
    assert seen[-1]["repre"] == "max"  # the default block score
    assert train_mod.run(ap.parse_args(base + ["--block-repre", "mean"])) == 0
    assert seen[-1]["repre"] == "mean"
