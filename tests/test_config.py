"""GSAConfig: every validation rule (message checked), round trips, shipped configs."""
import json

import pytest

from gsa import config as config_mod
from gsa.config import GSAConfig, GSAConfigError, default_ratios, known_models, shipped_config_paths

GQA = {"model_name": "test/gqa", "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
       "head_dim": 64, "chunk_size": 16}
MLA = {"model_name": "test/mla", "is_mla": True, "num_hidden_layers": 4, "num_attention_heads": 4,
       "kv_lora_rank": 64, "qk_rope_head_dim": 16, "hash_bits_kv_lora": 64, "hash_bits_qk_rope": 32, "chunk_size": 16}


def cfg(base=GQA, drop=(), **changes):
    d = {k: v for k, v in base.items() if k not in drop}
    d.update(changes)
    return GSAConfig.from_dict(d)


def fails(match_parts, base=GQA, drop=(), **changes):
    with pytest.raises(GSAConfigError) as ei:
        cfg(base, drop, **changes)
    msg = str(ei.value)
    for part in match_parts:
        assert part in msg, f"{part!r} not in {msg!r}"
    return msg


def test_defaults_gqa():
    c = cfg()
    assert c.hash_bits == 128 and c.seed == 0 and c.hash_weight_type == "random"
    assert c.top_k_ratio_per_layer == (1.0, 1.0, 0.3, 1.0)
    assert c.top_k_index_reuse == (-1, -1, -1, -1)
    assert c.must_select_blocks == (0, -2, -1)
    assert c.cache_heads == 2 and c.code_bytes == 16 and c.rope_bytes == 0
    assert c.rope_score_weight is None and c.kv_lora_rank is None


def test_defaults_mla_derived_keys():
    c = cfg(MLA)
    assert (c.head_dim, c.hash_bits, c.num_key_value_heads) == (80, 96, 1)
    assert c.cache_heads == 1 and c.code_bytes == 12 and c.rope_bytes == 4 and c.rope_score_weight == 1.0
    # the original format writes head_dim / hash_bits as the sums: accepted when they agree
    assert cfg(MLA, head_dim=80, hash_bits=96, num_key_value_heads=1) == c


def test_default_ratios():
    assert default_ratios(5) == [1.0, 1.0, 0.3, 0.3, 1.0]
    assert default_ratios(2) == [1.0, 1.0]


@pytest.mark.parametrize("changes, drop, parts", [
    ({"model_name": ""}, (), ["'model_name'", "non-empty string"]),
    ({"model_aliases": "x"}, (), ["'model_aliases'", "list of non-empty strings"]),
    ({"is_mla": "yes"}, (), ["'is_mla'", "true or false", "'yes'"]),
    ({"num_hidden_layers": 0}, (), ["'num_hidden_layers'", "integer >= 1", "got 0"]),
    ({"num_hidden_layers": True}, (), ["'num_hidden_layers'", "integer >= 1"]),
    ({"num_attention_heads": 2.0}, (), ["'num_attention_heads'", "integer >= 1", "2.0"]),
    ({}, ("num_key_value_heads",), ["'num_key_value_heads'", "integer >= 1", "None"]),
    ({}, ("head_dim",), ["'head_dim'", "integer >= 1"]),
    ({"num_attention_heads": 7}, (), ["'num_attention_heads'", "multiple of num_key_value_heads = 2", "7"]),
    ({"hash_bits": 100}, (), ["'hash_bits'", "multiple of 32", "100"]),
    ({"kv_lora_rank": 64}, (), ["'kv_lora_rank'", "only allowed with is_mla = true"]),
    ({"rope_score_weight": 1.0}, (), ["'rope_score_weight'", "only allowed with is_mla = true"]),
    ({"hash_weight_kv_lora": "a"}, (), ["'hash_weight_kv_lora'", "only allowed with is_mla"]),
    ({"hash_weight": ""}, (), ["'hash_weight'", "non-empty path"]),
    ({"hash_weight_type": "fixed"}, (), ["'hash_weight_type'", "not supported", "save_hash_weights", "'fixed'"]),
    ({"hash_weight_type": "uniform"}, (), ["'hash_weight_type'", "'random', 'file' or 'mlp'", "'uniform'"]),
    ({"hash_weight": "w.safetensors"}, (), ["'hash_weight'", "only read with hash_weight_type = 'file'"]),
    ({"seed": -1}, (), ["'seed'", "integer >= 0", "-1"]),
    ({"hash_weight_type": "file", "hash_weight": "w", "seed": 3}, (), ["'seed'", "only used with hash_weight_type = 'random'"]),
    ({"hash_weight_type": "file"}, (), ["'hash_weight'", "required with hash_weight_type = 'file'"]),
    ({"chunk_size": 0}, (), ["'chunk_size'", "integer >= 1"]),
    ({"chunk_repre_method": "sum"}, (), ["'chunk_repre_method'", "'max' or 'mean'", "'sum'"]),
    ({"top_k_ratio_per_layer": [0.3] * 3}, (), ["'top_k_ratio_per_layer'", "4 entries", "3 entries"]),
    ({"top_k_ratio_per_layer": 0.3}, (), ["'top_k_ratio_per_layer'", "list of 4 numbers"]),
    ({"top_k_ratio_per_layer": [1, 1, 0, 1]}, (), ["'top_k_ratio_per_layer'", "> 0", "entry 2", "got 0"]),
    ({"top_k_ratio_per_layer": [1, 1, "0.3", 1]}, (), ["'top_k_ratio_per_layer'", "entry 2", "'0.3'"]),
    ({"top_k_ratio_per_layer": [1, 1, float("nan"), 1]}, (), ["'top_k_ratio_per_layer'", "entry 2"]),
    ({"top_k_index_reuse": [-1] * 5}, (), ["'top_k_index_reuse'", "4 entries", "5 entries"]),
    ({"top_k_index_reuse": [-1, -1, -2, -1]}, (), ["'top_k_index_reuse'", "-1 or a layer index; entry 2", "-2"]),
    ({"top_k_ratio_per_layer": [1, .3, .3, .3], "top_k_index_reuse": [-1, -1, 3, -1]}, (),
     ["'top_k_index_reuse'", "earlier layer (j < 2) for layer 2", "spec 8", "got 3"]),
    ({"top_k_ratio_per_layer": [1, .3, .3, .3], "top_k_index_reuse": [-1, -1, 2, -1]}, (),
     ["'top_k_index_reuse'", "earlier layer (j < 2)"]),
    ({"top_k_ratio_per_layer": [1, .3, .3, .3], "top_k_index_reuse": [-1, -1, 1, 2]}, (),
     ["'top_k_index_reuse'", "layer that scores itself for layer 3", "layer 2 reuses layer 1"]),
    ({"top_k_ratio_per_layer": [1, .3, .3, .3], "top_k_index_reuse": [-1, -1, 0, -1]}, (),
     ["'top_k_index_reuse'", "sparse layer for layer 2", "layer 0 is dense"]),
    ({"top_k_ratio_per_layer": [1, .3, 1, .3], "top_k_index_reuse": [-1, -1, 1, -1]}, (),
     ["'top_k_index_reuse'", "-1 for layer 2: it is dense"]),
    ({"top_k_tokens": 0}, (), ["'top_k_tokens'", "integer >= 1"]),
    ({"top_k_tokens": 100}, (), ["'top_k_tokens'", "multiple of chunk_size = 16", "100"]),
    ({"must_select_blocks": [0, "x"]}, (), ["'must_select_blocks'", "list of integers"]),
    ({"must_select_blocks": 0}, (), ["'must_select_blocks'", "list of integers"]),
    ({"gpu_seq_len_threshold": 0}, (), ["'gpu_seq_len_threshold'", "integer >= 1"]),
    ({"gpu_concurrency_threshold": 0}, (), ["'gpu_concurrency_threshold'", "integer >= 1"]),
    ({"npu_seq_len_threshold": -5}, (), ["'npu_seq_len_threshold'", "integer >= 1"]),
    ({"npu_concurrency_threshold": 1.5}, (), ["'npu_concurrency_threshold'", "integer >= 1"]),
])
def test_gqa_validation_errors(changes, drop, parts):
    fails(parts, GQA, drop, **changes)


@pytest.mark.parametrize("changes, drop, parts", [
    ({}, ("kv_lora_rank",), ["'kv_lora_rank'", "required when is_mla = true"]),
    ({}, ("hash_bits_qk_rope",), ["'hash_bits_qk_rope'", "required when is_mla = true"]),
    ({"qk_rope_head_dim": 0}, (), ["'qk_rope_head_dim'", "integer >= 1"]),
    ({"hash_bits_kv_lora": 48}, (), ["'hash_bits_kv_lora'", "multiple of 32", "48"]),
    ({"head_dim": 64}, (), ["'head_dim'", "80 = kv_lora_rank + qk_rope_head_dim", "got 64"]),
    ({"hash_bits": 128}, (), ["'hash_bits'", "96 = hash_bits_kv_lora + hash_bits_qk_rope", "128"]),
    ({"num_key_value_heads": 4}, (), ["'num_key_value_heads'", "1 (MLA caches one latent head)", "4"]),
    ({"rope_score_weight": 0.1}, (), ["'rope_score_weight'", "multiple of 1/16 in [0, 16]", "0.1"]),
    ({"rope_score_weight": 16.0625}, (), ["'rope_score_weight'", "multiple of 1/16"]),
    ({"rope_score_weight": -0.5}, (), ["'rope_score_weight'", "multiple of 1/16"]),
    ({"hash_weight_type": "file"}, (), ["'hash_weight_kv_lora'", "needs hash_weight, or both"]),
    ({"hash_weight_type": "file", "hash_weight_kv_lora": "a"}, (), ["'hash_weight_qk_rope'", "needs hash_weight"]),
    ({"hash_weight_type": "file", "hash_weight": "w", "hash_weight_qk_rope": "r"}, (),
     ["'hash_weight'", "either hash_weight (one bundle) or hash_weight_kv_lora + hash_weight_qk_rope, not both"]),
    ({"hash_weight_qk_rope": "r"}, (), ["'hash_weight_qk_rope'", "only read with hash_weight_type = 'file'"]),
])
def test_mla_validation_errors(changes, drop, parts):
    fails(parts, MLA, drop, **changes)


def test_rope_score_weight_accepts_sixteenths():
    assert cfg(MLA, rope_score_weight=0.0625).rope_score_weight == 0.0625
    assert cfg(MLA, rope_score_weight=16).rope_score_weight == 16.0
    assert cfg(MLA, rope_score_weight=0).rope_score_weight == 0.0


def test_valid_reuse_and_file_configs():
    c = cfg(top_k_ratio_per_layer=[1, .3, .3, .3], top_k_index_reuse=[-1, -1, 1, 1])
    assert c.top_k_index_reuse == (-1, -1, 1, 1)
    c = cfg(hash_weight_type="file", hash_weight="w.safetensors")
    assert c.seed is None and c.hash_weight == "w.safetensors"
    m = cfg(MLA, hash_weight_type="file", hash_weight_kv_lora="a", hash_weight_qk_rope="b")
    assert m.hash_weight is None


def test_from_dict_errors():
    with pytest.raises(GSAConfigError, match="expected a JSON object, got list"):
        GSAConfig.from_dict([1, 2])
    msg = fails(["unknown key 'chunk_sise'", "did you mean 'chunk_size'?", "known keys:"], chunk_sise=16)
    assert "model_name" in msg
    fails(["unknown key 'frobnicate'", "known keys:"], frobnicate=1)
    with pytest.raises(GSAConfigError, match="key 'num_attention_heads': expected a value \\(required\\), got None"):
        cfg(drop=("num_attention_heads",))
    fails(["'vllm_hash_attention_skip_layers'", "[]", "not supported", "[3]"], vllm_hash_attention_skip_layers=[3])
    fails(["'vllm_hash_attention_reduction_head_num'", "None", "not supported"], vllm_hash_attention_reduction_head_num=4)
    fails(["'vllm_hash_attention_topk'", "same value as 'top_k_tokens' (64)", "128"],
          vllm_hash_attention_topk=128, top_k_tokens=64)


def test_original_format_keys_load():
    """A HATA/UCM GSAOnDeviceConfig dump (nulls, inert vllm_* keys) plus our head counts loads."""
    d = dict(GQA, hash_weight=None, kv_lora_rank=None, qk_rope_head_dim=None, hash_bits_kv_lora=None,
             hash_bits_qk_rope=None, hash_weight_kv_lora=None, hash_weight_qk_rope=None,
             vllm_hash_attention_topk=64, vllm_hash_attention_reduction_head_num=None,
             vllm_hash_attention_rollback_layers=[], vllm_hash_attention_skip_layers=[])
    c = GSAConfig.from_dict(d)
    assert c.top_k_tokens == 64 and c.kv_lora_rank is None
    assert "vllm_hash_attention_topk" not in c.to_dict() and c.to_dict()["top_k_tokens"] == 64


def test_load_errors(tmp_path):
    with pytest.raises(GSAConfigError, match="cannot read"):
        GSAConfig.load(tmp_path / "missing.json")
    p = tmp_path / "bad.json"
    p.write_text('{"model_name": "x",\n  oops}')
    with pytest.raises(GSAConfigError, match="invalid JSON at line 2 column 3"):
        GSAConfig.load(p)
    p.write_text(json.dumps(dict(GQA, chunk_size=-1)))
    with pytest.raises(GSAConfigError) as ei:
        GSAConfig.load(p)
    assert str(p) in str(ei.value) and "'chunk_size'" in str(ei.value)


def test_direct_construction_validates():
    with pytest.raises(GSAConfigError, match="'head_dim'"):
        GSAConfig(model_name="x", num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
    c = GSAConfig(model_name="x", num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                  top_k_ratio_per_layer=[1, 0.5])
    assert isinstance(c.top_k_ratio_per_layer, tuple) and hash(c) == hash(c.replace())
    with pytest.raises(GSAConfigError, match="'chunk_size'"):
        c.replace(chunk_size=0)


@pytest.mark.parametrize("path", shipped_config_paths(), ids=lambda p: p.name)
def test_shipped_round_trip(path, tmp_path):
    c = GSAConfig.load(path)
    out = tmp_path / "copy.json"
    c.save(out)
    again = GSAConfig.load(out)
    assert again == c and again.to_dict() == c.to_dict()
    assert out.read_text() == path.read_text(), "shipped files are in canonical form"
    assert GSAConfig.from_dict(json.loads(c.to_json())) == c


SHAPES = {  # model: (layers, q heads, kv heads, head_dim) -- or MLA (layers, heads, kv_lora, rope)
    "Qwen3-4B": (36, 32, 8, 128), "Qwen3-14B": (40, 40, 8, 128), "Qwen3-32B": (64, 64, 8, 128),
    "QwQ-32B": (64, 40, 8, 128), "Qwen3-Coder-30B-A3B": (48, 32, 4, 128),
    "DeepSeek-R1-Distill-Qwen-14B": (48, 40, 8, 128), "DeepSeek-R1-Distill-Qwen-32B": (64, 40, 8, 128),
    "SmolLM2-135M-Instruct": (30, 9, 3, 64), "Qwen2.5-Coder-0.5B-Instruct": (24, 14, 2, 64),
}
MLA_SHAPES = {"DeepSeek-V2-Lite": (27, 16, 512, 64), "DeepSeek-R1": (61, 128, 512, 64)}


@pytest.mark.parametrize("name", list(SHAPES) + list(MLA_SHAPES))
def test_shipped_shapes_and_defaults(name):
    c = GSAConfig.for_model(name)
    n = c.num_hidden_layers
    if name in SHAPES:
        assert not c.is_mla
        assert (n, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == SHAPES[name]
        assert c.hash_bits == 128
    else:
        assert c.is_mla
        assert (n, c.num_attention_heads, c.kv_lora_rank, c.qk_rope_head_dim) == MLA_SHAPES[name]
        assert (c.hash_bits_kv_lora, c.hash_bits_qk_rope) == (512, 64)
    assert c.chunk_size == 128 and c.must_select_blocks == (0, -2, -1)
    assert list(c.top_k_ratio_per_layer) == default_ratios(n)
    assert set(c.top_k_index_reuse) == {-1}
    assert len(shipped_config_paths()) == len(SHAPES) + len(MLA_SHAPES) == len(known_models())


def test_for_model_exact_names():
    assert GSAConfig.for_model("Qwen/Qwen3-4B").model_name == "Qwen/Qwen3-4B"
    assert GSAConfig.for_model("qwen3-4b").model_name == "Qwen/Qwen3-4B"
    assert GSAConfig.for_model("QWEN3-CODER-30B-A3B").model_name == "Qwen/Qwen3-Coder-30B-A3B-Instruct"
    assert GSAConfig.for_model("deepseek-r1").is_mla
    for bad in ("Qwen3", "Qwen3-4", "/models/Qwen3-4B", "configs/qwen3-4b.json", "Qwen3-4B-Instruct"):
        with pytest.raises(GSAConfigError) as ei:
            GSAConfig.for_model(bad)
        assert f"no shipped GSA config for model {bad!r}" in str(ei.value)
        assert "Qwen/Qwen3-4B" in str(ei.value) and "deepseek-ai/DeepSeek-R1" in str(ei.value)
    assert GSAConfig.known_models() == known_models() == sorted(known_models())


def test_for_model_ambiguous(monkeypatch):
    a = cfg(model_name="org1/Same")
    b = cfg(model_name="org2/Same")
    monkeypatch.setattr(config_mod, "_SHIPPED", [a, b])
    with pytest.raises(GSAConfigError, match="ambiguous"):
        GSAConfig.for_model("same")
    assert GSAConfig.for_model("org2/same") is b


def test_resolve_path(tmp_path):
    p = tmp_path / "c.json"
    cfg(hash_weight_type="file", hash_weight="w/dir").save(p)
    c = GSAConfig.load(p)
    assert c.resolve_path(c.hash_weight) == tmp_path / "w" / "dir"
    assert cfg().resolve_path("/abs/x") == __import__("pathlib").Path("/abs/x")
