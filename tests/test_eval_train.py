"""gsa train-hash on synthetic queries/keys: training helps, and the bundle loads
through the config's ``hash_weight_type: file``."""
import torch

from gsa.config import GSAConfig
from gsa.eval.train import head_recall, train_hash, train_head
from gsa.weights import clear_cache, load_hash_weights, random_hash_weight


def _structured(t=512, d=16, seed=0):
    """Keys and queries mostly in a 4-dim subspace plus a large shared key offset:
    random hyperplanes waste bits on the offset, learned ones need not."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    k = torch.randn(t, 4, generator=g) @ basis[:, :4].T * 3 + 4 * basis[:, 4]
    q = (torch.randn(t, 2, 4, generator=g) @ basis[:, :4].T) * 3
    return q, k


def test_train_head_beats_random_on_structured_data():
    q, k = _structured()
    t = q.shape[0]
    w0 = random_hash_weight(0, 0, 1, 16, 32)[0]
    w = train_head(q, k, w0, steps=150, n_queries=128, block=8, query_range=(t // 4, 3 * t // 4))
    held = torch.arange(3 * t // 4, t, 4)  # queries never trained on
    base, got = head_recall(q, k, w0, held, block=8), head_recall(q, k, w, held, block=8)
    assert got > base + 0.05, (base, got)


def test_head_recall_known_answer():
    # one query that attends (almost) only to key 5; a projection whose codes make
    # key 5 the unique best match must capture ~all of the mass at a 1-block budget
    d = 4
    k = torch.zeros(16, d)
    k[:, 1] = 1.0
    k[5] = torch.tensor([50.0, 0, 0, 0])
    q = torch.tensor([[[50.0, -1.0, 0, 0]]]).expand(16, 1, d).contiguous()
    w = torch.eye(d)[:, :2].repeat(1, 16)  # 32 bits: signs of x0, x1
    got = head_recall(q, k, w, torch.tensor([15]), block=4, ratio=0.25)  # 4 blocks -> budget 1
    assert got > 0.99
    # a projection blind to x0 cannot tell key 5 apart: ties go to block 0, mass ~0
    blind = torch.eye(d)[:, 2:4].repeat(1, 16)  # x2, x3: zero on every key and query
    assert head_recall(q, k, blind, torch.tensor([15]), block=4, ratio=0.25) < 0.01


def test_gate_keeps_trained_only_where_it_wins(tmp_path):
    from safetensors import safe_open
    cfg = GSAConfig(model_name="toy", num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    hash_bits=32, chunk_size=8, top_k_ratio_per_layer=[1.0, 0.5], seed=1)
    qa, ka = _structured(256, seed=1)  # head 0: structure training can exploit
    g = torch.Generator().manual_seed(2)
    qb, kb = torch.randn(256, 2, 16, generator=g), torch.randn(256, 16, generator=g)  # head 1: noise
    captured = {1: (torch.cat([qa, qb], dim=1), torch.stack([ka, kb], dim=1))}
    out = train_hash(None, None, cfg, "", 32, tmp_path / "g.safetensors", steps=40, captured=captured,
                     log=lambda *_: None)
    with safe_open(str(out), "pt") as f:
        meta, w = f.metadata(), f.get_tensor("layers.1.hash_weight")
    w0 = random_hash_weight(1, 1, 2, 16, 32)
    kept = set(meta["kept_heads"].split(",")) - {""}
    for entry in meta["val_recall_random_trained"].split(","):
        l, h, rnd, trn = entry.split(":")
        assert (f"{l}:{h}" in kept) == (float(trn) > float(rnd))
        assert torch.equal(w[int(h)], w0[int(h)]) == (f"{l}:{h}" not in kept)


def test_bundle_round_trip(tmp_path):
    cfg = GSAConfig(model_name="toy", num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    hash_bits=32, chunk_size=8, top_k_ratio_per_layer=[1.0, 0.5, 0.5], seed=1)
    g = torch.Generator().manual_seed(1)
    captured = {l: (torch.randn(64, 4, 16, generator=g), torch.randn(64, 2, 16, generator=g)) for l in range(3)}
    out = train_hash(None, None, cfg, "", 32, tmp_path / "b.safetensors", steps=3, captured=captured, gate=False,
                     log=lambda *_: None)
    clear_cache()
    fcfg = cfg.replace(hash_weight_type="file", hash_weight=str(out), seed=None)
    rnd = cfg.replace(hash_bits=32)
    assert torch.equal(load_hash_weights(fcfg, 0), load_hash_weights(rnd, 0))  # dense layer: the random projection
    w1 = load_hash_weights(fcfg, 1)
    assert w1.shape == (2, 16, 32) and not torch.equal(w1, load_hash_weights(rnd, 1))  # trained
