"""A Hugging Face causal LM with GSA in its decode path (docs/accuracy.md).

The model runs with ``use_cache=False`` and our own attention function
(registered with transformers as ``"gsa_eval"``), which owns the KV cache:

* **Paged mode** (:class:`PagedRun`, the serving path): K and V live in paged
  caches ``[NB, bs, Hkv, D]`` behind a shuffled block table (so the path must
  follow the table); each new key is hashed into the layer's hash cache as it
  is produced (``GSASparse.cache_keys`` -> ``gsa.ops.hash_encode_and_cache``);
  prefill is dense (causal SDPA over the gathered cache, in chunks); each decode
  step plans with ``GSASparse.begin_step`` and attends with
  ``GSASparse.decode_attention`` (``hamming_dist_top_k`` -> ``kv_select`` ->
  ``paged_decode_attention``; dense layers and reuse per the config).
* **Teacher-forced mode** (:class:`TeacherForcedRun`, for long metric runs):
  ``N`` known tokens after a prefix go through the model in one pass per chunk;
  query ``i`` attends to the blocks that the decode step at its position would
  select (scored with codes from ``gsa.ops.hash_encode``, selection checked
  against ``gsa.ops.hamming_dist_top_k`` on sampled rows, see
  :mod:`gsa.eval.selectors`). Causality makes this equal to ``N`` sequential
  decode steps (tests/test_eval_model.py checks it against the paged path).

Both runs attend as the model's own attention does (tests/test_eval_any_model.py
compares the dense paths with HF's ``eager`` attention on random-weight Gemma 2 /
Gemma 3 / Qwen 2 hybrids): the module's softmax ``scaling``, its
``sliding_window`` (sliding layers attend their window, and must be dense in the
GSA config) and ``softcap``; ``run.attn[layer]`` records them for the metrics.
Models are loaded by :func:`load_model` (:mod:`gsa.eval.load`: packaged names, HF
folders, GGUF files).

Shapes: ``T`` new tokens, ``S`` tokens in the cache, ``Hq``/``Hkv`` heads, ``D``
head dim, ``bs`` = the config's ``chunk_size``. Batch size is 1.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Callable, Dict, NamedTuple, Optional

import torch
import torch.nn.functional as F

from gsa.config import GSAConfig
from gsa.sparse import GSASparse
from gsa.weights import bundle_weight_type

__all__ = ["load_model", "eval_config", "PagedRun", "TeacherForcedRun", "ATTN_NAME", "LayerAttention",
           "attention_math", "attention_params"]

ATTN_NAME = "gsa_eval"
_ACTIVE = threading.local()
_PREFILL_CHUNK = 1024  # query rows per SDPA call: bounds the [Hq, rows, S] score tensor


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None,
               softcap=None, **kwargs):
    """transformers attention hook: ``query [1, Hq, T, D]``, ``key/value [1, Hkv, T, D]``
    (post-RoPE, this forward's tokens only) -> ``([1, T, Hq, D], None)``.

    Honours what the model's attention module passes: its softmax ``scaling`` (e.g.
    Gemma's ``query_pre_attn_scalar ** -0.5``), ``sliding_window`` (query ``p`` sees
    keys ``p - window < j <= p``, HF's ``sliding_window_overlay``) and ``softcap``
    (``tanh`` logit capping, Gemma 2). The runs own the KV cache and build the
    causal / window mask themselves; a mask HF passes anyway is checked against it.
    Attention this hook cannot reproduce (bidirectional, attention sinks) is an error."""
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError(f"gsa eval: layer {module.layer_idx} uses attention sinks (s_aux): not supported")
    if not getattr(module, "is_causal", True):
        raise NotImplementedError(f"gsa eval: layer {module.layer_idx} is not causal (bidirectional attention): "
                                  "not supported")
    t, d = query.shape[2], query.shape[3]
    scale = float(scaling) if scaling is not None else d ** -0.5
    window = int(sliding_window) if sliding_window is not None and int(sliding_window) > 0 else None
    cap = float(softcap) if softcap is not None and float(softcap) > 0 else None
    run = getattr(_ACTIVE, "run", None)
    q, k, v = query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1)
    if attention_mask is not None:
        _check_mask(attention_mask, t, key.shape[2], window, module.layer_idx)
    if run is None:  # not inside a run: plain causal attention over what HF passes (batch 1)
        return _causal_sdpa(q, k, v, key.shape[2] - t, scale, window=window, softcap=cap).unsqueeze(0), None
    extra = {}
    if window is not None:  # keyword only when set: run subclasses with the 5-argument attend keep working
        extra["window"] = window
    if cap is not None:
        extra["softcap"] = cap
    return run.attend(module.layer_idx, q, k, v, scale, **extra).unsqueeze(0), None


def _check_mask(mask: torch.Tensor, t: int, s: int, window: Optional[int], layer: int) -> None:
    """A mask HF passed although ours says none (``[1, 1, T, S]``, bool or additive float):
    it must allow exactly causal (and window) attention among this forward's tokens."""
    if mask.dim() == 2:  # a [1, S] padding mask: batch 1 has no padding, so it must allow every key
        ok = mask if mask.dtype == torch.bool else mask != 0
        if not bool(ok.all()):
            raise NotImplementedError(f"gsa eval: layer {layer}: a padding mask that hides keys: not supported")
        return
    m = mask[0, 0, -t:, -s:]
    allowed = m if m.dtype == torch.bool else m == 0
    want = _allowed(torch.arange(s - t, s, device=m.device), s, window)
    if allowed.shape != want.shape or not torch.equal(allowed, want):
        raise NotImplementedError(f"gsa eval: layer {layer}: the model's attention mask is not causal"
                                  f"{' with a window of ' + str(window) if window else ''}; only those are supported")


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, _attention)
    AttentionMaskInterface.register(ATTN_NAME, lambda *a, **k: None)  # we build our own masks


class LayerAttention(NamedTuple):
    """A layer's attention as the model's module passes it to the hook."""
    scale: float  #: softmax scale (the module's ``scaling``)
    window: Optional[int]  #: sliding window (query ``p`` sees keys ``> p - window``), ``None``: full
    softcap: Optional[float]  #: ``tanh`` logit cap, ``None``: none


def load_model(name: str = "smollm2", device: str = "cpu", dtype: torch.dtype = torch.float32,
               gsa_config=None, verbose: bool = False):
    """``(model, tokenizer, GSAConfig)`` for ``"smollm2"``, ``"qwen"``, a local HF model
    folder or a GGUF file: see :func:`gsa.eval.load.load_model`."""
    from gsa.eval.load import load_model as _load
    return _load(name, device, dtype, gsa_config=gsa_config, verbose=verbose)


def eval_config(cfg: GSAConfig, ratio: Optional[float] = None, bits: Optional[int] = None,
                hash_weight: Optional[str] = None, threshold: Optional[int] = 1) -> GSAConfig:
    """The shipped config with the sparse layers' ratio, the hash bits and the
    weights replaced. ``threshold``: the ``gpu_seq_len_threshold`` to use (default
    1: every decode step is sparse, so short contexts are measured too; ``None``
    keeps the shipped value). ``ratio >= 1``: every layer dense."""
    ch: dict = {}
    if ratio is not None:
        old = cfg.top_k_ratio_per_layer
        ch["top_k_ratio_per_layer"] = [1.0 if (r >= 1 or ratio >= 1) else float(ratio) for r in old] if ratio < 1 \
            else [1.0] * len(old)
    if bits is not None:
        ch["hash_bits"] = int(bits)
    if hash_weight is not None:
        ch["hash_weight_type"], ch["hash_weight"], ch["seed"] = bundle_weight_type(hash_weight), str(hash_weight), None
    if threshold is not None:
        ch["gpu_seq_len_threshold"] = int(threshold)
    return cfg.replace(**ch) if ch else cfg


def _allowed(rows: torch.Tensor, s: int, window: Optional[int]) -> torch.Tensor:
    """``bool [len(rows), S]``: key ``j`` visible to the query at position ``p``:
    ``j <= p`` and, with a window, ``j > p - window`` (HF's sliding-window overlay)."""
    cols = torch.arange(s, device=rows.device).unsqueeze(0)
    mask = cols <= rows.unsqueeze(1)
    if window is not None:
        mask = mask & (cols > rows.unsqueeze(1) - window)
    return mask


def attention_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
                   softcap: Optional[float] = None) -> torch.Tensor:
    """Softmax attention ``q [Hq, T, D]``, ``k/v [Hq, S, D]``, ``mask bool [T, S]`` ->
    ``[Hq, T, D]``. Without ``softcap``: SDPA. With it: logits ``softcap *
    tanh(scale q.k / softcap)`` (Gemma 2's eager arithmetic, in float32)."""
    if softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    logits = torch.matmul(q.float(), k.float().transpose(1, 2)) * scale
    logits = torch.tanh(logits / softcap) * softcap
    probs = torch.softmax(logits.masked_fill(~mask, -math.inf), dim=-1)
    return torch.matmul(probs, v.float()).to(q.dtype)


def _causal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos0: int, scale: float,
                 allowed: Optional[Callable[[int, int], torch.Tensor]] = None, window: Optional[int] = None,
                 softcap: Optional[float] = None) -> torch.Tensor:
    """``q [T, Hq, D]`` at positions ``q_pos0 ..``, ``k/v [S, Hkv, D]`` -> ``[T, Hq, D]``.
    ``allowed(r0, r1)`` may return a ``bool [r1-r0, S]`` mask (ANDed with causality
    and the sliding ``window``); ``softcap`` as in :func:`attention_math`."""
    t, hq, d = q.shape
    s, hkv, _ = k.shape
    g = hq // hkv
    kk = k.transpose(0, 1).repeat_interleave(g, dim=0)  # [Hq, S, D]
    vv = v.transpose(0, 1).repeat_interleave(g, dim=0)
    out = torch.empty_like(q)
    for r0 in range(0, t, _PREFILL_CHUNK):
        r1 = min(t, r0 + _PREFILL_CHUNK)
        mask = _allowed(torch.arange(q_pos0 + r0, q_pos0 + r1, device=q.device), s, window)
        if allowed is not None:
            mask = mask & allowed(r0, r1)
        o = attention_math(q[r0:r1].transpose(0, 1), kk, vv, mask, scale, softcap)
        out[r0:r1] = o.transpose(0, 1)
    return out


@contextlib.contextmanager
def _active(run):
    prev = getattr(_ACTIVE, "run", None)
    _ACTIVE.run = run
    try:
        yield
    finally:
        _ACTIVE.run = prev


def _forward(model, run, ids: torch.Tensor, pos: int, logits: str = "last") -> torch.Tensor:
    """Model forward over ``ids [T]`` at positions ``pos ..``; returns float32 logits
    ``[V]`` (``logits="last"``) or ``[T, V]`` (``"all"``)."""
    t = ids.shape[0]
    position_ids = torch.arange(pos, pos + t, device=ids.device).unsqueeze(0)
    with _active(run), torch.no_grad():
        out = model(input_ids=ids.unsqueeze(0), position_ids=position_ids, use_cache=False,
                    logits_to_keep=1 if logits == "last" else 0)
    lg = out.logits[0].float()
    return lg[-1] if logits == "last" else lg


def attention_params(model) -> Dict[int, LayerAttention]:
    """``{layer: LayerAttention}`` as the model's attention modules pass them to the
    hook (scale, sliding window, softcap), read from one forward of two tokens."""
    run = TeacherForcedRun(model)
    run.feed(torch.tensor([0, 0], device=next(model.parameters()).device), logits="last")
    return dict(run.attn)


class PagedRun:
    """The serving-shaped decode path for one sequence (batch 1).

    ``model``: loaded with :func:`load_model`; ``cfg``: its GSAConfig;
    ``max_tokens``: capacity of the paged caches. ``observer(layer, step, q, k_cache,
    v_cache, table, seq_lens, sparse_table, sparse_lens)`` is called at every
    decode step of every layer that selects (for metrics); ``None`` to skip.
    """

    def __init__(self, model, cfg: GSAConfig, max_tokens: int, seed: int = 0,
                 observer: Optional[Callable] = None):
        mc = model.config
        self.model, self.cfg = model, cfg
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.hkv = mc.num_key_value_heads
        self.d = getattr(mc, "head_dim", None) or mc.hidden_size // mc.num_attention_heads
        self.bs = cfg.chunk_size
        self.nb = max(1, math.ceil(max_tokens / self.bs))
        self.gsa = GSASparse(cfg, self.device, block_size=self.bs)
        n_layers = mc.num_hidden_layers
        shape = (self.nb, self.bs, self.hkv, self.d)
        self.k_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(n_layers)]
        self.v_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(n_layers)]
        self.hash_caches: Dict[int, torch.Tensor] = self.gsa.allocate_hash_caches(self.nb)
        gen = torch.Generator().manual_seed(seed)
        self.block_table = torch.randperm(self.nb, generator=gen).to(torch.int32).unsqueeze(0).to(self.device)
        self.pos = 0
        self.step = None
        self.observer = observer
        self.selector = "gsa"  # "quest": sparse steps take the Quest-style selection (same budget) instead
        self._quest_sel: Dict[int, torch.Tensor] = {}
        self.attn: Dict[int, LayerAttention] = {}  # per layer: what the model's attention passed
        self.blocks_read = []  # per decode step: mean blocks attended per layer (dense layers included)
        self.sparse_blocks_read = []  # per decode step: mean over the layers that ran a sparse selection
        self._step_blocks = []

    # -------------------------------------------------------------- attention
    def _slots(self, t: int) -> torch.Tensor:
        p = torch.arange(self.pos, self.pos + t, device=self.device)
        return self.block_table[0].to(torch.int64)[p // self.bs] * self.bs + p % self.bs

    def _gather(self, cache: torch.Tensor, n: int) -> torch.Tensor:
        nblk = math.ceil(n / self.bs)
        return cache[self.block_table[0, :nblk].to(torch.int64)].reshape(nblk * self.bs, self.hkv, self.d)[:n]

    def attend(self, layer: int, q, k, v, scale, window: Optional[int] = None, softcap: Optional[float] = None):
        """One layer's attention for this forward's ``q [T, Hq, D]``, ``k/v [T, Hkv, D]``.
        Sliding-window layers (``window``) attend their window of the gathered
        cache and must be dense in the config; with ``softcap`` the selected blocks
        are attended in torch (the GSA attention op has no logit capping)."""
        t = q.shape[0]
        if self.pos + t > self.nb * self.bs:
            raise ValueError(f"PagedRun: {self.pos + t} tokens exceed max_tokens = {self.nb * self.bs}")
        self.attn[layer] = LayerAttention(scale, window, softcap)
        slots = self._slots(t)
        kc, vc = self.k_cache[layer], self.v_cache[layer]
        kc.view(-1, self.hkv, self.d)[slots] = k.to(self.dtype)
        vc.view(-1, self.hkv, self.d)[slots] = v.to(self.dtype)
        self.gsa.cache_keys(layer, self.hash_caches.get(layer), slots, k)
        n = self.pos + t
        if t > 1:  # prefill: dense, as in serving
            return _causal_sdpa(q, self._gather(kc, n), self._gather(vc, n), self.pos, scale, window=window,
                                softcap=softcap)
        if window is not None:
            if not self.gsa.policy.layer(layer).dense:
                raise ValueError(f"PagedRun: layer {layer} is a sliding-window layer (window {window}) but the GSA "
                                 f"config makes it sparse (top_k_ratio_per_layer[{layer}] = "
                                 f"{self.cfg.top_k_ratio_per_layer[layer]}): expected 1.0 (GSA serves full-attention "
                                 "layers only)")
            self._step_blocks.append((n - 1) // self.bs - max(0, n - window) // self.bs + 1)
            return _causal_sdpa(q, self._gather(kc, n), self._gather(vc, n), self.pos, scale, window=window,
                                softcap=softcap)
        seq_lens = torch.tensor([n], dtype=torch.int32, device=self.device)
        hc = self.hash_caches.get(layer)
        table, lens = self.gsa.select(layer, self.step, self.block_table, seq_lens, hc, q)
        sparse = table is not self.block_table
        if sparse and self.selector == "quest":  # same step / layer / budget rule, Quest's block scores
            table, lens = self._quest_table(layer, q, kc, n, scale)
        self._step_blocks.append(int(math.ceil(int(lens[0]) / self.bs)) if sparse else math.ceil(n / self.bs))
        if sparse:
            self._step_sparse_blocks.append(self._step_blocks[-1])
        if self.observer is not None and table is not self.block_table and self.gsa.policy.layer(layer).scores:
            self.observer(layer, self.step, q, kc, vc, self.block_table, seq_lens, table, lens)
        if softcap is not None:
            return self._table_attention(q, kc, vc, table, lens, scale, softcap)
        return self.gsa_attention(q, kc, vc, table, lens, scale)

    def _quest_table(self, layer: int, q, kc, n: int, scale: float):
        """The Quest-style selection (:func:`gsa.eval.selectors.quest_select`, the same
        budget rule) of this decode step as ``(table int32 [1, k], lens int32 [1])``
        over the shuffled block table; reusing layers take their source's blocks."""
        from gsa.eval import selectors as S
        src = self.gsa.policy.layer(layer).reuse_source
        if src >= 0 and src in self._quest_sel:
            sel = self._quest_sel[src]
        else:
            # the block bounds on the run's device (a 32K-token layer's keys are not copied to the host
            # every step), the budget rule on the host as the teacher-forced metrics apply it
            sel = S.quest_select(self.gsa.policy, layer, q.float(), self._gather(kc, n), torch.tensor([n]), scale)[0]
            self._quest_sel[layer] = sel
        idx = sel.nonzero()[:, 0]
        table = self.block_table[0, idx.to(self.device)].unsqueeze(0)
        tail = n % self.bs
        lens = idx.numel() * self.bs - ((self.bs - tail) if tail and bool(sel[-1]) else 0)
        return table, torch.tensor([lens], dtype=torch.int32, device=self.device)

    def _table_attention(self, q, kc, vc, table, lens, scale, softcap):
        """Decode attention of ``q [1, Hq, D]`` over the first ``lens[0]`` tokens of
        the blocks in ``table[0]`` (as ``paged_decode_attention`` reads them), in torch."""
        n = int(lens[0])
        blocks = table[0, :math.ceil(n / self.bs)].to(torch.int64)
        k = kc[blocks].reshape(-1, self.hkv, self.d)[:n]
        v = vc[blocks].reshape(-1, self.hkv, self.d)[:n]
        g = q.shape[1] // self.hkv
        kk, vv = (x.transpose(0, 1).repeat_interleave(g, dim=0) for x in (k, v))
        mask = torch.ones(1, n, dtype=torch.bool, device=q.device)
        return attention_math(q.transpose(0, 1), kk, vv, mask, scale, softcap).transpose(0, 1)

    @staticmethod
    def gsa_attention(q, kc, vc, table, lens, scale):
        from gsa import ops
        return ops.paged_decode_attention(q, kc, vc, table, lens, scale)

    # -------------------------------------------------------------- driving
    def prefill(self, ids: torch.Tensor, chunk: int = 2048, progress=None) -> torch.Tensor:
        """Dense prefill of ``ids [T]`` in chunks; returns the last position's logits ``[V]``."""
        ids = ids.to(self.device)
        logits = None
        for c0 in range(0, ids.shape[0], chunk):
            part = ids[c0:c0 + chunk]
            logits = _forward(self.model, self, part, self.pos)
            self.pos += part.shape[0]
            if progress is not None:
                progress(part.shape[0])
        return logits

    def decode(self, token: int) -> torch.Tensor:
        """One decode step for ``token``; returns logits ``[V]`` for the next one."""
        self.step = self.gsa.begin_step([self.pos + 1])
        self._step_blocks, self._step_sparse_blocks, self._quest_sel = [], [], {}
        ids = torch.tensor([token], device=self.device)
        logits = _forward(self.model, self, ids, self.pos)
        self.pos += 1
        if self._step_blocks:
            self.blocks_read.append(sum(self._step_blocks) / len(self._step_blocks))
        if self._step_sparse_blocks:
            self.sparse_blocks_read.append(sum(self._step_sparse_blocks) / len(self._step_sparse_blocks))
        return logits

    def generate(self, first_logits: torch.Tensor, max_new: int, stop_ids=()) -> list:
        """Greedy decoding from ``first_logits [V]``; returns the new token ids."""
        out, logits = [], first_logits
        for _ in range(max_new):
            tok = int(torch.argmax(logits))
            out.append(tok)
            if tok in stop_ids:
                break
            logits = self.decode(tok)
        return out

    def snapshot(self) -> dict:
        """A copy of the caches and position (restore to rerun decode from the same prefill)."""
        return {"pos": self.pos, "k": [c.clone() for c in self.k_cache], "v": [c.clone() for c in self.v_cache],
                "h": {l: c.clone() for l, c in self.hash_caches.items()}}

    def restore(self, snap: dict, cfg: Optional[GSAConfig] = None, selector: str = "gsa",
                rehash: bool = False) -> None:
        """Back to ``snap``; with ``cfg``, switch the policy; ``selector``: ``"gsa"`` or
        ``"quest"`` (see :attr:`selector`). Without ``rehash`` the snapshot's hash caches
        are reused, so ``cfg`` must hash keys as the prefill's config did (same bits,
        weights, key means). ``rehash=True`` (a ``cfg`` with other codes, same block
        size): fresh hash caches are filled from the snapshot's cached keys with
        ``cfg``'s encoder, the same keys and op the prefill hashes, so one dense
        prefill serves configs with different codes."""
        if selector not in ("gsa", "quest"):
            raise ValueError(f"PagedRun.restore: 'selector' must be 'gsa' or 'quest', got {selector!r}")
        if rehash and (cfg is None or cfg.chunk_size != self.bs):
            raise ValueError(f"PagedRun.restore: 'rehash' needs a cfg with block size {self.bs}, got "
                             f"{None if cfg is None else cfg.chunk_size}")
        self.selector = selector
        if cfg is not None:
            self.cfg = cfg
            self.gsa = GSASparse(cfg, self.device, block_size=self.bs)
        self.pos = snap["pos"]
        for l in range(len(self.k_cache)):
            self.k_cache[l].copy_(snap["k"][l])
            self.v_cache[l].copy_(snap["v"][l])
        if rehash:
            self.hash_caches = self.gsa.allocate_hash_caches(self.nb)
            n, self.pos = self.pos, 0
            slots = self._slots(n)
            self.pos = n
            for l, hc in self.hash_caches.items():
                self.gsa.cache_keys(l, hc, slots, self._gather(self.k_cache[l], n))
        else:
            self.hash_caches = {l: c.clone() for l, c in snap["h"].items()}
        missing = set(self.gsa.scoring_layers) - set(self.hash_caches)
        if missing:
            raise ValueError(f"PagedRun.restore: the snapshot has no hash cache for layers {sorted(missing)}")
        self.blocks_read, self.sparse_blocks_read = [], []


class TeacherForcedRun:
    """Teacher-forced evaluation: a dense prefix, then known tokens through the
    sparse decode rule in one pass per chunk (see the module docstring).

    ``select(layer, q [T, Hq, D], k_all [S, Hkv, D], q_pos0) -> bool [T, NBLK]``
    returns the blocks each query attends to (``None``: dense); ``observer(layer,
    q, k_all, v_all, q_pos0)`` sees every layer's tensors (for metrics).
    """

    def __init__(self, model, select: Optional[Callable] = None, observer: Optional[Callable] = None,
                 block_size: int = 128):
        self.model = model
        self.select = select
        self.observer = observer
        self.bs = block_size
        self.k: Dict[int, torch.Tensor] = {}
        self.v: Dict[int, torch.Tensor] = {}
        self.attn: Dict[int, LayerAttention] = {}
        self.pos = 0

    def attend(self, layer: int, q, k, v, scale, window: Optional[int] = None, softcap: Optional[float] = None):
        """One layer: append ``k/v [T, Hkv, D]`` to the cache, attend ``q [T, Hq, D]``
        causally (within ``window``, with ``softcap``) and, with a selector, only to
        the selected blocks. ``self.attn[layer]`` records the layer's attention
        parameters before the observer runs (metrics use the model's own scale)."""
        k_all = torch.cat([self.k[layer], k]) if layer in self.k else k
        v_all = torch.cat([self.v[layer], v]) if layer in self.v else v
        self.k[layer], self.v[layer] = k_all, v_all
        self.attn[layer] = LayerAttention(scale, window, softcap)
        if self.observer is not None:
            self.observer(layer, q, k_all, v_all, self.pos)
        blocks = None if self.select is None else self.select(layer, q, k_all, self.pos)
        allowed = None
        if blocks is not None:
            if window is not None:
                raise ValueError(f"TeacherForcedRun: layer {layer} is a sliding-window layer (window {window}); "
                                 "the selector must leave it dense (return None)")
            nblk = math.ceil(k_all.shape[0] / self.bs)
            if blocks.shape != (q.shape[0], nblk):
                raise ValueError(f"TeacherForcedRun: selection for layer {layer} has shape {tuple(blocks.shape)}, "
                                 f"expected ({q.shape[0]}, {nblk}) for block size {self.bs} (selector and run "
                                 "must use the same block size)")
            tok_block = torch.arange(k_all.shape[0], device=q.device) // self.bs
            allowed = lambda r0, r1: blocks[r0:r1][:, tok_block]  # noqa: E731
        return _causal_sdpa(q, k_all, v_all, self.pos, scale, allowed, window=window, softcap=softcap)

    def feed(self, ids: torch.Tensor, logits: str = "all") -> torch.Tensor:
        """Push ``ids [T]``; returns float32 logits ``[T, V]`` (or ``[V]`` with ``"last"``)."""
        out = _forward(self.model, self, ids, self.pos, logits)
        self.pos += ids.shape[0]
        return out

    def fork(self, select: Optional[Callable] = None, observer: Optional[Callable] = None,
             block_size: Optional[int] = None) -> "TeacherForcedRun":
        """A run sharing this one's cached prefix (tensors are replaced, never written in place).
        ``block_size`` must equal the selector's block size (the cache is per token, so any works)."""
        r = TeacherForcedRun(self.model, select, observer, block_size or self.bs)
        r.k, r.v, r.pos, r.attn = dict(self.k), dict(self.v), self.pos, dict(self.attn)
        return r
