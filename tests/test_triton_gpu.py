"""Triton backend on a CUDA GPU at realistic shapes (skipped without CUDA).

Every op against the pure-torch reference (run on the same GPU): bit-exact for
codes outside the spec-2 band, scores, indices, tables and lengths; attention
within bf16/fp16 tolerance. Plus the CUDA-graph test: a whole decode step
(cache the new key codes, hash the query, select for every layer with reuse,
kv_select, sparse attention) captured once and replayed with changed sequence
lengths, block tables, budgets and queries; replay equals eager.
"""
import math

import pytest
import torch

from gsa import ops, reference as ref
from gsa import dispatch
from spec_literal import band_violations

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
DEV = "cuda"


@pytest.fixture(autouse=True)
def _triton():
    import gsa

    with gsa.use_backend("triton"):
        yield


@pytest.fixture
def gen():
    seed = int.from_bytes(__import__("os").urandom(4), "little")
    print(f"seed={seed}")
    return torch.Generator(device=DEV).manual_seed(seed)


def test_dispatch_picks_triton_on_cuda():
    assert dispatch.resolve("hamming_dist_top_k", "cuda").name == "triton"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_hash_encode_band_rule_realistic(gen, dtype):
    x = torch.randn(64, 32, 128, device=DEV, generator=gen).to(dtype)  # [B, Hq, D]
    w = torch.linalg.qr(torch.randn(8, 128, 128, device=DEV, generator=gen))[0]  # [Hkv, D, R]
    codes = ops.hash_encode(x, w)
    assert band_violations(x, w, codes) == 0
    # outside the band the codes equal the float64 reference's bit for bit
    assert (codes != ref.hash_encode(x, w)).float().mean() < 1e-3


def test_hash_encode_and_cache_realistic(gen):
    t, hkv, d, r, bs, nb = 4096, 8, 128, 128, 128, 64
    k = torch.randn(t, hkv, d, device=DEV, generator=gen).to(torch.bfloat16)
    w = torch.randn(hkv, d, r, device=DEV, generator=gen)
    slots = torch.randperm(nb * bs, device=DEV, generator=gen)[:t]
    slots[::7] = -1  # padding
    cache = torch.full((nb, hkv, bs, r // 8), 0xAB, dtype=torch.uint8, device=DEV)
    want = cache.clone()
    ops.hash_encode_and_cache(k, w, cache, slots)
    ref.hash_encode_and_cache(k, w, want, slots)
    live = slots >= 0
    s = slots[live]
    got_codes = cache[s // bs, :, s % bs]
    assert band_violations(k[live], w, got_codes) == 0
    mask = torch.zeros(nb, bs, dtype=torch.bool, device=DEV)
    mask[s // bs, s % bs] = True
    assert bool((cache.permute(0, 2, 1, 3)[~mask] == 0xAB).all())  # nothing else written


def _paged(gen, b, m, nb, bs, hkv, c, seq_lo):
    cache = torch.randint(0, 256, (nb, hkv, bs, c), device=DEV, generator=gen, dtype=torch.int32).to(torch.uint8)
    table = torch.randperm(nb, device=DEV, generator=gen)[: b * m].reshape(b, m).to(torch.int32)
    seq = torch.randint(seq_lo, m * bs + 1, (b,), device=DEV, generator=gen).to(torch.int32)
    seq[0] = m * bs
    seq[-1] = 1 + bs * (m // 2)  # a one-token last block
    return cache, table, seq


@pytest.mark.parametrize("method", ["max", "mean"])
@pytest.mark.parametrize("ratio", [0.3, 1 / 8, 1 / 64])
def test_hamming_top_k_gqa_realistic(gen, method, ratio):
    b, hq, hkv, r, bs, m = 8, 32, 8, 128, 128, 256  # up to 32K tokens
    cache, table, seq = _paged(gen, b, m, b * m + 5, bs, hkv, r // 8, 1)
    q = torch.randint(0, 256, (b, hq, r // 8), device=DEV, generator=gen, dtype=torch.int32).to(torch.uint8)
    n_blocks = (seq + bs - 1) // bs
    budgets = torch.clamp(torch.ceil(ratio * n_blocks).to(torch.int32), min=1)
    k = int(torch.clamp(budgets, min=2).max())
    forced = [0, -1]
    got = ops.hamming_dist_top_k(q, cache, table, seq, budgets, k, forced, method)
    want = ref.hamming_dist_top_k(q, cache, table, seq, budgets, k, forced, method)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    sp = ops.kv_select(got[0], got[1], table, seq, bs, 0)
    sp_ref = ref.kv_select(want[0], want[1], table, seq, bs, 0)
    assert torch.equal(sp[0], sp_ref[0]) and torch.equal(sp[1], sp_ref[1])


@pytest.mark.parametrize("method", ["max", "mean"])
def test_hamming_top_k_mla_realistic(gen, method):
    # DeepSeek-like: one latent head, 16 query heads, 512 + 64 hash bits, rope weight 0.5
    b, n, bs, m, c, rope_bytes = 4, 16, 64, 128, 72, 8
    cache, table, seq = _paged(gen, b, m, b * m, bs, 1, c, 1)
    q = torch.randint(0, 256, (b, n, c), device=DEV, generator=gen, dtype=torch.int32).to(torch.uint8)
    budgets = torch.full((b,), 16, dtype=torch.int32, device=DEV)
    got = ops.hamming_dist_top_k(q, cache, table, seq, budgets, 17, [0, -1], method, rope_bytes, 0.5)
    want = ref.hamming_dist_top_k(q, cache, table, seq, budgets, 17, [0, -1], method, rope_bytes, 0.5)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1.6e-2), (torch.float16, 2e-3), (torch.float32, 1e-5)])
def test_paged_attention_realistic(gen, dtype, tol):
    b, hq, hkv, d, bs, m = 4, 32, 8, 128, 128, 64  # up to 8K tokens
    nb = b * m + 3
    kc = torch.randn(nb, bs, hkv, d, device=DEV, generator=gen).to(dtype)
    vc = torch.randn(nb, bs, hkv, d, device=DEV, generator=gen).to(dtype)
    q = torch.randn(b, hq, d, device=DEV, generator=gen).to(dtype)
    table = torch.randperm(nb, device=DEV, generator=gen)[: b * m].reshape(b, m).to(torch.int32)
    seq = torch.tensor([m * bs, 1, 3000, 129], dtype=torch.int32, device=DEV)
    out = ops.paged_decode_attention(q, kc, vc, table, seq, None)
    with torch.no_grad():
        want = ref.paged_decode_attention(q.double(), kc.double(), vc.double(), table, seq, None)
    err = ((out.double() - want).norm() / want.norm()).item()
    assert err < tol, err


def test_paged_attention_out_of_range_table_entries_stay_in_bounds(gen):
    # unused table entries may hold anything (-1, huge): never read
    b, hq, hkv, d, bs, m, nb = 2, 8, 2, 64, 16, 8, 20
    kc = torch.randn(nb, bs, hkv, d, device=DEV, generator=gen).to(torch.bfloat16)
    vc = torch.randn(nb, bs, hkv, d, device=DEV, generator=gen).to(torch.bfloat16)
    q = torch.randn(b, hq, d, device=DEV, generator=gen).to(torch.bfloat16)
    table = torch.full((b, m), 2**30, dtype=torch.int32, device=DEV)
    table[:, :3] = torch.tensor([[4, 9, 1], [0, 19, 7]], dtype=torch.int32)
    table[1, 3] = -1
    seq = torch.tensor([40, 33], dtype=torch.int32, device=DEV)
    out = ops.paged_decode_attention(q, kc, vc, table, seq, None)
    want = ref.paged_decode_attention(q.float(), kc.float(), vc.float(), table, seq, None)
    torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=2e-2)


# ----------------------------------------------------------------------------- CUDA graph


class _Model:
    """4 layers: 0 dense, 1 scores, 2 reuses 1, 3 scores (mean). GQA bf16."""

    def __init__(self, gen, b, hq, hkv, d, r, bs, nb):
        self.b, self.hq, self.hkv, self.d, self.bs = b, hq, hkv, d, bs
        self.layers = [("dense", None), ("score", "max"), ("reuse", 1), ("score", "mean")]
        self.kv = [(torch.randn(nb, bs, hkv, d, device=DEV, generator=gen).to(torch.bfloat16),
                    torch.randn(nb, bs, hkv, d, device=DEV, generator=gen).to(torch.bfloat16)) for _ in self.layers]
        self.w = [torch.linalg.qr(torch.randn(hkv, d, r, device=DEV, generator=gen))[0] for _ in self.layers]
        self.hc = [torch.zeros(nb, hkv, bs, r // 8, dtype=torch.uint8, device=DEV) for _ in self.layers]
        # prefill: hash every cached key of the scoring layers
        slots = torch.arange(nb * bs, device=DEV)
        for l, (kind, _) in enumerate(self.layers):
            if kind == "score":
                keys = self.kv[l][0].reshape(nb * bs, hkv, d)
                ops.hash_encode_and_cache(keys, self.w[l], self.hc[l], slots)

    def step(self, q, new_k, slots, table, seq, budgets, k):
        """q ``[L, B, Hq, D]``; new_k ``[L, B, Hkv, D]``; slots ``[B]`` of the new token."""
        outs, sel = [], {}
        for l, (kind, arg) in enumerate(self.layers):
            if kind == "score":
                ops.hash_encode_and_cache(new_k[l], self.w[l], self.hc[l], slots)
                q_codes = ops.hash_encode(q[l], self.w[l])
                idx, n = ops.hamming_dist_top_k(q_codes, self.hc[l], table, seq, budgets, k, [0, -1], arg)
                sel[l] = ops.kv_select(idx, n, table, seq, self.bs, 0)
                t, s = sel[l]
            elif kind == "reuse":
                t, s = sel[arg]
            else:
                t, s = table, seq
            outs.append(ops.paged_decode_attention(q[l], self.kv[l][0], self.kv[l][1], t, s, None))
        return torch.stack(outs), torch.stack([sel[1][0], sel[3][0]]), torch.stack([sel[1][1], sel[3][1]])


def _step_inputs(gen, model, nb, m, ratio):
    b, bs = model.b, model.bs
    table = torch.randperm(nb, device=DEV, generator=gen)[: b * m].reshape(b, m).to(torch.int32)
    seq = torch.randint(bs, m * bs + 1, (b,), device=DEV, generator=gen).to(torch.int32)
    n_blocks = (seq + bs - 1) // bs
    budgets = torch.clamp(torch.ceil(ratio * n_blocks).to(torch.int32), min=2)
    pos = seq.long() - 1  # the new token's slot: last token of the row
    slots = table.gather(1, (pos // bs).unsqueeze(1)).squeeze(1).long() * bs + pos % bs
    q = torch.randn(4, b, model.hq, model.d, device=DEV, generator=gen).to(torch.bfloat16)
    new_k = torch.randn(4, b, model.hkv, model.d, device=DEV, generator=gen).to(torch.bfloat16)
    return q, new_k, slots, table, seq, budgets


def test_decode_step_cuda_graph_replay_equals_eager(gen):
    b, hq, hkv, d, r, bs, m = 4, 32, 8, 128, 128, 64, 64  # up to 4K tokens per row
    nb = b * m + 8
    model = _Model(gen, b, hq, hkv, d, r, bs, nb)
    k = m  # static selection width: covers every budget
    static = [t.clone() for t in _step_inputs(gen, model, nb, m, 1 / 8)]
    hc_before = [h.clone() for h in model.hc]
    # warm up (compiles kernels) on a side stream, as CUDA graph capture wants
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        model.step(*static, k)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_out = model.step(*static, k)
    for trial in range(3):
        inputs = _step_inputs(gen, model, nb, m, [0.3, 1 / 8, 1 / 64][trial])
        for dst, src in zip(static, inputs):
            dst.copy_(src)
        for h, h0 in zip(model.hc, hc_before):
            h.copy_(h0)
        graph.replay()
        torch.cuda.synchronize()
        replay = [t.clone() for t in g_out]
        for h, h0 in zip(model.hc, hc_before):
            h.copy_(h0)
        eager = model.step(*inputs, k)
        assert torch.equal(replay[1], eager[1]) and torch.equal(replay[2], eager[2])  # tables, lengths
        assert torch.equal(replay[0], eager[0])  # same kernels, same launch plan: identical outputs
        # and the eager selection is the reference's
        l = 1
        q_codes = ref.hash_encode(inputs[0][l], model.w[l])
        table, seq, budgets = inputs[3], inputs[4], inputs[5]
        hc = model.hc[l]
        idx, n = ref.hamming_dist_top_k(q_codes, hc, table, seq, budgets, k, [0, -1], "max")
        sp = ref.kv_select(idx, n, table, seq, bs, 0)
        assert torch.equal(sp[0], eager[1][0]) and torch.equal(sp[1], eager[2][0])


def test_mla_hash_encode_and_cache_realistic(gen):
    # DeepSeek shapes: c_kv [T, 512], k_pe [T, 64]; R_lora = 512, R_rope = 64
    t, lora, rope, r_l, r_r, bs, nb = 2048, 512, 64, 512, 64, 64, 40
    c_kv = torch.randn(t, lora, device=DEV, generator=gen).to(torch.bfloat16)
    k_pe = torch.randn(t, rope, device=DEV, generator=gen).to(torch.bfloat16)
    w_l = torch.randn(lora, r_l, device=DEV, generator=gen)
    w_r = torch.randn(rope, r_r, device=DEV, generator=gen)
    slots = torch.randperm(nb * bs, device=DEV, generator=gen)[:t]
    slots[5::9] = -1
    cache = torch.full((nb, 1, bs, (r_l + r_r) // 8), 0xAB, dtype=torch.uint8, device=DEV)
    ops.mla_hash_encode_and_cache(c_kv, k_pe, w_l, w_r, cache, slots)
    live = slots >= 0
    s = slots[live]
    got = cache[s // bs, 0, s % bs]
    assert band_violations(c_kv[live], w_l, got[:, : r_l // 8]) == 0
    assert band_violations(k_pe[live], w_r, got[:, r_l // 8:]) == 0
    q_codes = ops.mla_hash_encode(c_kv[:64].reshape(4, 16, lora), k_pe[:64].reshape(4, 16, rope), w_l, w_r)
    assert torch.equal(q_codes.reshape(64, -1)[live[:64]], cache[slots[:64][live[:64]] // bs, 0, slots[:64][live[:64]] % bs])


def test_score_kernel_paths_agree_realistic(gen):
    from cuda_ops import scoring

    b, hq, hkv, r, bs, m = 4, 32, 8, 128, 128, 64
    cache, table, seq = _paged(gen, b, m, b * m, bs, hkv, r // 8, 1)
    q = torch.randint(0, 256, (b, hq, r // 8), device=DEV, generator=gen, dtype=torch.int32).to(torch.uint8)
    used = torch.arange(m, device=DEV).unsqueeze(0) < ((seq + bs - 1) // bs).unsqueeze(1)
    for method in ("max", "mean"):
        swar = scoring.block_score_keys(q, cache, table, seq, method, path="swar")
        for wide in (False, True):
            for lop3 in (False, True):  # lop3 carry-save adders, 16-byte loads, unrolled heads: same keys
                for unroll in (False, True):
                    hs = scoring.block_score_keys(q, cache, table, seq, method, path="hs", wide=wide, lop3=lop3,
                                                  unroll=unroll)
                    assert torch.equal(hs[used], swar[used]), (method, wide, lop3, unroll)


def test_score_planes_agree_realistic(gen):
    from cuda_ops import scoring

    b, hq, hkv, r, bs, m = 4, 32, 8, 128, 128, 64
    cache, table, seq = _paged(gen, b, m, b * m, bs, hkv, r // 8, 1)
    q = torch.randint(0, 256, (b, hq, r // 8), device=DEV, generator=gen, dtype=torch.int32).to(torch.uint8)
    used = torch.arange(m, device=DEV).unsqueeze(0) < ((seq + bs - 1) // bs).unsqueeze(1)
    for method in ("max", "mean"):
        swar = scoring.block_score_keys(q, cache, table, seq, method, path="swar")
        for warps in (1, 4):
            got = scoring.block_score_keys(q, cache, table, seq, method, path="hs", planes=True, num_warps=warps)
            assert torch.equal(got[used], swar[used]), (method, warps)


@pytest.mark.parametrize("planes", [False, True])
@pytest.mark.parametrize("warps", [1, 4])
def test_fused_score_select_realistic(gen, planes, warps):
    # one launch (last program per row selects): equal to the reference with 1024-block rows,
    # repeated calls on one counter (it must come back to zero), padding rows in select_blocks
    from cuda_ops import scoring

    b, hq, hkv, r, bs, m = 8, 32, 8, 128, 128, 1024
    cache, table, seq = _paged(gen, b, m, b * m, bs, hkv, r // 8, 1)
    q = torch.randint(0, 256, (b, hq, r // 8), device=DEV, generator=gen, dtype=torch.int32).to(torch.uint8)
    budgets = torch.tensor([1, 7, 128, 600, 1100, 16, 3, 64], dtype=torch.int32, device=DEV)
    k = 600
    counter = torch.zeros(b, dtype=torch.int32, device=DEV)
    keys = torch.empty(b, m, dtype=torch.int32, device=DEV)
    tab = torch.empty(b, k, dtype=torch.int32, device=DEV)
    lens = torch.empty(b, dtype=torch.int32, device=DEV)
    for method in ("max", "mean"):
        got = scoring.hamming_dist_top_k(q, cache, table, seq, budgets, k, [0, -2, -1], method, 0, 1.0, fuse=True,
                                         planes=planes, num_warps=warps)
        want = ref.hamming_dist_top_k(q.cpu(), cache.cpu(), table.cpu(), seq.cpu(), budgets.cpu(), k, [0, -2, -1],
                                      method, 0, 1.0)
        assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1]), method
        pad = seq.clone()
        pad[3] = 0
        for _ in range(3):
            scoring.select_blocks(q, cache, table, pad, budgets, k, [0, -2, -1], method, 0, 1.0, 5, keys, tab, lens,
                                  counter=counter, fuse=True, planes=planes, num_warps=warps)
            assert bool((counter == 0).all())
            live = (pad > 0).cpu()
            t_ref, l_ref = ref.kv_select(want[0][live], want[1][live], table.cpu()[live], seq.cpu()[live], bs, 5)
            assert torch.equal(tab.cpu()[live], t_ref) and torch.equal(lens.cpu()[live], l_ref)
            assert int(lens[3]) == 0 and bool((tab[3] == 5).all())


@pytest.mark.parametrize("fuse,planes,pdl", [(False, False, True), (True, False, True), (True, True, True),
                                              (True, True, False)])
def test_select_program_launch_choices_graph_realistic(gen, monkeypatch, fuse, planes, pdl):
    # the hot path's selection program (query hash, then scores + selection) with each launch
    # choice, eager and replayed from a CUDA graph with new inputs: equal to the reference
    from cuda_ops import scoring
    from cuda_ops.hotpath import TritonHotPath

    if pdl and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs sm_90+")
    monkeypatch.setattr(scoring, "use_pdl", lambda device, p=None: pdl)
    real, forced = scoring.knob, {("select", "fuse"): fuse, ("score", "planes"): planes}  # over the tuning file
    monkeypatch.setattr(scoring, "knob", lambda dev, kern, name, default: forced.get((kern, name),
                                                                                   real(dev, kern, name, default)))
    b, hq, hkv, d, r, bs, m, k = 8, 32, 8, 128, 128, 128, 256, 32
    w = torch.linalg.qr(torch.randn(hkv, d, r, device=DEV, generator=gen))[0].contiguous()
    cache, table, seq = _paged(gen, b, m, b * m, bs, hkv, r // 8, 1)
    q = torch.randn(b, hq, d, device=DEV, generator=gen).to(torch.bfloat16)
    budgets = torch.full((b,), k, dtype=torch.int32, device=DEV)
    bufs = (torch.empty(b, hq, r // 8, dtype=torch.uint8, device=DEV), torch.empty(b, m, dtype=torch.int32, device=DEV),
            torch.empty(b, k, dtype=torch.int32, device=DEV), torch.empty(b, dtype=torch.int32, device=DEV))
    prog = TritonHotPath().select_program(q, w, cache, table, seq, budgets, k, [0, -1], "max", 3, *bufs)
    assert any(l.consts.get("PDL") for l in prog.launches) == pdl
    assert any(l.fn.__name__ == "_score_select_kernel" for l in prog.launches) == fuse

    def check():  # the selection of the codes the program hashed (hash codes: test_hash_encode_*)
        qc = bufs[0].cpu()
        idx, n = ref.hamming_dist_top_k(qc, cache.cpu(), table.cpu(), seq.cpu(), budgets.cpu(), k, [0, -1], "max")
        t, l = ref.kv_select(idx, n, table.cpu(), seq.cpu(), bs, 3)
        assert torch.equal(bufs[2].cpu(), t) and torch.equal(bufs[3].cpu(), l)

    prog(q, table, seq, budgets)
    torch.cuda.synchronize()
    check()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        prog(q, table, seq, budgets)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        prog(q, table, seq, budgets)
    for _ in range(2):
        q.copy_(torch.randn(b, hq, d, device=DEV, generator=gen).to(torch.bfloat16))
        table.copy_(table[:, torch.randperm(m, device=DEV, generator=gen)])
        seq.copy_(torch.randint(1, m * bs + 1, (b,), device=DEV, generator=gen).to(torch.int32))
        bufs[2].fill_(-7)
        g.replay()
        torch.cuda.synchronize()
        check()


@pytest.mark.parametrize("fanout", [1, 4, 16, 32])
def test_select_fanout_realistic(gen, fanout):
    from cuda_ops import scoring

    b, hq, hkv, r, bs, m = 4, 32, 8, 128, 16, 512
    cache, table, seq = _paged(gen, b, m, b * m, bs, hkv, r // 8, 1)
    q = torch.randint(0, 256, (b, hq, r // 8), device=DEV, generator=gen, dtype=torch.int32).to(torch.uint8)
    budgets = torch.tensor([1, 7, 64, 600], dtype=torch.int32, device=DEV)
    for method in ("max", "mean"):
        got = scoring.hamming_dist_top_k(q, cache, table, seq, budgets, m, [0, -1], method, 0, 1.0, fanout)
        want = ref.hamming_dist_top_k(q.cpu(), cache.cpu(), table.cpu(), seq.cpu(), budgets.cpu(), m, [0, -1],
                                      method, 0, 1.0)
        assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1]), method


@pytest.mark.parametrize("r", [128, 512])
def test_hash_bit_pack_by_matmul_equals_reshape_gpu(gen, r):
    from cuda_ops import hashing

    x = torch.randn(3000, 8, 128, device=DEV, generator=gen).to(torch.bfloat16)
    w = torch.randn(8, 128, r, device=DEV, generator=gen)
    x3, w3, g = hashing._as_heads(x, w)
    a = torch.zeros(3000, 8, r // 8, dtype=torch.uint8, device=DEV)
    b = torch.zeros_like(a)
    hashing._launch(x3, w3, g, a, 0, pack_dot=True, prefetch=True)
    hashing._launch(x3, w3, g, b, 0, pack_dot=False, prefetch=False)
    assert torch.equal(a, b)
    assert band_violations(x, w, a) == 0
