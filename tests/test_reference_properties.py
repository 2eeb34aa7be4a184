"""Property tests: the vectorised reference vs the slow per-token transcription
of the spec (tests/spec_literal.py), on inputs drawn by hypothesis."""
import numpy as np
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from gsa import reference as ref
import spec_literal as lit

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def selection_inputs(draw):
    mla = draw(st.booleans())
    hkv = 1 if mla else draw(st.sampled_from([1, 2]))
    g = draw(st.sampled_from([1, 2, 3]))
    c = draw(st.sampled_from([8, 12])) if mla else draw(st.sampled_from([4, 8]))
    rope_bytes = 4 if mla else 0
    w = draw(st.integers(0, 40)) / 16 if mla else 1.0
    bs = draw(st.sampled_from([1, 2, 3, 4]))
    b = draw(st.integers(1, 3))
    m = draw(st.integers(1, 6))
    nb = b * m + draw(st.integers(0, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    alphabet = torch.tensor(draw(st.lists(st.integers(0, 255), min_size=1, max_size=4)), dtype=torch.uint8)
    cache = alphabet[torch.randint(len(alphabet), (nb, hkv, bs, c), generator=gen)]
    q = alphabet[torch.randint(len(alphabet), (b, hkv * g, c), generator=gen)]
    table = torch.randperm(nb, generator=gen)[: b * m].reshape(b, m).to(torch.int32)
    seq = torch.tensor(draw(st.lists(st.integers(1, m * bs), min_size=b, max_size=b)), dtype=torch.int32)
    budgets = torch.tensor(draw(st.lists(st.integers(1, m + 1), min_size=b, max_size=b)), dtype=torch.int32)
    forced = draw(st.lists(st.integers(-4, 4), max_size=3))
    method = draw(st.sampled_from(["max", "mean"]))
    k = draw(st.integers(1, m + 2))
    return q, cache, table, seq, budgets, k, forced, method, rope_bytes, w


@SETTINGS
@given(selection_inputs())
def test_selection_and_kv_select_match_literal_spec(case):
    q, cache, table, seq, budgets, k, forced, method, rope_bytes, w = case
    idx, n = ref.hamming_dist_top_k(q, cache, table, seq, budgets, k, forced, method, rope_bytes, w)
    want_idx, want_n = lit.select(q.numpy(), cache.numpy(), table.numpy(), seq.tolist(), budgets.tolist(),
                                  k, forced, method, rope_bytes, w)
    assert idx.tolist() == want_idx and n.tolist() == want_n
    bs = cache.shape[2]
    t, lens = ref.kv_select(idx, n, table, seq, bs)
    want_t, want_lens = lit.kv_select(want_idx, want_n, table.tolist(), seq.tolist(), bs)
    assert t.tolist() == want_t and lens.tolist() == want_lens


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.sampled_from([8, 16, 64]), st.integers(1, 5))
def test_sign_bits_pack_matches_numpy_packbits(seed, n, rows):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n, generator=gen)
    x[x.abs() < 0.3] = 0.0  # plenty of exact zeros
    np.testing.assert_array_equal(ref.sign_bits_pack(x).numpy(), lit.sign_bits_pack(x.numpy()))


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.sampled_from([1, 2, 4]), st.sampled_from([32, 64, 96]))
def test_hash_encode_band_rule(seed, hw, r):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 4, 16, generator=gen)
    w = torch.randn(hw, 16, r, generator=gen)
    assert lit.band_violations(x, w, ref.hash_encode(x, w)) == 0
