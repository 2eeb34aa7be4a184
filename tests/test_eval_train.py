"""gsa train-hash on synthetic queries/keys: training helps, and the bundle loads
through the config's ``hash_weight_type: file``."""
import torch

from gsa import ops
from gsa.config import GSAConfig
from gsa.eval import selectors as S
from gsa.eval.train import train_hash, train_head
from gsa.weights import clear_cache, load_hash_weights, random_hash_weight


def _topk_mass(q, k, w, top=16):
    """Attention mass (summed over the group) captured by the ``top`` keys with the best Hamming score."""
    probs = torch.softmax(torch.einsum("ngd,td->ngt", q, k) * q.shape[-1] ** -0.5, dim=-1).sum(1)
    qc = S.unpack_signs(ops.hash_encode(q, w)).sum(1)
    kc = S.unpack_signs(ops.hash_encode(k, w))
    pick = (qc @ kc.T).topk(top, dim=1).indices
    return float(torch.gather(probs, 1, pick).sum(1).mean() / q.shape[1])


def test_train_head_beats_random_on_structured_data():
    g = torch.Generator().manual_seed(0)
    d, r, t = 16, 32, 256
    # keys and queries live mostly in a 4-dim subspace plus a large shared offset:
    # random hyperplanes waste bits on the offset, learned ones need not
    basis = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    offset = 4 * basis[:, 4]
    k = torch.randn(t, 4, generator=g) @ basis[:, :4].T * 3 + offset
    q = (torch.randn(t, 2, 4, generator=g) @ basis[:, :4].T) * 3
    w0 = random_hash_weight(0, 0, 1, d, r)[0]
    w = train_head(q, k, w0, steps=60, n_queries=64)
    held = slice(t // 2, t)
    assert _topk_mass(q[held], k, w) > _topk_mass(q[held], k, w0) + 0.02


def test_bundle_round_trip(tmp_path):
    cfg = GSAConfig(model_name="toy", num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    hash_bits=32, chunk_size=8, top_k_ratio_per_layer=[1.0, 0.5, 0.5], seed=1)
    g = torch.Generator().manual_seed(1)
    captured = {l: (torch.randn(64, 4, 16, generator=g), torch.randn(64, 2, 16, generator=g)) for l in range(3)}
    out = train_hash(None, None, cfg, "", 32, tmp_path / "b.safetensors", steps=3, captured=captured, log=lambda *_: None)
    clear_cache()
    fcfg = cfg.replace(hash_weight_type="file", hash_weight=str(out), seed=None)
    rnd = cfg.replace(hash_bits=32)
    assert torch.equal(load_hash_weights(fcfg, 0), load_hash_weights(rnd, 0))  # dense layer: the random projection
    w1 = load_hash_weights(fcfg, 1)
    assert w1.shape == (2, 16, 32) and not torch.equal(w1, load_hash_weights(rnd, 1))  # trained
