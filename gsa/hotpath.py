"""The decode hot path: GSA's per-layer work without per-op Python dispatch.

:mod:`gsa.ops` validates every argument and goes through ``torch.ops.gsa.*``
(custom-op dispatch) and a backend lookup on every call: right for a public
API, too slow for an engine that issues a few ops per layer and step (hundreds
of microseconds of host time per layer, more than the kernels take). The hot
path keeps the same kernels and the same results but

* resolves the backend once (``dispatch.hot_path_for``) and calls its kernels
  directly (the Triton backend also skips Triton's argument binder);
* validates shapes, dtypes, strides and devices once per *signature* (the
  shapes of a layer's inputs): :class:`HotLayer` runs the public checks the
  first time and only compares the signature afterwards;
* keeps output buffers per layer and reuses them (also what makes a decode
  step capturable in a CUDA graph with stable addresses): a result is valid
  until the same layer's next call.

Value checks that read device data (``seq_len >= 1``, block ids in range) run,
as in :mod:`gsa.ops`, on CPU tensors and under ``GSA_DEBUG=1``.

Backends without a hot path of their own get :class:`GenericHotPath`: their
raw kernels (``dispatch.kernel``) composed the same way, results copied into
the caller's buffers.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch

from gsa import dispatch
from gsa import validate as V

__all__ = ["GenericHotPath", "hot_path_for", "HotLayer", "mla_extra"]

Tensor = torch.Tensor


class GenericHotPath:
    """The hot-path interface over a backend's plain kernels (``dispatch.kernel``): each
    ``*_program`` returns a function of the per-call tensors for one validated signature."""

    def __init__(self, device_type: str) -> None:
        self.device_type = device_type
        self.name = dispatch.resolve("hamming_dist_top_k", device_type).name

    def _k(self, op: str):
        return dispatch.kernel(op, self.device_type)

    def select_program(self, q, weight, hash_cache, block_table, seq_lens, budgets, k, must_select_blocks,
                       chunk_repre_method, pad_id, q_codes, keys, table, lens, rope=None):
        top_k, kv_select = self._k("hamming_dist_top_k"), self._k("kv_select")
        forced, bs = list(must_select_blocks), hash_cache.shape[2]
        if rope is None:
            hash_encode = self._k("hash_encode")
            rope_bytes, rope_w = 0, 1.0

            def encode(q, q_rope):
                return hash_encode(q, weight)
        else:  # MLA (spec 9): the absorbed query and q_pe, one projection each
            mla_encode = self._k("mla_hash_encode")
            _, w_rope, rope_bytes, rope_w = rope

            def encode(q, q_rope):
                return mla_encode(q, q_rope, weight, w_rope)

        def run(q, block_table, seq_lens, budgets, q_rope=None):
            q_codes.copy_(encode(q, q_rope))
            pad_rows = seq_lens <= 0  # an engine's padding rows: empty selections (as the fused kernels)
            sl = seq_lens.clamp(min=1)
            idx, n_sel = top_k(q_codes, hash_cache, block_table, sl, budgets, k, forced, chunk_repre_method,
                               rope_bytes, rope_w)
            t, l = kv_select(idx, n_sel, block_table, sl, bs, pad_id)
            table.copy_(t.masked_fill(pad_rows[:, None], pad_id))
            lens.copy_(l.masked_fill(pad_rows, 0))

        return run

    def cache_program(self, k, weight, hash_cache, slots, rope=None):
        if rope is None:
            kern = self._k("hash_encode_and_cache")
            return lambda k, slots: kern(k, weight, hash_cache, slots)
        mla = self._k("mla_hash_encode_and_cache")
        w_rope = rope[1]
        return lambda k, slots, k_rope: mla(k, k_rope, weight, w_rope, hash_cache, slots)

    def attention_program(self, q, k_cache, v_cache, block_table, seq_lens, scale, out, work):
        kern = self._k("paged_decode_attention")
        return lambda q, kc, vc, bt, sl, out: out.copy_(kern(q, kc, vc, bt, sl, scale))


_HOT: Dict[Tuple[str, str], Any] = {}


def hot_path_for(device: torch.device) -> Any:
    """The hot path of the backend that serves ``hamming_dist_top_k`` on ``device``
    now (honours ``use_backend`` / ``GSA_BACKEND``), one instance per backend."""
    backend = dispatch.resolve("hamming_dist_top_k", device.type)
    key = (backend.name, device.type)
    hp = _HOT.get(key)
    if hp is None:
        hp = backend.hot_path() if backend.hot_path is not None else GenericHotPath(device.type)
        _HOT[key] = hp
    return hp


def _select_sig(q: Tensor, weight: Tensor, hash_cache: Tensor, block_table: Tensor, seq_lens: Tensor,
                budgets: Tensor, k: int, extra: Tuple) -> Tuple:
    """The layouts of a selection's inputs (what :meth:`HotLayer._validate` checks), flat: one
    tuple built per layer and step, compared field by field with the last one."""
    return (q.shape, q.dtype, q.device, q.stride(), weight.shape, weight.dtype, weight.device, weight.stride(),
            hash_cache.shape, hash_cache.dtype, hash_cache.device, hash_cache.stride(),
            block_table.shape, block_table.dtype, block_table.device, block_table.stride(),
            seq_lens.shape, seq_lens.dtype, seq_lens.device, seq_lens.stride(),
            budgets.shape, budgets.dtype, budgets.device, budgets.stride(), k, extra,
            weight.data_ptr(), hash_cache.data_ptr())  # a program keeps these two


def mla_extra(pad_id: int, q_rope: Tensor, w_rope: Tensor, rope_bytes: int, rope_w: float) -> Tuple:
    """The ``extra`` of an MLA selection's signature: the layout of its rope inputs."""
    return (pad_id, q_rope.shape, q_rope.dtype, q_rope.device, q_rope.stride(), w_rope.shape, w_rope.dtype,
            w_rope.stride(), w_rope.data_ptr(), rope_bytes, rope_w)


def _unit_inner(t: Tensor) -> bool:
    return t.stride(-1) == 1 or t.shape[-1] <= 1


class _Buffers:
    # cpu: every tensor of the signature is on the CPU (a fact of the signature, which holds the devices)
    __slots__ = ("direct", "cpu", "q_codes", "keys", "table", "lens", "program")


class HotLayer:
    """One layer's validated signatures and their output buffers (owned by :class:`gsa.sparse.GSASparse`).

    Buffers are kept per signature, never replaced: an engine captures one CUDA graph per
    batch size, and each graph keeps writing the buffers it was captured with."""

    __slots__ = ("sig", "cur", "seen", "work")

    def __init__(self) -> None:
        self.sig: Tuple = ()
        self.cur: Optional[_Buffers] = None
        self.seen: Dict[Tuple, _Buffers] = {}
        self.work: Dict[Any, Any] = {}

    @property
    def direct(self) -> bool:
        return self.cur is not None and self.cur.direct

    def __getattr__(self, name):  # q_codes, keys, table, lens of the current signature
        cur = object.__getattribute__(self, "cur")
        return getattr(cur, name)

    def check_select(self, q: Tensor, weight: Tensor, hash_cache: Tensor, block_table: Tensor, seq_lens: Tensor,
                     budgets: Tensor, k: int, extra: Tuple, rope: Optional[Tuple] = None) -> bool:
        """Whether the raw kernels may run on these inputs. On a new signature: the
        public checks (raising :class:`gsa.GSAInputError`), buffers allocated.
        ``False``: a layout the raw kernels do not take (the caller uses :mod:`gsa.ops`).
        MLA: ``weight`` is ``w_lora [L, R_lora]`` and ``rope = (q_rope [B, N, P], w_rope
        [P, R_rope], rope_bytes, rope_score_weight)``, whose layout the caller puts in ``extra``
        (:func:`mla_extra`)."""
        sig = _select_sig(q, weight, hash_cache, block_table, seq_lens, budgets, k, extra)
        if sig == self.sig:
            return self.cur.direct
        bufs = self.seen.get(sig)
        if bufs is None:
            bufs = self.seen[sig] = self._validate(q, weight, hash_cache, block_table, seq_lens, budgets, k, rope)
        self.sig, self.cur = sig, bufs
        return bufs.direct

    @staticmethod
    def _validate(q, weight, hash_cache, block_table, seq_lens, budgets, k, rope=None) -> _Buffers:
        from gsa import op_checks as C

        b, hq, _ = q.shape if q.dim() == 3 else (0, 0, 0)
        if rope is None:
            C._check_weight("hash_encode", "weight", weight, q.shape[-1], hq if q.dim() >= 2 else None)
            V.tensor("hash_encode", "x", q, V.FLOAT_DTYPES, dim=3)
            c = weight.shape[-1] // 8
        else:
            q_rope, w_rope, rope_bytes, rope_w = rope
            C.check_mla_hash_encode(q, q_rope, weight, w_rope)
            V.tensor("mla_hash_encode", "x_lora", q, V.FLOAT_DTYPES, dim=3)
            c = (weight.shape[-1] + w_rope.shape[-1]) // 8
            C.check_score_args("hamming_dist_top_k", hq, c, rope_bytes, rope_w)
        V.tensor("hamming_dist_top_k", "key_cache", hash_cache, (torch.uint8,), dim=4)
        V.size("hamming_dist_top_k", "key_cache", hash_cache, 3, c, "code bytes R/8 of the weight")
        C._check_rows("hamming_dist_top_k", block_table, seq_lens, b)
        V.tensor("hamming_dist_top_k", "budgets", budgets, V.INDEX_DTYPES, dim=1)
        V.size("hamming_dist_top_k", "budgets", budgets, 0, b, "one budget per request")
        V.same_device("hamming_dist_top_k", q=q, weight=weight, key_cache=hash_cache, block_table=block_table,
                      seq_lens=seq_lens, budgets=budgets)
        if hq % hash_cache.shape[1]:
            V.fail("hamming_dist_top_k", "key_cache", f"a KV head count dividing Hq = {hq}", f"Hkv = {hash_cache.shape[1]}")
        out = _Buffers()
        out.direct = (hash_cache.is_contiguous() and _unit_inner(q) and _unit_inner(block_table)
                      and _unit_inner(seq_lens) and _unit_inner(budgets) and weight.is_contiguous()
                      and q.device.type != "meta"
                      and (rope is None or (_unit_inner(rope[0]) and rope[1].is_contiguous())))
        dev = q.device
        out.cpu = dev.type == "cpu"  # same_device above: every input is on q's device
        out.q_codes = torch.empty(b, hq, c, dtype=torch.uint8, device=dev)
        out.keys = torch.empty(b, block_table.shape[1], dtype=torch.int32, device=dev)
        out.table = torch.empty(b, k, dtype=torch.int32, device=dev)
        out.lens = torch.empty(b, dtype=torch.int32, device=dev)
        out.program = None
        return out


def check_select_values(hash_cache: Tensor, block_table: Tensor, seq_lens: Tensor, budgets: Tensor, k: int,
                        forced) -> None:
    """The value checks of ``gsa.ops.hamming_dist_top_k`` (host reads: CPU or ``GSA_DEBUG``),
    except that rows with ``seq_len == 0`` are allowed (an engine's padding rows: the hot
    path returns them empty)."""
    import numpy as np

    from gsa import op_checks as C

    op = "hamming_dist_top_k"
    nb, _, bs, _ = hash_cache.shape
    live = V.host_values(seq_lens) != 0
    if not live.all():
        idx = torch.from_numpy(np.nonzero(live)[0])
        block_table, seq_lens, budgets = block_table[idx], seq_lens[idx], budgets[idx]
    n_blocks = C._check_row_values(op, block_table, seq_lens, bs, nb)
    bud = V.host_values(budgets).astype(np.int64)
    V.all_in(op, "budgets", bud, 1, 2**31 - 1, "budgets >= 1 block:")
    need = C._largest_n_sel(n_blocks, bud, [int(m) for m in forced])
    if k < need:
        V.fail(op, "k", f"at least the largest n_sel ({need})", k)


def build_program(make, *args):
    """``make(*args)`` (a hot path's ``*_program``), or ``None`` when the backend cannot
    replay these launches safely (the caller then runs the op path)."""
    try:
        return make(*args)
    except Exception as exc:  # e.g. cuda_ops.program.ProgramError: a wrapper made a temporary
        import logging

        logging.getLogger("gsa").debug("GSA hot path: no launch program (%s); using the op path", exc)
        return None


def range_checks(*tensors: Tensor) -> bool:
    """:func:`gsa.validate.range_checks_on`, with the common accelerator case decided first."""
    if not V.debug_enabled() and any(t.device.type != "cpu" for t in tensors):
        return False
    return V.range_checks_on(*tensors)


def range_checks_known(on_cpu: bool, *tensors: Tensor) -> bool:
    """:func:`range_checks` when the caller already knows whether every tensor is on the CPU
    (a validated signature holds the devices): the accelerator case without debug mode is
    decided without touching the tensors."""
    return (on_cpu or V.debug_enabled()) and V.range_checks_on(*tensors)
