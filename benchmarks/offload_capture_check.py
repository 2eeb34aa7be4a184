"""GPU diagnostic (issue 18): does an offloaded decode step with prefetch capture in a CUDA
graph, and why did it not?

On the H200 (2026-11-29) every ``offload_prefetch`` graph row failed with "capturing stream
has unjoined work". The cause (found by reading, docs/offload.md "Graph capture with
prefetch"): ``ResidencyMap.mark_predicted`` ended with ``self._predicted[self.nb] = False``,
item assignment of a Python number, which on CUDA copies a pageable host scalar to the
device; torch rejects that during capture ("Cannot copy between CPU and CUDA tensors during
CUDA graph capture ..."), and because it happened between the layer's fetch (forked onto the
copy stream) and the join, ``capture_end`` then failed with the unjoined fork and that error
replaced the first one.

Variants (each: two OffloadedGSA over the same pinned host KV, one captured once and replayed
over several steps, one run eagerly, plus the all-in-HBM GSA step):

  fix:ondemand           prefetch None (captured on the H200 already)          expect: ok
  fix:previous           prefetch "previous", the fixed code                    expect: ok
  fix:previous_score     prefetch "previous", eviction "score"                  expect: ok
  fix:previous_torchmap  prefetch "previous", the torch ResidencyMap (no fused
                         kernel; its dummy resets are slice fills now)          expect: ok (informational:
                         never captured on a GPU before, and its stable argsorts may not be capturable;
                         it does not decide PASS)
  fix:speculative        prefetch "speculative" (each scoring layer speculates on a noisy query
                         first), LRU eviction                                   expect: ok
  fix:speculative_score  the same with eviction "score"                         expect: ok
  cause:old_mark         the old mark_predicted line, the fixed join            expect: fails with "Cannot copy
                                                                                between CPU and CUDA"
  cause:old_mark_nojoin  the old line and no join on the error path (the code
                         that ran on the H200)                                  expect: fails with "unjoined"

For "ok" variants the replays must equal eager: selections bit for bit, attention within
bf16 tolerance (and vs all-in-HBM GSA), residency maps identical at the end. The last line
is ``CAPTURE CHECK: PASS`` when every variant did what it expects, else ``CAPTURE CHECK:
FAIL``. Small shapes (8 rows x 640 tokens, 4 offloaded layers); ~20-40 s including Triton
compiles.

    python benchmarks/offload_capture_check.py [--variants NAME ...]
    python benchmarks/offload_capture_check.py --cpu-dry-run --variants fix:previous   # the script's own
        logic on CPU: no capture, "replay" reruns the body (tests/test_offload_bench.py)
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gsa import use_backend  # noqa: E402
from gsa.config import GSAConfig  # noqa: E402
from gsa.offload import OffloadedGSA, ResidencyMap, min_pool_blocks  # noqa: E402
from gsa.offload.mover import BlockMover  # noqa: E402
from gsa.sparse import GSASparse  # noqa: E402

BS, HQ, HKV, D = 16, 8, 2, 64
CFG = dict(model_name="t/offload-capture-check", num_hidden_layers=6, num_attention_heads=HQ,
           num_key_value_heads=HKV, head_dim=D, hash_bits=128, chunk_size=BS,
           top_k_ratio_per_layer=[1, .25, .5, .25, .125, 1], top_k_index_reuse=[-1, -1, -1, 1, -1, -1],
           must_select_blocks=[0, -2, -1], gpu_seq_len_threshold=64, gpu_concurrency_threshold=1, seed=4)
B, M = 8, 40
NB = B * M + 8
SEQS = [[640, 639, 600, 70, 33, 640, 129, 400], [640, 20, 601, 71, 34, 640, 130, 401],
        [100, 639, 1, 512, 64, 63, 630, 16], [640, 500, 450, 90, 80, 600, 200, 300],
        [50, 60, 40, 30, 20, 10, 5, 1]]  # the last: a dense step


def _old_mark_predicted(self, blocks):
    """ResidencyMap.mark_predicted as it ran on the H200."""
    ids = torch.where(blocks.reshape(-1) >= 0, blocks.reshape(-1).long(), self.nb)
    self._predicted.zero_()
    self._predicted.index_fill_(0, ids, True)
    self._predicted[self.nb] = False


_real_wait = BlockMover.wait


def _wait_not_on_error(self):
    """BlockMover.wait that does nothing while an exception is propagating: the H200 code had no
    join on the error path (decode_attention reached its wait only when nothing raised)."""
    if sys.exc_info()[0] is None:
        _real_wait(self)


VARIANTS = {
    "fix:ondemand": dict(prefetch=None, expect="ok"),
    "fix:previous": dict(prefetch="previous", expect="ok"),
    "fix:previous_score": dict(prefetch="previous", eviction="score", expect="ok"),
    "fix:previous_torchmap": dict(prefetch="previous", torch_map=True, expect="ok", informational=True),
    "fix:speculative": dict(prefetch="speculative", expect="ok"),
    "fix:speculative_score": dict(prefetch="speculative", eviction="score", expect="ok"),
    "cause:old_mark": dict(prefetch="previous", patches=[(ResidencyMap, "mark_predicted", _old_mark_predicted)],
                           expect="Cannot copy between CPU and CUDA"),
    "cause:old_mark_nojoin": dict(prefetch="previous", patches=[(ResidencyMap, "mark_predicted", _old_mark_predicted),
                                                                (BlockMover, "wait", _wait_not_on_error)],
                                  expect="unjoined"),
}


def chain(e: BaseException) -> str:
    """The exception and what it replaced (``__context__``), one line each."""
    out, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        out.append(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
        e = e.__cause__ or e.__context__
    return "\n      caused while handling: ".join(out)


@contextlib.contextmanager
def patched(patches):
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    try:
        for obj, name, fn in patches:
            setattr(obj, name, fn)
        yield
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)


class _EagerGraph:
    """``--cpu-dry-run``: stands in for a CUDA graph by rerunning the captured body at each
    replay and copying its outputs into the tensors the capture returned."""

    def __init__(self):
        self.fn, self.outs = None, None

    @contextlib.contextmanager
    def capture(self):
        yield

    def replay(self):
        for o, n in zip(self.outs, self.fn()):
            o.copy_(n)


def _sync(dev) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def build_scenario(dev: torch.device, seed: int = 0) -> dict:
    """The shared setup of this check and ``tests/test_offload_gpu.py``: the all-in-HBM GSA
    model (``ref``), its hash caches filled with random history, the pinned-host KV (``kv``) and
    its device copy (``dkv``), the captured width ``k`` and a pool far below ``NB`` (evictions
    every step). Call inside ``use_backend`` when the offloaded models should use it."""
    gen = torch.Generator().manual_seed(seed)
    cfg = GSAConfig(**CFG)
    ref = GSASparse(cfg, dev)
    caches = ref.allocate_hash_caches(NB)
    for hc in caches.values():  # a filled history
        hc.copy_(torch.randint(0, 256, hc.shape, dtype=torch.uint8, generator=gen))
    kv = {l: [torch.randn(NB, BS, HKV, D, generator=gen).to(torch.bfloat16) for _ in range(2)]
          for l in range(cfg.num_hidden_layers)}
    return dict(dev=dev, cfg=cfg, ref=ref, caches=caches, kv=kv,
                dkv={l: (a.to(dev), b.to(dev)) for l, (a, b) in kv.items()},
                k=ref.begin_step([M * BS] * B).plan.k,  # the captured width: the largest selection
                pool=min_pool_blocks(ref, B, M * BS) + 7)


def make_offloaded(data: dict, prefetch=None, eviction="lru", torch_map=False) -> OffloadedGSA:
    """An ``OffloadedGSA`` over the scenario's KV and caches (``torch_map``: the torch
    ``ResidencyMap`` instead of the fused residency kernel)."""
    off = OffloadedGSA(GSASparse(data["cfg"], data["dev"]), NB, data["pool"], B, M * BS, HKV, D, torch.bfloat16,
                       prefetch=prefetch, eviction=eviction)
    if torch_map:
        for l in off.layers:
            off.maps[l] = ResidencyMap(NB, data["pool"], data["dev"], backend=False)
            off.maps[l].now_t = off.now_t
    off.load_prefilled(data["kv"], data["caches"])
    return off


class StepInputs:
    """The static tensors a captured step reads (block table, lengths, one query per layer),
    refilled in place for each step from a seeded CPU generator."""

    def __init__(self, data: dict, seed: int = 1):
        dev, n_layers = data["dev"], data["cfg"].num_hidden_layers
        self.gen = torch.Generator().manual_seed(seed)
        self.table = torch.zeros(B, M, dtype=torch.int32, device=dev)
        self.seq = torch.zeros(B, dtype=torch.int32, device=dev)
        self.q = [torch.zeros(B, HQ, D, dtype=torch.bfloat16, device=dev) for _ in range(n_layers)]
        # prefetch "speculative": each layer's speculative query, the real one plus noise (refilled by load)
        self.q_spec = [torch.zeros_like(q) for q in self.q]

    def load(self, seq) -> None:
        self.table.copy_(torch.randperm(NB, generator=self.gen)[: B * M].reshape(B, M).to(torch.int32))
        self.seq.copy_(torch.tensor(seq, dtype=torch.int32))
        for q in self.q:
            q.copy_(torch.randn(B, HQ, D, generator=self.gen).to(torch.bfloat16))
        for q, qs in zip(self.q, self.q_spec):
            qs.copy_(q + 0.5 * torch.randn(B, HQ, D, generator=self.gen).to(q.device, torch.bfloat16))

    def body(self, off: OffloadedGSA, step) -> list:
        """One decode step of every offloaded layer: the outputs, in layer order. With prefetch
        ``"speculative"`` each scoring layer first speculates on its noisy query."""
        outs = []
        for l in off.layers:
            if off.prefetch == "speculative" and off.gsa.policy.layer(l).selection_layer == l:
                off.speculate(l, step, self.q_spec[l], self.table, self.seq)
            outs.append(off.decode_attention(l, step, self.q[l], self.table, self.seq))
        return outs


def check_replays(data: dict, offs: list, steps: list, inp: StepInputs, replay, outs_g, sels_g) -> tuple:
    """Replays the captured step (``replay``, its outputs ``outs_g`` and selections ``sels_g``:
    ``offs[0]``'s) over ``SEQS[1:]`` and compares each with ``offs[1]`` run eagerly and with the
    all-in-HBM step: selections bit for bit, attention within bf16 tolerance; at the end the
    residency maps (and score priorities) must be identical, the pool must have evicted and
    refetched, and the step clock must have advanced once per step. Returns ``(None, detail)``
    when all holds, else ``(message, None)``."""
    dev, ref, k = data["dev"], data["ref"], data["k"]
    worst = 0.0
    for seq in SEQS[1:]:
        inp.load(seq)
        offs[0].begin_step(seq, k=k, graph=True)
        replay()
        _sync(dev)
        got = [o.clone() for o in outs_g]
        got_sel = {l: (t.clone(), n.clone()) for l, (t, n) in sels_g.items()}
        st_e = offs[1].begin_step(seq, k=k, graph=True)
        eager = [o.clone() for o in inp.body(offs[1], st_e)]
        st_r = ref.begin_step(seq, k=k, graph=True)
        for i, l in enumerate(offs[0].layers):
            src = ref.policy.layer(l).selection_layer
            want = ref.decode_attention(l, st_r, inp.q[l], *data["dkv"][l], inp.table, inp.seq, data["caches"][src])
            d_eager = (got[i].float() - eager[i].float()).abs().max().item()
            d_ref = (got[i].float() - want.float()).abs().max().item()
            worst = max(worst, d_eager)
            if d_eager > 1e-3 or d_ref > 2e-2:
                return (f"replay MISMATCH at {seq} layer {l}: max |graph - eager| {d_eager:.3g}, "
                        f"|graph - all-in-HBM| {d_ref:.3g}"), None
        for l in ref.scoring_layers:
            want_t, want_l = st_r._selections[l]
            eag_t, eag_l = st_e._selections[l]
            if not (torch.equal(got_sel[l][0], want_t) and torch.equal(got_sel[l][1], want_l)
                    and torch.equal(got_sel[l][0], eag_t) and torch.equal(got_sel[l][1], eag_l)):
                return f"replay MISMATCH at {seq}: the selection of layer {l} differs (graph vs eager / HBM)", None
    _sync(dev)
    for l in offs[0].layers:  # identical decisions in graph and eager: the maps and counters end equal
        for attr in ("slot_of", "block_of", "last_used", "uses", "_counts"):
            if not torch.equal(getattr(offs[0].maps[l], attr), getattr(offs[1].maps[l], attr)):
                return f"replay MISMATCH: the residency maps differ after the replays (layer {l}, {attr})", None
        pa, pb = getattr(offs[0], "priority", {}).get(l), getattr(offs[1], "priority", {}).get(l)
        if pa is not None and not torch.allclose(pa, pb, equal_nan=True):
            return f"replay MISMATCH: the score priorities differ after the replays (layer {l})", None
    st = offs[0].stats()
    if not (st["fetched"] > 0 and 0 < st["hit_rate"] < 1):
        return f"replays did not evict and refetch (stats {st}): the check would not test the fetch", None
    if int(offs[0].now_t) != len(SEQS):
        return f"the step clock reads {int(offs[0].now_t)} after {len(SEQS)} steps", None
    return None, (f"{len(SEQS) - 1} replays equal eager (selections bit-exact, max |graph - eager| {worst:.2g}) and "
                  f"all-in-HBM; maps identical; hit rate {st['hit_rate']:.3f}, predicted {st['predicted_rate']:.3f}")


def run_variant(name: str, spec: dict, data: dict) -> tuple:
    """Returns ``(ok: bool, message)``: whether the variant did what it expects."""
    dev = data["dev"]
    # [0] captured and replayed, [1] eager
    offs = [make_offloaded(data, spec.get("prefetch"), spec.get("eviction", "lru"), spec.get("torch_map", False))
            for _ in range(2)]
    inp = StepInputs(data)
    inp.load(SEQS[0])
    steps = [off.begin_step(SEQS[0], k=data["k"], graph=True) for off in offs]
    with patched(spec.get("patches", [])):
        for _ in range(2):  # warm-up (eager): compiles, the kernels' buffers, the prediction buffers
            for off, st in zip(offs, steps):
                inp.body(off, st)
        _sync(dev)
        g = torch.cuda.CUDAGraph() if dev.type == "cuda" else _EagerGraph()
        try:
            with (torch.cuda.graph(g) if dev.type == "cuda" else g.capture()):
                outs_g = inp.body(offs[0], steps[0])
            err = None
        except Exception as e:  # noqa: BLE001 (the diagnostic reports any failure)
            err = e
    if isinstance(g, _EagerGraph) and err is None:  # its "capture" ran the step: run it on the twin too
        g.fn, g.outs = (lambda: inp.body(offs[0], steps[0])), outs_g
        inp.body(offs[1], steps[1])
    try:
        _sync(dev)
        healthy = "context ok"
    except Exception as e2:  # noqa: BLE001
        healthy = f"context poisoned after the capture: {type(e2).__name__}: {e2}"
    if err is not None:
        msg = f"capture FAILED: {chain(err)}\n      ({healthy})"
        if spec["expect"] == "ok":
            return False, msg + "\n" + "".join(traceback.format_exception(err)[-6:])
        found = spec["expect"] in chain(err).splitlines()[0]
        return found, msg + (f"\n      expected failure seen first: {spec['expect']!r}" if found else
                             f"\n      the first error is not the expected {spec['expect']!r}")
    if spec["expect"] != "ok":
        return False, f"capture ok, but the variant expected a failure ({spec['expect']!r})"
    # the captured step's selections: on CUDA its static buffers (no Python runs at a replay, so the dict
    # keeps them); in the dry run each rerun stores its new tensors in the same dict
    bad, detail = check_replays(data, offs, steps, inp, g.replay, outs_g, steps[0]._selections)
    return (False, bad) if bad else (True, "capture ok; " + detail)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--cpu-dry-run", action="store_true", help="the script's logic on CPU (no capture: the "
                    "'replay' reruns the body; only the fix variants mean anything)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available() and not args.cpu_dry_run:
        print("CAPTURE CHECK: SKIPPED (no CUDA device)")
        return 0
    t0 = time.time()
    dev = torch.device("cpu" if args.cpu_dry_run else "cuda")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU dry run'}",
          flush=True)
    all_ok = True
    with (use_backend("triton") if dev.type == "cuda" else contextlib.nullcontext()):
        data = build_scenario(dev)
        # the expected failures last: a failed capture may leave the device in a worse state
        order = sorted(args.variants, key=lambda n: n.startswith("cause:"))
        for name in order:
            t1 = time.time()
            try:
                ok, msg = run_variant(name, VARIANTS[name], data)
            except Exception as e:  # noqa: BLE001
                ok, msg = False, f"variant crashed outside the capture: {chain(e)}\n" + traceback.format_exc()
            info = VARIANTS[name].get("informational", False)
            all_ok &= ok or info
            print(f"[{'ok' if ok else ('INFO' if info else 'UNEXPECTED')}] {name} (expect {VARIANTS[name]['expect']!r}, "
                  f"{time.time() - t1:.1f} s): {msg}", flush=True)
    print(f"CAPTURE CHECK: {'PASS' if all_ok else 'FAIL'} ({time.time() - t0:.0f} s)", flush=True)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
