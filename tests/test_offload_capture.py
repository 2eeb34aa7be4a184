"""The offloaded decode step in graph form keeps CUDA-graph capture's rules, checked on CPU
(tests/offload_capture_sim.py: a fake capturing device for the mover's streams and events,
and a dispatch guard for host copies and host reads issued by gsa/offload code).

Why: on the H200 the "previous" prefetch rows failed to capture with "capturing stream has
unjoined work". The cause was not a stream: ``ResidencyMap.mark_predicted`` cleared an entry
with ``t[i] = False`` (a pageable host->device scalar copy, which capture rejects), and the
exception left the layer's fetch forked on the copy stream, so ``capture_end`` reported the
unjoined fork instead (docs/offload_h200.md, "Graph capture with prefetch"). These tests hold the
step to the rules (every fork joined inside the layer, no event from outside the capture
waited on, no host copy or host read from offload code), show that the old line is caught,
and that an error inside a captured layer now surfaces as itself.
"""
import pytest
import torch

from gsa.config import GSAConfig
from gsa.offload import OffloadedGSA, ResidencyMap, min_pool_blocks
from gsa.offload import offloaded as offloaded_mod
from gsa.sparse import GSASparse

from offload_capture_sim import CaptureError, FakeCaptureDevice, HostCopyGuard, uva_movers

BS, HQ, HKV, D = 4, 4, 2, 16
CFG = dict(model_name="t/offload-capture", num_hidden_layers=5, num_attention_heads=HQ, num_key_value_heads=HKV,
           head_dim=D, hash_bits=32, chunk_size=BS, top_k_ratio_per_layer=[1, .3, .25, .3, 1],
           top_k_index_reuse=[-1, -1, -1, 1, -1], must_select_blocks=[0, -1], gpu_seq_len_threshold=12,
           gpu_concurrency_threshold=1, seed=7)
B, M = 4, 12
NB = B * M + 5
SEQS = [[40, 33, 17, 48], [41, 12, 18, 47], [20, 5, 44, 30], [8, 9, 10, 11]]  # the last: a dense step


def _setup(prefetch, eviction, n=2, seed=0):
    """``n`` OffloadedGSA over the same host KV and codes (pool far below NB), the all-in-HBM
    reference and the step's static inputs."""
    gen = torch.Generator().manual_seed(seed)
    cfg = GSAConfig(**CFG)
    ref = GSASparse(cfg, "cpu", block_size=BS)
    caches = ref.allocate_hash_caches(NB)
    for hc in caches.values():
        hc.copy_(torch.randint(0, 256, hc.shape, dtype=torch.uint8, generator=gen))
    kv = {l: [torch.randn(NB, BS, HKV, D, generator=gen).to(torch.bfloat16) for _ in range(2)]
          for l in range(cfg.num_hidden_layers)}
    k = ref.begin_step([M * BS] * B).plan.k
    pool = min_pool_blocks(ref, B, M * BS) + 3
    offs = []
    for _ in range(n):
        off = OffloadedGSA(GSASparse(cfg, "cpu", block_size=BS), NB, pool, B, M * BS, HKV, D, torch.bfloat16,
                           prefetch=prefetch, eviction=eviction)
        off.load_prefilled(kv, caches)
        offs.append(off)
    assert pool < NB
    table = torch.randperm(NB, generator=gen)[: B * M].reshape(B, M).to(torch.int32)
    qs = {l: torch.randn(B, HQ, D, generator=gen).to(torch.bfloat16) for l in range(cfg.num_hidden_layers)}
    return ref, caches, kv, k, offs, table, qs, gen


def _body(off, step, qs, table, seq):
    return [off.decode_attention(l, step, qs[l], table, seq) for l in off.layers]


@pytest.mark.parametrize("prefetch,eviction", [("previous", "lru"), ("previous", "score")])  # (on demand: a subset)
def test_graph_form_steps_keep_capture_rules_and_equal_eager_and_all_in_hbm(prefetch, eviction):
    """Every graph-form step of an offloaded model (uva movers on the fake capturing device,
    one shared copy stream) runs inside a capture without a violation, and equals the same
    step on direct movers outside any capture and the all-in-HBM GSA step."""
    ref, caches, kv, k, (cap, eager), table, qs, gen = _setup(prefetch, eviction)
    dev = uva_movers(cap)
    for i, lens in enumerate(SEQS):
        seq = torch.tensor(lens, dtype=torch.int32)
        for q in qs.values():
            q.copy_(torch.randn(q.shape, generator=gen).to(q.dtype))
        st_c, st_e = cap.begin_step(lens, k=k, graph=True), eager.begin_step(lens, k=k, graph=True)
        if i == 0:  # the warm-up step runs outside the capture (allocations, first calls)
            got = _body(cap, st_c, qs, table, seq)
        else:
            guard = HostCopyGuard(strict=True)
            with dev.graph(), guard:
                got = _body(cap, st_c, qs, table, seq)
            assert guard.violations == []
            assert any(e.startswith("fork") for e in dev.log) and any(e.startswith("join") for e in dev.log)
        want_e = _body(eager, st_e, qs, table, seq)
        st_r = ref.begin_step(lens, k=k, graph=True)
        for j, l in enumerate(cap.layers):
            assert torch.equal(got[j], want_e[j]), (i, l)
            src = ref.policy.layer(l).selection_layer
            want = ref.decode_attention(l, st_r, qs[l], *kv[l], table, seq, caches[src])
            torch.testing.assert_close(got[j].float(), want.float(), atol=2e-2, rtol=1.6e-2)
        for l in ref.scoring_layers:
            assert all(torch.equal(a, b) for a, b in zip(st_c._selections[l], st_r._selections[l])), (i, l)
    for l in cap.layers:
        for name in ("slot_of", "block_of", "last_used", "uses", "_counts"):
            assert torch.equal(getattr(cap.maps[l], name), getattr(eager.maps[l], name)), (l, name)
    st = cap.stats()
    assert st["fetched"] > 0 and 0 < st["hit_rate"] < 1
    if prefetch:
        assert 0 < st["predicted_rate"] <= st["hit_rate"] + 1e-9  # the marks ran inside the capture


def _old_mark_predicted(self, blocks):
    """ResidencyMap.mark_predicted before the fix (its last line: item assignment of a number)."""
    ids = torch.where(blocks.reshape(-1) >= 0, blocks.reshape(-1).long(), self.nb)
    self._predicted.zero_()
    self._predicted.index_fill_(0, ids, True)
    self._predicted[self.nb] = False


def test_the_old_mark_predicted_is_caught_and_its_error_is_no_longer_hidden(monkeypatch):
    """The pre-fix line breaks the rules (the guard raises inside the captured layer, as torch
    does on CUDA), and the layer joins its fork before the error leaves: the capture ends
    cleanly and the error that surfaces is the real one, not "unjoined work"."""
    ref, caches, kv, k, (cap,), table, qs, gen = _setup("previous", "lru", n=1)
    dev = uva_movers(cap)
    seq = torch.tensor(SEQS[0], dtype=torch.int32)
    _body(cap, cap.begin_step(SEQS[0], k=k, graph=True), qs, table, seq)  # warm-up
    monkeypatch.setattr(ResidencyMap, "mark_predicted", _old_mark_predicted)
    step = cap.begin_step(SEQS[1], k=k, graph=True)
    with pytest.raises(CaptureError, match="host-made value") as err:
        with dev.graph(), HostCopyGuard(strict=True):
            _body(cap, step, qs, table, torch.tensor(SEQS[1], dtype=torch.int32))
    assert "unjoined" not in str(err.value) and "gsa/offload/offloaded.py" in str(err.value)
    assert dev.unjoined() == [] and not dev.capturing


def test_a_fork_left_open_by_an_error_is_reported_as_unjoined_work():
    """The H200 symptom, reproduced: a fetch forks the copy stream, an error leaves before
    the join, and the capture's end reports "unjoined work" (the real error only in the
    exception's context). The join-before-raise in decode_attention is what prevents it."""
    _, _, _, k, (cap,), table, qs, _ = _setup(None, "lru", n=1)
    dev = uva_movers(cap)
    mv = cap.movers[cap.layers[0]]
    src = torch.tensor([3, 4, 0])
    dst = torch.tensor([0, 1, cap.s])
    with pytest.raises(CaptureError, match="unjoined") as err:
        with dev.graph():
            mv.fetch(src, dst, torch.tensor(2))
            raise RuntimeError("the real error")
    assert "the real error" in str(err.value.__context__)
    with dev.graph():  # joined: a clean capture
        mv.fetch(src, dst, torch.tensor(2))
        mv.wait()


def test_an_error_inside_a_captured_layer_surfaces_as_itself(monkeypatch):
    """Any exception between the fetch and the join (here from the prefetch of the next
    layer) leaves every stream joined: the caller sees the exception it raised."""
    _, _, _, k, (cap,), table, qs, _ = _setup("previous", "lru", n=1)
    dev = uva_movers(cap)
    seq = torch.tensor(SEQS[0], dtype=torch.int32)
    _body(cap, cap.begin_step(SEQS[0], k=k, graph=True), qs, table, seq)

    def boom(self, layer):
        raise ValueError("prefetch failed")
    monkeypatch.setattr(offloaded_mod.OffloadedGSA, "_predict", boom)
    step = cap.begin_step(SEQS[1], k=k, graph=True)
    with pytest.raises(ValueError, match="prefetch failed"):
        with dev.graph():
            _body(cap, step, qs, table, seq)
    assert dev.unjoined() == [] and not dev.capturing


def test_waiting_inside_a_capture_on_an_event_recorded_before_it_is_an_error():
    """The fake device enforces CUDA's isolation rule (so the step tests above would catch a
    prefetch issued before the capture and joined inside it)."""
    dev = FakeCaptureDevice()
    side = dev.Stream()
    ev = dev.Event()
    with dev.stream(side):
        dev.work()
        ev.record()
    with pytest.raises(CaptureError, match="outside"):
        with dev.graph():
            dev.current_stream().wait_event(ev)


def test_torch_residency_map_request_and_priorities_issue_no_host_copies():
    """The torch ResidencyMap (the CPU path; ``backend=False`` on CUDA) under the guard:
    request, predict, mark_predicted and set_priority issue no host copy or host read (its
    dummy entries are reset with slice fills, not ``t[i] = -1``)."""
    m = ResidencyMap(10, 4, "cpu", backend=False)
    guard = HostCopyGuard()
    with guard:
        for now, blocks in enumerate(([1, 2, -1], [2, 5, 7], [8, 1, 9, -1], [3, 4, 5, 6])):
            m.set_priority(torch.linspace(-1, 1, 11))
            m.request(torch.tensor(blocks), now)
            m.predict(torch.tensor([0, 9]), now)
            m.mark_predicted(torch.tensor([4, -1]))
    assert guard.violations == []
    assert int(m.slot_of[10]) == -1 and int(m.block_of[4]) == -1


def test_eager_steps_issue_no_host_copies_from_offload_code():
    """The eager step (begin_step without graph: the first layer's prediction in begin_step, dense
    rows kept whole) makes no host value either: on the H200 the old mark_predicted line was a
    blocking host->device copy per layer in every eager "previous" step (docs/offload.md). (Not
    the dense step: eager, it needs the whole table width in the pool.)"""
    _, _, _, _, (off,), table, qs, _ = _setup("previous", "score", n=1)
    guard = HostCopyGuard()
    with guard:
        for lens in SEQS[:3]:
            _body(off, off.begin_step(lens), qs, table, torch.tensor(lens, dtype=torch.int32))
    assert guard.violations == []
    assert off.stats()["predicted_hits"] > 0
