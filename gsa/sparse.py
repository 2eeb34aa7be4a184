"""The GSA orchestrator an inference engine calls (docs/policy.md).

Per layer: hash the new keys into that layer's hash cache (prefill and
decode). Per decode step: build a host-side plan (:meth:`GSASparse.begin_step`),
then per layer select blocks (or reuse an earlier layer's selection of the same
step) and hand back ``(sparse_block_table, sparse_seq_lens)`` for an unmodified
paged-attention kernel. Dense layers, dense rows and dense steps get the
original table and lengths.

No host sync inside a step: the plan is built from host-side lengths, its
budgets are copied to the device with ``non_blocking=True``, and the per-layer
work is device ops only (no ``.item()``/``.tolist()``/``.cpu()``).

Shapes: ``B`` rows, ``Hq`` query heads (MLA: ``N``), ``Hkv`` KV heads, ``D``
head dim, ``bs = chunk_size`` (must equal the KV cache block size), ``NB``
physical blocks, ``M`` block-table width, ``K = step.plan.k``, ``C`` code bytes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from gsa import op_checks as C
from gsa import ops
from gsa.config import GSAConfig
from gsa.hotpath import (HotLayer, build_program, check_select_values, hot_path_for, mla_extra, range_checks,
                         range_checks_known)
from gsa.policy import GSAPolicy, HostInts, StepPlan
from gsa import hash_codes
from gsa.weights import load_hash_threshold, load_hash_weights

__all__ = ["GSASparse", "Step"]

Tensor = torch.Tensor


@dataclass(frozen=True, eq=False)
class Step:
    """One decode step: the host plan plus its budgets on the device.

    ``budgets[l]``: ``int32 [B]`` on the orchestrator's device for each scoring
    layer (layers with one ratio share a tensor). Selections made during the
    step are remembered here so that reusing layers can take them.
    """

    plan: StepPlan
    budgets: Mapping[int, Tensor]
    _selections: Dict[int, Tuple[Tensor, Tensor]] = field(default_factory=dict, repr=False)
    #: graph form (``begin_step(..., graph=True)``): every sparse layer selects, dense rows
    #: and dense steps through their budgets, budgets in persistent buffers
    graph: bool = False


def _to_device(a: np.ndarray, device: torch.device, stage_only: bool = False) -> Tensor:
    """A host array on ``device`` without a sync (``stage_only``: the host copy, pinned
    on CUDA, for a ``copy_(..., non_blocking=True)`` into an existing buffer)."""
    t = torch.tensor(a, device="cpu")  # a copy (the plan's arrays are read-only), on the host even under a CUDA default device
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        t = t.pin_memory()  # a truly asynchronous copy; the caching host allocator keeps it alive
    return t if stage_only else t.to(device, non_blocking=True)


def _shape(t: Optional[Tensor]):
    return None if t is None else t.shape


class GSASparse:
    """GSA for one model on one device.

    ``config``: the model's :class:`~gsa.config.GSAConfig`. ``device``: where
    caches, weights and budgets live (its type picks the ``gpu_*`` or ``npu_*``
    thresholds). ``block_size``: the KV cache block size, checked against
    ``config.chunk_size``. ``pad_id``: block id written into unused entries of a
    sparse block table.
    """

    def __init__(self, config: GSAConfig, device: Union[str, torch.device] = "cpu",
                 block_size: Optional[int] = None, pad_id: int = 0):
        if not isinstance(config, GSAConfig):
            raise TypeError(f"GSASparse: 'config' must be a GSAConfig, got {type(config).__name__}")
        self.config = config
        self.device = torch.device(device)
        if block_size is not None:
            self._check_block_size("block_size", block_size)
        self.policy = GSAPolicy(config, self.device)
        self.pad_id = int(pad_id)
        self._hot: Dict[int, HotLayer] = {}  # per layer: validated signature + reused outputs
        self._hot_attn: Dict[int, Dict[Tuple, Dict]] = {}
        # per layer and signature (_keys_sig): (launch program, whether the slots are on the CPU)
        self._hot_keys: Dict[int, Dict[Tuple, Tuple[object, bool]]] = {}
        self._w: Dict[int, object] = {}
        self._thr: Dict[int, Optional[Tensor]] = {}  # spec 13 key thresholds (config's hash_centre), per layer
        self._checked: set = set()  # (layer, cache shape, dtype, query shape) already checked by select()
        self._budget_bufs: Dict[int, Tensor] = {}  # graph-form steps: persistent budgets, per budget group

    # ------------------------------------------------------------------ static facts
    @property
    def scoring_layers(self) -> Tuple[int, ...]:
        """Layers that hash keys and select (the only ones with a hash cache)."""
        return self.policy.scoring_layers

    def _check_block_size(self, what: str, bs: int) -> None:
        if bs != self.config.chunk_size:
            raise ValueError(f"GSA: {what}: the KV cache block size must equal the config's chunk_size = "
                             f"{self.config.chunk_size} (model {self.config.model_name}), got {bs}")

    def hash_cache_shape(self, num_blocks: int) -> Tuple[int, int, int, int]:
        """``(NB, Hkv, bs, R/8)`` (GQA) or ``(NB, 1, bs, (R_lora+R_rope)/8)`` (MLA)."""
        c = self.config
        return (int(num_blocks), c.cache_heads, c.chunk_size, c.code_bytes)

    def allocate_hash_caches(self, num_blocks: int, device: Union[str, torch.device, None] = None) -> Dict[int, Tensor]:
        """Zeroed ``uint8`` hash caches, one per scoring layer, keyed by layer index.
        Layers that do not score (dense or reusing) get none."""
        if not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"GSA: 'num_blocks' must be an int >= 1, got {num_blocks!r}")
        dev = self.device if device is None else torch.device(device)
        shape = self.hash_cache_shape(num_blocks)
        return {l: torch.zeros(shape, dtype=torch.uint8, device=dev) for l in self.scoring_layers}

    def weights(self, layer: int):
        """Layer ``layer``'s hash projection on this device: GQA ``float32 [Hkv, D, R]``,
        MLA ``(w_lora [L, R_lora], w_rope [P, R_rope])`` (see :mod:`gsa.weights`)."""
        return load_hash_weights(self.config, layer, self.device)

    def threshold(self, layer: int) -> Optional[Tensor]:
        """Spec 13: layer ``layer``'s key threshold ``float32 [Hkv, R]`` on this device
        (from the config's ``hash_centre``), or ``None`` (plain sign codes). Queries never
        use it: the threshold shifts every key's score by the same amount for a given query."""
        if layer not in self._thr:
            self._thr[layer] = None if self.config.is_mla else load_hash_threshold(self.config, layer, self.device)
        return self._thr[layer]

    # ------------------------------------------------------------------ keys
    def cache_keys(self, layer: int, hash_cache: Optional[Tensor], slot_mapping: Tensor,
                   key: Tensor, key_rope: Optional[Tensor] = None) -> None:
        """Hash the new keys of ``layer`` into its hash cache (prefill and decode).

        GQA: ``key [T, Hkv, D]`` (post-RoPE, as cached). MLA: ``key = c_kv [T, L]``
        (normalised latent) and ``key_rope = k_pe [T, P]``. ``slot_mapping
        int32/int64 [T]`` (the KV cache's slots; ``-1`` skips a token);
        ``hash_cache uint8`` from :meth:`allocate_hash_caches`. A layer that does
        not score is a no-op (``hash_cache`` may be ``None``).
        """
        if not self.policy.needs_hash_cache(layer):
            return
        progs = self._hot_keys.get(layer)
        if progs is not None and isinstance(key, torch.Tensor) and isinstance(hash_cache, torch.Tensor) and \
                isinstance(slot_mapping, torch.Tensor) and (key_rope is None or isinstance(key_rope, torch.Tensor)):
            # a launch program exists only for a signature whose first call ran every check
            # (_check_cache of this cache's shape and dtype, the op's validation): only the
            # value-reading slot check is left, when it runs at all (CPU tensors or GSA_DEBUG)
            hit = progs.get(self._keys_sig(layer, key, hash_cache, slot_mapping, key_rope))
            if hit is not None:
                prog, slots_on_cpu = hit
                if range_checks_known(slots_on_cpu, slot_mapping):
                    C._check_slots("hash_encode_and_cache", slot_mapping, key.shape[0], hash_cache)
                if key_rope is None:
                    prog(key, slot_mapping)
                else:
                    prog(key, slot_mapping, key_rope)
                return
        self._check_cache(layer, hash_cache)
        if self.config.is_mla:
            if key_rope is None:
                raise ValueError(f"GSA: layer {layer}: 'key_rope' (k_pe [T, qk_rope_head_dim]) is required for MLA")
            w_lora, w_rope = self._weight(layer)
            ops.mla_hash_encode_and_cache(key, key_rope, w_lora, w_rope, hash_cache, slot_mapping)  # validates
            if (key.device.type != "meta" and key.stride(-1) == 1 and key_rope.stride(-1) == 1
                    and slot_mapping.stride(0) == 1 and hash_cache.is_contiguous() and key.shape[0] > 0):
                prog = build_program(hot_path_for(key.device).cache_program, key, w_lora, hash_cache, slot_mapping,
                                     (key_rope, w_rope))
                if prog is not None:
                    sig = self._keys_sig(layer, key, hash_cache, slot_mapping, key_rope)
                    self._hot_keys.setdefault(layer, {})[sig] = (prog, slot_mapping.device.type == "cpu")
        else:
            if key_rope is not None:
                raise ValueError(f"GSA: layer {layer}: 'key_rope' is only for MLA configs")
            if hash_codes.is_mlp(self.config):  # spec 12: the fused MLP op (no hot-path program for it)
                hash_codes.cache_key_codes(self.config, layer, key, hash_cache, slot_mapping)
                return
            w = self._weight(layer)
            thr = self.threshold(layer)
            if thr is not None:  # centred keys (spec 13) go through the op: hot-path programs take no threshold
                ops.hash_encode_and_cache(key, w, hash_cache, slot_mapping, thr)
                return
            ops.hash_encode_and_cache(key, w, hash_cache, slot_mapping)  # validates (and range-checks on CPU)
            if (key.device.type != "meta" and key.stride(-1) == 1 and slot_mapping.stride(0) == 1
                    and hash_cache.is_contiguous() and key.shape[0] > 0):
                prog = build_program(hot_path_for(key.device).cache_program, key, w, hash_cache, slot_mapping)
                if prog is not None:
                    sig = self._keys_sig(layer, key, hash_cache, slot_mapping)
                    self._hot_keys.setdefault(layer, {})[sig] = (prog, slot_mapping.device.type == "cpu")

    def _keys_sig(self, layer: int, key: Tensor, hash_cache: Tensor, slot_mapping: Tensor,
                  key_rope: Optional[Tensor] = None) -> Tuple:
        """What a key-hashing launch program was validated and recorded for: the layouts of
        ``key`` (and MLA's ``key_rope``) and ``slot_mapping``, the hash cache's storage, shape,
        strides and dtype (what :meth:`_check_cache` checks) and the layer's weight."""
        w = self._weight(layer)
        rope = None if key_rope is None else (key_rope.shape, key_rope.dtype, key_rope.device, key_rope.stride())
        return (key.shape, key.dtype, key.device, key.stride(), hash_cache.data_ptr(), hash_cache.shape,
                hash_cache.stride(), hash_cache.dtype, slot_mapping.shape, slot_mapping.dtype, slot_mapping.stride(),
                slot_mapping.device, w[0].data_ptr() if isinstance(w, tuple) else w.data_ptr(), rope)

    def _weight(self, layer: int):
        w = self._w.get(layer)
        if w is None:
            w = self._w[layer] = self.weights(layer)
        return w

    def _check_cache(self, layer: int, hash_cache: Optional[Tensor]) -> None:
        if not isinstance(hash_cache, torch.Tensor):
            raise ValueError(f"GSA: layer {layer} scores and needs its hash cache, got {type(hash_cache).__name__}")
        if hash_cache.dim() == 4:
            self._check_block_size(f"hash cache of layer {layer} (shape {tuple(hash_cache.shape)})", hash_cache.shape[2])
        expected = self.hash_cache_shape(hash_cache.shape[0]) if hash_cache.dim() == 4 else None
        if expected is None or tuple(hash_cache.shape) != expected or hash_cache.dtype != torch.uint8:
            raise ValueError(f"GSA: hash cache of layer {layer}: expected uint8 {expected or '[NB, Hkv, bs, C]'}, "
                             f"got {hash_cache.dtype} {tuple(hash_cache.shape)}")

    # ------------------------------------------------------------------ steps
    def begin_step(self, seq_lens: HostInts, query_lens: Optional[HostInts] = None, k: Optional[int] = None,
                   graph: bool = False) -> Step:
        """Plan a step from host-side lengths and copy its budgets to the device.

        ``seq_lens [B]`` (host: list, numpy or CPU tensor): tokens per row in the
        KV cache including this step's; ``query_lens [B]``: new tokens per row
        (default all 1 = decode); ``k``: fixed selection width (default: the
        smallest that fits this step). See :class:`~gsa.policy.GSAPolicy`.

        ``graph=True`` (needs ``k``): the step in CUDA-graph form, so that one
        captured step replays for every later step of at most the captured rows:
        budgets are copied into persistent device buffers (one per ratio, the same
        storage at every step), every sparse layer selects even on a dense step,
        and a dense row or step is a budget of ``n_blocks`` (every block kept).
        """
        plan = self.policy.plan_step(seq_lens, query_lens, k)
        if graph:
            if k is None:
                raise ValueError("GSA: begin_step(graph=True) needs a fixed width 'k' (e.g. the block table's width)")
            return Step(plan=plan, budgets=self._persistent_budgets(plan), graph=True)
        shared: Dict[int, Tensor] = {}
        budgets = {}
        for l, host in plan.budgets.items():
            if id(host) not in shared:
                shared[id(host)] = _to_device(host, self.device)
            budgets[l] = shared[id(host)]
        return Step(plan=plan, budgets=budgets)

    def _persistent_budgets(self, plan: StepPlan) -> Dict[int, Tensor]:
        b = plan.batch_size
        dense = plan.n_blocks.astype(np.int32)  # a dense step: every block of every row
        by_group: Dict[int, Tensor] = {}
        for l in self.policy.scoring_layers:
            # keyed by the layer's budget group (a config fact): every step and every captured
            # graph agree on which buffer a layer reads
            key = self.policy.budget_group(l)
            if key in by_group:
                continue
            buf = self._budget_bufs.get(key)
            if buf is None or buf.shape[0] < b:
                # sized once, before any capture, for every batch a graph is captured for (<= 1024 rows)
                buf = self._budget_bufs[key] = torch.ones(max(b, 1024), dtype=torch.int32, device=self.device)
            buf[:b].copy_(_to_device(plan.budgets.get(l, dense).astype(np.int32), self.device, stage_only=True),
                          non_blocking=True)
            by_group[key] = buf[:b]
        return {l: by_group[self.policy.budget_group(l)] for l in self.policy.scoring_layers}

    def select(self, layer: int, step: Step, block_table: Tensor, seq_lens: Tensor,
               hash_cache: Optional[Tensor] = None, q: Optional[Tensor] = None,
               q_rope: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """The blocks ``layer`` attends to in this step.

        ``block_table int32 [B, M]`` and ``seq_lens int32 [B]`` on the device
        (the same rows as the step's plan). A scoring layer also needs its
        ``hash_cache`` (with this step's keys already cached) and the query:
        GQA ``q [B, Hq, D]``; MLA ``q = q_nope @ W_UK^T [B, N, L]`` and
        ``q_rope = q_pe [B, N, P]``. A reusing layer takes its source layer's
        selection of this step (select the source first); a dense layer, or a
        dense step, returns ``(block_table, seq_lens)`` unchanged.

        Returns ``(sparse_block_table int32 [B, K], sparse_seq_lens int32 [B])``
        (dense: the inputs, ``[B, M]``). Dense rows of a sparse step come back
        with their original blocks and length.
        """
        lp = self.policy.layer(layer)
        plan = step.plan
        if block_table.dim() != 2 or block_table.shape[0] != plan.batch_size:
            raise ValueError(f"GSA: layer {layer}: 'block_table' must be [B, M] with B = {plan.batch_size} rows "
                             f"(the step's plan), got shape {tuple(block_table.shape)}")
        if lp.dense or not (plan.sparse or step.graph):
            return block_table, seq_lens
        src = lp.selection_layer
        if src != layer:
            if src not in step._selections:
                raise ValueError(f"GSA: layer {layer} reuses layer {src}'s selection, but layer {src} has not "
                                 "been selected in this step yet (select layers in order)")
            return step._selections[src]
        c = self.config
        if isinstance(q, torch.Tensor) and isinstance(hash_cache, torch.Tensor) and \
                (layer, hash_cache.shape, hash_cache.dtype, q.shape, _shape(q_rope)) in self._checked:
            if c.is_mla:
                out = step._selections[layer] = self._select_hot(layer, step, block_table, seq_lens, hash_cache, q,
                                                                 q_rope)
                return out
            return self._select_gqa(layer, step, block_table, seq_lens, hash_cache, q)
        self._check_cache(layer, hash_cache)
        if q is None:
            raise ValueError(f"GSA: layer {layer} scores: 'q' is required")
        if c.is_mla:
            self._check_query(layer, "q", q, c.kv_lora_rank, "kv_lora_rank", 1)
        else:
            self._check_query(layer, "q", q, c.head_dim, "head_dim", hash_cache.shape[1])
            self._checked.add((layer, hash_cache.shape, hash_cache.dtype, q.shape, None))
            return self._select_gqa(layer, step, block_table, seq_lens, hash_cache, q)
        if q_rope is None:
            raise ValueError(f"GSA: layer {layer}: 'q_rope' (q_pe [B, N, qk_rope_head_dim]) is required for MLA")
        self._check_query(layer, "q_rope", q_rope, c.qk_rope_head_dim, "qk_rope_head_dim", 1)
        if q_rope.shape[:2] != q.shape[:2]:
            raise ValueError(f"GSA: layer {layer}: 'q_rope' must have the rows and heads of 'q' "
                             f"{tuple(q.shape[:2])}, got {tuple(q_rope.shape)}")
        self._checked.add((layer, hash_cache.shape, hash_cache.dtype, q.shape, q_rope.shape))
        out = step._selections[layer] = self._select_hot(layer, step, block_table, seq_lens, hash_cache, q, q_rope)
        return out

    def _select_gqa(self, layer: int, step: Step, block_table: Tensor, seq_lens: Tensor, hash_cache: Tensor,
                    q: Tensor) -> Tuple[Tensor, Tensor]:
        if hash_codes.is_mlp(self.config):  # spec 12: the hot path serves linear codes only; the public ops
            c = self.config
            indices, n_sel = ops.hamming_dist_top_k(
                hash_codes.query_codes(c, layer, q), hash_cache, block_table, seq_lens, step.budgets[layer],
                step.plan.k, c.must_select_blocks, c.chunk_repre_method, 0, 1.0)
            out = ops.kv_select(indices, n_sel, block_table, seq_lens, c.chunk_size, self.pad_id)
            step._selections[layer] = out
            return out
        out = self._select_hot(layer, step, block_table, seq_lens, hash_cache, q)
        step._selections[layer] = out
        return out

    def _select_hot(self, layer: int, step: Step, block_table: Tensor, seq_lens: Tensor, hash_cache: Tensor,
                    q: Tensor, q_rope: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Selection through :mod:`gsa.hotpath` (GQA, or MLA with ``q_rope``): the layer's
        signature is validated once, outputs are the layer's reused buffers (valid until its
        next selection)."""
        c = self.config
        w = self._weight(layer)
        budgets = step.budgets[layer]
        hot = self._hot.get(layer)
        if hot is None:
            hot = self._hot[layer] = HotLayer()
        k = step.plan.k
        if c.is_mla:  # spec 9: the latent projection is the "weight"; the rope side rides in the signature
            w, w_rope = w
            rope = (q_rope, w_rope, c.rope_bytes, c.rope_score_weight)
            extra = mla_extra(self.pad_id, q_rope, w_rope, c.rope_bytes, c.rope_score_weight)
        else:
            rope, extra = None, (self.pad_id,)
        if hot.check_select(q, w, hash_cache, block_table, seq_lens, budgets, k, extra, rope):
            bufs = hot.cur
            if range_checks_known(bufs.cpu, block_table, seq_lens, budgets):
                check_select_values(hash_cache, block_table, seq_lens, budgets, k, c.must_select_blocks)
            if bufs.program is None:
                bufs.program = build_program(hot_path_for(q.device).select_program, q, w, hash_cache, block_table,
                                             seq_lens, budgets, k, c.must_select_blocks, c.chunk_repre_method,
                                             self.pad_id, bufs.q_codes, bufs.keys, bufs.table, bufs.lens, rope)
                if bufs.program is None:
                    bufs.direct = False
            if bufs.program is not None:
                if rope is None:
                    bufs.program(q, block_table, seq_lens, budgets)
                else:
                    bufs.program(q, block_table, seq_lens, budgets, q_rope)
                return bufs.table, bufs.lens
        # a layout the raw kernels do not take (or meta tensors): the public ops
        if rope is None:
            q_codes = ops.hash_encode(q, w)
        else:
            q_codes = ops.mla_hash_encode(q, q_rope, w, rope[1])
        indices, n_sel = ops.hamming_dist_top_k(q_codes, hash_cache, block_table, seq_lens, budgets, step.plan.k,
                                                c.must_select_blocks, c.chunk_repre_method,
                                                c.rope_bytes if rope else 0, c.rope_score_weight if rope else 1.0)
        return ops.kv_select(indices, n_sel, block_table, seq_lens, c.chunk_size, self.pad_id)

    def _check_query(self, layer: int, name: str, q: Tensor, dim: int, dim_key: str, cache_heads: int) -> None:
        # Heads: all num_attention_heads, or a rank's share under tensor parallelism
        # (a divisor of it that is a multiple of the hash cache's heads).
        hq = self.config.num_attention_heads
        ok = isinstance(q, torch.Tensor) and q.dim() == 3 and q.shape[2] == dim and q.shape[1] >= 1
        ok = ok and hq % q.shape[1] == 0 and q.shape[1] % cache_heads == 0
        if not ok:
            got = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
            raise ValueError(f"GSA: layer {layer}: '{name}' must be [B, H, {dim}] ({dim_key}) with H = "
                             f"num_attention_heads = {hq} (or a rank's share: a divisor of it and a multiple of the "
                             f"hash cache's {cache_heads} heads), got {got}")

    def decode_attention(self, layer: int, step: Step, q: Tensor, k_cache: Tensor, v_cache: Tensor,
                         block_table: Tensor, seq_lens: Tensor, hash_cache: Optional[Tensor] = None,
                         scale: Optional[float] = None, q_hash: Optional[Tensor] = None,
                         q_hash_rope: Optional[Tensor] = None) -> Tensor:
        """:meth:`select` then :func:`gsa.ops.paged_decode_attention` on the result.

        ``q [B, Hq, D]``; ``k_cache, v_cache [NB, bs, Hkv, D]``. The selection
        hashes ``q`` (GQA) or ``(q_hash, q_hash_rope)`` (MLA: the absorbed latent
        query and ``q_pe``; ``q`` and the caches are then whatever MQA form the
        caller attends with). Returns ``[B, Hq, D]`` in ``q.dtype``.
        """
        if k_cache.dim() == 4:
            self._check_block_size(f"k_cache of layer {layer} (shape {tuple(k_cache.shape)})", k_cache.shape[1])
        if self.config.is_mla:
            table, lens = self.select(layer, step, block_table, seq_lens, hash_cache, q_hash, q_hash_rope)
        else:
            table, lens = self.select(layer, step, block_table, seq_lens, hash_cache, q)
        return self._attention_hot(layer, q, k_cache, v_cache, table, lens, scale)

    def _attention_hot(self, layer: int, q: Tensor, k_cache: Tensor, v_cache: Tensor, table: Tensor, lens: Tensor,
                       scale: Optional[float]) -> Tensor:
        """Paged decode attention through :mod:`gsa.hotpath` (signature checked once per layer;
        the fp32 partials are reused, the output is new)."""
        hot = self._hot_attn.get(layer)
        if hot is None:
            hot = self._hot_attn[layer] = {}
        sig = (q.shape, q.dtype, q.device, q.stride(), k_cache.shape, k_cache.stride(), v_cache.shape,
               v_cache.stride(), k_cache.dtype, table.shape, table.dtype, table.stride(), lens.shape, lens.dtype,
               lens.stride(), scale)
        work = hot.get(sig)  # per signature: a graph captured at each batch size keeps its partials
        if work is None:
            out = ops.paged_decode_attention(q, k_cache, v_cache, table, lens, scale)  # validates
            direct = (q.device.type != "meta" and q.stride(-1) == 1 and k_cache.stride(-1) == 1
                      and v_cache.stride(-1) == 1 and table.stride(-1) == 1 and lens.stride(0) == 1)
            hot[sig] = {"direct": direct}
            return out
        if not work["direct"]:
            return ops.paged_decode_attention(q, k_cache, v_cache, table, lens, scale)
        if range_checks(table, lens):
            C._check_row_values("paged_decode_attention", table, lens, k_cache.shape[1], k_cache.shape[0])
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        prog = work.get("program")
        if prog is None:
            prog = build_program(hot_path_for(q.device).attention_program, q, k_cache, v_cache, table, lens, scale,
                                 out, work)
            if prog is None:
                work["direct"] = False
                return ops.paged_decode_attention(q, k_cache, v_cache, table, lens, scale)
            work["program"] = prog
        prog(q, k_cache, v_cache, table, lens, out)
        return out
