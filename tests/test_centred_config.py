"""Spec 13 plumbing: the hash_centre config key, gsa.weights.load_hash_threshold, GSASparse
hashing keys (not queries) with the threshold, and the calibration helpers of gsa.eval.centre."""
import pytest
import torch

from gsa import reference as R
from gsa import use_backend
from gsa.config import GSAConfig, GSAConfigError
from gsa.eval import centre as CE
from gsa.eval import metrics as M
from gsa.sparse import GSASparse
from gsa.weights import (HashWeightError, clear_cache, load_hash_threshold, load_hash_weights, save_key_means,
                         tensor_name)

GQA = dict(model_name="t/gqa", num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
           hash_bits=64, chunk_size=4, top_k_ratio_per_layer=[1, .3, .5, .3], gpu_seq_len_threshold=1, seed=3)


@pytest.fixture(autouse=True)
def _fresh():
    clear_cache()
    yield
    clear_cache()


def test_no_centre_means_no_threshold():
    cfg = GSAConfig(**GQA)
    assert cfg.hash_centre is None and load_hash_threshold(cfg, 1) is None
    assert GSASparse(cfg).threshold(1) is None


def test_key_means_become_mu_times_w(tmp_path):
    mu = {1: torch.randn(2, 16), 3: torch.randn(2, 16)}
    path = save_key_means(tmp_path / "c.safetensors", mu)
    cfg = GSAConfig(**GQA, hash_centre=str(path))
    w = load_hash_weights(cfg, 1)
    t = load_hash_threshold(cfg, 1)
    assert t.dtype == torch.float32 and t.shape == (2, 64)
    want = torch.stack([mu[1][h].double() @ w[h].double() for h in range(2)]).float()
    assert torch.equal(t, want)
    assert load_hash_threshold(cfg, 2) is None  # missing layer: no threshold (= zero)
    # same means, other weights (another seed): the threshold follows the weights
    t2 = load_hash_threshold(cfg.replace(seed=4), 1)
    assert not torch.equal(t, t2)


def test_stored_threshold_wins_and_is_checked(tmp_path):
    from safetensors.torch import save_file
    thr = torch.randn(2, 64)
    save_file({tensor_name(1, "threshold"): thr, tensor_name(1, "key_mean"): torch.randn(2, 16),
               tensor_name(2, "threshold"): torch.randn(3, 64)}, str(tmp_path / "t.safetensors"))
    cfg = GSAConfig(**GQA, hash_centre=str(tmp_path / "t.safetensors"))
    assert torch.equal(load_hash_threshold(cfg, 1), thr)
    with pytest.raises(HashWeightError, match=r"layers.2.hash_threshold: expected finite float \(2, 64\)"):
        load_hash_threshold(cfg, 2)
    with pytest.raises(HashWeightError, match="does not exist"):
        load_hash_threshold(cfg.replace(hash_centre=str(tmp_path / "nope.safetensors")), 1)


def test_config_key_rules(tmp_path):
    with pytest.raises(GSAConfigError, match="key 'hash_centre': expected a non-empty path"):
        GSAConfig(**GQA, hash_centre=3)
    mla = dict(model_name="t/mla", is_mla=True, num_hidden_layers=2, num_attention_heads=4, kv_lora_rank=32,
               qk_rope_head_dim=8, hash_bits_kv_lora=32, hash_bits_qk_rope=32)
    with pytest.raises(GSAConfigError, match="key 'hash_centre': expected no value for an MLA model"):
        GSAConfig(**mla, hash_centre="c.safetensors")
    # relative paths resolve against the config file's folder, like hash_weight
    save_key_means(tmp_path / "c.safetensors", {1: torch.zeros(2, 16)})
    (tmp_path / "cfg.json").write_text(__import__("json").dumps(dict(GQA, hash_centre="c.safetensors")))
    cfg = GSAConfig.load(str(tmp_path / "cfg.json"))
    assert torch.equal(load_hash_threshold(cfg, 1), torch.zeros(2, 64))


def test_sparse_hashes_keys_with_threshold_queries_without(tmp_path):
    g = torch.Generator().manual_seed(0)
    mu = {l: 3 * torch.randn(2, 16, generator=g) for l in range(4)}
    cfg = GSAConfig(**GQA, hash_centre=str(save_key_means(tmp_path / "c.safetensors", mu)))
    gs = GSASparse(cfg, "cpu", block_size=4)
    nb, t = 6, 19
    k = torch.randn(t, 2, 16, generator=g) + mu[1]
    slots = torch.randperm(nb * 4, generator=g)[:t]
    with use_backend("reference"):
        caches = gs.allocate_hash_caches(nb)
        gs.cache_keys(1, caches[1], slots, k)
        want = torch.zeros_like(caches[1])
        R.hash_encode_and_cache(k, load_hash_weights(cfg, 1), want, slots, load_hash_threshold(cfg, 1))
        assert torch.equal(caches[1], want)
        plain = torch.zeros_like(want)
        R.hash_encode_and_cache(k, load_hash_weights(cfg, 1), plain, slots)
        assert not torch.equal(plain, want)
        # the decode step's query codes: no threshold (select() hashes q with the weights alone)
        seq = [t]
        table = torch.arange(nb, dtype=torch.int32)[None]
        step = gs.begin_step(seq)
        q = torch.randn(1, 4, 16, generator=g)
        gs.select(1, step, table, torch.tensor(seq, dtype=torch.int32), caches[1], q)
        idx, n_sel = R.hamming_dist_top_k(R.hash_encode(q, load_hash_weights(cfg, 1)), caches[1], table,
                                           torch.tensor(seq, dtype=torch.int32), step.budgets[1], step.plan.k,
                                           cfg.must_select_blocks, "max")
        got = step._selections[1]
        want_table, _ = R.kv_select(idx, n_sel, table, torch.tensor(seq, dtype=torch.int32), 4)
        assert torch.equal(got[0], want_table)


def test_key_means_and_pca_projection():
    g = torch.Generator().manual_seed(1)
    k = torch.randn(500, 2, 8, generator=g) * torch.tensor([5.0, 3, 1, 1, 1, 1, 1, 0.5]) + 7
    store = {0: (None, k)}
    mu = CE.key_means(store, [0])[0]
    assert torch.allclose(mu, k.double().mean(0).float())
    w_rnd = torch.randn(8, 16, generator=g)
    w = CE.pca_projection(k[:, 0], w_rnd)
    assert w.shape == (8, 16) and torch.equal(w[:, 8:], w_rnd[:, 8:])  # R > D: random columns after D
    u = w[:, :8].double()
    assert torch.allclose(u.T @ u, torch.eye(8, dtype=torch.float64), atol=1e-5)  # orthonormal directions
    assert abs(float(u[0, 0])) > 0.99  # the largest-variance axis first


def test_centring_removes_constant_bits_and_raises_correlation():
    g = torch.Generator().manual_seed(2)
    mu = 4 * torch.randn(16, generator=g)
    k = torch.randn(400, 1, 16, generator=g) + mu
    q = torch.randn(8, 2, 16, generator=g)
    w = torch.linalg.qr(torch.randn(16, 16, generator=g))[0].contiguous()
    thr = mu @ w
    with use_backend("reference"):
        kc0, kc1 = R.hash_encode(k, w), R.hash_encode(k, w, thr)
        qc = R.hash_encode(q, w)
    assert float(M.near_constant_bits(kc1).mean()) < float(M.near_constant_bits(kc0).mean())
    seq = torch.full((8,), 400)
    assert float(M.code_similarity_pearson(q, k, qc, kc1, seq).mean()) > \
        float(M.code_similarity_pearson(q, k, qc, kc0, seq).mean())


def test_vllm_tp_rank_gets_its_heads_threshold(tmp_path):
    from gsa.integrations.vllm.runtime import _LocalHeadsSparse
    mu = {1: torch.randn(2, 16)}
    cfg = GSAConfig(**GQA, hash_centre=str(save_key_means(tmp_path / "c.safetensors", mu)))
    full = load_hash_threshold(cfg, 1)
    rank1 = _LocalHeadsSparse(cfg, "cpu", heads=(1, 2))
    assert torch.equal(rank1.threshold(1), full[1:2])
    assert torch.equal(rank1.weights(1), load_hash_weights(cfg, 1)[1:2])
    assert _LocalHeadsSparse(cfg, "cpu", heads=(0, 2)).threshold(1) is full
    assert rank1.threshold(2) is None


def test_calibrate_writes_loadable_bundles(tmp_path):
    from safetensors import safe_open
    g = torch.Generator().manual_seed(5)
    cfg = GSAConfig(**GQA)
    t = 256
    store = {l: (torch.randn(t, 4, 16, generator=g), torch.randn(t, 2, 16, generator=g) + 2) for l in range(4)}
    out = CE.calibrate(cfg, store, tmp_path / "c.safetensors", "synthetic", t, pca_bits=64,
                       pca_out=tmp_path / "p.safetensors", gate_bits=64, log=lambda *_: None)
    plain = CE.key_means(store, range(4))
    with safe_open(str(out["centre"]), "pt") as fh:
        meta = fh.metadata()
        stored = {l: fh.get_tensor(tensor_name(l, "key_mean")) for l in range(4)}
    assert meta["gated_for"] == "random weights, seed 3, 64 bits"
    assert torch.equal(stored[0], plain[0])  # a dense layer: the plain mean
    for l in (1, 2, 3):  # scoring layers: alpha * mu per head, alpha from the gate's set
        for h in range(2):
            ratios = [a for a in CE.GATE_ALPHAS if torch.allclose(stored[l][h], a * plain[l][h])]
            assert ratios, (l, h)
    pca_cfg = cfg.replace(hash_weight_type="file", hash_weight=str(out["pca"]), seed=None, hash_centre=str(out["pca"]))
    w = load_hash_weights(pca_cfg, 1)
    assert w.shape == (2, 16, 64) and torch.allclose(w[0, :, :16].T @ w[0, :, :16], torch.eye(16), atol=1e-5)
    assert load_hash_threshold(pca_cfg, 1).shape == (2, 64)
