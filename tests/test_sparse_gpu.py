"""GSASparse on a CUDA device (skipped without one): the selection equals the CPU
reference bit for bit, and a decode step (select + attention, scoring and reusing
layer) captures in a CUDA graph whose replay equals eager execution."""
import pytest
import torch

from gsa import ops
from gsa.config import GSAConfig
from gsa.dispatch import resolve, use_backend
from gsa.sparse import GSASparse

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def layout(cfg, seq, seed):
    g = torch.Generator().manual_seed(seed)
    bs = cfg.chunk_size
    m = max((s + bs - 1) // bs for s in seq)
    nb = len(seq) * m + 3
    table = torch.randperm(nb, generator=g)[: len(seq) * m].reshape(len(seq), m).to(torch.int32)
    slots = torch.cat([table[b].long()[torch.arange(s) // bs] * bs + torch.arange(s) % bs for b, s in enumerate(seq)])
    return nb, table, slots, g


@pytest.mark.parametrize("model, seq, qlen", [
    ("Qwen3-4B", [32768, 20000, 5000, 1000], [1, 1, 1, 1]),
    ("Qwen3-4B", [32768, 20000, 5000, 1000], [1, 9, 1, 1]),
    ("DeepSeek-V2-Lite", [16384, 9000, 3000], [1, 1, 1]),
])
def test_cuda_selection_equals_reference_composition(model, seq, qlen):
    """The CUDA backend's codes may differ from the float64 reference only inside the
    spec-2 projection band (rare); given the codes, the selection is exact. So: the
    CUDA selection == the CPU reference composition on the CUDA codes, and the codes
    agree with the CPU reference's almost everywhere."""
    cfg = GSAConfig.for_model(model)
    nb, table, slots, g = layout(cfg, seq, 0)
    t, h, b = slots.numel(), cfg.num_attention_heads, len(seq)
    if cfg.is_mla:
        keys = (torch.randn(t, 512, generator=g), torch.randn(t, 64, generator=g))
        q = (torch.randn(b, h, 512, generator=g), torch.randn(b, h, 64, generator=g))
    else:
        keys = (torch.randn(t, cfg.num_key_value_heads, 128, generator=g), None)
        q = (torch.randn(b, h, 128, generator=g), None)
    lens_host = torch.tensor(seq, dtype=torch.int32)
    cpu_gs = GSASparse(cfg, "cpu")
    layer = cpu_gs.scoring_layers[0]
    with use_backend("reference"):
        cpu_hc = cpu_gs.allocate_hash_caches(nb)[layer]
        cpu_gs.cache_keys(layer, cpu_hc, slots, keys[0], keys[1])
    gs = GSASparse(cfg, "cuda")
    mv = lambda x: None if x is None else x.cuda()  # noqa: E731
    hc = gs.allocate_hash_caches(nb)[layer]
    gs.cache_keys(layer, hc, mv(slots), mv(keys[0]), mv(keys[1]))
    step = gs.begin_step(seq, qlen)
    tab, ln = gs.select(layer, step, table.cuda(), lens_host.cuda(), hc, mv(q[0]), mv(q[1]))
    w = gs.weights(layer)
    q_codes = ops.mla_hash_encode(mv(q[0]), mv(q[1]), *w) if cfg.is_mla else ops.hash_encode(mv(q[0]), w)
    with use_backend("reference"):
        idx, n_sel = ops.hamming_dist_top_k(q_codes.cpu(), hc.cpu(), table, lens_host, step.budgets[layer].cpu(),
                                            step.plan.k, cfg.must_select_blocks, cfg.chunk_repre_method,
                                            cfg.rope_bytes, cfg.rope_score_weight or 1.0)
        want = ops.kv_select(idx, n_sel, table, lens_host, cfg.chunk_size)
    assert torch.equal(tab.cpu(), want[0]) and torch.equal(ln.cpu(), want[1])
    assert step.plan.n_sel[layer].tolist() == n_sel.tolist()
    differ = (torch.bitwise_xor(hc.cpu(), cpu_hc) != 0).float().mean().item()
    assert differ < 1e-3, f"{differ:.2e} of the code bytes differ from the float64 reference"


def test_cuda_graph_decode_step():
    if resolve("hamming_dist_top_k", "cuda").name == "reference":
        pytest.skip("the pure-torch reference is not graph-capturable (it builds lookup tables per call)")
    dev = torch.device("cuda")
    cfg = GSAConfig.for_model("Qwen3-4B").replace(top_k_index_reuse=[-1] * 3 + [2] + [-1] * 32)
    gs = GSASparse(cfg, dev)
    seq = [8192, 6000, 4000, 3000]
    nb, table, slots, g = layout(cfg, seq, 2)
    hc = gs.allocate_hash_caches(nb)
    kc = torch.randn(nb, 128, 8, 128, generator=g).to(dev, torch.bfloat16)
    vc = torch.randn(nb, 128, 8, 128, generator=g).to(dev, torch.bfloat16)
    gs.cache_keys(2, hc[2], slots.to(dev), kc.reshape(-1, 8, 128)[slots.to(dev)])
    table, lens = table.to(dev), torch.tensor(seq, dtype=torch.int32, device=dev)
    q = torch.randn(4, 32, 128, generator=g).to(dev, torch.bfloat16)
    step = gs.begin_step(seq, k=table.shape[1])  # fixed width: the graph's shapes do not depend on the plan

    def body():
        step._selections.clear()
        return (gs.decode_attention(2, step, q, kc, vc, table, lens, hc[2]),
                gs.decode_attention(3, step, q, kc, vc, table, lens))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        body(), body()  # warm up (kernel compilation) outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = body()
    for _ in range(3):
        q.copy_(torch.randn(4, 32, 128, device=dev, dtype=torch.bfloat16))
        graph.replay()
        eager = body()
        torch.cuda.synchronize()
        for a, b in zip(captured, eager):
            assert torch.equal(a, b)


def test_cuda_graph_mla_step_replays_new_lengths():
    """MLA (spec 9) in graph form, as the FLASH_ATTN_MLA wrapper runs FULL decode graphs: key
    hashing and selection captured once, replayed over new queries, keys, lengths and budgets
    (persistent budget buffers), equal to eager and to the CPU reference on the CUDA codes."""
    if resolve("hamming_dist_top_k", "cuda").name == "reference":
        pytest.skip("the pure-torch reference is not graph-capturable (it builds lookup tables per call)")
    dev = torch.device("cuda")
    cfg = GSAConfig.for_model("DeepSeek-V2-Lite")
    gs = GSASparse(cfg, dev)
    layer = gs.scoring_layers[0]
    seq = [16384, 9000, 3000]
    nb, table, slots, g = layout(cfg, seq, 4)
    hc = gs.allocate_hash_caches(nb)[layer]
    gs.cache_keys(layer, hc, slots.to(dev), torch.randn(slots.numel(), 512, generator=g).to(dev, torch.bfloat16),
                  torch.randn(slots.numel(), 64, generator=g).to(dev, torch.bfloat16))
    table = table.to(dev)
    lens = torch.tensor(seq, dtype=torch.int32, device=dev)
    new_slots = (table[:, -1].long() * cfg.chunk_size).contiguous()  # one new key per row (a decode step)
    c_kv = torch.zeros(3, 512, device=dev, dtype=torch.bfloat16)
    k_pe = torch.zeros(3, 64, device=dev, dtype=torch.bfloat16)
    q = torch.zeros(3, cfg.num_attention_heads, 576, device=dev, dtype=torch.bfloat16)
    q_lat, q_pe = q.split([512, 64], dim=-1)  # views of one tensor, as vLLM hands them
    step = gs.begin_step(seq, k=table.shape[1], graph=True)

    def body():
        step._selections.clear()
        gs.cache_keys(layer, hc, new_slots, c_kv, k_pe)
        t, n = gs.select(layer, step, table, lens, hc, q_lat, q_pe)
        return t.clone(), n.clone()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        body(), body()  # warm up (compilation, signature checks, programs) outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = body()
    for i in range(3):
        seq_i = [16384 - 700 * i, 9000 + 128 * i, 3000 - 64 * i]
        lens.copy_(torch.tensor(seq_i, dtype=torch.int32))
        gs.begin_step(seq_i, k=table.shape[1], graph=True)  # new budgets into the same buffers
        q.copy_(torch.randn(q.shape, device=dev, dtype=torch.bfloat16))
        c_kv.copy_(torch.randn(c_kv.shape, device=dev, dtype=torch.bfloat16))
        k_pe.copy_(torch.randn(k_pe.shape, device=dev, dtype=torch.bfloat16))
        graph.replay()
        torch.cuda.synchronize()
        got = [x.clone() for x in captured]
        eager = body()
        assert torch.equal(got[0], eager[0]) and torch.equal(got[1], eager[1]), i
        w = gs.weights(layer)
        q_codes = ops.mla_hash_encode(q_lat, q_pe, *w)
        with use_backend("reference"):
            budgets = step.budgets[layer].cpu()
            idx, n_sel = ops.hamming_dist_top_k(q_codes.cpu(), hc.cpu(), table.cpu(), lens.cpu(), budgets,
                                                table.shape[1], cfg.must_select_blocks, cfg.chunk_repre_method,
                                                cfg.rope_bytes, cfg.rope_score_weight)
            want = ops.kv_select(idx, n_sel, table.cpu(), lens.cpu(), cfg.chunk_size)
        assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1]), i
