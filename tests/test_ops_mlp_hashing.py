"""Spec 12: the MLP hash encoder (mlp_hash_encode, mlp_hash_encode_and_cache), per backend,
with the spec's tolerance band; its bad inputs; its weights bundle and config."""
import math

import numpy as np
import pytest
import torch

import gsa
from gsa import ops, reference as ref
from gsa.config import GSAConfig, GSAConfigError
from gsa.eval.selectors import unpack_signs
from gsa.validate import GSAInputError
from gsa.weights import (HashWeightError, MLPHashWeights, bundle_weight_type, clear_cache, load_hash_weights,
                         load_mlp_hash_weights, save_mlp_hash_weights)
from conftest import assert_backend_ran


def _stack(rng, heads, d, hidden, bits, depth, scale=1.0):
    widths = [d] + [hidden] * (depth - 1) + [bits]
    ws = [scale * torch.randn(heads, widths[i], widths[i + 1], generator=rng) / math.sqrt(widths[i])
          for i in range(depth)]
    bs = [0.3 * torch.randn(heads, widths[i + 1], generator=rng) for i in range(depth)]
    return ws, bs


def _any_in_band(x, ws, bs) -> bool:
    """Whether some bit of ``x``'s codes lies in spec 12's band (a backend may then differ)."""
    return bool((ref.mlp_project(x, ws, bs).abs() <= ref.BAND * ref.mlp_band(x, ws, bs)).any())


def _check_band(codes, x, ws, bs):
    """Every bit outside spec 12's band equals the float64 reference; few bits in the band."""
    y = ref.mlp_project(x, ws, bs)
    band = y.abs() <= ref.BAND * ref.mlp_band(x, ws, bs)
    got = unpack_signs(codes) > 0
    want = y > 0
    bad = (got != want) & ~band
    assert not bool(bad.any()), f"{int(bad.sum())} bits outside the spec-12 band differ from the reference"
    assert float(band.float().mean()) < 0.01  # the band cannot hide a wrong kernel


def test_reference_hand_case():
    # 2 heads, D = 2, 1 layer: head 0 = x0 + 0.5 (bias); head 1 = -x1. R = 32 (all columns alike)
    w = torch.zeros(2, 2, 32)
    w[0, 0] = 1.0
    w[1, 1] = -1.0
    b = torch.zeros(2, 32)
    b[0] = 0.5
    x = torch.tensor([[[-1.0, 0.0], [0.0, 2.0]], [[0.0, 0.0], [0.0, -2.0]]])  # [N=2, H=2, D=2]
    codes = ref.mlp_hash_encode(x, [w], [b])
    assert codes.shape == (2, 2, 4)
    assert codes[0, 0].tolist() == [0] * 4  # -1 + 0.5 < 0
    assert codes[0, 1].tolist() == [0] * 4  # -2 < 0
    assert codes[1, 0].tolist() == [255] * 4  # 0.5 > 0
    assert codes[1, 1].tolist() == [255] * 4  # 2 > 0


def test_reference_two_layers_hand_case():
    # D = 1 -> F = 1 -> R = 32: y = 1 * SiLU(x) - 0.2; SiLU(0.3) = 0.3 * sigmoid(0.3) ~ 0.172 < 0.2,
    # SiLU(0.5) ~ 0.311 > 0.2, SiLU(-3) ~ -0.142 < 0.2
    w1, b1 = torch.ones(1, 1, 1), torch.zeros(1, 1)
    w2, b2 = torch.ones(1, 1, 32), torch.full((1, 32), -0.2)
    x = torch.tensor([0.3, 0.5, -3.0]).view(3, 1, 1)
    codes = ref.mlp_hash_encode(x, [w1, w2], [b1, b2])
    assert [c[0, 0].item() for c in codes] == [0, 255, 0]
    silu = lambda z: z / (1 + math.exp(-z))  # noqa: E731
    y = ref.mlp_project(x, [w1, w2], [b1, b2])[:, 0, 0]
    assert torch.allclose(y, torch.tensor([silu(0.3) - 0.2, silu(0.5) - 0.2, silu(-3.0) - 0.2], dtype=y.dtype))


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_encode_matches_reference_within_band(backend, rng, depth, dtype):
    d, hidden, bits, heads = (64, 128, 128, 3) if dtype == torch.float32 else (48, 32, 96, 2)
    ws, bs = _stack(rng, heads, d, hidden, bits, depth, scale=2.0)
    x = (3 * torch.randn(41, heads, d, generator=rng)).to(dtype)
    codes = ops.mlp_hash_encode(x, ws, bs)
    assert_backend_ran("mlp_hash_encode", backend)
    assert codes.dtype == torch.uint8 and codes.shape == (41, heads, bits // 8)
    _check_band(codes, x, ws, bs)


def test_encode_strided_input_and_empty(backend, rng):
    ws, bs = _stack(rng, 2, 32, 32, 32, 2)
    x = torch.randn(2, 9, 64, generator=rng).transpose(0, 1)[:, :, ::2]  # [9, 2, 32], non-unit strides
    _check_band(ops.mlp_hash_encode(x, ws, bs), x, ws, bs)
    assert ops.mlp_hash_encode(torch.zeros(0, 2, 32), ws, bs).shape == (0, 2, 4)


@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
def test_encode_and_cache_writes_only_its_slots(backend, rng, slot_dtype):
    hkv, d, bits, nb, bs_ = 2, 64, 64, 5, 8
    ws, bs = _stack(rng, hkv, d, 128, bits, 3)
    t = 23
    k = torch.randn(t, hkv, d, generator=rng)
    slots = torch.randperm(nb * bs_, generator=rng)[:t].to(slot_dtype)
    slots[[3, 11]] = -1  # padding: nothing written
    cache = torch.full((nb, hkv, bs_, bits // 8), 0xAB, dtype=torch.uint8)
    ops.mlp_hash_encode_and_cache(k, ws, bs, cache, slots)
    assert_backend_ran("mlp_hash_encode_and_cache", backend)
    want_codes = ref.mlp_hash_encode(k, ws, bs)
    y = ref.mlp_project(k, ws, bs)
    band = y.abs() <= ref.BAND * ref.mlp_band(k, ws, bs)
    written = set()
    for i, s in enumerate(slots.tolist()):
        if s < 0:
            continue
        written.add(s)
        got = unpack_signs(cache[s // bs_, :, s % bs_]) > 0
        assert not bool(((got != (unpack_signs(want_codes[i]) > 0)) & ~band[i]).any())
    for s in set(range(nb * bs_)) - written:
        assert bool((cache[s // bs_, :, s % bs_] == 0xAB).all()), f"slot {s} was written"


def test_bad_inputs_name_the_argument(rng):
    ws, bs = _stack(rng, 2, 16, 32, 32, 2)
    x = torch.randn(4, 2, 16)
    cache = torch.zeros(2, 2, 4, 4, dtype=torch.uint8)
    slots = torch.arange(4)
    cases = [
        (lambda: ops.mlp_hash_encode(x, ws[0], bs), "weights"),
        (lambda: ops.mlp_hash_encode(x, ws, bs[:1]), "biases"),
        (lambda: ops.mlp_hash_encode(torch.randn(4, 3, 16), ws, bs), r"weights\[0\]"),
        (lambda: ops.mlp_hash_encode(torch.randn(4, 2, 8), ws, bs), r"weights\[0\]"),
        (lambda: ops.mlp_hash_encode(x.double(), ws, bs), "'x'"),
        (lambda: ops.mlp_hash_encode(x, [ws[0].double(), ws[1]], bs), r"weights\[0\]"),
        (lambda: ops.mlp_hash_encode(x, [ws[0], ws[1][:, :, :24]], [bs[0], bs[1][:, :24]]), r"weights\[1\]"),
        (lambda: ops.mlp_hash_encode(x, ws, [bs[0], bs[1][:, :16]]), r"biases\[1\]"),
        (lambda: ops.mlp_hash_encode(x, ws * 2, bs * 2), "weights"),  # 4 layers
        (lambda: ops.mlp_hash_encode_and_cache(x, ws, bs, cache, torch.tensor([0, 1, 2, 8])), "slot_mapping"),
        (lambda: ops.mlp_hash_encode_and_cache(x, ws, bs, cache, torch.tensor([0, 1, 1, 2])), "slot_mapping"),
        (lambda: ops.mlp_hash_encode_and_cache(x, ws, bs, cache[..., :2], slots), "cache"),
        (lambda: ops.mlp_hash_encode_and_cache(x, ws, bs, cache, slots[:3]), "slot_mapping"),
    ]
    for fn, arg in cases:
        with pytest.raises(GSAInputError, match=arg):
            fn()
    three = _stack(rng, 2, 16, 32, 32, 3)
    bad_hidden = [three[0][0], three[0][1][:, :, :16], torch.randn(2, 16, 32)]
    with pytest.raises(GSAInputError, match=r"weights\[1\]"):
        ops.mlp_hash_encode(x, bad_hidden, [three[1][0], three[1][1][:, :16], three[1][2]])
    # the raw custom op checks too
    with pytest.raises(GSAInputError, match="biases"):
        torch.ops.gsa.mlp_hash_encode(x, ws, bs[:1])


def _cfg(path, bits=64, **kw):
    base = dict(model_name="tiny-mlp", num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                head_dim=16, hash_bits=bits, hash_weight_type="mlp", hash_weight=str(path), chunk_size=4,
                top_k_ratio_per_layer=[1.0, 0.5, 0.5], must_select_blocks=[0, -1], gpu_seq_len_threshold=1)
    base.update(kw)
    return GSAConfig(**base)


def _bundle(rng, path, layers=(1, 2), depth=2, bits=64):
    per = {}
    for l in layers:
        kw, kb = _stack(rng, 2, 16, 32, bits, depth)
        qw, qb = _stack(rng, 4, 16, 32, bits, depth)
        per[l] = MLPHashWeights(tuple(kw), tuple(kb), tuple(qw), tuple(qb))
    save_mlp_hash_weights(path, per, {"note": "test"})
    return per


def test_config_mlp_type_rules(tmp_path):
    cfg = _cfg(tmp_path / "b.safetensors")
    assert cfg.hash_weight_type == "mlp"
    with pytest.raises(GSAConfigError, match="'hash_weight'"):
        _cfg(None).__class__(**{**_cfg(tmp_path / "b").to_dict(), "hash_weight": None})
    with pytest.raises(GSAConfigError, match="'seed'"):
        GSAConfig(**{**cfg.to_dict(), "seed": 3})
    with pytest.raises(GSAConfigError, match="'hash_weight_type'"):
        GSAConfig(**{**cfg.to_dict(), "hash_weight_type": "mlp2"})


def test_bundle_roundtrip_and_errors(tmp_path, rng):
    path = tmp_path / "mlp.safetensors"
    per = _bundle(rng, path)
    clear_cache()
    cfg = _cfg(path)
    assert bundle_weight_type(path) == "mlp"
    m = load_mlp_hash_weights(cfg, 1)
    assert m.depth == (2, 2)
    for a, b in zip(m.key_weights + m.query_biases, per[1].key_weights + per[1].query_biases):
        assert torch.equal(a, b)
    with pytest.raises(HashWeightError, match="layer 0"):
        load_mlp_hash_weights(cfg, 0)  # a dense layer: not in the bundle
    with pytest.raises(HashWeightError, match="hash_bits is 128"):
        load_mlp_hash_weights(_cfg(path, bits=128), 1)
    with pytest.raises(HashWeightError, match="does not exist"):
        load_mlp_hash_weights(_cfg(tmp_path / "nope.safetensors"), 1)
    with pytest.raises(HashWeightError, match="load_mlp_hash_weights"):
        load_hash_weights(cfg, 1)
    bad = tmp_path / "bad.safetensors"
    per[1] = MLPHashWeights(per[1].key_weights, per[1].key_biases, per[1].query_weights[:1] + (
        per[1].query_weights[1][:3],), per[1].query_biases)  # 3 query heads instead of 4
    save_mlp_hash_weights(bad, per)
    with pytest.raises(HashWeightError, match="query"):
        load_mlp_hash_weights(_cfg(bad), 1)


def test_gsa_sparse_uses_mlp_codes(tmp_path, rng):
    """GSASparse with an 'mlp' config: cached key codes and the selection equal spec 12 + 4 + 5
    computed from the reference codes."""
    from gsa.sparse import GSASparse
    path = tmp_path / "mlp.safetensors"
    _bundle(rng, path)
    clear_cache()
    cfg = _cfg(path)
    sp = GSASparse(cfg, "cpu", block_size=4)
    caches = sp.allocate_hash_caches(8)
    t = 29
    k = {l: torch.randn(t, 2, 16, generator=rng) for l in (1, 2)}
    table = torch.randperm(8, generator=rng).to(torch.int32).unsqueeze(0)
    slots = (table[0].long()[torch.arange(t) // 4] * 4 + torch.arange(t) % 4)
    for l in (1, 2):
        sp.cache_keys(l, caches[l], slots, k[l])
    step = sp.begin_step([t], [1])
    q = torch.randn(1, 4, 16, generator=rng)
    seq = torch.tensor([t], dtype=torch.int32)
    for l in (1, 2):
        m = load_mlp_hash_weights(cfg, l)
        kc = ref.mlp_hash_encode(k[l], m.key_weights, m.key_biases)
        want_cache = torch.zeros_like(caches[l])
        ref.hashing._scatter_codes(kc, want_cache, slots)
        exact = not (_any_in_band(k[l], m.key_weights, m.key_biases) or _any_in_band(q, m.query_weights, m.query_biases))
        if exact:  # else a bit in the band may differ (spec 12): the selection below uses the op's own cache
            assert torch.equal(caches[l], want_cache)
        table_out, lens = sp.select(l, step, table, seq, caches[l], q)
        qc = ref.mlp_hash_encode(q, m.query_weights, m.query_biases)
        idx, n_sel = ref.hamming_dist_top_k(qc, caches[l], table, seq, step.budgets[l], step.plan.k,
                                            list(cfg.must_select_blocks), "max", 0, 1.0)
        want_t, want_l = ref.kv_select(idx, n_sel, table, seq, 4, sp.pad_id)
        if exact:
            assert torch.equal(table_out, want_t) and torch.equal(lens, want_l)
        assert int(lens[0]) < t  # really sparse


def test_eval_harness_selects_with_mlp_codes(tmp_path, rng):
    """The harness's GSA selector (make_select) on an 'mlp' config scores with spec-12 codes,
    and eval_config recognises an MLP bundle by its metadata."""
    from gsa.eval import selectors as S
    from gsa.eval.harness import make_select
    from gsa.eval.model import eval_config
    from gsa.policy import GSAPolicy
    path = tmp_path / "mlp.safetensors"
    _bundle(rng, path)
    clear_cache()
    cfg = _cfg(path)
    assert eval_config(_cfg(path).replace(hash_weight_type="random", hash_weight=None, seed=0),
                       hash_weight=str(path)).hash_weight_type == "mlp"
    q = torch.randn(6, 4, 16, generator=rng)
    k_all = torch.randn(30, 2, 16, generator=rng)
    sel = make_select(cfg)(1, q, k_all, 24)
    m = load_mlp_hash_weights(cfg, 1)
    want = S.gsa_select(GSAPolicy(cfg, "cpu"), 1, ref.mlp_hash_encode(q, m.query_weights, m.query_biases),
                        ref.mlp_hash_encode(k_all, m.key_weights, m.key_biases), torch.arange(25, 31))
    if not (_any_in_band(k_all, m.key_weights, m.key_biases) or _any_in_band(q, m.query_weights, m.query_biases)):
        assert torch.equal(sel, want)
    assert sel.shape == (6, 8) and not bool(sel.all())  # sparse: not every block
