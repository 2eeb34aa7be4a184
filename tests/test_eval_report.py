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
