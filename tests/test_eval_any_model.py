"""The accuracy harness on models outside the packaged two (issue 17, item 0).

Tiny random-weight HF folders (tests/tiny_models.py, byte tokenizer) of hybrid
architectures with sliding-window layers, the model's own softmax scale and,
for Gemma 2, logit softcapping. The harness's DENSE paths (teacher-forced and
paged) must reproduce HF's own attention (``eager``) past the window, in fp32.
"""
import json
import os

import pytest
import torch

pytest.importorskip("transformers")

import tiny_models  # noqa: E402
from gsa.eval import load as L  # noqa: E402
from gsa.eval.harness import make_select  # noqa: E402
from gsa.eval.model import PagedRun, TeacherForcedRun, eval_config, load_model  # noqa: E402

WINDOW = 24
_COMMON = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=1,
               head_dim=32, max_position_embeddings=1024, bos_token_id=2, eos_token_id=1, pad_token_id=0)
ARCHS = {
    # Gemma 2: sliding on alternate layers, query_pre_attn_scalar != head_dim, attention logit softcapping
    "gemma2": ("Gemma2ForCausalLM", dict(_COMMON, num_hidden_layers=4, query_pre_attn_scalar=20, sliding_window=WINDOW,
                                         attn_logit_softcapping=2.0, final_logit_softcapping=30.0,
                                         layer_types=["sliding_attention", "full_attention"] * 2)),
    # Gemma 3 text: layer_types, query_pre_attn_scalar, one KV head
    "gemma3": ("Gemma3ForCausalLM", dict(_COMMON, num_hidden_layers=4, query_pre_attn_scalar=50, sliding_window=WINDOW,
                                         layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                                      "full_attention"])),
    # Qwen2 with use_sliding_window: layers from max_window_layers on slide
    "qwen2": ("Qwen2ForCausalLM", dict(_COMMON, num_hidden_layers=4, use_sliding_window=True, sliding_window=WINDOW,
                                       max_window_layers=2, rope_theta=10000.0)),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("any_model"))


def _folder(root, name, add_bos=True):
    arch, cfg = ARCHS[name]
    return tiny_models.hf_tiny(root, arch, cfg, add_bos=add_bos)


def _hf_logits(model, ids, impl="eager"):
    """HF's own attention (``eager``: the one path with softcapping; or ``sdpa``), one pass."""
    model.set_attn_implementation(impl)
    try:
        with torch.no_grad():
            return model(ids.unsqueeze(0)).logits[0].float()
    finally:
        model.set_attn_implementation("gsa_eval")


@pytest.mark.parametrize("name", list(ARCHS))
def test_dense_harness_equals_hf_attention_past_the_window(root, name):
    model, tok, cfg = load_model(_folder(root, name))
    cfg = cfg.replace(chunk_size=16)
    sliding = model.gsa_eval_info["sliding_layers"]
    assert sliding and all(cfg.top_k_ratio_per_layer[l] >= 1 for l in sliding)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 250, (5 * WINDOW,), generator=g)
    want = _hf_logits(model, ids)
    if name != "gemma2":  # HF's sdpa path has no softcapping; where it applies it agrees too
        assert (_hf_logits(model, ids, "sdpa") - want).abs().max() < 1e-4
    tf = TeacherForcedRun(model, block_size=16)
    got = torch.cat([tf.feed(ids[:50]), tf.feed(ids[50:])])  # two chunks: the cache crosses the window
    assert (got - want).abs().max() < 1e-4, (got - want).abs().max()
    assert {l for l, a in tf.attn.items() if a.window} == set(sliding)
    run = PagedRun(model, eval_config(cfg, ratio=1.0), max_tokens=200)
    paged = [run.prefill(ids[:70], chunk=40)]
    for i in range(70, ids.shape[0] - 1):
        paged.append(run.decode(int(ids[i])))
    paged = torch.stack(paged)
    assert (paged - want[69:-1]).abs().max() < 1e-4, (paged - want[69:-1]).abs().max()


@pytest.mark.parametrize("name", ["gemma2", "gemma3"])
def test_sparse_full_layers_dense_sliding_layers(root, name):
    """A sparse config on the full layers runs both paths; the teacher-forced one
    equals the paged one (same selections), and the sliding layers stay dense."""
    model, tok, cfg = load_model(_folder(root, name))
    cfg = eval_config(cfg.replace(chunk_size=16), ratio=0.25)
    full = [l for l in range(cfg.num_hidden_layers) if l not in model.gsa_eval_info["sliding_layers"]]
    assert [l for l, r in enumerate(cfg.top_k_ratio_per_layer) if r < 1] == [l for l in full if l not in (0, 1, 3)]
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 250, (160,), generator=g)
    base = TeacherForcedRun(model, block_size=16)
    base.feed(ids[:128], logits="last")
    tf = base.fork(select=make_select(cfg), block_size=16).feed(ids[128:140])
    run = PagedRun(model, cfg, max_tokens=200)
    first = run.prefill(ids[:128])
    paged = [first] + [run.decode(int(ids[i])) for i in range(128, 139)]
    assert (torch.stack(paged)[1:] - tf[:-1]).abs().max() < 1e-3


def test_default_config_makes_sliding_layers_dense_and_says_so(root):
    path = _folder(root, "gemma3")
    model, tok, cfg = load_model(path)
    assert cfg.top_k_ratio_per_layer == (1.0, 1.0, 0.3, 1.0)  # layers 0, 1 slide; 3 is the last (dense by rule)
    notes = "\n".join(model.gsa_eval_info["notes"])
    assert "sliding" in notes and "0-1" in notes
    # a config WITHOUT per-layer ratios: its default would make sliding layer 1.. sparse -> dense, with a note
    stated = json.loads(L.default_config(model.config, "tiny").to_json())
    no_ratios = {k: v for k, v in stated.items() if k != "top_k_ratio_per_layer"}
    _, _, c2 = load_model(path, gsa_config=no_ratios)
    assert c2.top_k_ratio_per_layer[0] == c2.top_k_ratio_per_layer[1] == 1.0
    # a config that STATES a sparse sliding layer is an error naming the key and the layer
    stated["top_k_ratio_per_layer"] = [0.5, 1.0, 0.5, 1.0]
    with pytest.raises(L.ModelSpecError, match=r"top_k_ratio_per_layer.*\[0\]"):
        load_model(path, gsa_config=stated)
    stated["top_k_ratio_per_layer"] = [1.0] * 4
    stated["num_key_value_heads"] = 4
    with pytest.raises(L.ModelSpecError, match="num_key_value_heads.*expected 1"):
        load_model(path, gsa_config=stated)


def test_bos_as_the_tokenizer_adds_it(root):
    with_bos = load_model(_folder(root, "gemma3", add_bos=True))
    without = load_model(_folder(root, "gemma3", add_bos=False))
    assert with_bos[0].gsa_eval_info["bos_ids"] == [2] and without[0].gsa_eval_info["bos_ids"] == []
    ids = L.encode_text(with_bos[1], "Hello world, again", 6)
    assert ids.tolist() == [2] + with_bos[1]("Hello", add_special_tokens=False).input_ids
    assert L.encode_text(without[1], "Hello world", 5).tolist() == without[1]("Hello", add_special_tokens=False).input_ids
    from gsa.eval import metrics as M
    p = M.passkey_prompt(with_bos[1], 300, 0.5, 12345)
    assert p[0] == 2 and (p == 2).sum() == 1
    assert M.passkey_prompt(without[1], 300, 0.5, 12345)[0] != 2


def test_bad_model_paths(tmp_path):
    with pytest.raises(L.ModelSpecError, match="no such file"):
        L.resolve_model(tmp_path / "nope")
    with pytest.raises(L.ModelSpecError, match="no config.json"):
        L.resolve_model(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(L.ModelSpecError, match="no weights"):
        L.resolve_model(tmp_path)
    bad = tmp_path / "m.gguf"
    bad.write_bytes(b"PK\x03\x04junk")
    with pytest.raises(L.ModelSpecError, match="not a GGUF"):
        L.resolve_model(bad)
    from gsa.eval import assets
    with pytest.raises(assets.AssetError, match="gguf_path"):
        assets.convert_gguf(bad)
    with pytest.raises(assets.AssetError, match="no such file"):
        assets.convert_gguf(tmp_path / "missing.gguf")
    assert os.path.basename(str(assets.gguf_cache_dir(bad))).startswith("gguf-m-")


def test_a_mask_hf_passes_is_checked():
    from gsa.eval.model import _check_mask
    t = 6
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    _check_mask(causal[None, None], t, t, None, 0)  # causal: fine
    additive = torch.zeros(t, t).masked_fill(~causal, float("-inf"))
    _check_mask(additive[None, None], t, t, None, 0)
    window = causal & ~torch.ones(t, t, dtype=torch.bool).tril(-3)  # keys p-2..p
    _check_mask(window[None, None], t, t, 3, 0)
    _check_mask(torch.ones(1, t), t, t, None, 0)  # a batch-1 padding mask without padding
    with pytest.raises(NotImplementedError, match="not causal"):
        _check_mask(torch.ones(1, 1, t, t, dtype=torch.bool), t, t, None, 0)  # bidirectional
    with pytest.raises(NotImplementedError, match="window of 3"):
        _check_mask(causal[None, None], t, t, 3, 0)  # the module says window 3, the mask has none
    with pytest.raises(NotImplementedError, match="padding"):
        _check_mask(torch.tensor([[0, 1, 1, 1, 1, 1]]), t, t, None, 0)


def test_cli_bad_model_and_fetch_names(tmp_path, capsys):
    import argparse
    from gsa.eval import assets, cli
    ap = argparse.ArgumentParser()
    cli.add_arguments(ap)
    assert cli.run(ap.parse_args(["--model", str(tmp_path / "nope"), "--parts", "grid"])) == 2
    assert "--model" in capsys.readouterr().err
    ap = argparse.ArgumentParser()
    assets.add_arguments(ap)
    assert assets.run(ap.parse_args(["fetch", "not-an-asset"])) == 1
    assert "expected one of" in capsys.readouterr().err
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"nope")
    assert assets.run(ap.parse_args(["fetch", str(bad)])) == 1
    assert "GGUF" in capsys.readouterr().err


def test_paged_quest_selector_equals_teacher_forced_quest(root):
    """The paged path's Quest mode (sparse table + lens over the shuffled block table,
    partial last block) attends the same blocks as a teacher-forced run masking with
    gsa.eval.selectors.quest_select directly."""
    from gsa.eval import selectors as S
    from gsa.policy import GSAPolicy
    model, tok, cfg = load_model(_folder(root, "gemma3"))
    cfg = eval_config(cfg.replace(chunk_size=16), ratio=0.25)
    pol = GSAPolicy(cfg, "cpu")
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(3, 250, (170,), generator=g)
    base = TeacherForcedRun(model, block_size=16)
    base.feed(ids[:131], logits="last")  # 131: the decode rows start inside a block

    def quest(layer, q, k_all, pos0):
        if pol.layer(layer).dense:
            return None
        seq = torch.arange(pos0 + 1, pos0 + q.shape[0] + 1)
        return S.quest_select(pol, layer, q, k_all, seq, tf_run.attn[layer].scale)

    tf_run = base.fork(select=quest, block_size=16)
    tf = tf_run.feed(ids[131:150])
    dense = base.fork().feed(ids[131:150])
    run = PagedRun(model, cfg, max_tokens=200)
    run.prefill(ids[:131])
    run.selector = "quest"
    paged = torch.stack([run.decode(int(ids[i])) for i in range(131, 150)])
    assert (paged - tf).abs().max() < 1e-3, (paged - tf).abs().max()
    assert (tf - dense).abs().max() > 1e-2  # the selection changed the answer: the check has teeth
    assert max(run.sparse_blocks_read) < 10
