"""Hypothesis: every CPU-serving backend equals the reference on random shapes,
strides (strided / offset / transposed views) and dtypes, through ``gsa.ops``.

Hash inputs are small integers, so projections are exact in every dtype and
codes compare bit for bit; selection and kv_select are exact by the spec;
attention compares within a dtype tolerance. Example counts stay small (CI runs
this file twice: C++ and Triton interpreter).
"""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gsa
from gsa import ops

SETTINGS = settings(max_examples=15, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def layout(draw, t: torch.Tensor) -> torch.Tensor:
    """The values of ``t`` in a drawn layout: contiguous, inner-strided with an
    offset, or (2-D and up) a transposed copy seen back through a transpose."""
    kind = draw(st.sampled_from(["contiguous", "strided", "transposed"]))
    if kind == "strided" and t.numel():
        step, off = draw(st.integers(2, 3)), draw(st.integers(0, 3))
        buf = torch.zeros(off + t.numel() * step, dtype=t.dtype) - 7
        v = buf.as_strided(t.shape, [s * step for s in t.contiguous().stride()], off)
        v.copy_(t)
        return v
    if kind == "transposed" and t.dim() >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    return t


def reference(op, **kwargs):
    kw = {k: (v.contiguous().clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    with gsa.use_backend("reference"):
        return getattr(ops, op)(**kw), kw


def small_ints(g, shape, dtype):
    return torch.randint(-3, 4, shape, generator=g).to(dtype)


@SETTINGS
@given(data=st.data())
def test_hash_encode_matches_reference(backend, data):
    draw = data.draw
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    hw, grp, d, r = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 24)), 32 * draw(st.integers(1, 3))
    t, dtype = draw(st.integers(0, 5)), draw(st.sampled_from(DTYPES))
    x = layout(draw, small_ints(g, (t, hw * grp, d), dtype))
    w = layout(draw, small_ints(g, (hw, d, r), draw(st.sampled_from(DTYPES))))
    want, _ = reference("hash_encode", x=x, weight=w)
    assert torch.equal(ops.hash_encode(x, w), want)


@SETTINGS
@given(data=st.data())
def test_hash_encode_and_cache_writes_only_its_slots(backend, data):
    draw = data.draw
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    hkv, d, r = draw(st.integers(1, 3)), draw(st.integers(1, 16)), 32 * draw(st.integers(1, 2))
    nb, bs = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    t = draw(st.integers(0, nb * bs))
    slots = torch.randperm(nb * bs, generator=g)[:t]
    slots[torch.rand(t, generator=g) < 0.2] = -1
    slots = layout(draw, slots.to(draw(st.sampled_from([torch.int32, torch.int64]))))
    k = layout(draw, small_ints(g, (t, hkv, d), draw(st.sampled_from(DTYPES))))
    w = layout(draw, small_ints(g, (hkv, d, r), torch.float32))
    c, pad = r // 8, draw(st.integers(0, 5))  # row gap of `pad` bytes inside the buffer
    buf = torch.randint(0, 256, (8 + nb * hkv * bs * (c + pad) + 8,), generator=g, dtype=torch.uint8)
    strides = (hkv * bs * (c + pad), bs * (c + pad), c + pad, 1)
    want_buf = buf.clone()
    want_cache = want_buf.as_strided((nb, hkv, bs, c), strides, 8)
    with gsa.use_backend("reference"):
        ops.hash_encode_and_cache(k.contiguous(), w.contiguous(), want_cache, slots.contiguous())
    ops.hash_encode_and_cache(k, w, buf.as_strided((nb, hkv, bs, c), strides, 8), slots)
    assert torch.equal(buf, want_buf)


def _selection_inputs(draw, g):
    b, hkv, grp = draw(st.integers(0, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    c, bs, m = 4 * draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 8))
    nb = draw(st.integers(1, 12))
    seq = torch.randint(1, m * bs + 1, (b,), generator=g, dtype=torch.int32)
    table = torch.randint(0, nb, (b, m), generator=g, dtype=torch.int32)
    budgets = torch.randint(1, m + 2, (b,), generator=g, dtype=torch.int32)
    q = torch.randint(0, 256, (b, hkv * grp, c), generator=g, dtype=torch.uint8)
    kc = torch.randint(0, 256, (nb, hkv, bs, c), generator=g, dtype=torch.uint8)
    kc[:, :, :, : c // 2] = torch.randint(0, 2, (nb, hkv, bs, c // 2), generator=g, dtype=torch.uint8)  # ties
    forced = draw(st.lists(st.integers(-m - 1, m), max_size=8, unique=True))
    return dict(q_codes=layout(draw, q), key_cache=layout(draw, kc), block_table=layout(draw, table),
                seq_lens=layout(draw, seq), budgets=layout(draw, budgets), k=m + draw(st.integers(0, 2)),
                must_select_blocks=forced, chunk_repre_method=draw(st.sampled_from(["max", "mean"])))


@SETTINGS
@given(data=st.data())
def test_selection_and_kv_select_match_reference(backend, data):
    draw = data.draw
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    args = _selection_inputs(draw, g)
    (want_idx, want_n), _ = reference("hamming_dist_top_k", **args)
    idx, n = ops.hamming_dist_top_k(**args)
    assert torch.equal(idx, want_idx) and torch.equal(n, want_n)
    bs = args["key_cache"].shape[2]
    pad = draw(st.integers(-2**31, 2**31 - 1))
    sel = dict(indices=layout(draw, idx), n_sel=layout(draw, n), block_table=args["block_table"],
               seq_lens=args["seq_lens"], block_size=bs, pad_id=pad)
    (want_t, want_l), _ = reference("kv_select", **sel)
    table, lens = ops.kv_select(**sel)
    assert torch.equal(table, want_t) and torch.equal(lens, want_l)


@SETTINGS
@given(data=st.data())
def test_paged_decode_attention_matches_reference(backend, data):
    draw = data.draw
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    b, hkv, grp, d = draw(st.integers(0, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 16))
    bs, m, nb = draw(st.integers(1, 5)), draw(st.integers(1, 4)), draw(st.integers(1, 6))
    dtype = draw(st.sampled_from(DTYPES))
    q = layout(draw, torch.randn(b, hkv * grp, d, generator=g).to(dtype))
    kc = layout(draw, torch.randn(nb, bs, hkv, d, generator=g).to(dtype))
    vc = layout(draw, torch.randn(nb, bs, hkv, d, generator=g).to(dtype))
    table = layout(draw, torch.randint(0, nb, (b, m), generator=g, dtype=torch.int32))
    seq = layout(draw, torch.randint(1, m * bs + 1, (b,), generator=g, dtype=torch.int32))
    args = dict(q=q, k_cache=kc, v_cache=vc, block_table=table, seq_lens=seq)
    want, _ = reference("paged_decode_attention", **args)
    out = ops.paged_decode_attention(**args)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert out.dtype == dtype and out.shape == want.shape
    torch.testing.assert_close(out.float(), want.float(), atol=tol, rtol=tol)
