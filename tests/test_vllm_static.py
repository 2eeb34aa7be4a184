"""The vLLM runtime's graph-form decode steps (StepState.static, used for FULL CUDA graphs):
persistent budget buffers shared by every step, selection over the whole table at a
fixed width, dense steps and padding rows expressed through budgets, and results equal
to the reference composition. Runs on the CPU (no vLLM needed): the same code runs
inside vLLM's FlashAttention wrapper on CUDA."""
import math

import numpy as np
import pytest
import torch

from gsa import reference as R
from gsa import use_backend
from gsa.config import GSAConfig
from gsa.integrations.vllm.runtime import GSAVllmRuntime
from gsa.integrations.vllm.settings import PluginSettings
from gsa.weights import load_hash_weights

BS = 8
CFG = dict(model_name="t/static", num_hidden_layers=5, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
           hash_bits=32, chunk_size=BS, top_k_ratio_per_layer=[1, .25, .5, .25, 1], top_k_index_reuse=[-1, -1, -1, 1, -1],
           must_select_blocks=[0, -1], gpu_seq_len_threshold=40, gpu_concurrency_threshold=1, seed=2)


@pytest.mark.parametrize("backend_name", ["reference", "cpu", "triton"])
def test_static_steps_equal_reference(backend_name, rng):
    from gsa import dispatch

    if backend_name not in dispatch.backends() or not dispatch.backends()[backend_name].available \
            or not dispatch.backends()[backend_name].serves("cpu"):
        pytest.skip(f"backend {backend_name} not available here")
    cfg = GSAConfig(**CFG)
    rt = GSAVllmRuntime(PluginSettings(cfg, 0, "test"), device=torch.device("cpu"), num_layers=5)
    b, m = 6, 16
    nb = b * m + 2
    addrs = set()
    with use_backend(backend_name):
        for step_i, seq in enumerate([[100, 7, 128, 0, 41, 60], [12, 20, 3, 0, 0, 9], [128, 127, 64, 55, 33, 0]]):
            table = torch.randperm(nb, generator=rng)[: b * m].reshape(b, m).to(torch.int32)
            slots = torch.cat([table[i].long()[torch.arange(s) // BS] * BS + torch.arange(s) % BS
                               for i, s in enumerate(seq)])
            keys = torch.randn(slots.numel(), 2, 16, generator=rng)
            for l in rt.policy.scoring_layers:
                rt.cache_keys(l, keys, slots, nb)
            qlen = [1 if s > 0 else 0 for s in seq]
            state = rt.plan(np.array(seq), np.array(qlen), torch.zeros(b + 1, dtype=torch.int32), static_width=m)
            assert state.static and state.step is not None
            seq_t = torch.tensor(seq, dtype=torch.int32)
            query = torch.randn(b, 4, 16, generator=rng)
            for l in range(5):
                if not rt.is_sparse(l, state):
                    continue
                src = rt.policy.layer(l).selection_layer
                t, n = rt.select(l, state, query, table, seq_t)
                assert t.shape == (b, m) and n.shape == (b,)
                budgets = state.step.budgets[src]
                addrs.add((cfg.top_k_ratio_per_layer[src], budgets.data_ptr()))
                live = seq_t > 0
                nblk = torch.tensor([math.ceil(s / BS) for s in seq])
                if not state.step.plan.sparse:  # a dense step: every block of every row
                    assert torch.equal(budgets[live].long(), nblk[live])
                w = load_hash_weights(cfg, src)
                idx, ns = R.hamming_dist_top_k(R.hash_encode(query[live], w), rt.hash_caches[src], table[live],
                                               seq_t[live], budgets[live], m, cfg.must_select_blocks)
                want_t, want_l = R.kv_select(idx, ns, table[live], seq_t[live], BS)
                assert torch.equal(t[live], want_t), (step_i, l)
                assert torch.equal(n[live], want_l), (step_i, l)
                assert bool((n[~live] == 0).all())
    # one persistent buffer per ratio, the same storage at every step (what a captured graph reads)
    assert len(addrs) == 2


def test_shallow_copy_equals_copy_copy():
    """The FLASH_ATTN wrapper's metadata copy: copy.copy's result for plain classes, copy.copy
    itself for classes with slots or their own copy protocol."""
    import copy
    import dataclasses

    from gsa.integrations.vllm.common import shallow_copy

    @dataclasses.dataclass
    class Plain:
        a: object
        b: int = 0

    @dataclasses.dataclass
    class Sub(Plain):
        c: int = 3

    @dataclasses.dataclass(slots=True)
    class Slotted:
        a: object
        b: int = 0

    class OwnCopy:
        def __init__(self):
            self.a = [1]

        def __copy__(self):
            out = OwnCopy()
            out.a = list(self.a)
            return out

    shared = torch.zeros(2)
    for obj in (Plain(shared, 1), Sub(shared, 2, 4), Slotted(shared, 5)):
        got, want = shallow_copy(obj), copy.copy(obj)
        assert type(got) is type(obj) and got == want and got is not obj and got.a is shared
        got.b = 99
        assert obj.b != 99
    own = OwnCopy()
    assert shallow_copy(own).a is not own.a  # its __copy__ ran
