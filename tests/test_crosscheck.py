"""gsa crosscheck: the grid over the backends present, golden bundle round trip, tampering."""
import json
import os

import pytest
import torch

from gsa import crosscheck, dispatch, reference
from gsa._crosscheck_cases import Case, build_cases, compare

pytest.importorskip("safetensors")


def _run(argv, capsys):
    rc = crosscheck.main(argv)
    return rc, capsys.readouterr().out


def test_grid_passes_on_every_backend_here(capsys):
    rc, out = _run(["--size", "small"], capsys)
    assert rc == 0, out
    assert "reference@cpu" in out and "PASS" in out
    for b, dev in crosscheck.targets()[0]:
        assert f"{b}@{dev}" in out


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="npu_ops.triton needs a GPU or TRITON_INTERPRET=1")
def test_grid_over_npu_triton_kernels(capsys):
    pytest.importorskip("triton")
    rc, out = _run(["--size", "small", "--npu-triton", "--backends", "reference"], capsys)
    assert rc == 0, out
    assert "npu_triton@" in out and "FAIL" not in out
    assert "npu_triton" not in dispatch.backends()  # crosscheck-only backend is removed again


def test_grid_covers_the_spec_cases():
    cases = build_cases(0, "full")
    names = {c.name for c in cases}
    ops = {c.op for c in cases}
    assert ops == set(dispatch.OP_NAMES)
    assert any("mla" in n and "top_k" in n for n in names) and any("ties" in n for n in names)
    sel = [c for c in cases if c.op == "hamming_dist_top_k"]
    # ragged rows: a 1-token row, a partial last block, a budget above the block count
    q, kc, bt, seq, budgets = sel[0].args[:5]
    bs, m = kc.shape[2], bt.shape[1]
    n_blocks = (seq + bs - 1) // bs
    assert int(seq.min()) == 1 and bool((seq % bs != 0).any())
    assert bool((budgets >= n_blocks).any()) and bool((budgets < n_blocks).any())
    assert {c.args[7] for c in sel} == {"max", "mean"}


def test_golden_round_trip_and_tampering(tmp_path, capsys):
    bundle = tmp_path / "golden"
    # reference only: the interpreted backends are covered by the grid test above
    rc, out = _run(["--size", "small", "--save", str(bundle), "--backends", "reference"], capsys)
    assert rc == 0, out
    manifest = json.loads((bundle / "manifest.json").read_text())
    import gsa

    assert manifest["spec_version"] == gsa.SPEC_VERSION and manifest["versions"]["torch"] == torch.__version__
    rc, out = _run(["--golden", str(bundle), "--backends", "reference"], capsys)
    assert rc == 0, out
    assert "reference@cpu" in out and "FAIL" not in out

    # 1. a changed byte: the checksum catches it before anything runs
    exp = bundle / "expected.safetensors"
    raw = bytearray(exp.read_bytes())
    raw[-1] ^= 0x01
    exp.write_bytes(bytes(raw))
    rc, out = _run(["--golden", str(bundle), "--backends", "reference"], capsys)
    assert rc == 2
    raw[-1] ^= 0x01
    exp.write_bytes(bytes(raw))

    # 2. a consistent forgery (values changed, checksum updated): the comparison fails
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(exp))
    key = next(k for k in sorted(tensors) if tensors[k].dtype == torch.int32 and tensors[k].numel() > 1)
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] += 1
    save_file(tensors, str(exp))
    manifest["sha256"]["expected.safetensors"] = crosscheck._sha256(exp)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    rc, out = _run(["--golden", str(bundle), "--backends", "reference"], capsys)
    assert rc == 1 and "FAIL" in out, out

    # 3. another spec version is refused
    manifest["spec_version"] = "0.9"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    rc, _ = _run(["--golden", str(bundle), "--backends", "reference"], capsys)
    assert rc == 2


def test_a_wrong_backend_is_reported(monkeypatch, capsys):
    def bad_kv_select(indices, n_sel, block_table, seq_lens, block_size, pad_id):
        table, lens = reference.kv_select(indices, n_sel, block_table, seq_lens, block_size, pad_id)
        return table, lens + (seq_lens % 2)  # wrong length on odd rows

    dispatch.backends()
    monkeypatch.setitem(dispatch._REGISTRY, "broken", dispatch.Backend(
        name="broken", device_types=("cpu",), kernels={"kv_select": bad_kv_select}, priority=-99))
    rc, out = _run(["--size", "small", "--backends", "broken"], capsys)
    assert rc == 1
    assert "broken@cpu" in out and "FAIL" in out and "kv_select" in out


def test_compare_rules():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 32, generator=g)
    w = torch.randn(32, 64, generator=g)
    x[0] = 0  # a zero row: every projection is 0, inside the band
    case = Case("h", "hash_encode", [x, w], rule="codes", tol="hash")
    want = reference.hash_encode(x, w)
    got = want.clone()
    got[0, 3] ^= 0xFF  # inside the band: allowed
    assert compare(case, [got], [want], case.args)[0]
    got[1, 0] ^= 0x01  # outside: a failure
    ok, why = compare(case, [got], [want], case.args)
    assert not ok and "outside the spec-2 band" in why
    att = Case("a", "paged_decode_attention", [], rule="attention")
    e = torch.randn(2, 4, 8, generator=g).to(torch.bfloat16)
    assert compare(att, [e + 0.01], [e], [])[0]
    assert not compare(att, [e + 0.5], [e], [])[0]
    ex = Case("k", "kv_select", [], rule="exact")
    t = torch.arange(6, dtype=torch.int32)
    assert compare(ex, [t], [t.clone()], [])[0]
    assert not compare(ex, [t.to(torch.int64)], [t], [])[0]  # dtype is part of the contract


def test_committed_golden_bundle_verifies_here(capsys):
    """tests/golden/small is the bundle an Ascend or CUDA machine checks with
    ``gsa crosscheck --golden tests/golden/small``. It must keep verifying against
    the reference; after a deliberate spec/reference change, regenerate it with
    ``gsa crosscheck --size small --save tests/golden/small``."""
    from pathlib import Path

    bundle = Path(__file__).resolve().parent / "golden" / "small"
    rc, out = _run(["--golden", str(bundle), "--backends", "reference"], capsys)
    assert rc == 0, out
    assert "reference@cpu" in out and "FAIL" not in out
