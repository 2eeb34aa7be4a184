"""The gsa command line: built-in commands, the lazy registry, missing modules, the demo."""
import json
import subprocess
import sys

import pytest

from gsa import cli
from gsa.config import known_models


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_configs_lists_every_shipped_model(capsys):
    rc, out, _ = run(capsys, "configs")
    assert rc == 0
    for name in known_models():
        assert name in out
    rc, out, _ = run(capsys, "configs", "--json")
    rows = json.loads(out)
    assert sorted(r["model_name"] for r in rows) == known_models()
    r1 = next(r for r in rows if r["model_name"] == "deepseek-ai/DeepSeek-R1")
    assert r1["heads"] == "128 (MLA)" and r1["hash_bits"] == "512+64" and r1["layers"] == 61


def test_validate(capsys, tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"model_name": "x", "num_hidden_layers": 4, "num_attention_heads": 4,
                                "num_key_value_heads": 2, "head_dim": 32}))
    rc, out, err = run(capsys, "validate", str(good))
    assert rc == 0 and "ok:" in out and "x (GQA, 4 layers, 1 sparse" in out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model_name": "x", "num_hidden_layers": 4, "num_attention_heads": 4,
                               "num_key_value_heads": 2, "head_dim": 32, "hash_bits": 48}))
    rc, out, err = run(capsys, "validate", str(good), str(bad))
    assert rc == 1 and "ok:" in out
    assert f"error: GSA config {bad}: key 'hash_bits': expected a positive multiple of 32" in err and "got 48" in err
    rc, _, err = run(capsys, "validate", str(tmp_path / "nope.json"))
    assert rc == 1 and "cannot read" in err


def test_validate_reports_every_error_and_takes_model_names(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model_name": "x", "num_hidden_layers": 4, "num_attention_heads": 4,
                               "num_key_value_heads": 2, "head_dim": 32, "hash_bits": 48, "chunk_size": 0,
                               "colour": 1, "must_select_blocks": [1.7]}))
    rc, _, err = run(capsys, "validate", str(bad))
    assert rc == 1
    for key in ("unknown key 'colour'", "key 'hash_bits'", "key 'chunk_size'", "key 'must_select_blocks'"):
        assert key in err, (key, err)
    rc, out, err = run(capsys, "validate", "Qwen3-4B", "deepseek-r1")
    assert rc == 0 and "Qwen/Qwen3-4B (GQA" in out and "deepseek-ai/DeepSeek-R1 (MLA" in out, err
    rc, _, err = run(capsys, "validate", "NoSuchModel-7B")
    assert rc == 1 and "no shipped GSA config" in err and "known models" in err


def test_info(capsys):
    rc, out, _ = run(capsys, "info")
    assert rc == 0 and "reference" in out and "backend" in out and "devices: cpu" in out
    rc, out, _ = run(capsys, "info", "--json")
    data = json.loads(out)
    assert data["backends"]["reference"]["available"] is True
    assert set(data["backends"]) >= {"reference", "cpu", "triton", "npu"}
    for name, r in data["backends"].items():
        assert r["available"] or r["reason"], f"{name}: an unavailable backend must say why"


def test_help_and_unknown(capsys):
    rc, out, _ = run(capsys)
    assert rc == 2 and "commands:" in out and "demo" in out and "crosscheck" in out
    rc, out, _ = run(capsys, "--help")
    assert rc == 0 and "train-hash" in out
    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and "spec 1.1" in out
    rc, _, err = run(capsys, "confgs")
    assert rc == 2 and "unknown command 'confgs'" in err and "did you mean 'configs'?" in err


def test_registry_lazy_import_and_missing_modules(capsys, monkeypatch, tmp_path):
    (tmp_path / "gsa_test_cmd.py").write_text(
        "def add_arguments(p):\n    p.add_argument('--n', type=int, default=1)\n"
        "def run(args):\n    print('ran', args.n)\n    return args.n\n")
    (tmp_path / "gsa_test_needs_dep.py").write_text("import gsa_surely_missing_dependency\n")
    (tmp_path / "gsa_test_no_run.py").write_text("def add_arguments(p):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, "mine", ("gsa_test_cmd", "test command"))
    monkeypatch.setitem(cli.COMMANDS, "gone", ("gsa.no_such_module_here", "missing"))
    monkeypatch.setitem(cli.COMMANDS, "dep", ("gsa_test_needs_dep", "missing dependency"))
    monkeypatch.setitem(cli.COMMANDS, "norun", ("gsa_test_no_run", "incomplete"))
    assert "gsa_test_cmd" not in sys.modules
    rc, out, _ = run(capsys, "mine", "--n", "7")
    assert rc == 7 and "ran 7" in out
    rc, _, err = run(capsys, "gone")
    assert rc == 2 and "command 'gone' is not installed in this build (module gsa.no_such_module_here is missing)" in err
    rc, _, err = run(capsys, "dep")
    assert rc == 2 and "needs the Python package 'gsa_surely_missing_dependency'" in err
    rc, _, err = run(capsys, "norun")
    assert rc == 2 and "has no run()" in err
    for name in ("crosscheck", "eval", "train-hash", "data"):
        assert name in cli.COMMANDS  # modules other helpers provide


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "gsa", "configs"], capture_output=True, text=True, check=True).stdout
    assert "Qwen/Qwen3-4B" in out


@pytest.mark.parametrize("model", ["SmolLM2-135M-Instruct", "DeepSeek-V2-Lite"])
def test_demo_small(capsys, model):
    rc, out, _ = run(capsys, "demo-synthetic", "--model", model, "--batch", "2", "--seq-len", "2048", "--layers", "1",
                     "--planted", "2", "--backends", "reference")
    assert rc == 0
    line = next(l for l in out.splitlines() if l.startswith("reference"))
    name, recall, err, same = line.split()[:4]
    assert float(recall) >= 0.5 and 0 <= float(err) < 1 and same == "yes"
    assert "blocks kept:" in out


@pytest.mark.parametrize("argv,fragment", [
    (["--depths", "10"], "--depths: expected a fraction in [0, 1], got 10 (write 10% as 0.1)"),
    (["--ratios", "0"], "--ratios: expected a fraction in (0, 1], got 0"),
    (["--depths", "x"], "--depths: expected a number, got 'x'"),
])
def test_eval_rejects_out_of_range_fractions(capsys, argv, fragment):
    pytest.importorskip("gsa.eval.cli")
    with pytest.raises(SystemExit) as exc:
        cli.main(["eval", *argv])
    assert exc.value.code == 2
    assert fragment in capsys.readouterr().err
