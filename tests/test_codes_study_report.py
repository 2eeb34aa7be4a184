"""benchmarks/codes_study_report.py: the table of mlp_codes_study.py results, on
hand-made result dicts whose cells are computed by hand here."""
import importlib.util
import json
import pathlib

import pytest


def _load():
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "codes_study_report.py"
    spec = importlib.util.spec_from_file_location("codes_study_report", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _result(bits, weights, overall):
    return {"meta": {"model": "toy", "book": "emma", "prefix": 64, "eval_tokens": 32, "ratio": 0.125, "bits": bits,
                     "block_sizes": sorted({int(k.split("/")[0][3:]) for k in overall}, reverse=True),
                     "weights": weights, "argv": ["--bits", str(bits)], "seconds": 1.0, "threads": 1,
                     "date": "2026-11-29 00:00 UTC"},
            "overall": overall}


def _two_runs():
    a = _result(128, ["random", "mlp2=/x/qwen-mlp2-b128.safetensors"], {
        "bs=32/oracle": 0.8, "bs=32/quest": 0.7, "bs=32/quest_eqbytes": 0.75,
        "bs=32/gsa_random": 0.6, "bs=32/gsa_random/block_recall": 0.25,
        "bs=32/gsa_mlp2": 0.78, "bs=32/gsa_mlp2/block_recall": 0.5})
    b = _result(256, ["random"], {
        "bs=32/oracle": 0.8, "bs=32/quest": 0.7, "bs=32/quest_eqbytes": 0.9,
        "bs=32/gsa_random": 0.64, "bs=32/gsa_random/block_recall": 0.375})
    return a, b


def test_rows_give_mass_recall_and_multiple_of_the_oracle():
    mod = _load()
    rows = mod.study_rows(_two_runs())
    assert [(r["bits"], r["block_size"]) for r in rows] == [(128, 32), (256, 32)]
    assert rows[0]["gsa"]["mlp2"] == pytest.approx((0.78, 0.975, 0.5))  # 0.975 x oracle
    assert rows[1]["gsa"]["random"] == pytest.approx((0.64, 0.8, 0.375))     # 0.64 / 0.8 = 0.8
    assert "mlp2" not in rows[1]["gsa"]
    assert rows[1]["quest_eqbytes"] == 0.9


def test_markdown_cells_and_missing_selector(tmp_path):
    mod = _load()
    md = mod.markdown(_two_runs(), "t")
    # runs without the exact-bytes rows show "-" for Quest exact bytes
    assert "| 128 | 32 | 0.8000 | 0.7000 | 0.7500 | - | 0.6000 (0.750 x; 0.250) | 0.7800 (0.975 x; 0.500) |" in md
    assert "| 256 | 32 | 0.8000 | 0.7000 | 0.9000 | - | 0.6400 (0.800 x; 0.375) | - |" in md
    assert "python benchmarks/mlp_codes_study.py --bits 128" in md


def test_exact_bytes_column_comes_from_the_runs_own_width():
    mod = _load()
    a, _ = _two_runs()
    a["overall"].update({"bs=32/quest_eqbytes_exact_b128": 0.7375, "bs=32/quest_eqbytes_exact_b64": 0.1})
    md = mod.markdown([a], "t")
    assert "| 128 | 32 | 0.8000 | 0.7000 | 0.7500 | 0.7375 | 0.6000 (0.750 x; 0.250) |" in md


def test_cli_writes_markdown_and_plot(tmp_path):
    mod = _load()
    paths = []
    for i, r in enumerate(_two_runs()):
        p = tmp_path / f"r{i}.json"
        p.write_text(json.dumps(r))
        paths.append(str(p))
    assert mod.main(paths + ["--out", str(tmp_path / "out.v1")]) == 0
    assert (tmp_path / "out.v1.md").read_text().startswith("# toy: codes vs oracle")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "out.v1.png").stat().st_size > 1000


def test_runs_on_the_same_rows_merge_and_other_rows_stay_apart():
    mod = _load()
    a, b = _two_runs()
    c = _result(128, ["mlp1=/x/b.safetensors"], {  # same rows, fp32 sums off by 3e-8 (another thread count)
        "bs=32/oracle": 0.8 + 3e-8, "bs=32/quest": 0.7, "bs=32/quest_eqbytes": 0.75,
        "bs=32/gsa_mlp1": 0.7, "bs=32/gsa_mlp1/block_recall": 0.4})
    d = _result(128, ["random"], {  # another eval (different oracle): its own row
        "bs=32/oracle": 0.9, "bs=32/quest": 0.7, "bs=32/quest_eqbytes": 0.75,
        "bs=32/gsa_random": 0.81, "bs=32/gsa_random/block_recall": 0.5})
    rows = mod.study_rows([a, b, c, d])
    assert [(r["bits"], r["oracle"]) for r in rows] == [(128, 0.8), (256, 0.8), (128, 0.9)]
    assert sorted(rows[0]["gsa"]) == ["mlp1", "mlp2", "random"]
    assert rows[0]["gsa"]["mlp1"] == pytest.approx((0.7, 0.875, 0.4), rel=1e-6)
    assert rows[2]["gsa"]["random"] == pytest.approx((0.81, 0.9, 0.5))
