"""Hash weights (spec 10): the documented random recipe, orthonormality, files, errors."""
import hashlib
import subprocess
import sys

import pytest
import torch

from gsa.config import GSAConfig
from gsa.weights import (
    HashWeightError, clear_cache, generator_seed, hata_file_name, load_hash_weights, random_hash_weight,
    save_hash_weights, tensor_name,
)

GQA = dict(model_name="t/gqa", num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
           hash_bits=64, chunk_size=16, top_k_ratio_per_layer=[1, .5, .5])
MLA = dict(model_name="t/mla", is_mla=True, num_hidden_layers=3, num_attention_heads=4, kv_lora_rank=64,
           qk_rope_head_dim=16, hash_bits_kv_lora=96, hash_bits_qk_rope=32, chunk_size=16,
           top_k_ratio_per_layer=[1, .5, .5])


def recipe(seed, layer, heads, dim, bits, part):
    """The module docstring's recipe, written out independently."""
    digest = hashlib.sha256(f"gsa-hash-weight/{seed}/{layer}/{part}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") % (1 << 63))
    heads_out = []
    for _ in range(heads):
        cols = []
        i = 0
        while i < bits:
            c = min(dim, bits - i)
            q, r = torch.linalg.qr(torch.randn(dim, c, generator=gen, dtype=torch.float64))
            q = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(()).double())
            cols.append(q)
            i += c
        heads_out.append(torch.cat(cols, 1))
    return torch.stack(heads_out).float()


def test_generator_seed_formula():
    d = hashlib.sha256(b"gsa-hash-weight/7/3/kv_lora").digest()
    assert generator_seed(7, 3, "kv_lora") == int.from_bytes(d[:8], "little") & (2 ** 63 - 1)
    assert 0 <= generator_seed(0, 0) < 2 ** 63
    assert len({generator_seed(s, l, p) for s in range(4) for l in range(4) for p in ("main", "kv_lora")}) == 32


@pytest.mark.parametrize("heads, dim, bits", [(2, 32, 32), (3, 64, 128), (1, 16, 80), (1, 512, 64)])
def test_random_matches_documented_recipe(heads, dim, bits):
    w = random_hash_weight(11, 5, heads, dim, bits, "main")
    assert w.shape == (heads, dim, bits) and w.dtype == torch.float32 and w.device.type == "cpu"
    assert torch.equal(w, recipe(11, 5, heads, dim, bits, "main"))


@pytest.mark.parametrize("dim, bits", [(32, 32), (64, 128), (16, 80), (128, 64)])
def test_random_orthonormal_blocks(dim, bits):
    w = random_hash_weight(0, 1, 2, dim, bits).double()
    for h in range(2):
        for start in range(0, bits, dim):
            blk = w[h, :, start:start + dim]
            eye = torch.eye(blk.shape[1], dtype=torch.float64)
            assert torch.allclose(blk.T @ blk, eye, atol=1e-6)
    if bits > dim:  # independent blocks: the second block is not the first one
        assert not torch.allclose(w[0, :, :dim], w[0, :, dim:2 * dim])
    assert not torch.equal(w[0], w[1]), "heads differ"


def test_seed_layer_part_change_weights():
    base = random_hash_weight(0, 1, 1, 32, 32)
    assert not torch.equal(base, random_hash_weight(1, 1, 1, 32, 32))
    assert not torch.equal(base, random_hash_weight(0, 2, 1, 32, 32))
    assert not torch.equal(base, random_hash_weight(0, 1, 1, 32, 32, part="kv_lora"))
    assert torch.equal(base, random_hash_weight(0, 1, 1, 32, 32))


def test_load_random_gqa_cached_and_deterministic():
    c = GSAConfig(**GQA, seed=5)
    w = load_hash_weights(c, 1)
    assert w.shape == (2, 32, 64) and w.dtype == torch.float32
    assert load_hash_weights(c, 1, "cpu") is w and load_hash_weights(c, 1, torch.device("cpu")) is w
    clear_cache()
    w2 = load_hash_weights(c, 1)
    assert w2 is not w and torch.equal(w, w2)
    assert torch.equal(w, random_hash_weight(5, 1, 2, 32, 64))


def test_load_random_mla():
    c = GSAConfig(**MLA, seed=2)
    w_lora, w_rope = load_hash_weights(c, 2)
    assert w_lora.shape == (64, 96) and w_rope.shape == (16, 32)
    assert torch.equal(w_lora, random_hash_weight(2, 2, 1, 64, 96, "kv_lora")[0])
    assert torch.equal(w_rope, random_hash_weight(2, 2, 1, 16, 32, "qk_rope")[0])


def test_identical_in_another_process():
    code = ("import torch, hashlib; from gsa.weights import random_hash_weight as r; "
            "print(hashlib.sha256(r(3, 7, 2, 64, 128).numpy().tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == hashlib.sha256(random_hash_weight(3, 7, 2, 64, 128).numpy().tobytes()).hexdigest()


def test_layer_out_of_range():
    c = GSAConfig(**GQA)
    with pytest.raises(HashWeightError, match=r"layer must be in \[0, 3\), got 3"):
        load_hash_weights(c, 3)


def test_hata_directory(tmp_path):
    ws = {l: torch.randn(2, 32, 64) for l in range(3)}
    for l, w in ws.items():
        torch.save(w if l != 2 else {"weight": w}, tmp_path / hata_file_name(l))
    assert hata_file_name(7) == "hash_weight_layer_07.pt"
    c = GSAConfig(**GQA, hash_weight_type="file", hash_weight=str(tmp_path))
    clear_cache()
    for l in range(3):
        assert torch.equal(load_hash_weights(c, l), ws[l])


def test_hata_directory_errors(tmp_path):
    c = GSAConfig(**GQA, hash_weight_type="file", hash_weight=str(tmp_path))
    clear_cache()
    with pytest.raises(HashWeightError, match="hash_weight_layer_01.pt does not exist"):
        load_hash_weights(c, 1)
    torch.save(torch.randn(2, 32, 32), tmp_path / hata_file_name(1))
    with pytest.raises(HashWeightError, match=r"expected shape \(2, 32, 64\) \[Hkv, D, R\], got \(2, 32, 32\)"):
        load_hash_weights(c, 1)
    torch.save(torch.ones(2, 32, 64, dtype=torch.int32), tmp_path / hata_file_name(1))
    with pytest.raises(HashWeightError, match="expected a float tensor"):
        load_hash_weights(c, 1)
    bad = torch.randn(2, 32, 64)
    bad[0, 0, 0] = float("nan")
    torch.save(bad, tmp_path / hata_file_name(1))
    with pytest.raises(HashWeightError, match="finite"):
        load_hash_weights(c, 1)
    torch.save({"a": torch.randn(1), "b": torch.randn(1)}, tmp_path / hata_file_name(1))
    with pytest.raises(HashWeightError, match="dict with 2 tensors"):
        load_hash_weights(c, 1)
    missing = GSAConfig(**GQA, hash_weight_type="file", hash_weight=str(tmp_path / "nope"))
    with pytest.raises(HashWeightError, match="does not exist"):
        load_hash_weights(missing, 1)


def test_safetensors_bundle_round_trip(tmp_path):
    src = GSAConfig(**GQA, seed=9)
    path = save_hash_weights(src, tmp_path / "w.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        assert sorted(fh.keys()) == [tensor_name(l) for l in range(3)]
        assert fh.metadata()["model_name"] == "t/gqa"
    cfg_path = tmp_path / "cfg.json"
    GSAConfig(**GQA, hash_weight_type="file", hash_weight="w.safetensors").save(cfg_path)
    loaded = GSAConfig.load(cfg_path)  # relative path resolves against the config's folder
    for l in range(3):
        assert torch.equal(load_hash_weights(loaded, l), load_hash_weights(src, l))


def test_safetensors_errors(tmp_path):
    src = GSAConfig(**GQA)
    save_hash_weights(src, tmp_path / "w.safetensors", layers=[1])
    c = GSAConfig(**GQA, hash_weight_type="file", hash_weight=str(tmp_path / "w.safetensors"))
    clear_cache()
    assert load_hash_weights(c, 1).shape == (2, 32, 64)
    with pytest.raises(HashWeightError, match="has no tensor 'layers.2.hash_weight'"):
        load_hash_weights(c, 2)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    junk = GSAConfig(**GQA, hash_weight_type="file", hash_weight=str(tmp_path / "junk.safetensors"))
    with pytest.raises(HashWeightError, match="cannot read .* as safetensors"):
        load_hash_weights(junk, 1)
    wrong = GSAConfig(**dict(GQA, head_dim=16), hash_weight_type="file", hash_weight=str(tmp_path / "w.safetensors"))
    with pytest.raises(HashWeightError, match=r"expected shape \(2, 16, 64\)"):
        load_hash_weights(wrong, 1)


def test_mla_bundle_and_split_sources(tmp_path):
    src = GSAConfig(**MLA, seed=4)
    save_hash_weights(src, tmp_path / "mla.safetensors")
    bundle = GSAConfig(**MLA, hash_weight_type="file", hash_weight=str(tmp_path / "mla.safetensors"))
    for l in (1, 2):
        a, b = load_hash_weights(bundle, l)
        x, y = load_hash_weights(src, l)
        assert torch.equal(a, x) and torch.equal(b, y)
    (tmp_path / "lora").mkdir()
    lora = {l: torch.randn(64, 96) for l in range(3)}
    for l, w in lora.items():
        torch.save(w.unsqueeze(0) if l == 1 else w, tmp_path / "lora" / hata_file_name(l))  # [1, L, R] accepted too
    split = GSAConfig(**MLA, hash_weight_type="file", hash_weight_kv_lora=str(tmp_path / "lora"),
                      hash_weight_qk_rope=str(tmp_path / "mla.safetensors"))
    for l in (1, 2):
        a, b = load_hash_weights(split, l)
        assert torch.equal(a, lora[l]) and torch.equal(b, load_hash_weights(src, l)[1])
    torch.save(torch.randn(64, 64), tmp_path / "lora" / hata_file_name(0))
    with pytest.raises(HashWeightError, match=r"'kv_lora' of layer 0 .* expected shape \(64, 96\) \[kv_lora_rank, R_lora\]"):
        load_hash_weights(split, 0)
