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
                         lr=1e-2, n_train=256, log=lambda *a: None)
    rnd, mlp = res["heldout"][1]
    assert mlp > rnd and 1 - mlp < 0.5 * (1 - rnd), (rnd, mlp)  # at least half the misses gone
    clear_cache()
    cfg = _cfg(out)
    m = load_mlp_hash_weights(cfg, 1)
    assert m.depth == (2, 2) and m.key_weights[0].shape == (1, 16, 32) and m.query_weights[1].shape == (2, 32, 32)
    codes = ops.mlp_hash_encode(k, m.key_weights, m.key_biases)
    assert codes.shape == (k.shape[0], 1, 4)
