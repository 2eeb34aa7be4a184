"""cuda_ops/tuning.py: per-device launch choices are read from a JSON file, only on CUDA."""
import json
import os

import pytest
import torch

from cuda_ops import tuning


def test_device_file_name():
    assert tuning.device_file("NVIDIA H200").endswith(os.path.join("tuning", "nvidia_h200.json"))
    assert tuning.device_file("NVIDIA H100 80GB HBM3").endswith("nvidia_h100_80gb_hbm3.json")


def test_cpu_gets_defaults():
    assert tuning.load(torch.device("cpu")) == {}
    assert tuning.knob(torch.device("cpu"), "score", "num_warps", 7) == 7


def test_shipped_files_hold_known_knobs():
    # every shipped file parses and names only knobs the wrappers read: the (kernel, name) pairs of
    # the knob(...) calls in cuda_ops' sources, so a knob a wrapper stops reading fails here
    import re

    src_dir = os.path.dirname(tuning.__file__)
    known = {}
    for fn in os.listdir(src_dir):
        if fn.endswith(".py"):
            for kernel, name in re.findall(r'knob\(\s*\w+,\s*"(\w+)",\s*"(\w+)"', open(os.path.join(src_dir, fn)).read()):
                known.setdefault(kernel, set()).add(name)
    assert {"score", "select", "attention", "hash"} <= set(known), known
    files = [f for f in os.listdir(os.path.dirname(tuning.device_file("x"))) if f.endswith(".json")]
    assert files, "no tuning file shipped"
    for f in files:
        with open(os.path.join(os.path.dirname(tuning.device_file("x")), f)) as fh:
            knobs = json.load(fh)["knobs"]
        for kernel, vals in knobs.items():
            assert kernel in known and set(vals) <= known[kernel], (f, kernel, vals)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_env_override(tmp_path, monkeypatch):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"knobs": {"score": {"num_warps": 2}}}))
    monkeypatch.setenv("GSA_TRITON_TUNING", str(p))
    monkeypatch.setattr(tuning, "_CACHE", {})
    assert tuning.knob(torch.device("cuda"), "score", "num_warps", 4) == 2
