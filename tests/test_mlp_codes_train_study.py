"""benchmarks/mlp_codes_train_study.py: the variant specs it parses (the training itself is
train_mlp_hash, tested in tests/test_eval_train_mlp.py)."""
import importlib.util
import pathlib

import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "mlp_codes_train_study.py"
_spec = importlib.util.spec_from_file_location("mlp_codes_train_study", _PATH)
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)


def test_parse_variant_types():
    name, kw = study.parse_variant("tb:depth=1,steps=150,target=top+block,lr=0.003,bits=256,use_tokens=4096")
    assert name == "tb"
    assert kw == {"depth": 1, "steps": 150, "target": "top+block", "lr": 0.003, "bits": 256, "use_tokens": 4096}
    assert isinstance(kw["depth"], int) and isinstance(kw["lr"], float)
    assert study.parse_variant("plain") == ("plain", {})
    assert study.parse_variant("m:block=128,repre=mean")[1] == {"block": 128, "repre": "mean"}  # strings stay strings


@pytest.mark.parametrize("bad", [":depth=1", "x:depth", "x:depth=1,steps"])
def test_parse_variant_rejects_bad_specs(bad):
    with pytest.raises(SystemExit, match="--variant"):
        study.parse_variant(bad)
