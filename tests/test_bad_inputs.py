"""Every op, every CPU-serving backend, both entry points (``gsa.ops`` and raw
``torch.ops.gsa``): bad inputs are refused with the argument named (expected vs
got) and nothing written; strided / offset views give the reference's answer and
write only inside the view. The cases (tests/bad_input_cases.py) run in a child
process, so a segfault or abort is reported as a failure naming the case."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cpu_backends

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("entry", ["ops", "raw"])
@pytest.mark.parametrize("backend", cpu_backends())
def test_bad_inputs(backend, entry):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(HERE / "bad_input_cases.py"), backend, entry],
                          capture_output=True, text=True, env=env, timeout=600)
    cases = [l[5:] for l in proc.stdout.splitlines() if l.startswith("CASE ")]
    result = [l[7:] for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not result:
        last = cases[-1] if cases else "(before the first case)"
        pytest.fail(f"child exited with {proc.returncode} during case {last}:\n{proc.stderr[-3000:]}")
    report = json.loads(result[0])
    assert report["ran"] >= 40, report
    assert not report["failures"], json.dumps(report["failures"], indent=1)


def test_mean_block_sums_do_not_overflow_int32(backend):
    """Spec 4 (int64 block sums): Hq = 128, R = 1024, bs = 1024. The matching block's
    token scores are all 16*Hq*R = 2**21, its sum 2**31: an int32 sum wraps negative
    and the best block would be dropped."""
    import torch
    from gsa import ops

    g = torch.Generator().manual_seed(7)
    hq, c, bs = 128, 128, 1024
    q = torch.zeros(1, hq, c, dtype=torch.uint8)
    kc = torch.randint(0, 256, (3, 1, bs, c), generator=g, dtype=torch.uint8)
    kc[1] = 0  # block 1: every key code equals the query code
    idx, n = ops.hamming_dist_top_k(q, kc, torch.tensor([[0, 1, 2]], dtype=torch.int32),
                                    torch.tensor([3 * bs], dtype=torch.int32), torch.tensor([1], dtype=torch.int32),
                                    k=1, must_select_blocks=[], chunk_repre_method="mean")
    assert n.tolist() == [1] and idx.tolist() == [[1]]


def test_non_finite_hash_inputs_stay_in_their_rows(backend):
    """Spec 2 (1.1 amendment): a vector holding NaN / Inf gets unspecified bits, no
    error and no crash; every other vector's code is the reference's."""
    import torch
    import gsa
    from gsa import ops

    g = torch.Generator().manual_seed(3)
    x = torch.randint(-3, 4, (6, 2, 16), generator=g).float()
    w = torch.randint(-3, 4, (2, 16, 64), generator=g).float()
    x[0, 0, 3], x[1, 1, 0], x[2, 0, :] = float("nan"), float("inf"), float("-inf")
    out = ops.hash_encode(x, w)
    with gsa.use_backend("reference"):
        want = ops.hash_encode(x, w)
    finite = torch.isfinite(x).all(dim=-1)  # [T, H]
    assert out.shape == want.shape and out.dtype == torch.uint8
    assert torch.equal(out[finite], want[finite])
    cache = torch.zeros(4, 2, 4, 8, dtype=torch.uint8)
    ops.hash_encode_and_cache(x, w, cache, torch.arange(6, dtype=torch.int32))
    codes = cache.permute(0, 2, 1, 3).reshape(16, 2, 8)[:6]
    assert torch.equal(codes[finite], want[finite])


def test_fake_implementations_check_shapes_without_reading_data():
    """Tracing (torch.compile) runs the same cheap checks in the fake implementation;
    value checks are skipped there (fake tensors hold no data)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from gsa import GSAInputError

    with FakeTensorMode():
        q = torch.empty(2, 4, 16, dtype=torch.uint8)
        kc = torch.empty(10, 2, 4, 16, dtype=torch.uint8)
        bt, sl = torch.empty(2, 4, dtype=torch.int32), torch.empty(2, dtype=torch.int32)
        idx, n = torch.ops.gsa.hamming_dist_top_k(q, kc, bt, sl, sl, 3, [0, -1], "max", 0, 1.0)
        assert idx.shape == (2, 3) and n.shape == (2,)
        with pytest.raises(GSAInputError, match="argument 'block_table'.*dtype int32"):
            torch.ops.gsa.hamming_dist_top_k(q, kc, bt.long(), sl, sl, 3, [0, -1], "max", 0, 1.0)
        with pytest.raises(GSAInputError, match="argument 'cache'.*last-dim stride"):
            cache = torch.empty(4, 2, 4, 8, dtype=torch.uint8)[..., ::2]
            torch.ops.gsa.hash_encode_and_cache(torch.empty(3, 2, 8), torch.empty(2, 8, 32), cache,
                                                torch.empty(3, dtype=torch.int32))
