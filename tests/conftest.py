"""Shared fixtures: run the op tests once per backend that serves CPU tensors.

``reference`` always; ``cpu`` when the C++ extension is built; ``triton`` when
``TRITON_INTERPRET=1`` and triton imports (the interpreter runs the kernels on
the CPU); ``npu`` never here. ``GSA_TEST_BACKENDS=a,b`` restricts the list.
"""
from __future__ import annotations

import os

import pytest
import torch

import gsa
from gsa import dispatch


def cpu_backends():
    names = ["reference"]
    for name, backend in sorted(dispatch.backends().items()):
        if name != "reference" and backend.serves("cpu") and backend.available:
            names.append(name)
    only = os.environ.get("GSA_TEST_BACKENDS")
    if only:
        wanted = [n.strip() for n in only.split(",") if n.strip()]
        missing = [n for n in wanted if n not in names]
        if missing:
            raise RuntimeError(f"GSA_TEST_BACKENDS asks for {missing}, but only {names} serve CPU tensors here")
        names = wanted
    return names


@pytest.fixture(params=cpu_backends())
def backend(request):
    """Force one backend for the test body; yields its name."""
    with gsa.use_backend(request.param):
        yield request.param


def assert_backend_ran(op: str, name: str) -> None:
    """The forced backend really ran ``op`` (no silent fallback to the reference)."""
    used = dispatch.resolve(op, "cpu").name
    if op in dispatch.backends()[name].kernels:
        assert used == name, f"{op}: expected backend {name}, resolved {used}"


@pytest.fixture
def rng():
    """A fresh, logged seed per test: failures print it, reruns draw new inputs."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def vllm_process_state():
    """An in-process vLLM CPU engine sets torch to 1 thread and may pin the process to
    cores; give the rest of the test session its settings back (vLLM engine test modules
    use this through ``pytest.mark.usefixtures``)."""
    threads = torch.get_num_threads()
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    yield
    torch.set_num_threads(threads)
    if affinity is not None:
        try:
            os.sched_setaffinity(0, affinity)
        except OSError:
            pass


def assert_captured_selection(cap, cfg, q_codes, block: int) -> None:
    """A vLLM engine's captured sparse step (``GSAVllmRuntime.captured``) selected what
    the reference selects from the codes in its hash cache: ``q_codes`` are the captured
    queries' codes (GQA or MLA), the table and lengths must be equal bit for bit."""
    from gsa.integrations.vllm.capture_check import reference_selection

    table, slens = reference_selection(cap, cfg, q_codes, block)
    assert torch.equal(table, cap["sparse_block_table"]) and torch.equal(slens, cap["sparse_seq_lens"])
