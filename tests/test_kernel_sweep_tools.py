"""CPU-side helpers of benchmarks/kernel_sweep.py: how a sweep's rows become tuning knobs and
tables (hand-made rows; no GPU)."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "benchmarks"))

import kernel_sweep as ks  # noqa: E402
from kernel_sweep_report import _variant_table  # noqa: E402


def _rows(*vals):
    return [dict(v=v, ms=ms, same=same) for v, ms, same in vals]


def test_best_variant_needs_every_case_correct_and_sums_cost():
    cases = {"a": _rows((1, 5.0, True), (2, 1.0, False), (3, 4.0, True)),
             "b": _rows((1, 5.0, True), (2, 1.0, True), (3, 7.0, True))}
    # variant 2 is fastest but wrong in case a; 1 sums to 10, 3 to 11
    assert ks._best_variant(cases, lambda r: r["v"], lambda r, rows: r["ms"]) == 1
    # relative to each case's fastest row (2 in both): 1 -> 5 + 5 = 10, 3 -> 4 + 7 = 11
    rel = ks._best_variant(cases, lambda r: r["v"], lambda r, rows: r["ms"] / min(x["ms"] for x in rows))
    assert rel == 1


def test_choose_decode_hash_and_stages():
    res = {"hash_decode": {"keys": [dict(block_c=16, us=8.0, same=True), dict(block_c=4, us=6.0, same=True)],
                           "query": [dict(block_c=16, us=8.0, same=True), dict(block_c=4, us=9.0, same=True)]},
           "score_stages": {"32768": [dict(num_stages=1, ms=1.0, same=True), dict(num_stages=3, ms=2.0, same=True)],
                            "131072": [dict(num_stages=1, ms=10.0, same=True), dict(num_stages=3, ms=6.0, same=True)]}}
    k = ks.choose(res)
    assert k["hash"]["decode_block_c"] == 4  # 15 us vs 16 us in total
    # relative: stages 1 -> 1 + 10/6, stages 3 -> 2 + 1: 2.67 < 3
    assert k["score"]["num_stages"] == 1


def test_variant_table_marks_wrong_variants():
    cases = {"32768": [dict(n=1, ms=0.5, same=True), dict(n=3, ms=0.25, same=False)]}
    lines = _variant_table("T", "context", cases, lambda r: str(r["n"]), lambda c: f"{int(c) // 1024}K",
                           lambda r: f"{r['ms']:.2f}")
    assert lines == ["", "T", "", "| context | 1 | 3 |", "|---|---|---|", "| 32K | 0.50 | 0.25 DIFFERENT |"]


def test_flush_mode_from_argument_and_environment(monkeypatch):
    import pytest
    import timing

    monkeypatch.delenv("GSA_BENCH_FLUSH", raising=False)
    assert timing.flush_mode() == "zero"  # triton do_bench, as every result before the eighth session of 2026-11-29
    monkeypatch.setenv("GSA_BENCH_FLUSH", "clean")
    assert timing.flush_mode() == "clean"
    assert timing.flush_mode("zero") == "zero"  # the argument wins over the environment
    monkeypatch.setenv("GSA_BENCH_FLUSH", "dirty")
    with pytest.raises(ValueError, match="expected one of .*got 'dirty'"):
        timing.flush_mode()


def test_choose_score_occupancy_skips_errors_and_differences():
    def row(nw, cap, ms, same=True, err=False):
        r = dict(num_warps=nw, maxnreg=cap, planes=False, blocks=1)
        return dict(r, error="OutOfResources") if err else dict(r, ms=ms, tbs=1.0, same=same)

    res = {"score_occupancy": {"32768": [row(2, 0, 3.0), row(2, 32, 2.0), row(4, 32, 1.0, same=False),
                                         row(1, 32, 0.5, err=True)],
                               "131072": [row(2, 0, 8.0), row(2, 32, 8.4), row(4, 32, 7.0), row(1, 32, 1.0, err=True)]}}
    # relative costs: (2, 0) 1.5 + 1.0 = 2.5; (2, 32) 1.0 + 1.05 = 2.05; (4, 32) differs at 32K; (1, 32) failed
    got = ks.choose(res)["score"]
    assert (got["num_warps"], got["maxnreg"], got["planes"], got["blocks"]) == (2, 32, False, 1)
    lines = "\n".join(_variant_table("t", "context", res["score_occupancy"], lambda r: str(r["num_warps"]), str,
                                     lambda r: f"{r['ms']:.1f}"))
    assert "error" in lines and "DIFFERENT" in lines
