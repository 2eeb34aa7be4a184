"""The vLLM device scripts' CPU-side helpers: the GPU clock summary and the report's host-time
table (benchmarks/vllm_device/). Hand-made inputs; no GPU, no vLLM."""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.join(HERE, "..", "benchmarks", "vllm_device")
sys.path.insert(0, TOOLS)

from clocks_summary import summarize  # noqa: E402


def test_clock_summary_hand_computed():
    lines = ["2026/11/29 19:00:00.000, 1980 MHz, 3201 MHz, 350.00 W, 45, 0x0000000000000000\n",
             "2026/11/29 19:00:00.500, 1605 MHz, 3201 MHz, 690.00 W, 61, 0x0000000000000004\n",
             "2026/11/29 19:00:01.000, 1755 MHz, 3201 MHz, 500.00 W, 58, 0x0000000000000004\n",
             "garbage line\n"]
    s = summarize(lines)
    assert "samples=3" in s
    assert "min/median/max=1605/1755/1980" in s
    assert "power_w median/max=500/690" in s
    assert "temp_c max=61" in s
    assert "'0x0000000000000004': 2" in s and "'0x0000000000000000': 1" in s
    assert summarize(["nothing, here\n"]) == "[clocks] no samples"


def _row(config, mode, step_ms, cpu_ms, tok_s, gc=None):
    return {"vllm": "0.26.0", "torch": "2.11", "device": "GPU", "model": "m", "backend": "FLASH_ATTN",
            "context": 131072, "batch": 5, "cudagraph_mode": mode, "cudagraph_mode_kept": mode, "config": config,
            "decode_tok_s": tok_s, "ms_per_step": step_ms, "tokens_sha": "x", "step_ms_median": step_ms,
            "decode_tok_s_median": 5e3 / step_ms, "first_steps_ms": [step_ms], "commit": "abc", "session": "s",
            "host": {"thread_cpu_ms_median": cpu_ms, "gc": gc or {}}}


def test_report_host_table(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [_row("dense", "PIECEWISE", 25.0, 15.0, 200.0), _row("1/8", "PIECEWISE", 16.0, 16.0, 312.5,
                                                               {"2": {"n": 1, "ms": 34.0}})]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "rep"
    subprocess.run([sys.executable, os.path.join(TOOLS, "report.py"), str(src), "--out", str(out)], check=True,
                   capture_output=True)
    md = (tmp_path / "rep.md").read_text()
    assert "| m | 128K x 5 | PIECEWISE | dense | 25.00 | 15.00 | 0.60 | - | abc |" in md
    assert "| m | 128K x 5 | PIECEWISE | 1/8 | 16.00 | 16.00 | 1.00 | 2: 1, 34 | abc |" in md
    # the throughput table: 1/8 against dense of the same mode and lease
    assert "| 1.56x |" in md
