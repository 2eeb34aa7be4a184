"""npu backend logic that can be checked without Ascend hardware.

* tier choice per op (``npu_ops.choose``) and the probe's binding;
* registration: on this machine the backend is unavailable with a clear reason;
* ``npu_fused_infer_attention_score`` argument building, through a fake
  ``torch_npu`` whose FIA is an independent CPU model of the documented op;
* host-side sparse lengths (``sparse_seq_lens_host``) vs the reference kv_select;
* the ``npu_sign_bits_pack`` conformance check with simulated native ops.
"""
import math
import types

import pytest
import torch

import gsa
import npu_ops
from gsa import dispatch, reference
from npu_ops import attention, signpack
from npu_ops.custom import KERNELS as CUSTOM_OPS

# ----------------------------------------------------------------------------- tiers


def _probe(**kw):
    p = npu_ops.Probe(torch_npu=object(), custom=(False, "absent"), triton=(False, "absent"),
                      sign_pack_why="absent")
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def test_choose_everything_missing_is_reference():
    impl, reason = npu_ops.choose(_probe())
    assert set(impl) == set(dispatch.OP_NAMES)
    assert set(impl.values()) == {"reference"}
    assert reason.startswith("ok (reference: ")


def test_choose_custom_then_triton_then_fia_native():
    p = _probe(custom=(True, "lib.so"), triton=(True, "kernels"), fia=True, sign_pack=lambda x: x)
    impl, reason = npu_ops.choose(p)
    for op in CUSTOM_OPS:
        assert impl[op] == "custom"
    assert impl["hash_encode"] == "triton" and impl["mla_hash_encode"] == "triton"
    assert impl["paged_decode_attention"] == "fia"
    assert impl["sign_bits_pack"] == "native"
    assert "custom: " in reason and "triton: " in reason


def test_choose_triton_only_and_caps():
    p = _probe(triton=(True, "kernels"))
    impl, _ = npu_ops.choose(p)
    assert impl["hamming_dist_top_k"] == "triton" and impl["kv_select"] == "triton"
    assert impl["paged_decode_attention"] == "reference" and impl["sign_bits_pack"] == "reference"
    p = _probe(custom=(True, "lib"), triton=(True, "k"), tier_cap="triton")
    impl, reason = npu_ops.choose(p)
    assert impl["hamming_dist_top_k"] == "triton" and "GSA_NPU_TIER=triton" in reason
    p.tier_cap = "reference"
    impl, _ = npu_ops.choose(p)
    assert impl["hamming_dist_top_k"] == "reference" and impl["hash_encode_and_cache"] == "reference"


def test_probe_binds_implementations():
    ok, reason = npu_ops._probe(lambda: _probe(fia=True))
    assert ok and "fia: paged_decode_attention" in reason
    assert npu_ops._STATE.impls["paged_decode_attention"] is attention.paged_decode_attention
    assert npu_ops._STATE.impls["kv_select"] is reference.kv_select
    ok, reason = npu_ops._probe(lambda: npu_ops.Probe(why_not="no NPU here"))
    assert not ok and reason == "no NPU here"


def test_backend_registered_and_unavailable_here():
    b = dispatch.backends()["npu"]
    assert b.device_types == ("npu",)
    assert set(b.kernels) == set(dispatch.OP_NAMES)
    ok, reason = b.status()
    if ok:  # pragma: no cover - only on an Ascend machine
        pytest.skip("an NPU is present")
    assert "torch_npu" in reason
    with pytest.raises(gsa.BackendUnavailableError, match="npu"):
        with gsa.use_backend("npu"):
            pass
    # CPU tensors never go to the npu backend
    assert dispatch.resolve("kv_select", "cpu").name != "npu"


# ----------------------------------------------------------------------------- FIA


def _fake_fia(calls):
    """A CPU model of FIA's documented paged BSH decode path (independent of the reference)."""

    def npu_fused_infer_attention_score(query, key, value, *, block_table, actual_seq_lengths_kv, block_size,
                                        num_heads, num_key_value_heads, input_layout, scale, sparse_mode, **rest):
        calls.append(dict(block_table=block_table, actual_seq_lengths_kv=actual_seq_lengths_kv,
                          block_size=block_size, num_heads=num_heads, num_key_value_heads=num_key_value_heads,
                          input_layout=input_layout, scale=scale, sparse_mode=sparse_mode,
                          query_shape=tuple(query.shape), key_shape=tuple(key.shape), rest=rest))
        assert input_layout == "BSH" and sparse_mode == 0 and not rest
        assert isinstance(actual_seq_lengths_kv, list) and all(isinstance(x, int) for x in actual_seq_lengths_kv)
        assert block_table.dtype == torch.int32
        b, s, hd = query.shape
        d = hd // num_heads
        g = num_heads // num_key_value_heads
        out = torch.zeros(b, s, hd, dtype=query.dtype)
        for r in range(b):
            n = actual_seq_lengths_kv[r]
            blocks = [int(block_table[r, i]) for i in range(-(-n // block_size))]
            ks = torch.cat([key[i] for i in blocks])[:n].float().reshape(n, num_key_value_heads, d)
            vs = torch.cat([value[i] for i in blocks])[:n].float().reshape(n, num_key_value_heads, d)
            for h in range(num_heads):
                qh = query[r, 0, h * d:(h + 1) * d].float()
                p = torch.softmax((ks[:, h // g] @ qh) * scale, dim=0)
                out[r, 0, h * d:(h + 1) * d] = (p @ vs[:, h // g]).to(query.dtype)
        return out, torch.empty(1)

    return types.SimpleNamespace(npu_fused_infer_attention_score=npu_fused_infer_attention_score)


def _paged_case(seed, b=3, hq=8, hkv=2, d=16, bs=16, nb=24, m=6, dtype=torch.float16):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, d, generator=g).to(dtype)
    kc = torch.randn(nb, bs, hkv, d, generator=g).to(dtype)
    vc = torch.randn(nb, bs, hkv, d, generator=g).to(dtype)
    bt = torch.randperm(nb, generator=g)[: b * m].reshape(b, m).to(torch.int32)
    seq = torch.tensor([m * bs, 37, 1][:b], dtype=torch.int32)
    return q, kc, vc, bt, seq


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fia_dense_and_sparse_match_reference(monkeypatch, dtype):
    calls = []
    monkeypatch.setattr(attention, "_torch_npu", lambda: _fake_fia(calls))
    q, kc, vc, bt, seq = _paged_case(0, dtype=dtype)
    got = attention.paged_decode_attention(q, kc, vc, bt, seq, None)
    want = reference.paged_decode_attention(q, kc, vc, bt, seq, None)
    assert got.shape == want.shape and got.dtype == dtype
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)
    c = calls[-1]
    assert c["query_shape"] == (3, 1, 8 * 16) and c["key_shape"] == (24, 16, 2 * 16)
    assert c["block_size"] == 16 and c["num_heads"] == 8 and c["num_key_value_heads"] == 2
    assert c["actual_seq_lengths_kv"] == seq.tolist()
    assert math.isclose(c["scale"], 1 / math.sqrt(16))
    # sparse: kv_select's table and lengths through the same call
    codes_q = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    codes_k = torch.randint(0, 256, (24, 2, 16, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    budgets = torch.tensor([2, 2, 1], dtype=torch.int32)
    idx, nsel = reference.hamming_dist_top_k(codes_q, codes_k, bt, seq, budgets, 3, [0, -1])
    st, sl = reference.kv_select(idx, nsel, bt, seq, 16, 0)
    got = attention.paged_decode_attention(q, kc, vc, st, sl, 0.3)
    want = reference.paged_decode_attention(q, kc, vc, st, sl, 0.3)
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)
    assert calls[-1]["scale"] == 0.3 and calls[-1]["actual_seq_lengths_kv"] == sl.tolist()


def test_fia_fp32_goes_to_reference(monkeypatch):
    monkeypatch.setattr(attention, "_torch_npu", lambda: pytest.fail("FIA has no fp32 path"))
    q, kc, vc, bt, seq = _paged_case(3, dtype=torch.float32)
    got = attention.paged_decode_attention(q, kc, vc, bt, seq, None)
    assert torch.equal(got, reference.paged_decode_attention(q, kc, vc, bt, seq, None))


def test_fia_arguments_reject_wrong_length_count():
    q, kc, vc, bt, seq = _paged_case(4)
    with pytest.raises(ValueError, match="seq_lens_host"):
        attention.fia_arguments(q, kc, vc, bt, [5, 6], None)


# ----------------------------------------------------------------------------- host sparse lengths


@pytest.mark.parametrize("seed", range(6))
def test_sparse_seq_lens_host_matches_kv_select(seed):
    g = torch.Generator().manual_seed(seed)
    b, bs, m, hq, c = 6, 8, 9, 2, 4
    seq = torch.randint(1, m * bs + 1, (b,), generator=g, dtype=torch.int32)
    seq[0] = m * bs
    seq[1] = 1
    budgets = torch.randint(1, m + 2, (b,), generator=g, dtype=torch.int32)
    q = torch.randint(0, 256, (b, hq, c), dtype=torch.uint8, generator=g)
    kc = torch.randint(0, 256, (b * m, 1, bs, c), dtype=torch.uint8, generator=g)
    bt = torch.arange(b * m, dtype=torch.int32).reshape(b, m)
    for forced in ([0, -1], [-1], [1, -1, -2]):
        for k in (m, 2):
            idx, nsel = reference.hamming_dist_top_k(q, kc, bt, seq, budgets, k, forced)
            _, lens = reference.kv_select(idx, nsel, bt, seq, bs, 0)
            host = attention.sparse_seq_lens_host(seq.tolist(), budgets.tolist(), bs, forced, k=k)
            assert host == lens.tolist(), (forced, k)


def test_sparse_seq_lens_host_unknown_without_forced_last():
    # budget 1 of 3 blocks, nothing forced: the length depends on which block wins
    assert attention.sparse_seq_lens_host([20], [1], 8, [0]) is None
    assert attention.sparse_seq_lens_host([20], [3], 8, []) == [20]  # all blocks
    assert attention.sparse_seq_lens_host([20], [1], 8, [-1]) == [4]  # only the partial last block


# ----------------------------------------------------------------------------- sign_bits_pack conformance


def _native(rule, msb=False):
    """A simulated ``npu_sign_bits_pack(x1d, size)``: packs ``rule(x)`` bits, LSB or MSB first."""

    def pack(x, size):
        assert x.dim() == 1 and x.dtype in (torch.float16, torch.float32)
        bits = rule(x).reshape(size, -1, 8).to(torch.int32)
        w = torch.tensor([1 << (7 - i if msb else i) for i in range(8)], dtype=torch.int32)
        return (bits * w).sum(-1).to(torch.uint8)

    return pack


def test_conformance_accepts_documented_native_rule():
    fn = signpack.wrap_native(_native(lambda x: x >= 0))
    ok, why = signpack.conformance_check(fn, torch.device("cpu"))
    assert ok, why
    x = torch.randn(5, 3, 64, generator=torch.Generator().manual_seed(7)).to(torch.bfloat16)
    x[0, 0, :8] = torch.tensor([0.0, -0.0, float("nan"), 1, -1, 0, 2, -3])
    assert torch.equal(fn(x), reference.sign_bits_pack(x))
    assert fn(x)[0, 0, 0].item() == 0b01001000  # bits 3 and 6: the values 1 and 2


@pytest.mark.parametrize("rule,msb,needle", [
    (lambda x: x > 0, False, "byte"),      # wrapper then packs x >= 0: zeros differ
    (lambda x: x >= 0, True, "byte"),      # bit order
    (lambda x: ~torch.signbit(x), False, "byte"),  # -0 packed as negative: +0 would give 1
])
def test_conformance_rejects_other_rules(rule, msb, needle):
    ok, why = signpack.conformance_check(signpack.wrap_native(_native(rule, msb)), torch.device("cpu"))
    assert not ok and needle in why


def test_conformance_rejects_raising_and_missing_native():
    def boom(x, size):
        raise RuntimeError("unsupported dtype")

    ok, why = signpack.conformance_check(signpack.wrap_native(boom), torch.device("cpu"))
    assert not ok and "unsupported dtype" in why
    fn, why = signpack.native_sign_bits_pack(torch.device("cpu"), types.SimpleNamespace())
    assert fn is None and "no npu_sign_bits_pack" in why
    fn, why = signpack.native_sign_bits_pack(torch.device("cpu"),
                                             types.SimpleNamespace(npu_sign_bits_pack=_native(lambda x: x >= 0)))
    assert fn is not None and "matches spec 1" in why


# ----------------------------------------------------------------------------- AscendC build and library


def test_ascendc_build_skips_cleanly_without_cann(tmp_path):
    import os
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "npu_ops" / "ascendc" / "build.sh"
    env = {k: v for k, v in os.environ.items() if k != "ASCEND_HOME_PATH"}
    res = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0 and "skipped" in res.stdout and "ASCEND_HOME_PATH" in res.stdout
    assert not (script.parent / "build").exists()


def test_custom_library_load_reports_where_it_looked(monkeypatch, tmp_path):
    from npu_ops import custom

    monkeypatch.setenv("GSA_NPU_OPS_LIB", str(tmp_path / "nowhere.so"))
    ok, why = custom.load()
    assert not ok and "nowhere.so (absent)" in why and "build.sh" in why
    bad = tmp_path / "libbad.so"
    bad.write_bytes(b"not a library")
    monkeypatch.setenv("GSA_NPU_OPS_LIB", str(bad))
    ok, why = custom.load()
    assert not ok and "libbad.so (" in why
