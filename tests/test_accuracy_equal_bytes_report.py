"""benchmarks/accuracy_equal_bytes_report.py: seed groups and margins over Quest at equal
bytes, on a hand-made study result whose cells are computed by hand here."""
import importlib.util
import pathlib

import pytest


def _load():
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy_equal_bytes_report.py"
    spec = importlib.util.spec_from_file_location("accuracy_equal_bytes_report", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _result():
    return {"meta": {"model": "toy", "bits": 32, "block_sizes": [32], "prefix": 64, "eval_tokens": 32, "sample_every": 8,
                     "weights": ["random", "mlp_s0=/a", "mlp_s1=/b", "mlp_s2=/c"], "argv": ["--bits", "32"],
                     "seconds": 1.0, "threads": 1, "date": "2026-11-29 00:00 UTC"},
            "overall": {"bs=32/oracle": 0.8, "bs=32/quest": 0.7, "bs=32/quest_eqbytes": 0.69,
                        "bs=32/quest_eqbytes_b32": 0.69, "bs=32/quest_eqbytes_exact_b32": 0.68,
                        "bs=32/gsa_random": 0.6, "bs=32/gsa_mlp_s0": 0.7, "bs=32/gsa_mlp_s1": 0.72,
                        "bs=32/gsa_mlp_s2": 0.68}}


def test_seed_suffixes_group_and_other_names_stay_alone():
    mod = _load()
    assert mod.groups(["random", "a_s0", "a_s1", "a_s10", "b_s1x"]) == {
        "random": ["random"], "a": ["a_s0", "a_s1", "a_s10"], "b_s1x": ["b_s1x"]}


def test_group_mean_spread_and_margins():
    mod = _load()
    (row,) = mod.rows([_result()])
    assert row["quest_up"] == 0.69 and row["quest_exact"] == 0.68
    assert row["gsa"]["mlp"] == pytest.approx((0.7, 0.68, 0.72, 3))
    md = mod.markdown([_result()], "t")
    # mean 0.70 - 0.69 = +0.01, worst seed 0.68 - 0.69 = -0.01; vs exact +0.02 / 0.00
    assert "| toy | 32 | 32 | 0.8000 | 0.7000 | 0.6900 | 0.6800 | mlp | 0.7000 (0.6800..0.7200, 3) | 0.875 | +0.0100 (-0.0100) | +0.0200 (+0.0000) |" in md
    assert "| random | 0.6000 | 0.750 | -0.0900 | -0.0800 |" in md


def test_block_mean_selectors_from_meta_selectors():
    # studies run with --repre max mean list their GSA selectors in meta.selectors; the block-mean
    # ones (mean_<name>) form their own seed groups
    mod = _load()
    res = _result()
    res["meta"]["selectors"] = ["random", "mlp_s0", "mlp_s1", "mean_mlp_s0", "mean_mlp_s1"]
    res["overall"].update({"bs=32/gsa_mean_mlp_s0": 0.75, "bs=32/gsa_mean_mlp_s1": 0.71})
    (row,) = mod.rows([res])
    assert list(row["gsa"]) == ["random", "mlp", "mean_mlp"]
    assert row["gsa"]["mlp"] == pytest.approx((0.71, 0.7, 0.72, 2))
    assert row["gsa"]["mean_mlp"] == pytest.approx((0.73, 0.71, 0.75, 2))
