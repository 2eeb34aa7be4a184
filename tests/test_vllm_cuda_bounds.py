"""The FLASH_ATTN wrapper's ``max_seq_len`` on sparse steps (gsa.integrations.vllm.cuda.sparse_max_seq_len):
in eager steps the plan's bound (largest n_sel x block size), never below a sparse row's length, and
equal to it when every row's kept blocks are full; the dense bound for dense steps and padded batches."""
import pytest
import torch

pytest.importorskip("vllm.v1.attention.backends.flash_attn")

from gsa.config import GSAConfig  # noqa: E402
from gsa.integrations.vllm.cuda import sparse_max_seq_len  # noqa: E402
from gsa.integrations.vllm.runtime import StepState  # noqa: E402
from gsa.sparse import GSASparse  # noqa: E402

BS = 8
CFG = dict(model_name="t/bound", num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, head_dim=32,
           hash_bits=64, chunk_size=BS, top_k_ratio_per_layer=[1, .25, .5, .25], top_k_index_reuse=[-1, -1, -1, 1],
           must_select_blocks=[0, -2, -1], gpu_seq_len_threshold=24, gpu_concurrency_threshold=1, seed=5)


def _select_all(gs, seq, m, rng, graph):
    b = len(seq)
    nb = b * m + 4
    caches = gs.allocate_hash_caches(nb)
    table = torch.randperm(nb, generator=rng)[: b * m].reshape(b, m).to(torch.int32)
    slots = torch.cat([table[r].long()[torch.arange(s) // BS] * BS + torch.arange(s) % BS for r, s in enumerate(seq)])
    keys = torch.randn(slots.numel(), 2, 32, generator=rng)
    for l in gs.scoring_layers:
        gs.cache_keys(l, caches[l], slots, keys)
    step = gs.begin_step(seq, k=m if graph else None, graph=graph)
    q = torch.randn(b, 8, 32, generator=rng)
    seq_t = torch.tensor(seq, dtype=torch.int32)
    out = {}
    for l in gs.scoring_layers:
        out[l] = gs.select(l, step, table, seq_t, caches[l], q)
    return step, out


@pytest.mark.parametrize("graph", [False, True])
def test_bound_covers_every_sparse_row(rng, graph):
    gs = GSASparse(GSAConfig(**CFG))
    m = 12
    for _ in range(3):
        seq = torch.randint(3 * BS, m * BS + 1, (5,), generator=rng).tolist()
        dense_max = max(seq)
        step, sel = _select_all(gs, seq, m, rng, graph)
        assert step.plan.sparse
        for l, (_, lens) in sel.items():
            bound = sparse_max_seq_len(dense_max, StepState(step=step), l, BS, len(seq))
            assert sparse_max_seq_len(dense_max, StepState(step=step), l, BS, len(seq) + 2) == dense_max  # padded
            assert int(lens.max()) <= bound <= dense_max, (l, lens.tolist(), bound)
            assert bound == min(dense_max, int(step.plan.n_sel[l].max()) * BS)


def test_bound_is_tight_on_full_blocks(rng):
    # every row a whole number of blocks: a sparse row's length is exactly n_sel x block size
    gs = GSASparse(GSAConfig(**CFG))
    m = 12
    seq = [m * BS, 10 * BS, m * BS]
    step, sel = _select_all(gs, seq, m, rng, graph=True)
    for l, (_, lens) in sel.items():
        ns = step.plan.n_sel[l]
        assert lens.tolist() == [int(n) * BS for n in ns]
        bound = sparse_max_seq_len(max(seq), StepState(step=step), l, BS, len(seq))
        assert bound == int(lens.max()) < max(seq)  # ratios 1/4 and 1/2 of 12 blocks keep fewer than 12


def test_dense_step_keeps_the_dense_bound(rng):
    gs = GSASparse(GSAConfig(**CFG))
    step = gs.begin_step([16, 16], k=12, graph=True)  # below gpu_seq_len_threshold: a dense step
    assert not step.plan.sparse
    assert sparse_max_seq_len(16, StepState(step=step), 1, BS, 2) == 16
    assert sparse_max_seq_len(16, StepState(step=None), 1, BS, 2) == 16
