"""gsa.eval metrics and batched selectors on cases with known answers (no model needed)."""
import math

import pytest
import torch

from gsa import ops
from gsa.config import GSAConfig
from gsa.eval import metrics as M
from gsa.eval import selectors as S
from gsa.policy import GSAPolicy


def _cfg(**kw):
    base = dict(model_name="toy", num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                hash_bits=64, chunk_size=8, top_k_ratio_per_layer=[1.0, 0.25, 0.25], must_select_blocks=[0, -1],
                gpu_seq_len_threshold=1, seed=3)
    base.update(kw)
    return GSAConfig(**base)


def test_mass_recall_known():
    mass = torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]])  # 1 row, 2 heads, 3 blocks
    sel = torch.tensor([[True, False, True]])
    assert M.mass_recall(mass, sel).tolist() == pytest.approx([(0.7 + 0.9) / 2])


def test_block_recall_known_and_forced_excluded():
    sel = torch.tensor([[True, True, False, True, False]])
    orc = torch.tensor([[True, False, True, True, False]])
    assert M.block_recall(sel, orc).tolist() == pytest.approx([2 / 3])
    forced = torch.tensor([[True, False, False, True, False]])
    assert M.block_recall(sel, orc, forced).tolist() == pytest.approx([0.0])  # the one free oracle pick was missed
    assert M.block_recall(orc, orc, forced).tolist() == pytest.approx([1.0])


def test_kl_agreement_perplexity_known():
    a = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    b = torch.tensor([[0.0, math.log(3.0)], [2.0, 0.0]])
    r = M.kl_and_agreement(a, b)
    # row 0: p = (1/2, 1/2), q = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3); row 1: 0
    assert r["kl"] == pytest.approx((0.5 * math.log(2) + 0.5 * math.log(2 / 3)) / 2, rel=1e-5)
    assert r["agreement"] == 0.5  # argmax 0 vs 1 on row 0
    assert M.perplexity(torch.zeros(4, 10), torch.tensor([1, 2, 3, 4])) == pytest.approx(10.0, rel=1e-5)


def test_unpack_signs_gives_hamming_similarity():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (5, 8), generator=g, dtype=torch.uint8)
    b = torch.randint(0, 256, (7, 8), generator=g, dtype=torch.uint8)
    from gsa.reference import popcount_u8
    want = 64 - 2 * popcount_u8(a.unsqueeze(1) ^ b.unsqueeze(0)).sum(-1)
    assert torch.equal((S.unpack_signs(a) @ S.unpack_signs(b).T).long(), want.long())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gsa_select_matches_ops(seed):
    cfg = _cfg()
    pol = GSAPolicy(cfg, "cpu")
    g = torch.Generator().manual_seed(seed)
    s = 77
    q = torch.randn(20, 4, 16, generator=g)
    k = torch.randn(s, 2, 16, generator=g)
    w = torch.linalg.qr(torch.randn(2, 16, 16, generator=g))[0].repeat(1, 1, 4)  # [2, 16, 64]
    seq = torch.arange(s - 19, s + 1)
    # check_rows = all rows: every row is recomputed with gsa.ops.hamming_dist_top_k and must match
    sel = S.gsa_select(pol, 1, ops.hash_encode(q, w), ops.hash_encode(k, w), seq, check_rows=20)
    nb = (seq + 7) // 8
    assert torch.equal(sel.sum(1), torch.maximum(torch.ceil(nb * 0.25).long(), torch.full_like(nb, 2)))


def test_select_top_ties_forced_and_budget():
    scores = torch.tensor([[5.0, 1.0, 3.0, 3.0, 9.0, 0.0]])
    forced = torch.tensor([[False, False, False, False, False, True]])
    sel = S.select_top(scores, torch.tensor([6]), torch.tensor([3]), forced)
    assert sel.tolist() == [[True, False, False, False, True, True]]
    sel = S.select_top(scores, torch.tensor([6]), torch.tensor([4]), forced)
    assert sel.tolist() == [[True, False, True, False, True, True]]  # tie 3.0: smaller index wins
    sel = S.select_top(scores, torch.tensor([6]), torch.tensor([6]), forced)
    assert sel.all()


def test_oracle_is_mass_optimal_and_quest_bound_holds():
    cfg = _cfg(must_select_blocks=[])
    pol = GSAPolicy(cfg, "cpu")
    g = torch.Generator().manual_seed(5)
    s = 64
    q = torch.randn(6, 4, 16, generator=g)
    k = torch.randn(s, 2, 16, generator=g) * 2
    seq = torch.full((6,), s)
    probs = S.dense_probs(q, k, seq, 0.25)
    assert torch.allclose(probs.sum(-1), torch.ones(6, 4))
    mass = S.block_mass(probs, 8)
    orc = S.oracle_select(pol, 1, mass, seq)
    quest = S.quest_select(pol, 1, q, k, seq, 0.25)
    assert orc.sum(1).tolist() == [2] * 6 and quest.sum(1).tolist() == [2] * 6
    assert (M.mass_recall(mass, orc) >= M.mass_recall(mass, quest) - 1e-6).all()
    # the Quest score bounds every token's q.k (summed over heads) in its block from above
    kp = k.reshape(8, 8, 2, 16)
    mn, mx = kp.amin(1), kp.amax(1)
    qf = q.reshape(6, 2, 2, 16)
    ub = torch.maximum(torch.einsum("nkgd,bkd->nkgbd", qf, mn), torch.einsum("nkgd,bkd->nkgbd", qf, mx)).sum(-1)
    exact = torch.einsum("nkgd,bskd->nkgbs", qf, kp)
    assert (exact <= ub.unsqueeze(-1) + 1e-4).all()


def test_passkey_found():
    assert M.passkey_found(" 12345. Remember", 12345)
    assert not M.passkey_found("123456", 12345)
    assert not M.passkey_found("no number", 12345)
