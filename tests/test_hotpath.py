"""The decode hot path (gsa.hotpath, the Triton backend's fused selection) against the
reference composition, on every backend that serves CPU tensors (the triton backend in
the interpreter when TRITON_INTERPRET=1), over several steps with changing lengths and
tables, reused output buffers, forced blocks and engine padding rows."""
import pytest
import torch

import gsa
from gsa import dispatch
from gsa import reference as R
from gsa.config import GSAConfig
from gsa.hotpath import GenericHotPath, hot_path_for
from gsa.sparse import GSASparse
from gsa.weights import random_hash_weight

BS = 8
CFG = dict(model_name="t/hot", num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, head_dim=32,
           hash_bits=64, chunk_size=BS, top_k_ratio_per_layer=[1, .25, .5, .25], top_k_index_reuse=[-1, -1, -1, 1],
           must_select_blocks=[0, -2, -1], gpu_seq_len_threshold=24, gpu_concurrency_threshold=1, seed=5)


def _layout(seq, m, nb, g):
    table = torch.randperm(nb, generator=g)[: len(seq) * m].reshape(len(seq), m).to(torch.int32)
    slots = []
    for b, s in enumerate(seq):
        t = torch.arange(s)
        slots.append(table[b].long()[t // BS] * BS + t % BS)
    return table, torch.cat(slots)


def test_hot_path_steps_equal_reference(backend, rng):
    """GSASparse (hot path) vs the reference ops on the same codes, 3 steps, every layer kind."""
    cfg = GSAConfig(**CFG)
    gs = GSASparse(cfg)
    b, m = 5, 12
    nb = b * m + 4
    caches = gs.allocate_hash_caches(nb)
    kc = torch.randn(nb, BS, 2, 32, generator=rng)
    vc = torch.randn(nb, BS, 2, 32, generator=rng)
    keep = []
    for step_i in range(3):
        seq = torch.randint(1, m * BS + 1, (b,), generator=rng).tolist()
        seq[0] = m * BS  # a full row, sparse every step
        table, slots = _layout(seq, m, nb, rng)
        keys = torch.randn(slots.numel(), 2, 32, generator=rng)
        for l in gs.scoring_layers:
            gs.cache_keys(l, caches[l], slots, keys)
        step = gs.begin_step(seq)
        seq_t = torch.tensor(seq, dtype=torch.int32)
        q = torch.randn(b, 8, 32, generator=rng)
        for l in range(cfg.num_hidden_layers):
            got_t, got_l = gs.select(l, step, table, seq_t, caches.get(l), q)
            src = gs.policy.layer(l).selection_layer
            if src < 0 or not step.plan.sparse:
                assert got_t is table and got_l is seq_t
                continue
            w = random_hash_weight(cfg.seed, src, 2, 32, 64)
            if backend == "reference":  # this step's keys landed at their slots (other backends: tests/test_ops_*)
                written = caches[src].permute(0, 2, 1, 3).reshape(-1, 2, cfg.code_bytes)[slots]
                assert torch.equal(written, R.hash_encode(keys, w))
            idx, n = R.hamming_dist_top_k(R.hash_encode(q, w), caches[src], table, seq_t, step.budgets[src],
                                          step.plan.k, cfg.must_select_blocks, cfg.chunk_repre_method)
            want_t, want_l = R.kv_select(idx, n, table, seq_t, BS)
            assert torch.equal(got_t, want_t), (step_i, l)
            assert torch.equal(got_l, want_l), (step_i, l)
            out = gs.decode_attention(l, step, q, kc, vc, table, seq_t, caches.get(src))
            ref = R.paged_decode_attention(q, kc, vc, want_t, want_l)
            torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
            keep.append((got_t, got_t.clone()))
    # reused buffers: a layer's table is overwritten at its next step, in place (same storage)
    assert any(t.data_ptr() == keep[0][0].data_ptr() for t, _ in keep[1:])


def test_hot_path_resolves_per_backend(backend):
    hp = hot_path_for(torch.device("cpu"))
    b = dispatch.resolve("hamming_dist_top_k", "cpu")
    assert hp is hot_path_for(torch.device("cpu"))  # one instance per backend
    if b.hot_path is None:
        assert isinstance(hp, GenericHotPath) and hp.name == b.name
    else:
        assert hp.name == b.name


def test_hot_path_rejects_bad_input_once_per_signature(backend):
    cfg = GSAConfig(**CFG)
    gs = GSASparse(cfg)
    caches = gs.allocate_hash_caches(64)
    step = gs.begin_step([40, 40])
    table = torch.zeros(2, 6, dtype=torch.int32)
    seq = torch.tensor([40, 40], dtype=torch.int32)
    with pytest.raises(gsa.GSAInputError, match="seq_lens"):
        gs.select(1, step, table, seq.to(torch.int64), caches[1], torch.randn(2, 8, 32))
    bad = torch.tensor([40, 999], dtype=torch.int32)  # longer than the table: a value check on CPU tensors
    gs.select(1, step, table, seq, caches[1], torch.randn(2, 8, 32))  # the signature is now validated
    with pytest.raises(gsa.GSAInputError, match="seq_lens"):
        gs.select(1, step, table, bad, caches[1], torch.randn(2, 8, 32))


@pytest.mark.skipif(not gsa.dispatch.backends().get("triton") or not gsa.dispatch.backends()["triton"].serves("cpu"),
                    reason="the triton backend serves CPU tensors only with TRITON_INTERPRET=1")
@pytest.mark.parametrize("method", ["max", "mean"])
def test_fused_select_gather_equals_reference(rng, method):
    """cuda_ops.scoring.select_blocks (scores + selection with kv_select fused) vs the
    reference, with padding rows (seq_len 0), forced blocks past the budget and k < M."""
    from cuda_ops import scoring

    b, hq, hkv, c, m, nb = 6, 8, 2, 16, 9, 80
    q = torch.randint(0, 256, (b, hq, c), dtype=torch.uint8, generator=rng)
    cache = torch.randint(0, 256, (nb, hkv, BS, c), dtype=torch.uint8, generator=rng)
    table = torch.randperm(nb, generator=rng)[: b * m].reshape(b, m).to(torch.int32)
    seq = torch.tensor([72, 1, 0, 33, 65, 9], dtype=torch.int32)
    budgets = torch.tensor([2, 1, 1, 3, 9, 1], dtype=torch.int32)
    forced = [0, -1, 4]
    k = 6
    keys = torch.empty(b, m, dtype=torch.int32)
    table_out = torch.full((b, k), 77, dtype=torch.int32)
    lens = torch.full((b,), 77, dtype=torch.int32)
    scoring.select_blocks(q, cache, table, seq, budgets, k, forced, method, 0, 1.0, 3, keys, table_out, lens)
    live = seq > 0
    idx, n = R.hamming_dist_top_k(q[live], cache, table[live], seq[live], budgets[live], k, forced, method)
    want_t, want_l = R.kv_select(idx, n, table[live], seq[live], BS, 3)
    assert torch.equal(table_out[live], want_t)
    assert torch.equal(lens[live], want_l)
    assert lens[2] == 0 and bool((table_out[2] == 3).all())


@pytest.mark.skipif(not gsa.dispatch.backends().get("triton") or not gsa.dispatch.backends()["triton"].serves("cpu"),
                    reason="the triton backend serves CPU tensors only with TRITON_INTERPRET=1")
@pytest.mark.parametrize("fuse,planes,maxnreg", [(True, True, None), (True, False, 64), (False, True, None)])
def test_select_program_launch_choices_replay(rng, monkeypatch, fuse, planes, maxnreg):
    """TritonHotPath.select_program recorded with the score kernel's launch choices (one
    launch for scores + selection; bit-plane scores), replayed with new inputs: equal to
    the reference every call, padding rows empty, the fused kernel's counters zero again."""
    from cuda_ops import scoring
    from cuda_ops.hotpath import TritonHotPath

    monkeypatch.setattr(scoring, "SELECT_FUSE", fuse)
    monkeypatch.setattr(scoring, "SCORE_PLANES", planes)
    monkeypatch.setattr(scoring, "SELECT_FUSE_MAXNREG", maxnreg)
    b, hq, hkv, d, r, m, k = 4, 8, 2, 32, 128, 6, 3
    nb = b * m + 3
    w = random_hash_weight(3, 0, hkv, d, r)
    cache = torch.randint(0, 256, (nb, hkv, BS, r // 8), dtype=torch.uint8, generator=rng)
    mk = lambda: torch.empty(b, m, dtype=torch.int32)  # noqa: E731
    q_codes, keys = torch.empty(b, hq, r // 8, dtype=torch.uint8), mk()
    table_out, lens = torch.empty(b, k, dtype=torch.int32), torch.empty(b, dtype=torch.int32)
    args = lambda: (torch.randn(b, hq, d, generator=rng),  # noqa: E731
                    torch.randperm(nb, generator=rng)[: b * m].reshape(b, m).to(torch.int32),
                    torch.tensor([m * BS, 1, 0, int(torch.randint(1, m * BS, (1,), generator=rng))], dtype=torch.int32),
                    torch.randint(1, m + 2, (b,), generator=rng).to(torch.int32))
    q, table, seq, bud = args()
    prog = TritonHotPath().select_program(q, w, cache, table, seq, bud, k, [0, -1], "max", 9, q_codes, keys,
                                          table_out, lens)
    names = {l.fn.__name__ for l in prog.launches}
    assert ("_score_select_kernel" in names) == fuse and len(prog.launches) == (2 if fuse else 3)
    if fuse:
        assert prog.launches[1].consts.get("maxnreg") == maxnreg
    for _ in range(2):
        q, table, seq, bud = args()
        prog(q, table, seq, bud)
        live = seq > 0
        idx, n = R.hamming_dist_top_k(R.hash_encode(q, w)[live], cache, table[live], seq[live], bud[live], k,
                                      [0, -1], "max")
        want_t, want_l = R.kv_select(idx, n, table[live], seq[live], BS, 9)
        assert torch.equal(table_out[live], want_t) and torch.equal(lens[live], want_l)
        assert lens[2] == 0 and bool((table_out[2] == 9).all())
        for launch in prog.launches:
            if launch.fn.__name__ == "_score_select_kernel":
                cnt = launch.full[launch.fn.arg_names.index("cnt_ptr")]
                assert cnt.shape == (b,) and bool((cnt == 0).all())


@pytest.mark.skipif(not gsa.dispatch.backends().get("triton") or not gsa.dispatch.backends()["triton"].serves("cpu"),
                    reason="the triton backend serves CPU tensors only with TRITON_INTERPRET=1")
def test_select_program_pdl_is_wired_and_off_in_the_interpreter(rng, monkeypatch):
    """PDL (CUDA sm_90+ only, cannot run here): the query hash triggers its dependents and
    the score kernel is launched as one that waits; recorded, not run. Off on the CPU."""
    from cuda_ops import scoring
    from cuda_ops.hotpath import TritonHotPath

    assert not scoring.use_pdl(torch.device("cpu"), True)
    monkeypatch.setattr(scoring, "use_pdl", lambda device, pdl=None: True)
    b, hq, hkv, d, r, m = 2, 8, 2, 32, 128, 4
    w = random_hash_weight(3, 0, hkv, d, r)
    cache = torch.zeros(b * m, hkv, BS, r // 8, dtype=torch.uint8)
    table = torch.arange(b * m, dtype=torch.int32).reshape(b, m)
    prog = TritonHotPath().select_program(
        torch.randn(b, hq, d, generator=rng), w, cache, table, torch.full((b,), m * BS, dtype=torch.int32),
        torch.ones(b, dtype=torch.int32), 2, [0], "max", 0, torch.empty(b, hq, r // 8, dtype=torch.uint8),
        torch.empty(b, m, dtype=torch.int32), torch.empty(b, 2, dtype=torch.int32), torch.empty(b, dtype=torch.int32))
    hash_l, score_l = prog.launches[0], prog.launches[1]
    assert hash_l.fn.__name__ == "_hash_kernel" and hash_l.consts["LAUNCH_DEPENDENTS"] is True
    assert score_l.consts["PDL"] is True and score_l.consts["launch_pdl"] is True


@pytest.mark.skipif(not gsa.dispatch.backends().get("triton") or not gsa.dispatch.backends()["triton"].serves("cpu"),
                    reason="the triton backend serves CPU tensors only with TRITON_INTERPRET=1")
def test_program_refuses_temporaries_and_replays_inputs(rng):
    """cuda_ops.program: a recorded launch over an undeclared tensor is refused (its address
    would go stale); declared inputs are swapped per call."""
    from cuda_ops import hashing
    from cuda_ops.program import Program, ProgramError, Recorder

    w = torch.randn(2, 32, 64, generator=rng)
    x = torch.randn(5, 2, 32, generator=rng)
    out = torch.zeros(5, 2, 8, dtype=torch.uint8)
    rec = Recorder()
    hashing._launch(x, w, 1, out, 0, cache=rec)
    with pytest.raises(ProgramError):
        Program(rec, [("x", x)], [w], x.device)  # `out` is neither an input nor a buffer
    prog = Program(rec, [("x", x)], [w, out], x.device)
    for _ in range(2):
        x2 = torch.randn(5, 2, 32, generator=rng)
        prog(x2)
        assert torch.equal(out, hashing.hash_encode(x2, w))


def test_random_weights_under_another_default_device():
    """vLLM builds models under a CUDA default device; the seeded weights stay on the CPU."""
    want = random_hash_weight(1, 2, 2, 16, 32)
    torch.set_default_device("meta")
    try:
        got = random_hash_weight(1, 2, 2, 16, 32)
    finally:
        torch.set_default_device(None)
    assert got.device.type == "cpu" and torch.equal(got, want)


def test_cache_keys_program_checks_a_changed_hash_cache(backend, rng):
    """A key-hashing program is reused only for the hash cache (storage, shape, strides, dtype)
    its first call checked: another view of the same storage is checked again, and slot values
    are still range-checked on CPU tensors."""
    cfg = GSAConfig(**CFG)
    gs = GSASparse(cfg)
    nb = 16
    hc = gs.allocate_hash_caches(nb)[1]
    _, slots = _layout([20, 13], 4, nb, rng)
    keys = torch.randn(slots.numel(), 2, 32, generator=rng)
    gs.cache_keys(1, hc, slots, keys)  # validated by the op, program recorded
    assert gs._hot_keys.get(1), "no key-hashing program: the fast path is not exercised"
    hc.zero_()
    gs.cache_keys(1, hc, slots, keys)  # the program
    written = hc.permute(0, 2, 1, 3).reshape(-1, 2, cfg.code_bytes)[slots]
    assert torch.equal(written, R.hash_encode(keys, random_hash_weight(cfg.seed, 1, 2, 32, 64)))
    with pytest.raises(ValueError, match="chunk_size"):  # same storage, another block size
        gs.cache_keys(1, hc.view(nb, 2, BS // 2, 2 * cfg.code_bytes), slots, keys)
    with pytest.raises(ValueError, match="expected uint8"):  # same storage, another dtype
        gs.cache_keys(1, hc.view(torch.int8), slots, keys)
    with pytest.raises(gsa.GSAInputError, match="slot"):  # fewer blocks: slots past them refused
        gs.cache_keys(1, hc[:2], slots, keys)
    bad = slots.clone()
    bad[0] = nb * BS
    with pytest.raises(gsa.GSAInputError, match="slot"):  # the program's own call: slot values checked
        gs.cache_keys(1, hc, bad, keys)
