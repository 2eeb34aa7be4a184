"""benchmarks/mla_step.py runs end to end (CPU smoke: tiny shapes, the generic hot path) and its
rows hold what the markdown reports."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mla_step_smoke(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "mla_step.py"), "--out", str(tmp_path), "--smoke"],
                   check=True, env=env, capture_output=True, timeout=600)
    res = json.loads((tmp_path / "mla_step.json").read_text())
    (row,) = res["rows"]
    assert row["context"] == 2048 and row["batch"] == 2 and row["code_bytes"] == 72 and row["rope_bytes"] == 8
    assert 1 <= row["n_sel"] <= row["k"] == 2048 // row["block"]
    assert row["code_mb"] == 2 * 2048 * 72 / 1e6 and row["dense_latent_mb"] == 2 * 2048 * 576 * 2 / 1e6
    assert all(row["eager_us"][k] > 0 for k in ("keys", "select", "both")) and row["host_us_eager"] > 0
    md = (tmp_path / "mla_step.md").read_text()
    assert "2K x 2" in md and "not a measurement" in md
