"""RULER-style multi-retrieval tasks (gsa/eval/tasks.py) and the harness on a
tiny random-weight model by path: prompts hide what they say where they say,
scorers score hand-checked answers, and `gsa eval` runs grid + tasks end to end
(dense, GSA and Quest through the paged path) with the code diagnostics."""
import json
import random

import pytest
import torch

pytest.importorskip("transformers")

import tiny_models  # noqa: E402
from gsa.eval import tasks as T  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tasks"))
    return tiny_models.hf_tiny(root, "Gemma3ForCausalLM", dict(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=1,
        head_dim=32, max_position_embeddings=4096, bos_token_id=2, eos_token_id=1, pad_token_id=0,
        num_hidden_layers=4, query_pre_attn_scalar=50, sliding_window=64,
        layer_types=["sliding_attention", "full_attention", "full_attention", "full_attention"]))


@pytest.fixture(scope="module")
def tok(folder):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(folder)


def _text(tok, ids):
    assert ids[0] == 2  # the byte tokenizer adds <bos>; prompts keep it
    return tok.decode(ids[1:].tolist())


@pytest.mark.parametrize("depth", [0.1, 0.5, 0.9])
def test_multikey_prompt_hides_every_needle_once_at_its_depth(tok, depth):
    p = T.multikey_prompt(tok, 1500, depth, random.Random(3), n_keys=4)
    text = _text(tok, p.ids)
    assert abs(p.ids.shape[0] - 1500) <= 40
    key = p.info["key"]
    assert text.count(f"special magic numbers for {key} is: {p.expected}.") == 1
    for word, value in p.info["distractors"].items():
        assert text.count(f"special magic numbers for {word} is: {value}.") == 1 and value != p.expected
    assert text.rstrip().endswith(f"The special magic number for {key} mentioned in the provided text is")
    assert len(p.needles) == 4 and (depth, f" One of the special magic numbers for {key} is: {p.expected}. ") in p.needles
    # the queried needle sits at its depth of the filler (up to one filler sentence)
    body = text[text.index("\n") + 1:text.index("\nWhat is the special")]
    mine = f" One of the special magic numbers for {key} is: {p.expected}. "
    for _, sentence in p.needles:
        if sentence != mine:
            body = body.replace(sentence, "")
    at = body.index(mine)
    filler = len(body) - len(mine)
    assert abs(at / filler - depth) < 100 / filler, (at / filler, depth)


def test_vartrack_prompt_chain_in_order(tok):
    p = T.vartrack_prompt(tok, 2000, 0.2, random.Random(5), hops=4, n_distractor_chains=1)
    text = _text(tok, p.ids)
    names, value = p.expected, p.info["value"]
    assert len(names) == 4 and len(set(names + p.info["distractor_names"])) == 8
    first = text.index(f"VAR {names[0]} = {value}.")
    prev = first
    for a, b in zip(names, names[1:]):  # each hop after the one it copies
        at = text.index(f"VAR {b} = VAR {a}.")
        assert at > prev
        prev = at
    body = text[text.index("\n\n") + 2:text.index("\n\nQuestion:")]
    for _, sentence in p.needles:
        body = body.replace(sentence, "|")
    filler = len(body.replace("|", ""))
    assert abs(body.index("|") / filler - 0.2) < 100 / filler  # the first needle is the chain's first hop
    d = p.info["distractor_names"]
    assert f"VAR {d[0]} = {p.info['distractor_values'][0]}." in text
    assert f"assigned the value {value}" in text.split("Question:")[1]


def test_scores_hand_checked():
    assert T.score("multikey", "4821937. Some more", 4821937) == 1.0
    assert T.score("multikey", " is: 4,821,937", 4821937) == 1.0
    assert T.score("multikey", "1234567 and then 4821937", 4821937) == 0.0  # first number decides
    assert T.score("multikey", "no number", 4821937) == 0.0
    names = ["ABCDE", "FGHIJ", "KLMNO", "PQRST"]
    assert T.score("vartrack", " VAR ABCDE, VAR FGHIJ, VAR KLMNO, VAR PQRST", names) == 1.0
    assert T.score("vartrack", "ABCDE FGHIJ XXXXX", names) == 0.5
    assert T.score("vartrack", "ABCDEF GHIJK", names) == 0.0  # whole words only
    with pytest.raises(ValueError, match="'task'"):
        T.score("nope", "", 1)
    with pytest.raises(ValueError, match="'task'"):
        T.make_prompt("nope", None, 10, 0.5, random.Random(0))


def test_gsa_eval_end_to_end_on_a_model_path(folder, tmp_path, capsys):
    from gsa.eval import cli
    import argparse
    ap = argparse.ArgumentParser()
    cli.add_arguments(ap)
    text = tmp_path / "book.txt"
    args = ap.parse_args(["--model", folder, "--parts", "grid", "multikey", "vartrack", "--prefix", "256",
                          "--eval-tokens", "128", "--sample-every", "16", "--ratios", "0.25", "--bits", "64", "128",
                          "--block-size", "16", "--lengths", "400", "--depths", "0.5",
                          "--task-configs", "r0.25-b128", "quest-r0.25", "--out", str(tmp_path), "--tag", "tiny"])
    from gsa.eval import assets
    orig = assets.austen_texts
    assets.austen_texts = lambda: {"emma": " ".join(f"Sentence {i} of a book about nothing." for i in range(400))}
    try:
        assert cli.run(args) == 0
    finally:
        assets.austen_texts = orig
    out = capsys.readouterr().out
    assert "sliding" in out and "near-constant bits" in out
    res = json.loads((tmp_path / "accuracy_tiny.json").read_text())
    assert res["meta"]["sliding_layers"] == {"0": "sliding_attention"}
    assert res["meta"]["bos_ids"] == [2]
    g = res["grid"]
    for b in (64, 128):
        cb, pr = g[f"codes/random/b={b}/const_bits"], g[f"codes/random/b={b}/pearson"]
        assert set(cb["per_layer"]) == {"2"}  # the sparse layer: 0 slides; 1 and 3 are dense by the default rule
        assert 0 <= cb["overall"] <= 1 and -1 <= pr["overall"] <= 1
    for task in ("multikey", "vartrack"):
        recs = res[task]
        assert {r["config"] for r in recs} == {"dense", "r0.25-b128", "quest-r0.25"}
        assert {r["selector"] for r in recs} == {"gsa", "quest"}
        for r in recs:
            assert 0 <= r["score"] <= 1 and r["n_blocks"] == -(-r["length"] // 16)
        sparse = [r for r in recs if r["config"] != "dense"]
        assert all(r["blocks_read"] < r["n_blocks"] for r in sparse)
    md = (tmp_path / "accuracy_tiny.md").read_text()
    assert "## multikey" in md and "Code quality" in md
    import importlib.util
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "accuracy_tiny_multikey.png").is_file() and (tmp_path / "accuracy_tiny_vartrack.png").is_file()


def test_vartrack_names_do_not_depend_on_the_process_hash_seed():
    """The same seed gives the same variable names in any process (a set's order follows
    PYTHONHASHSEED; the first GPU/CPU runs of vartrack differed between processes)."""
    import os
    import subprocess
    import sys
    code = "import random; from gsa.eval.tasks import _var_names; print(_var_names(random.Random(8678), 8))"
    outs = set()
    for seed in ("1", "2", "3"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout)
    assert len(outs) == 1 and len(eval(outs.pop())) == 8
