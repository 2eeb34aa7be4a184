"""Named eval configs for the new codes (gsa/eval/cli.py `_named_config`): the names
parse, a missing bundle names the command that makes it, and a `-centred` config
really writes spec-13 centred key codes through the paged path (against the
reference hash on a tiny random-weight model, and a hand-checked threshold case)."""
import argparse
import json

import pytest
import torch

pytest.importorskip("transformers")

import tiny_models  # noqa: E402
from gsa.eval import cli  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("named"))
    return tiny_models.hf_tiny(root, "Gemma3ForCausalLM", dict(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, max_position_embeddings=4096, bos_token_id=2, eos_token_id=1, pad_token_id=0,
        num_hidden_layers=5, query_pre_attn_scalar=32, layer_types=["full_attention"] * 5))


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GSA_CACHE_DIR", str(tmp_path / "cache"))
    from gsa import weights
    weights.clear_cache()
    yield tmp_path / "cache"
    weights.clear_cache()


@pytest.fixture(scope="module")
def loaded(folder):
    from gsa.eval.model import load_model
    model, tok, cfg = load_model(folder)
    return model, tok, cfg, folder.rstrip("/").rsplit("/", 1)[-1]


def _sparse(cfg):
    return [l for l, r in enumerate(cfg.top_k_ratio_per_layer) if r < 1]


def _write_means(cfg, key, means=None):
    from gsa.eval.centre import default_centre_bundle
    from gsa.weights import save_key_means
    g = torch.Generator().manual_seed(1)
    if means is None:  # a large shared component, as real keys have
        means = {l: 3 * torch.randn(cfg.num_key_value_heads, cfg.head_dim, generator=g) for l in range(cfg.num_hidden_layers)}
    return save_key_means(default_centre_bundle(key), means)


def _write_mlp(cfg, key, bits, depth):
    from gsa.eval.train import default_bundle
    from gsa.weights import MLPHashWeights, save_mlp_hash_weights
    g = torch.Generator().manual_seed(2)
    widths = [cfg.head_dim] + [16] * (depth - 1) + [bits]

    def side(h):
        return (tuple(torch.randn(h, widths[i], widths[i + 1], generator=g) for i in range(depth)),
                tuple(torch.randn(h, widths[i + 1], generator=g) for i in range(depth)))
    layers = {}
    for l in _sparse(cfg):
        kw, kb = side(cfg.num_key_value_heads)
        qw, qb = side(cfg.num_attention_heads)
        layers[l] = MLPHashWeights(kw, kb, qw, qb)
    return save_mlp_hash_weights(default_bundle(key, bits, "mlp", depth), layers)


def test_names_parse_and_missing_bundles_name_their_command(loaded, cache):
    _, _, cfg, key = loaded
    with pytest.raises(SystemExit, match=f"gsa calibrate-centre --model {key} --gate 128"):
        cli._named_config(cfg, "r0.125-b128-centred", key)
    with pytest.raises(SystemExit, match=f"gsa train-hash --model {key} --method mlp --depth 2 --bits 64"):
        cli._named_config(cfg, "r0.125-b64-mlp2", key)
    centre = _write_means(cfg, key)
    mlp = _write_mlp(cfg, key, 64, 2)
    c = cli._named_config(cfg, "r0.125-b128-centred", key)
    assert c.hash_centre == str(centre) and c.hash_bits == 128 and c.hash_weight_type == "random"
    assert c.gpu_seq_len_threshold == 1 and c.chunk_size == cfg.chunk_size
    assert [r for r in c.top_k_ratio_per_layer if r < 1] == [0.125] * len(_sparse(cfg))
    c16 = cli._named_config(cfg, "r0.125-b128-bs16-centred", key)  # extras in any order
    assert c16.chunk_size == 16 and c16.hash_centre == str(centre)
    m = cli._named_config(cfg, "r0.25-b64-mlp2", key)
    assert m.hash_weight_type == "mlp" and m.hash_weight == str(mlp) and m.hash_centre is None and m.hash_bits == 64
    assert cli._named_config(cfg, "r0.125-b128", key).hash_centre is None
    assert cli._named_config(cfg, "quest-r0.125", key).hash_centre is None
    for bad, why in (("r0.125-b64-mlp2-centred", "linear codes"), ("r0.125-b64-mlp2-trained", "two weight choices"),
                     ("r0.125-b128-centre", "unknown part 'centre'"), ("r0.125-b128-mlpx", "unknown part"),
                     ("x0.1-b128", "expected 'shipped'")):
        with pytest.raises(SystemExit, match=why):
            cli._named_config(cfg, bad, key)
    # configs whose key codes differ never share a hash cache
    from gsa.eval.harness import hash_signature
    sigs = {hash_signature(cli._named_config(cfg, n, key)) for n in ("r0.125-b128", "r0.125-b128-centred", "r0.125-b64-mlp2")}
    assert len(sigs) == 3
    assert hash_signature(cli._named_config(cfg, "r0.125-b128", key)) == \
        hash_signature(cli._named_config(cfg, "r0.0625-b128-bs16", key))


def _prefill_codes(model, cfg, ids):
    """Paged prefill; per scoring layer the keys ``[T, Hkv, D]`` and their cached codes ``[T, Hkv, R/8]``."""
    from gsa.eval.model import PagedRun
    run = PagedRun(model, cfg, max_tokens=ids.shape[0] + 1)
    run.prefill(ids)
    t = ids.shape[0]
    p = torch.arange(t)
    blk = run.block_table[0, p // run.bs].long()
    out = {}
    for l, hc in run.hash_caches.items():
        out[l] = (run.k_cache[l][blk, p % run.bs], hc[blk, :, p % run.bs])
    return out


def test_centred_config_writes_centred_codes(loaded, cache):
    from gsa.reference.hashing import hash_encode
    from gsa.weights import load_hash_weights
    model, _, cfg, key = loaded
    centre = _write_means(cfg, key)
    ids = torch.randint(3, 300, (200,), generator=torch.Generator().manual_seed(5))
    rnd = _prefill_codes(model, cli._named_config(cfg, "r0.25-b128-bs16", key), ids)
    cen_cfg = cli._named_config(cfg, "r0.25-b128-bs16-centred", key)
    cen = _prefill_codes(model, cen_cfg, ids)
    from safetensors.torch import load_file
    means = load_file(str(centre))
    assert set(cen) == set(rnd) and cen
    for l, (k, codes) in cen.items():
        w = load_hash_weights(cen_cfg, l)  # the config's seeded random projection [Hkv, D, R]
        mu = means[f"layers.{l}.key_mean"]
        thr = torch.einsum("hd,hdr->hr", mu.double(), w.double()).float()
        assert torch.equal(codes, hash_encode(k, w, thr))  # spec 13 on the reference, bit for bit
        assert torch.equal(rnd[l][1], hash_encode(k, w))  # the plain config: spec 2 codes
        flipped = (codes ^ rnd[l][1]).to(torch.int64)
        share = sum(int(((flipped >> i) & 1).sum()) for i in range(8)) / (codes.numel() * 8)
        assert share > 0.05, share  # centring moved many bits on keys with a shared component


def test_restore_with_rehash_equals_a_prefill_with_that_config(loaded, cache):
    """One dense prefill serves configs with other codes: restoring with ``rehash``
    fills the hash caches from the cached keys exactly as that config's prefill does."""
    from gsa.eval.model import PagedRun
    model, _, cfg, key = loaded
    _write_means(cfg, key)
    _write_mlp(cfg, key, 64, 1)
    ids = torch.randint(3, 300, (150,), generator=torch.Generator().manual_seed(7))
    plain = cli._named_config(cfg, "r0.25-b128-bs16", key)
    run = PagedRun(model, plain, max_tokens=ids.shape[0] + 1)
    run.prefill(ids)
    snap = run.snapshot()
    for name in ("r0.25-b128-bs16-centred", "r0.25-b64-bs16-mlp1", "r0.25-b64-bs16"):
        other = cli._named_config(cfg, name, key)
        direct = PagedRun(model, other, max_tokens=ids.shape[0] + 1)
        direct.prefill(ids)
        run.restore(snap, other, rehash=True)
        assert set(run.hash_caches) == set(direct.hash_caches)
        for l, hc in direct.hash_caches.items():
            assert torch.equal(run.hash_caches[l], hc), (name, l)
        assert not torch.equal(run.hash_caches[l], snap["h"][l]) or name.endswith("b128-bs16")
    with pytest.raises(ValueError, match="block size 16"):
        run.restore(snap, cli._named_config(cfg, "r0.25-b64-bs32", key), rehash=True)


def test_centred_threshold_hand_checked(loaded, cache):
    """A bundle storing thresholds directly: -1e6 on every bit -> every key bit 1 (0xFF),
    +1e6 -> every bit 0, whatever the keys; the plain config's codes are neither."""
    from gsa.eval.centre import default_centre_bundle
    from gsa.weights import save_key_means, tensor_name
    model, _, cfg, key = loaded
    ids = torch.randint(3, 300, (64,), generator=torch.Generator().manual_seed(6))
    hkv = cfg.num_key_value_heads
    rnd = _prefill_codes(model, cli._named_config(cfg, "r0.25-b64-bs16", key), ids)
    for value, byte in ((-1e6, 0xFF), (1e6, 0x00)):
        from gsa import weights
        weights.clear_cache()
        save_key_means(default_centre_bundle(key), {}, extra={
            tensor_name(l, "threshold"): torch.full((hkv, 64), value) for l in range(cfg.num_hidden_layers)})
        cen = _prefill_codes(model, cli._named_config(cfg, "r0.25-b64-bs16-centred", key), ids)
        for l, (_, codes) in cen.items():
            assert codes.shape == (64, hkv, 8)
            assert bool((codes == byte).all()), (l, value)
            assert not bool((rnd[l][1] == byte).all())


def test_cli_passkey_runs_centred_and_mlp_configs(folder, loaded, cache, tmp_path):
    _, _, cfg, key = loaded
    _write_means(cfg, key)
    _write_mlp(cfg, key, 64, 1)
    ap = argparse.ArgumentParser()
    cli.add_arguments(ap)
    args = ap.parse_args(["--model", folder, "--parts", "passkey", "--lengths", "300", "--depths", "0.5",
                          "--block-size", "16", "--passkey-configs", "r0.25-b128", "r0.25-b128-centred",
                          "r0.25-b64-mlp1", "--out", str(tmp_path), "--tag", "named"])
    assert cli.run(args) == 0
    res = json.loads((tmp_path / "accuracy_named.json").read_text())
    assert {r["config"] for r in res["passkey"]} == {"dense", "r0.25-b128", "r0.25-b128-centred", "r0.25-b64-mlp1"}
    bundles = res["meta"]["config_bundles"]
    assert bundles["r0.25-b128-centred"]["hash_centre"].endswith(f"{key}-centre.safetensors")
    assert bundles["r0.25-b64-mlp1"]["hash_weight"].endswith(f"{key}-mlp1-b64.safetensors")
    assert "r0.25-b128" not in bundles


def test_codes_check_keeps_matching_configs_and_names_why_others_leave(cache, capsys):
    """`python -m gsa.eval.codes_check` (used by benchmarks/device_long_tasks.sh): on the CPU
    every present config agrees with itself and is kept; a missing bundle is left out, with its
    command in the reason."""
    from gsa.config import GSAConfig
    from gsa.eval import codes_check
    from gsa.eval.load import PACKAGED
    cfg = GSAConfig.for_model(PACKAGED["qwen"])
    _write_means(cfg, "qwen")
    assert codes_check.main(["--model", "qwen", "--device", "cpu", "r0.125-b128-centred", "r0.125-b128-mlp1"]) == 0
    out, err = capsys.readouterr()
    assert out.split() == ["r0.125-b128-centred"]
    assert "r0.125-b128-centred on cpu: key / query code bits equal to the CPU's: 1.0000 / 1.0000 -> kept" in err
    assert "r0.125-b128-mlp1 on cpu: LEFT OUT" in err and "gsa train-hash --model qwen --method mlp --depth 1" in err
    assert codes_check.code_agreement(cli._named_config(cfg, "r0.125-b64", "qwen"), "cpu") == (1.0, 1.0)
