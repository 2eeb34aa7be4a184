"""GSASparse end to end vs a direct composition of the reference ops (GQA and MLA,
reuse layers, dense layers, mixed prefill/decode rows), plus its errors."""
import math
import re

import pytest
import torch

from gsa import reference as R
from gsa import use_backend
from gsa.config import GSAConfig
from gsa.sparse import GSASparse
from gsa.weights import load_hash_weights, random_hash_weight

BS = 4


@pytest.fixture(autouse=True)
def reference_ops():
    """The orchestrator is compared with the reference composition bit for bit, so run
    it on the reference ops (another CPU backend may hash a key inside the spec-2
    band differently; backends are tested op by op in tests/test_ops_*.py)."""
    with use_backend("reference"):
        yield

GQA = dict(model_name="t/gqa", num_hidden_layers=5, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
           hash_bits=32, chunk_size=BS, top_k_ratio_per_layer=[1, .3, .5, .3, .3], top_k_index_reuse=[-1, -1, -1, 1, 2],
           gpu_seq_len_threshold=10, gpu_concurrency_threshold=1, seed=3)
MLA = dict(model_name="t/mla", is_mla=True, num_hidden_layers=4, num_attention_heads=4, kv_lora_rank=32,
           qk_rope_head_dim=8, hash_bits_kv_lora=32, hash_bits_qk_rope=32, rope_score_weight=0.5, chunk_size=BS,
           top_k_ratio_per_layer=[1, .3, .3, 1], top_k_index_reuse=[-1, -1, 1, -1], must_select_blocks=[0, -1],
           gpu_seq_len_threshold=10, gpu_concurrency_threshold=1, seed=1)
SEQ = [37, 9, 50, 21, 64]          # row 1 is short (dense), row 2 is a prefill row (dense)
QLEN = [1, 1, 5, 1, 1]


def paged_layout(seq, nb_extra=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = max(math.ceil(s / BS) for s in seq) + 1
    nb = len(seq) * m + nb_extra
    table = torch.randperm(nb, generator=g)[: len(seq) * m].reshape(len(seq), m).to(torch.int32)
    slots = []
    for b, s in enumerate(seq):
        t = torch.arange(s)
        slots.append(table[b].long()[t // BS] * BS + t % BS)
    return nb, table, torch.cat(slots)


def expected_budgets(cfg, seq, qlen, ratio):
    nb = [math.ceil(s / BS) for s in seq]
    forced = R.forced_block_mask(torch.tensor(nb), max(nb), cfg.must_select_blocks).sum(1).tolist()
    sparse = [q == 1 and s >= cfg.gpu_seq_len_threshold for s, q in zip(seq, qlen)]
    bud = [max(math.ceil(round(ratio * 10) * n / 10), f) if sp else n for n, f, sp in zip(nb, forced, sparse)]
    n_sel = R.selection_counts(torch.tensor(nb), torch.tensor(bud), torch.tensor(forced))
    return torch.tensor(bud, dtype=torch.int32), n_sel


def test_gqa_end_to_end_matches_reference_composition():
    cfg = GSAConfig(**GQA)
    gs = GSASparse(cfg, "cpu", block_size=BS)
    nb, table, slots = paged_layout(SEQ)
    g = torch.Generator().manual_seed(1)
    T = slots.numel()
    keys = {l: torch.randn(T, 2, 16, generator=g) for l in range(5)}
    caches = gs.allocate_hash_caches(nb)
    assert sorted(caches) == [1, 2] and caches[1].shape == (nb, 2, BS, 4) and caches[1].dtype == torch.uint8
    # cache keys in two chunks, with padding slots (-1) in between: as an engine would
    pad_slots = torch.cat([slots[:40], torch.full((3,), -1), slots[40:]])
    pad_keys = {l: torch.cat([k[:40], torch.randn(3, 2, 16, generator=g), k[40:]]) for l, k in keys.items()}
    for l in range(5):
        gs.cache_keys(l, caches.get(l), pad_slots[:20], pad_keys[l][:20])
        gs.cache_keys(l, caches.get(l), pad_slots[20:], pad_keys[l][20:])
    step = gs.begin_step(SEQ, QLEN)
    assert step.plan.sparse_rows.tolist() == [True, False, False, True, True]
    seq_lens = torch.tensor(SEQ, dtype=torch.int32)
    q = torch.randn(5, 4, 16, generator=g)
    got = {l: gs.select(l, step, table, seq_lens, caches.get(l), q if l in (1, 2) else None) for l in range(5)}
    assert got[0][0] is table and got[0][1] is seq_lens, "dense layer: original table and lengths"
    assert got[3][0] is got[1][0] and got[4][1] is got[2][1], "reusing layers take the source's selection"
    k = step.plan.k
    for l, ratio in ((1, .3), (2, .5)):
        w = random_hash_weight(3, l, 2, 16, 32)
        assert torch.equal(w, load_hash_weights(cfg, l))
        cache = torch.zeros(nb, 2, BS, 4, dtype=torch.uint8)
        R.hash_encode_and_cache(keys[l], w, cache, slots)
        assert torch.equal(cache, caches[l])
        bud, n_sel = expected_budgets(cfg, SEQ, QLEN, ratio)
        assert torch.equal(step.budgets[l], bud)
        idx, ns = R.hamming_dist_top_k(R.hash_encode(q, w), cache, table, seq_lens, bud, k, [0, -2, -1], "max")
        assert ns.tolist() == n_sel.tolist()
        want = R.kv_select(idx, ns, table, seq_lens, BS)
        assert torch.equal(got[l][0], want[0]) and torch.equal(got[l][1], want[1])
        for b in (1, 2):  # dense rows of the sparse step: original blocks and length
            n = math.ceil(SEQ[b] / BS)
            assert torch.equal(got[l][0][b, :n], table[b, :n]) and got[l][1][b] == SEQ[b]
        assert (got[l][1][[0, 3, 4]] < seq_lens[[0, 3, 4]]).all()
    # convenience attention == reference attention on the selected blocks
    kc, vc = torch.randn(nb, BS, 2, 16, generator=g), torch.randn(nb, BS, 2, 16, generator=g)
    step2 = gs.begin_step(SEQ, QLEN)
    out = gs.decode_attention(1, step2, q, kc, vc, table, seq_lens, caches[1])
    assert torch.equal(out, R.paged_decode_attention(q, kc, vc, got[1][0], got[1][1]))
    dense = gs.decode_attention(0, step2, q, kc, vc, table, seq_lens)
    assert torch.equal(dense, R.paged_decode_attention(q, kc, vc, table, seq_lens))


def test_mla_end_to_end_matches_reference_composition():
    cfg = GSAConfig(**MLA)
    gs = GSASparse(cfg, "cpu")
    nb, table, slots = paged_layout(SEQ, seed=2)
    g = torch.Generator().manual_seed(5)
    T = slots.numel()
    c_kv, k_pe = torch.randn(T, 32, generator=g), torch.randn(T, 8, generator=g)
    caches = gs.allocate_hash_caches(nb)
    assert sorted(caches) == [1] and caches[1].shape == (nb, 1, BS, 8)
    for l in range(4):
        gs.cache_keys(l, caches.get(l), slots, c_kv, k_pe)
    step = gs.begin_step(SEQ, QLEN)
    seq_lens = torch.tensor(SEQ, dtype=torch.int32)
    q_lat, q_pe = torch.randn(5, 4, 32, generator=g), torch.randn(5, 4, 8, generator=g)
    sel1 = gs.select(1, step, table, seq_lens, caches[1], q_lat, q_pe)
    assert gs.select(2, step, table, seq_lens) is sel1
    assert gs.select(3, step, table, seq_lens)[0] is table
    w_lora, w_rope = random_hash_weight(1, 1, 1, 32, 32, "kv_lora")[0], random_hash_weight(1, 1, 1, 8, 32, "qk_rope")[0]
    cache = torch.zeros(nb, 1, BS, 8, dtype=torch.uint8)
    R.mla_hash_encode_and_cache(c_kv, k_pe, w_lora, w_rope, cache, slots)
    assert torch.equal(cache, caches[1])
    bud, _ = expected_budgets(cfg, SEQ, QLEN, .3)
    idx, ns = R.hamming_dist_top_k(R.mla_hash_encode(q_lat, q_pe, w_lora, w_rope), cache, table, seq_lens, bud,
                                   step.plan.k, [0, -1], "max", rope_bytes=4, rope_score_weight=0.5)
    want = R.kv_select(idx, ns, table, seq_lens, BS)
    assert torch.equal(sel1[0], want[0]) and torch.equal(sel1[1], want[1])


def test_dense_step_and_fixed_k():
    cfg = GSAConfig(**{**GQA, "gpu_concurrency_threshold": 3})
    gs = GSASparse(cfg)
    nb, table, slots = paged_layout(SEQ)
    seq_lens = torch.tensor(SEQ, dtype=torch.int32)
    step = gs.begin_step(SEQ, QLEN)  # 3 sparse candidates reach the threshold: sparse
    assert step.plan.sparse
    step = gs.begin_step(SEQ, [1, 1, 5, 2, 1])  # only 2 candidates: the whole step is dense
    assert not step.plan.sparse and dict(step.budgets) == {}
    out = gs.select(1, step, table, seq_lens)  # no cache or query needed on a dense step
    assert out[0] is table and out[1] is seq_lens
    caches = gs.allocate_hash_caches(nb)
    step = gs.begin_step(SEQ, QLEN, k=table.shape[1])
    sel = gs.select(1, step, table, seq_lens, caches[1], torch.randn(5, 4, 16))
    assert sel[0].shape == table.shape and step.plan.k == table.shape[1]


def test_no_host_reads_inside_a_step():
    """On the meta device any .item()/.tolist()/.cpu() inside a step would raise."""
    cfg = GSAConfig(**GQA)
    gs = GSASparse(cfg, "meta")
    caches = gs.allocate_hash_caches(40)
    assert caches[1].device.type == "meta"
    step = gs.begin_step(SEQ, QLEN)
    table = torch.empty(5, 17, dtype=torch.int32, device="meta")
    lens = torch.empty(5, dtype=torch.int32, device="meta")
    gs.cache_keys(1, caches[1], torch.empty(7, dtype=torch.int64, device="meta"), torch.empty(7, 2, 16, device="meta"))
    t, l = gs.select(1, step, table, lens, caches[1], torch.empty(5, 4, 16, device="meta"))
    assert t.shape == (5, step.plan.k) and t.device.type == "meta" and l.shape == (5,)
    assert gs.select(3, step, table, lens)[0] is t


def test_errors():
    cfg = GSAConfig(**GQA)
    with pytest.raises(ValueError, match=r"block_size: the KV cache block size must equal the config's chunk_size = 4 .*got 16"):
        GSASparse(cfg, block_size=16)
    with pytest.raises(TypeError, match="'config' must be a GSAConfig"):
        GSASparse(dict(GQA))
    gs = GSASparse(cfg)
    with pytest.raises(ValueError, match="'num_blocks' must be an int >= 1, got 0"):
        gs.allocate_hash_caches(0)
    nb, table, slots = paged_layout(SEQ)
    seq_lens = torch.tensor(SEQ, dtype=torch.int32)
    k = torch.randn(slots.numel(), 2, 16)
    with pytest.raises(ValueError, match=r"hash cache of layer 1 \(shape \(10, 2, 8, 4\)\).*chunk_size = 4.*got 8"):
        gs.cache_keys(1, torch.zeros(10, 2, 8, 4, dtype=torch.uint8), slots, k)
    with pytest.raises(ValueError, match=r"expected uint8 \(10, 2, 4, 4\), got torch.uint8 \(10, 1, 4, 4\)"):
        gs.cache_keys(1, torch.zeros(10, 1, 4, 4, dtype=torch.uint8), slots, k)
    with pytest.raises(ValueError, match="layer 1 scores and needs its hash cache, got NoneType"):
        gs.cache_keys(1, None, slots, k)
    with pytest.raises(ValueError, match="'key_rope' is only for MLA"):
        gs.cache_keys(1, gs.allocate_hash_caches(nb)[1], slots, k, key_rope=k)
    gs.cache_keys(0, None, slots, k)  # dense layer: no cache, nothing to do
    caches = gs.allocate_hash_caches(nb)
    step = gs.begin_step(SEQ, QLEN)
    with pytest.raises(ValueError, match="layer 3 reuses layer 1's selection, but layer 1 has not been selected"):
        gs.select(3, step, table, seq_lens)
    with pytest.raises(ValueError, match="layer 1 scores: 'q' is required"):
        gs.select(1, step, table, seq_lens, caches[1])
    with pytest.raises(ValueError, match=r"'block_table' must be \[B, M\] with B = 5 rows .*got shape \(4, 17\)"):
        gs.select(1, step, table[:4], seq_lens, caches[1], torch.randn(5, 4, 16))
    for bad in ((5, 3, 16), (5, 1, 16), (5, 4, 8), (5, 4)):
        with pytest.raises(ValueError, match=r"'q' must be \[B, H, 16\] \(head_dim\) with H = num_attention_heads = 4 "
                                             r"\(or a rank's share.*hash cache's 2 heads\), got " + re.escape(str(bad))):
            gs.select(1, step, table, seq_lens, caches[1], torch.randn(*bad))
    kc = torch.randn(nb, 8, 2, 16)
    with pytest.raises(ValueError, match="k_cache of layer 1 .*chunk_size = 4"):
        gs.decode_attention(1, step, torch.randn(5, 4, 16), kc, kc, table, seq_lens, caches[1])
    m = GSASparse(GSAConfig(**MLA))
    mc = m.allocate_hash_caches(nb)
    with pytest.raises(ValueError, match="'key_rope' .* is required for MLA"):
        m.cache_keys(1, mc[1], slots, torch.randn(slots.numel(), 32))
    with pytest.raises(ValueError, match="'q_rope' .* is required for MLA"):
        m.select(1, m.begin_step(SEQ, QLEN), table, seq_lens, mc[1], torch.randn(5, 4, 32))
    with pytest.raises(ValueError, match=r"'q_rope' must be \[B, H, 8\] \(qk_rope_head_dim\)"):
        m.select(1, m.begin_step(SEQ, QLEN), table, seq_lens, mc[1], torch.randn(5, 4, 32), torch.randn(5, 4, 9))
    with pytest.raises(ValueError, match=r"'q' must be \[B, H, 32\] \(kv_lora_rank\)"):
        m.select(1, m.begin_step(SEQ, QLEN), table, seq_lens, mc[1], torch.randn(5, 4, 40), torch.randn(5, 4, 8))
    with pytest.raises(ValueError, match=r"'q_rope' must have the rows and heads of 'q' \(5, 4\), got \(5, 2, 8\)"):
        m.select(1, m.begin_step(SEQ, QLEN), table, seq_lens, mc[1], torch.randn(5, 4, 32), torch.randn(5, 2, 8))


def test_docs_policy_example_runs(capsys):
    import pathlib
    import re

    doc = pathlib.Path(__file__).resolve().parent.parent / "docs" / "policy.md"
    code = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)[0]
    exec(compile(code, str(doc), "exec"), {})
    assert capsys.readouterr().out.strip() == "[19, 8] [6, 3] [92, 40] torch.Size([2, 9, 64])"


def test_rank_share_of_heads_subclass():
    """Tensor parallelism as an engine does it: a subclass serving KV head 1 of 2 (and its 2 query heads)."""
    cfg = GSAConfig(**GQA)

    class LocalHeads(GSASparse):
        def weights(self, layer):
            return super().weights(layer)[1:2]

        def hash_cache_shape(self, num_blocks):
            return (num_blocks, 1, BS, cfg.code_bytes)

    gs = LocalHeads(cfg)
    nb, table, slots = paged_layout(SEQ)
    caches = gs.allocate_hash_caches(nb)
    assert caches[1].shape == (nb, 1, BS, 4)
    k = torch.randn(slots.numel(), 1, 16)
    gs.cache_keys(1, caches[1], slots, k)
    step = gs.begin_step(SEQ, QLEN)
    seq_lens = torch.tensor(SEQ, dtype=torch.int32)
    q = torch.randn(5, 2, 16)
    got = gs.select(1, step, table, seq_lens, caches[1], q)
    w = random_hash_weight(3, 1, 2, 16, 32)[1:2]
    cache = torch.zeros(nb, 1, BS, 4, dtype=torch.uint8)
    R.hash_encode_and_cache(k, w, cache, slots)
    idx, ns = R.hamming_dist_top_k(R.hash_encode(q, w), cache, table, seq_lens, step.budgets[1], step.plan.k, [0, -2, -1])
    want = R.kv_select(idx, ns, table, seq_lens, BS)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
