"""The needle-block diagnostic (gsa/eval/needle_blocks.py) on a tiny random-weight model:
token spans land on the sentence (hand-checked with a byte tokenizer), ranks follow
spec 5's order on a hand case, and during a real paged decode the observer's GSA /
Quest selections equal what the run read (the op's selection, the Quest path), the
oracle picks the block with the most mass, and rank <= free slots iff selected.
Also the config-name extras 'mean' and 'last<N>' of `gsa eval`."""
import random

import pytest
import torch

pytest.importorskip("transformers")

import tiny_models  # noqa: E402
from gsa.eval import needle_blocks as NB  # noqa: E402
from gsa.eval import tasks as T  # noqa: E402


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    from gsa.eval.model import load_model
    root = str(tmp_path_factory.mktemp("needles"))
    folder = tiny_models.hf_tiny(root, "Gemma3ForCausalLM", dict(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, max_position_embeddings=4096, bos_token_id=2, eos_token_id=1, pad_token_id=0,
        num_hidden_layers=4, query_pre_attn_scalar=32, layer_types=["full_attention"] * 4))
    model, tok, cfg = load_model(folder)
    return model, tok, cfg, folder.rstrip("/").rsplit("/", 1)[-1]


def test_token_spans_hand_checked(loaded):
    _, tok, _, _ = loaded
    ids = torch.tensor([2] + list(tok("ab VAR XYZ = 7. cd", add_special_tokens=False).input_ids))
    (t0, t1), = NB.token_spans(tok, ids, [" VAR XYZ = 7. "])
    assert tok.decode(ids[t0:t1].tolist()) == "VAR XYZ = 7."  # byte tokenizer: one token per character
    assert (t0, t1) == (4, 16)
    with pytest.raises(ValueError, match="not found"):
        NB.token_spans(tok, ids, ["VAR QQQ"])


def test_ranks_follow_spec5_order():
    scores = torch.tensor([9.0, 1.0, 5.0, 5.0, 7.0, 0.0])
    valid = torch.tensor([True] * 5 + [False])
    forced = torch.tensor([True, False, False, False, False, False])
    # non-forced valid blocks 1..4 by score descending, ties (blocks 2, 3) to the smaller index
    assert NB._ranks(scores, valid, forced).tolist() == [0, 4, 2, 3, 1, 0]


@pytest.mark.parametrize("name,selector", [("r0.25-b64", "gsa"), ("r0.25-b128-mean-last3", "gsa"),
                                           ("quest-r0.25", "quest")])
def test_observer_matches_what_the_run_read(loaded, name, selector):
    from gsa.eval import cli, harness
    model, tok, cfg, key = loaded
    cfg = cfg.replace(chunk_size=16)
    c = cli._named_config(cfg, name, key, shipped_threshold=True)
    p = T.vartrack_prompt(tok, 600, 0.5, random.Random(4))
    spans = NB.token_spans(tok, p.ids, [s for _, s in p.needles])
    labels = [f"n{i}" for i in range(len(spans))]
    obs = NB.NeedleBlocks(c, dict(zip(labels, spans)))
    recs = harness._decode_configs(model, tok, {name: c}, p.ids, 6, lambda: obs, {name: selector})
    rows = obs.rows
    sparse_layers = [l for l, r in enumerate(c.top_k_ratio_per_layer) if r < 1]
    n_blocks = -(-(p.ids.shape[0] + 1) // 16)
    steps = {r["step"] for r in rows}
    assert {r["layer"] for r in rows} == set(sparse_layers) and steps == set(range(len(steps))) and steps
    assert len(rows) >= len(steps) * len(sparse_layers) * len(spans)
    assert all(r["n_blocks"] in (n_blocks, n_blocks + 1) for r in rows)
    assert all(r[f"{selector}_sel"] == r["run_sel"] for r in rows)  # the observer's selection is the run's
    for r in rows:
        t0, t1 = spans[labels.index(r["needle"])]
        assert t0 // 16 <= r["block"] <= (t1 - 1) // 16
        for k in NB.SELECTORS:
            assert r[f"{k}_sel"] == (r["forced"] or 0 < r[f"{k}_rank"] <= r["free"])
            assert (r[f"{k}_rank"] == 0) == r["forced"]
        assert 0 <= r["mass"] <= 1
    if "last3" in name:  # block 0 and the three most recent blocks are forced
        assert all(r["forced"] == (r["block"] == 0 or r["block"] >= r["n_blocks"] - 3) for r in rows)
    s = recs[0]["needle_blocks"]
    assert set(s) == set(labels)
    for d in s.values():
        for k in NB.SELECTORS + ("run",):
            assert 0 <= d[f"{k}_read"] <= 1
    assert s[labels[0]][f"{selector}_read"] == s[labels[0]]["run_read"]


def test_oracle_takes_the_block_with_the_mass(loaded):
    """Hand case: one key equal to a large multiple of the query takes (nearly) all the
    attention; its block is the oracle's first pick and holds the mass."""
    _, _, cfg, _ = loaded
    c = cfg.replace(chunk_size=4, top_k_ratio_per_layer=[0.5] * cfg.num_hidden_layers, gpu_seq_len_threshold=1)
    g = torch.Generator().manual_seed(0)
    hkv, d, n = cfg.num_key_value_heads, cfg.head_dim, 32
    q = torch.randn(1, cfg.num_attention_heads, d, generator=g)
    keys = 0.01 * torch.randn(n, hkv, d, generator=g)
    keys[13] = 20 * q[0, 0] / q[0, 0].norm()  # block 3
    kc, vc = keys.reshape(8, 4, hkv, d), torch.zeros(8, 4, hkv, d)
    table = torch.arange(8, dtype=torch.int32).unsqueeze(0)
    obs = NB.NeedleBlocks(c, {"needle": (13, 14), "other": (21, 22)})
    sparse = torch.tensor([[0, 3, 6, 7]], dtype=torch.int32)
    obs(1, None, q, kc, vc, table, torch.tensor([n], dtype=torch.int32), sparse, torch.tensor([16], dtype=torch.int32))
    needle, other = obs.rows
    assert needle["block"] == 3 and needle["oracle_rank"] == 1 and needle["oracle_sel"] and needle["run_sel"]
    assert needle["mass"] > 0.2 and other["block"] == 5 and not other["run_sel"]
    assert needle["free"] == 1 and not needle["forced"]  # budget 4 of 8 blocks, 3 forced (0, 6, 7)
    assert other["oracle_rank"] > 1 and not other["oracle_sel"]


def test_vartrack_blocks_script_on_a_model_path(loaded, tmp_path):
    """benchmarks/vartrack_blocks.py end to end on the tiny model: both configs recorded,
    the chain's and the distractor's lines labelled, the run's reads equal its selector's."""
    import importlib.util
    import json
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "vartrack_blocks.py"
    spec = importlib.util.spec_from_file_location("vartrack_blocks", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    root = tmp_path / "m"
    model_dir = tiny_models.hf_tiny(str(root), "Gemma3ForCausalLM", dict(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, max_position_embeddings=4096, bos_token_id=2, eos_token_id=1, pad_token_id=0,
        num_hidden_layers=4, query_pre_attn_scalar=32, layer_types=["full_attention"] * 4))
    assert mod.main(["--model", model_dir, "--length", "500", "--depth", "0.9", "--block-size", "16",
                     "--configs", "r0.25-b128-last3", "quest-r0.25", "--out", str(tmp_path), "--tag", "t"]) == 0
    res = json.loads((tmp_path / "accuracy_t.json").read_text())
    assert set(res["configs"]) == {"r0.25-b128-last3", "quest-r0.25"}
    labels = set(res["meta"]["needle_blocks"])
    assert {l.split()[0] for l in labels} == {"c0", "c1", "c2", "c3", "x0", "x1", "x2", "x3"}
    for name, rec in res["configs"].items():
        sel = rec["selector"]
        assert rec["rows"] and all(r[f"{sel}_sel"] == r["run_sel"] for r in rec["rows"])
        assert set(rec["step0"]) == labels and 0 <= rec["score"] <= 1
    assert "step 0 per layer" in (tmp_path / "accuracy_t.md").read_text()


def test_name_extras_mean_and_last(loaded):
    from gsa.eval import cli
    _, _, cfg, key = loaded
    c = cli._named_config(cfg, "r0.125-b64-mean-last4", key)
    assert (c.chunk_repre_method, tuple(c.must_select_blocks), c.hash_bits) == ("mean", (0, -4, -3, -2, -1), 64)
    q = cli._named_config(cfg, "quest-r0.125-last3", key)  # Quest's budget rule takes the same forced blocks
    assert tuple(q.must_select_blocks) == (0, -3, -2, -1) and q.chunk_repre_method == cfg.chunk_repre_method
    assert tuple(cli._named_config(cfg, "r0.125-b128", key).must_select_blocks) == tuple(cfg.must_select_blocks)
    for bad in ("r0.125-b128-last0", "r0.125-b128-lastx", "r0.125-b128-median"):
        with pytest.raises(SystemExit, match="unknown part"):
            cli._named_config(cfg, bad, key)


def test_cli_prompts_adds_prompts_from_other_seeds(loaded, tmp_path):
    """--prompts 2: two prompts per depth, prompt 0 the one-prompt run's; records carry the index."""
    import argparse
    import json
    from gsa.eval import cli
    model, tok, cfg, _ = loaded
    ap = argparse.ArgumentParser()
    cli.add_arguments(ap)
    folder = tiny_models.hf_tiny(str(tmp_path / "m"), "Gemma3ForCausalLM", dict(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, max_position_embeddings=4096, bos_token_id=2, eos_token_id=1, pad_token_id=0,
        num_hidden_layers=4, query_pre_attn_scalar=32, layer_types=["full_attention"] * 4))
    common = ["--model", folder, "--parts", "vartrack", "--lengths", "300", "--depths", "0.9", "--block-size", "16",
              "--task-configs", "r0.25-b128-mean", "--out", str(tmp_path)]
    assert cli.run(ap.parse_args(common + ["--prompts", "2", "--tag", "two"])) == 0
    assert cli.run(ap.parse_args(common + ["--tag", "one"])) == 0
    two = json.loads((tmp_path / "accuracy_two.json").read_text())["vartrack"]
    one = json.loads((tmp_path / "accuracy_one.json").read_text())["vartrack"]
    assert [(r["prompt"], r["config"]) for r in two] == [(0, "dense"), (0, "r0.25-b128-mean"), (1, "dense"),
                                                        (1, "r0.25-b128-mean")]
    assert [r["expected"] for r in two[:2]] == [r["expected"] for r in one]
    assert two[2]["expected"] != two[0]["expected"]
    assert cli.run(ap.parse_args(common + ["--first-prompt", "1", "--tag", "second"])) == 0
    second = json.loads((tmp_path / "accuracy_second.json").read_text())["vartrack"]
    assert [r["prompt"] for r in second] == [1, 1] and second[0]["expected"] == two[2]["expected"]
