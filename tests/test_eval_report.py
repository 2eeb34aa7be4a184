"""gsa.eval.report: the passkey table carries found/answer/blocks and, when measured, recall."""
import json

from gsa.eval.report import write_results


def _row(config, found, answer, recall=None, worst=None):
    r = {"length": 8177, "target_length": 8192, "depth": 0.5, "config": config, "passkey": 41915,
         "answer": answer, "found": found, "blocks_read": 15.0, "n_blocks": 64}
    if recall is not None:
        r.update(mass_recall=recall, mass_recall_min_layer=worst)
    return r


def test_passkey_table_rows(tmp_path):
    res = {"meta": {"model": "smollm2"},
           "passkey": [_row("dense", True, "41915. Remember"),
                       _row("r0.125-b128", False, "41515. The", 0.8946, 0.6491)]}
    paths = write_results(res, tmp_path, "t")
    md = paths["md"].read_text().splitlines()
    rows = [ln for ln in md if ln.startswith("| 8177 ")]
    assert rows == ["| 8177 | 50% | dense | yes | '41915. Remember' | 15.0 / 64 | - |",
                    "| 8177 | 50% | r0.125-b128 | NO | '41515. The' | 15.0 / 64 | 0.895 (0.649) |"]
    assert json.loads(paths["json"].read_text())["passkey"][1]["mass_recall"] == 0.8946


def test_retrieval_summary_sums_scores_per_config_and_length(tmp_path):
    import importlib.util
    from gsa.eval.report import _retrieval_summary_rows, plot_retrieval_summary
    pk = [_row("dense", True, "41915."), _row("r0.125-b128", False, "1.")]
    pk.append(dict(_row("dense", True, "7."), target_length=16384, length=16377))
    vt = [dict(_row("dense", False, "A B"), score=0.75), dict(_row("dense", True, "A B C D"), score=1.0, depth=0.9),
          dict(_row("quest-r0.125", False, "x"), score=0.25)]
    for r in vt:
        r["expected"] = ["A", "B", "C", "D"]
    res = {"meta": {}, "passkey": pk, "vartrack": vt}
    rows = _retrieval_summary_rows(res)
    assert rows[0] == "| task | config | 8192 | 16384 |"
    assert rows[2:] == ["| passkey | dense | 1/1 | 1/1 |", "| passkey | r0.125-b128 | 0/1 | - |",
                        "| vartrack | dense | 1.75/2 | - |", "| vartrack | quest-r0.125 | 0.25/1 | - |"]
    assert "| vartrack | dense | 1.75/2 | - |" in write_results(res, tmp_path, "s")["md"].read_text()
    png = plot_retrieval_summary(res, tmp_path / "sum.png")
    if importlib.util.find_spec("matplotlib"):
        assert png is not None and png.is_file()
    assert _retrieval_summary_rows({"meta": {}}) == [] and plot_retrieval_summary({}, tmp_path / "x.png") is None
