"""benchmarks/accuracy_block_study.py on random captured q/k: it runs every
selector, and no same-budget selector beats the oracle (which picks the blocks
with the most exact attention mass, so it is optimal at that budget)."""
import importlib.util
import pathlib

import pytest
import torch

from gsa.config import GSAConfig

pytest.importorskip("tqdm", reason="benchmarks/accuracy_block_study.py needs tqdm (pip install -e '.[test]' or '.[eval]')")


def _load():
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy_block_study.py"
    spec = importlib.util.spec_from_file_location("accuracy_block_study", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_study_oracle_bounds_same_budget_selectors():
    mod = _load()
    cfg = GSAConfig(model_name="toy", num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    hash_bits=32, chunk_size=16, top_k_ratio_per_layer=[1.0, 0.25, 0.25], seed=0)
    g = torch.Generator().manual_seed(0)
    store = {l: (torch.randn(320, 4, 16, generator=g) * 2, torch.randn(320, 2, 16, generator=g) * 2) for l in range(3)}
    res = mod.study(store, cfg, prefix=192, n_eval=128, every=16, ratios=[0.25], block_sizes=[8, 16],
                    forced_sets=[[0, -1], [0]], bits=[32, 64], bundles={})
    assert len(res) == 2 * 2 * (2 + 2 + 2)  # (bs x forced) x (oracle, quest, 2 x quest_eqbytes, 2 x gsa)
    for name, v in res.items():
        assert set(v["per_layer"]) == {1, 2}
        assert 0 <= v["overall"] <= 1
        if name.startswith(("quest/", "gsa_random/")):
            tag = "/".join(name.split("/")[1:4])
            assert v["overall"] <= res[f"oracle/{tag}"]["overall"] + 1e-9, name
    md = mod._markdown(res, {"model_name": "toy", "prefix": 192, "book": "x", "sample_every": 16, "eval_tokens": 128,
                             "sparse_layers": [1, 2], "bits": [32, 64], "ratios": [0.25], "block_sizes": [8, 16],
                             "forced": [[0, -1], [0]]})
    assert md.count("\n| 0.25 |") == 4
