"""The AscendC kernels (npu_ops/ascendc/op_kernel) built against the REAL AscendC API in
CPU twin-debug mode and run bit-exact against the reference.

npu_ops/ascendc/cpu/build_and_test.sh compiles the kernels with g++ against the open-source
AscendC API (asc-devkit headers: TPipe, TBuf, DataCopyPad, Duplicate, Axpy with the API's own
parameter checks; asc-tools cpudebug: ICPU_RUN_KF, GmAlloc) or a CANN toolkit's, plus our
models of the hardware intrinsics they reach (npu_ops/ascendc/cpu/README.md). The runner
``gsa_ascendc_cpu`` launches a kernel on N vector cores, one forked process per core as the
framework does, with every tensor in GmAlloc'd memory (a guard page after each).

Each op is called the way the torch binding (op_host/gsa_torch_npu.cpp) calls it: fp32 keys
and per-head weights, int64 slots, two launches for top-k, two for the MLA cache. Checked: the
crosscheck grid (gsa/_crosscheck_cases.py, with its comparison rules) and random cases, on
1..48 cores. Not checked here: synchronisation (not modelled), timing, the hardware itself.
Skipped, with the script's reason, when neither a CANN toolkit nor the API sources are present.
"""
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from gsa import _crosscheck_cases as X
from gsa import reference

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "npu_ops" / "ascendc" / "cpu" / "build_and_test.sh"


@pytest.fixture(scope="module")
def runner():
    """Path of the built runner: ``$GSA_ASCENDC_CPU_BIN``, else build (or reuse) it with the script."""
    env = os.environ.get("GSA_ASCENDC_CPU_BIN")
    if env:
        return Path(env)
    proc = subprocess.run(["bash", str(SCRIPT), "--build-only"], capture_output=True, text=True, timeout=900)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode != 0:
        pytest.fail(f"AscendC CPU build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    if last.startswith("SKIP:"):
        pytest.skip(last)
    return Path(last)


class Kernels:
    """The AscendC kernels through the CPU runner, with the torch binding's argument handling."""

    def __init__(self, binary: Path, cores: int):
        self.binary, self.cores = binary, cores

    def _run(self, op, tensors, params, outputs):
        with tempfile.TemporaryDirectory(prefix="gsa_ascendc_") as d:
            for name, t in tensors.items():
                (Path(d) / f"{name}.bin").write_bytes(t.contiguous().numpy().tobytes())
            (Path(d) / "params").write_text(" ".join(str(int(p)) for p in params))
            proc = subprocess.run([str(self.binary), op, d, str(self.cores)], capture_output=True, text=True,
                                  timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(f"gsa_ascendc_cpu {op} failed (rc {proc.returncode}):\n"
                                   f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            out = {}
            for name in outputs:
                t = tensors[name]
                data = np.fromfile(Path(d) / f"{name}.bin", dtype=t.numpy().dtype)
                out[name] = torch.from_numpy(data.copy()).reshape(t.shape)
            return out

    def _hash(self, k, w, cache, slots, col_off, threshold=None):
        """k [T, H, D], w [H, D, R]: as HashEncodeAndCache in gsa_torch_npu.cpp (fp32, int64 slots;
        spec 13 threshold expanded to fp32 [H, R])."""
        x, wf, s = k.float().contiguous(), w.float().contiguous(), slots.to(torch.int64).contiguous()
        t, h, d = x.shape
        if t == 0:
            return
        nb, _, bs, c_total = cache.shape
        tensors = {"x": x, "w": wf, "cache": cache, "slots": s}
        if threshold is not None:
            tensors["thr"] = threshold.float().expand(h, wf.shape[2]).contiguous()
        got = self._run("hash", tensors, [t, h, d, wf.shape[2], nb, bs, c_total, col_off, threshold is not None],
                        ["cache"])
        cache.copy_(got["cache"])

    def hash_encode_and_cache(self, k, weight, cache, slot_mapping, threshold=None):
        w = weight if weight.dim() == 3 else weight.unsqueeze(0).expand(k.shape[1], *weight.shape)
        self._hash(k, w, cache, slot_mapping, 0, threshold)

    def mla_hash_encode_and_cache(self, c_kv, k_pe, w_lora, w_rope, cache, slot_mapping):
        self._hash(c_kv.unsqueeze(1), w_lora.unsqueeze(0), cache, slot_mapping, 0)
        self._hash(k_pe.unsqueeze(1), w_rope.unsqueeze(0), cache, slot_mapping, w_lora.shape[1] // 8)

    def hamming_dist_top_k(self, q, kc, bt, seq, budgets, k, forced, method="max", rope_bytes=0, rope_w=1.0):
        b, hq, c = q.shape
        nb, hkv, bs, _ = kc.shape
        m = bt.shape[1]
        mean = method == "mean"
        tensors = {"q": q, "kc": kc, "bt": bt, "seq": seq, "budgets": budgets,
                   "forced": torch.tensor(list(forced) or [0], dtype=torch.int32),
                   "scores": torch.zeros(b, m, dtype=torch.float32 if mean else torch.int32),
                   "idx": torch.full((b, k), 123, dtype=torch.int32), "nsel": torch.full((b,), 123, dtype=torch.int32)}
        params = [b, m, nb, hkv, hq // hkv, c, c - rope_bytes, int(round(rope_w * 16)), bs, mean, k, len(forced)]
        got = self._run("topk", tensors, params, ["idx", "nsel"])
        return got["idx"], got["nsel"]

    def kv_select(self, idx, n_sel, bt, seq, bs, pad):
        b, k = idx.shape
        tensors = {"idx": idx, "nsel": n_sel, "bt": bt, "seq": seq,
                   "table": torch.full((b, k), 77, dtype=torch.int32), "lens": torch.full((b,), 77, dtype=torch.int32)}
        got = self._run("kvsel", tensors, [b, k, bt.shape[1], bs, pad], ["table", "lens"])
        return got["table"], got["lens"]


# ----------------------------------------------------------------------------- crosscheck grid

_OPS = ("hash_encode_and_cache", "mla_hash_encode_and_cache", "hamming_dist_top_k", "kv_select")
_CASES = [c for c in X.build_cases(seed=0, size="full") if c.op in _OPS]


@pytest.mark.parametrize("case", _CASES, ids=[c.name for c in _CASES])
def test_crosscheck_case(runner, case):
    """Every crosscheck case of the four AscendC ops, with the case's own rule (exact / spec-2 band)."""
    kern = Kernels(runner, cores=7)
    args = X.clone_args(case, torch.device("cpu"))
    out = getattr(kern, case.op)(*args)
    got = [args[case.mutated]] if case.mutated is not None else list(out)
    ok, detail = X.compare(case, got, X.expected_outputs(case), args)
    assert ok, f"{case.name}: {detail}"


# ----------------------------------------------------------------------------- random cases

def _band_ok(x, w, got, want):
    y = reference.project(x, w)
    band = y.abs() <= 1e-3 * x.double().norm(dim=-1, keepdim=True) * w.double().norm(dim=-2)
    diff = torch.from_numpy(np.unpackbits((got ^ want).numpy(), axis=-1, bitorder="little")).bool()
    return not bool((diff & ~band).any())


@pytest.mark.parametrize("cores", [1, 3, 40])
def test_hash_encode_and_cache_random(runner, cores):
    g = torch.Generator().manual_seed(cores)
    k = torch.randn(9, 2, 64, generator=g).to(torch.bfloat16)
    w = torch.randn(2, 64, 128, generator=g)
    cache = torch.randint(0, 256, (4, 2, 8, 16), dtype=torch.uint8, generator=g)
    want = cache.clone()
    slots = torch.tensor([0, 31, -1, 9, 8, 100, 17, 3, 30])  # -1 padding, 100 past the cache: never written
    Kernels(runner, cores).hash_encode_and_cache(k, w, cache, slots)
    reference.hash_encode_and_cache(k, w, want, slots)
    for h in range(2):
        for t, s in enumerate(slots.tolist()):
            if 0 <= s < 32:
                got_c, want_c = cache[s // 8, h, s % 8], want[s // 8, h, s % 8]
                assert _band_ok(k[t:t + 1, h], w[h], got_c[None], want_c[None]), (t, h)
    untouched = torch.ones(4, 8, dtype=torch.bool)
    for s in slots.tolist():
        if 0 <= s < 32:
            untouched[s // 8, s % 8] = False
    assert torch.equal(cache.permute(0, 2, 1, 3)[untouched], want.permute(0, 2, 1, 3)[untouched])


@pytest.mark.parametrize("shared", [False, True])
def test_hash_encode_and_cache_threshold_spec13(runner, shared):
    """Centred codes: bit = k . W[:, r] > t[r]; keys with a large common component, t = mu W."""
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    from spec_literal import band_violations

    g = torch.Generator().manual_seed(12 + shared)
    mu = 3 * torch.randn(2, 64, generator=g)
    k = torch.randn(9, 2, 64, generator=g) + mu
    w = torch.randn(64, 128, generator=g) if shared else torch.randn(2, 64, 128, generator=g)
    thr = (mu[0] @ w) if shared else torch.einsum("hd,hdr->hr", mu, w)
    cache = torch.randint(0, 256, (4, 2, 8, 16), dtype=torch.uint8, generator=g)
    want = cache.clone()
    slots = torch.tensor([0, 31, -1, 9, 8, 100, 17, 3, 30])
    Kernels(runner, 3).hash_encode_and_cache(k, w, cache, slots, thr)
    reference.hash_encode_and_cache(k, w, want, slots, thr)
    live = [t for t, s in enumerate(slots.tolist()) if 0 <= s < 32]
    got_rows = torch.stack([cache[slots[t] // 8, :, slots[t] % 8] for t in live])
    assert band_violations(k[live], w, got_rows, thr) == 0
    untouched = torch.ones(4, 8, dtype=torch.bool)
    for s in slots.tolist():
        if 0 <= s < 32:
            untouched[s // 8, s % 8] = False
    assert torch.equal(cache.permute(0, 2, 1, 3)[untouched], want.permute(0, 2, 1, 3)[untouched])
    # and the threshold matters: the plain codes differ
    plain = want.clone()
    reference.hash_encode_and_cache(k, w, plain, slots)
    assert not torch.equal(plain, want)


def test_hash_weight_tiles(runner):
    """D = 384, R = 128: the weight is streamed in UB tiles of 192 rows (gsa_tiling.h HashDTile)."""
    g = torch.Generator().manual_seed(8)
    k = torch.randn(5, 1, 384, generator=g)
    w = torch.randn(1, 384, 128, generator=g)
    cache = torch.zeros(2, 1, 4, 16, dtype=torch.uint8)
    want = cache.clone()
    slots = torch.tensor([0, 1, 2, 7, 5])
    Kernels(runner, 3).hash_encode_and_cache(k, w, cache, slots)
    reference.hash_encode_and_cache(k, w, want, slots)
    got_rows, want_rows = cache.reshape(8, 16)[slots], want.reshape(8, 16)[slots]
    assert _band_ok(k[:, 0], w[0], got_rows, want_rows)


def _case(seed, b=5, hq=8, hkv=2, c=16, bs=8, m=7, ties=False):
    g = torch.Generator().manual_seed(seed)
    nb = b * m + 2
    q = torch.randint(0, 256, (b, hq, c), dtype=torch.uint8, generator=g)
    kc = torch.randint(0, 256, (nb, hkv, bs, c), dtype=torch.uint8, generator=g)
    if ties:
        kc, q = (kc & 1) * 0xFF, q & 0
    bt = torch.randperm(nb, generator=g)[: b * m].reshape(b, m).to(torch.int32)
    seq = torch.randint(1, m * bs + 1, (b,), dtype=torch.int32, generator=g)
    seq[0], seq[1] = m * bs, 1
    budgets = torch.randint(1, m + 2, (b,), dtype=torch.int32, generator=g)
    return q, kc, bt, seq, budgets


@pytest.mark.parametrize("method", ["max", "mean"])
@pytest.mark.parametrize("cores", [1, 4, 48])
def test_hamming_dist_top_k_gqa_random(runner, method, cores):
    kern = Kernels(runner, cores)
    for seed, ties in ((cores, False), (cores + 100, True)):
        q, kc, bt, seq, budgets = _case(seed, ties=ties)
        for forced in ([], [0, -1], [-1, 2, 99, -99, -1]):
            for k in (7, 3):  # 3: n_sel clamped to K (unchecked caller, spec 5 amendment)
                got = kern.hamming_dist_top_k(q, kc, bt, seq, budgets, k, forced, method)
                want = reference.hamming_dist_top_k(q, kc, bt, seq, budgets, k, forced, method)
                assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (forced, k, got, want)


@pytest.mark.parametrize("method", ["max", "mean"])
def test_hamming_dist_top_k_mla_random(runner, method):
    q, kc, bt, seq, budgets = _case(9, hq=16, hkv=1, c=72, bs=16, m=5)
    kern = Kernels(runner, 6)
    for w in (1.0, 0.0, 0.5, 16.0):
        got = kern.hamming_dist_top_k(q, kc, bt, seq, budgets, 5, [0, -1], method, 8, w)
        want = reference.hamming_dist_top_k(q, kc, bt, seq, budgets, 5, [0, -1], method, 8, w)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), w


def test_large_key_block_is_copied_in_pieces(runner):
    """Hkv*bs*C = 2*128*144 = 36864 bytes per key block: more than one DataCopyPad (kMaxCopyBytes)."""
    q, kc, bt, seq, budgets = _case(21, b=3, hq=4, hkv=2, c=144, bs=128, m=3)
    got = Kernels(runner, 2).hamming_dist_top_k(q, kc, bt, seq, budgets, 3, [-1], "mean")
    want = reference.hamming_dist_top_k(q, kc, bt, seq, budgets, 3, [-1], "mean")
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_bad_block_ids_stay_in_bounds(runner):
    """Ids past the cache or negative are clamped: a read past the cache would hit GmAlloc's guard page."""
    q, kc, bt, seq, budgets = _case(3)
    bt[0, 1], bt[2, 0] = 10_000, -4
    got = Kernels(runner, 4).hamming_dist_top_k(q, kc, bt, seq, budgets, 7, [0], "max")
    want = reference.hamming_dist_top_k(q, kc, bt, seq, budgets, 7, [0], "max")
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("cores", [1, 5])
def test_kv_select_random(runner, cores):
    q, kc, bt, seq, budgets = _case(11)
    for k, forced, pad in ((7, [0, -1], 0), (2, [], -1)):
        idx, n = reference.hamming_dist_top_k(q, kc, bt, seq, budgets, k, forced)
        got = Kernels(runner, cores).kv_select(idx, n, bt, seq, kc.shape[2], pad)
        want = reference.kv_select(idx, n, bt, seq, kc.shape[2], pad)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("method", ["max", "mean"])
def test_padding_tokens_of_the_last_block_never_count(runner, method):
    """Block 2 is partial (2 of 4 tokens): its valid tokens are medium, its padding slots a
    perfect match. Counting padding would make block 2 win (max and mean)."""
    q = torch.zeros(1, 2, 4, dtype=torch.uint8)
    kc = torch.full((3, 1, 4, 4), 0x0F, dtype=torch.uint8)
    kc[1, 0, 0] = 0x0E
    kc[2, 0, 2:] = 0x00
    bt = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    seq = torch.tensor([10], dtype=torch.int32)
    budgets = torch.tensor([1], dtype=torch.int32)
    got = Kernels(runner, 2).hamming_dist_top_k(q, kc, bt, seq, budgets, 3, [], method)
    want = reference.hamming_dist_top_k(q, kc, bt, seq, budgets, 3, [], method)
    assert want[0].tolist() == [[1, -1, -1]]
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_a_crashing_core_fails_the_run(runner):
    """The runner must not pass silently when a core dies: claim a cache 4x larger than the buffer,
    so a slot past the real buffer writes into GmAlloc's guard page (SIGSEGV in that core)."""
    kern = Kernels(runner, 2)
    x = torch.randn(2, 1, 32)
    w = torch.randn(1, 32, 32)
    cache = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    slots = torch.tensor([0, 31], dtype=torch.int64)
    with pytest.raises(RuntimeError, match="did not finish"):
        kern._run("hash", {"x": x, "w": w, "cache": cache, "slots": slots}, [2, 1, 32, 32, 8, 4, 4, 0, 0], ["cache"])


def test_script_skips_cleanly_without_the_api(tmp_path):
    """No CANN toolkit and no API sources (a user's machine): the script says why and exits 0."""
    env = {k: v for k, v in os.environ.items() if k not in ("ASCEND_HOME_PATH", "GSA_ASCENDC_CPU_BIN")}
    env["GSA_ASCENDC_API"] = str(tmp_path / "absent")
    env["GSA_ASCENDC_CPU_BUILD"] = str(tmp_path / "build")
    res = subprocess.run(["bash", str(SCRIPT), "--build-only"], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("SKIP:") and "ASCEND_HOME_PATH" in last and "absent" in last
    assert not (tmp_path / "build").exists()


def test_runner_rejects_a_bad_core_count(runner, tmp_path):
    proc = subprocess.run([str(runner), "kvsel", str(tmp_path), "51"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "vector cores: expected 1..50, got 51" in proc.stderr
