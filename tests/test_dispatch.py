"""Dispatch: backend selection, forced backends, missing-backend errors, and the
torch custom ops' fake implementations (torch.compile / graph capture)."""
import pytest
import torch

import gsa
from gsa import dispatch, ops
from gsa.dispatch import Backend, BackendUnavailableError


def test_reference_always_available():
    assert dispatch.resolve("hamming_dist_top_k", "cpu").name in dispatch.backends()
    with gsa.use_backend("reference"):
        for op in dispatch.OP_NAMES:
            assert dispatch.resolve(op, "cpu").name == "reference"
            assert dispatch.resolve(op, "npu").name == "reference"


def test_missing_backend_error_says_how_to_install():
    with pytest.raises(BackendUnavailableError, match=r"'nonesuch' was requested but is missing"):
        with gsa.use_backend("nonesuch"):
            pass
    with pytest.raises(BackendUnavailableError, match=r"npu.*(Ascend|CANN|torch_npu)"):
        with gsa.use_backend("npu"):
            pass


def test_env_var_forces_backend(monkeypatch):
    monkeypatch.setenv("GSA_BACKEND", "nonesuch")
    with pytest.raises(BackendUnavailableError, match="nonesuch"):
        ops.sign_bits_pack(torch.randn(2, 8))
    monkeypatch.setenv("GSA_BACKEND", "reference")
    assert dispatch.resolve("kv_select", "cpu").name == "reference"
    # the context manager wins over the environment
    monkeypatch.setenv("GSA_BACKEND", "nonesuch")
    with gsa.use_backend("reference"):
        assert ops.sign_bits_pack(torch.ones(1, 8)).item() == 255


def test_priority_device_and_fallback():
    calls = []

    def fake_pack(x):
        calls.append("fake")
        return gsa.reference.sign_bits_pack(x)

    saved = dict(dispatch._REGISTRY)
    try:
        dispatch.register_backend(Backend("fakecpu", ("cpu",), {"sign_bits_pack": fake_pack}, priority=1000))
        dispatch.register_backend(Backend("broken", ("cpu",), {"kv_select": fake_pack}, priority=2000,
                                          probe=lambda: (False, "library not built")))
        assert dispatch.resolve("sign_bits_pack", "cpu").name == "fakecpu"
        assert dispatch.resolve("sign_bits_pack", "cuda").name != "fakecpu"  # serves cpu only
        assert dispatch.resolve("kv_select", "cpu").name != "broken"  # unavailable: skipped
        ops.sign_bits_pack(torch.randn(1, 8))
        assert calls == ["fake"]
        # forced but without a kernel for the op: falls back to the reference
        with gsa.use_backend("fakecpu"):
            assert dispatch.resolve("hash_encode", "cpu").name == "reference"
        with pytest.raises(BackendUnavailableError, match="library not built"):
            with gsa.use_backend("broken"):
                pass
        with pytest.raises(BackendUnavailableError, match="serves only"):
            with gsa.use_backend("fakecpu"):
                dispatch.resolve("sign_bits_pack", "cuda")
        with pytest.raises(ValueError, match="unknown ops"):
            dispatch.register_backend(Backend("bad", ("cpu",), {"not_an_op": fake_pack}))
    finally:
        dispatch._REGISTRY.clear()
        dispatch._REGISTRY.update(saved)


def test_backend_report_lists_all_backends():
    report = dispatch.backend_report()
    for name in ("reference", "cpu", "triton", "npu"):
        assert name in report and "reason" in report[name]
    assert report["reference"]["available"]
    assert not report["npu"]["available"]


def _sample_args():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 256, (2, 4, 8), dtype=torch.uint8, generator=g)
    cache = torch.randint(0, 256, (6, 2, 4, 8), dtype=torch.uint8, generator=g)
    table = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)
    seq = torch.tensor([12, 7], dtype=torch.int32)
    bud = torch.tensor([1, 2], dtype=torch.int32)
    return q, cache, table, seq, bud


def test_opcheck_custom_ops():
    """torch.library.opcheck: schema, fake impl and autograd registration agree."""
    g = torch.Generator().manual_seed(1)
    q, cache, table, seq, bud = _sample_args()
    x = torch.randn(3, 4, 16, generator=g)
    w = torch.randn(2, 16, 32, generator=g)
    checks = [
        (torch.ops.gsa.sign_bits_pack.default, (x,)),
        (torch.ops.gsa.hash_encode.default, (x, w)),
        (torch.ops.gsa.hash_encode_and_cache.default, (torch.randn(3, 2, 16), w, torch.zeros(2, 2, 4, 4, dtype=torch.uint8), torch.tensor([0, 5, -1]))),
        (torch.ops.gsa.mla_hash_encode.default, (torch.randn(3, 16), torch.randn(3, 8), torch.randn(16, 32), torch.randn(8, 32))),
        (torch.ops.gsa.hamming_dist_top_k.default, (q, cache, table, seq, bud, 3, [0, -1], "mean", 0, 1.0)),
        (torch.ops.gsa.kv_select.default, (torch.tensor([[0, 2, -1], [0, 1, -1]], dtype=torch.int32), torch.tensor([2, 2], dtype=torch.int32), table, seq, 4, 0)),
        (torch.ops.gsa.paged_decode_attention.default, (torch.randn(2, 4, 8), torch.randn(6, 4, 2, 8), torch.randn(6, 4, 2, 8), table, seq, None)),
    ]
    for op, args in checks:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_traces_full_graph():
    q, cache, table, seq, bud = _sample_args()

    def step(q, cache, table, seq, bud):
        idx, n = ops.hamming_dist_top_k(q, cache, table, seq, bud, 3, [0, -1], "max")
        return ops.kv_select(idx, n, table, seq, 4)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    got = compiled(q, cache, table, seq, bud)
    want = step(q, cache, table, seq, bud)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
