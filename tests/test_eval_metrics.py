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


@pytest.mark.parametrize("seed", [0, 1])
def test_gsa_select_block_mean_matches_ops(seed):
    # chunk_repre_method "mean" (spec 4): every row against gsa.ops.hamming_dist_top_k with "mean";
    # 128-bit codes from random inputs, sequence lengths that end inside a block (partial last blocks)
    pol = GSAPolicy(_cfg(chunk_repre_method="mean", hash_bits=128), "cpu")
    g = torch.Generator().manual_seed(10 + seed)
    s = 93
    q = torch.randn(24, 4, 16, generator=g)
    k = torch.randn(s, 2, 16, generator=g)
    w = torch.randn(2, 16, 128, generator=g)
    seq = torch.arange(s - 23, s + 1)
    sel = S.gsa_select(pol, 2, ops.hash_encode(q, w), ops.hash_encode(k, w), seq, check_rows=24)
    nb = (seq + 7) // 8
    assert torch.equal(sel.sum(1), torch.maximum(torch.ceil(nb * 0.25).long(), torch.full_like(nb, 2)))
    # the max and mean selections are different rules: on these inputs they differ somewhere
    sel_max = S.gsa_select(GSAPolicy(_cfg(hash_bits=128), "cpu"), 2, ops.hash_encode(q, w), ops.hash_encode(k, w), seq)
    assert not torch.equal(sel, sel_max)


def test_block_mean_known_answer():
    # token scores 0..6, blocks of 3; row 0 sees all 7 tokens: means 1, 4, 6 (one valid token);
    # row 1 sees 4 tokens: 1, 3 (token 3 only), the third block has none -> -inf
    tok = torch.arange(7.0).repeat(2, 1)
    got = S.block_scores(tok, torch.tensor([7, 4]), 3, "mean")
    assert got[0].tolist() == [1.0, 4.0, 6.0]
    assert got[1, :2].tolist() == [1.0, 3.0] and got[1, 2] == -math.inf
    # block max of the same rows: 2, 5, 6 and 2, 3, -inf
    mx = S.block_scores(tok, torch.tensor([7, 4]), 3)
    assert mx[0].tolist() == [2.0, 5.0, 6.0] and mx[1, :2].tolist() == [2.0, 3.0] and mx[1, 2] == -math.inf
    with pytest.raises(ValueError, match="method"):
        S.block_scores(tok, torch.tensor([7, 4]), 3, "sum")


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


def test_quest_equal_bytes_allowance_rule():
    """Signed allowance bits/(32 D) - 1/bs: at D 256, 32-token blocks, 128 bits Quest's
    min/max metadata (32 B per token and head) costs more than the code (16 B), so at
    equal bytes Quest reads ceil(-1/64 * n_blocks) blocks fewer than GSA; never below
    the forced blocks, never above n_blocks."""
    from gsa.eval.harness import quest_extra_fraction
    assert quest_extra_fraction(128, 256, 32) == pytest.approx(-1 / 64)
    assert quest_extra_fraction(128, 64, 128) == pytest.approx(1 / 16 - 1 / 128)  # the SmolLM2 case, positive
    cfg = _cfg(num_attention_heads=2, num_key_value_heads=1, head_dim=256, hash_bits=128, chunk_size=32,
               top_k_ratio_per_layer=[1.0, 0.25, 0.03])
    pol = GSAPolicy(cfg, "cpu")
    g = torch.Generator().manual_seed(0)
    n_tok = 200 * 32  # 200 blocks
    q, k = torch.randn(1, 2, 256, generator=g), torch.randn(n_tok, 1, 256, generator=g)
    seq = torch.tensor([n_tok])
    a = quest_extra_fraction(128, 256, 32)
    same = S.quest_select(pol, 1, q, k, seq, 1.0)
    eq = S.quest_select(pol, 1, q, k, seq, 1.0, budget_add=a)
    assert int(same.sum()) == 50  # ceil(0.25 * 200)
    assert int(eq.sum()) == 50 + math.ceil(a * 200) == 47  # ceil(-3.125) = -3: rounded in Quest's favour
    assert bool((eq & ~same).sum() == 0)  # fewer blocks, all from the same ranking
    # budget ceil(0.03 * 200) = 6, minus 100 blocks: below the 2 forced blocks -> exactly the forced blocks
    low = S.quest_select(pol, 2, q, k, seq, 1.0, budget_add=-0.5)
    assert int(low.sum()) == 2 and bool(low[0, 0]) and bool(low[0, -1])
    big = S.quest_select(pol, 1, q, k, seq, 1.0, budget_add=2.0)
    assert int(big.sum()) == 200



def test_quest_equal_bytes_recall_interpolates_between_whole_blocks():
    """Hand-made masses: 1 row of 10 blocks (8 tokens each), no forced blocks, budget
    ceil(0.25 * 10) = 3. Quest's scores rank blocks 0..9 in order; block b holds mass
    m_b. At a = 0.1 * 10 = 1 extra block exactly: floor = exact = recall(4 blocks). At
    a = 0.05 * 10 = 0.5: floor = recall(3), exact = halfway to recall(4). Negative
    allowances round down too (-0.5 -> -1 block, exact halfway between 2 and 3)."""
    cfg = _cfg(must_select_blocks=[], hash_bits=64)
    pol = GSAPolicy(cfg, "cpu")
    m = torch.tensor([0.3, 0.2, 0.15, 0.1, 0.08, 0.07, 0.05, 0.03, 0.01, 0.01])
    mass = m.reshape(1, 1, 10).repeat(1, 4, 1)  # 4 query heads, the same masses
    scores = torch.arange(10, 0, -1).float().unsqueeze(0)  # block 0 ranked first
    seq = torch.tensor([80])
    r = lambda n: float(m[:n].sum())  # noqa: E731
    floor, exact = S.quest_equal_bytes_recall(pol, 1, scores, mass, seq, 0.1)
    assert floor.tolist() == pytest.approx([r(4)]) and exact.tolist() == pytest.approx([r(4)])
    floor, exact = S.quest_equal_bytes_recall(pol, 1, scores, mass, seq, 0.05)
    assert floor.tolist() == pytest.approx([r(3)]) and exact.tolist() == pytest.approx([(r(3) + r(4)) / 2])
    floor, exact = S.quest_equal_bytes_recall(pol, 1, scores, mass, seq, -0.05)
    assert floor.tolist() == pytest.approx([r(2)]) and exact.tolist() == pytest.approx([(r(2) + r(3)) / 2])
    # quest_select_extra is quest_select's budget rule with a whole number of blocks
    for extra in (-5, -1, 0, 2, 20):
        sel = S.quest_select_extra(pol, 1, scores, seq, torch.tensor([extra]))
        assert int(sel.sum()) == min(10, max(0, 3 + extra)) and bool(sel[0, : int(sel.sum())].all())

def test_code_quality_diagnostics_hand_checked():
    # 10 keys, 1 KV head, 16 bits: byte 0 all 0xFF (8 constant bits), byte 1 alternating 0x00 / 0xFF
    k_codes = torch.zeros(10, 1, 2, dtype=torch.uint8)
    k_codes[:, 0, 0] = 0xFF
    k_codes[::2, 0, 1] = 0xFF
    assert M.near_constant_bits(k_codes).tolist() == [0.5]
    k_codes[0, 0, 0] = 0x00  # 9 of 10 keys agree: 90 % is not MORE than 90 % -> not near-constant
    assert M.near_constant_bits(k_codes).tolist() == [0.0]
    # Pearson: codes equal to the signs of q and k reproduce sign agreement; a hand case
    q = torch.tensor([[[1.0, 0.0]]])  # 1 row, 1 head, D 2
    k = torch.tensor([[[3.0, 0.0]], [[1.0, 0.0]], [[-2.0, 0.0]], [[5.0, 0.0]]])  # q.k = 3, 1, -2, 5
    qc = torch.tensor([[[0b11]]], dtype=torch.uint8)  # bits 0, 1 set (+1, +1), the rest -1
    kc = torch.tensor([[[0b11]], [[0b01]], [[0b00]], [[0b11]]], dtype=torch.uint8)  # sims 8, 6, 4, 8 (R 8)
    r = M.code_similarity_pearson(q, k, qc, kc, torch.tensor([3]))  # only keys 0..2 are seen
    x, y = torch.tensor([8.0, 6, 4]), torch.tensor([3.0, 1, -2])
    want = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()).norm() * (y - y.mean()).norm()))
    assert r.tolist() == pytest.approx([want])
    assert M.code_similarity_pearson(q, k, qc, torch.zeros_like(kc), torch.tensor([4])).tolist() == [0.0]  # constant
