"""A stand-in ``torch_npu`` for driving vllm-ascend's Python code on the CPU (tests only).

NOT shipped in gsa/, never on sys.path except in ``tests/test_vllm_ascend.py``'s own
process (``ci/vllm_ascend.sh``). It provides what vllm-ascend 0.23.0.post1 needs to
import, and the kernels its GQA decode path calls, computed with gsa-ops' reference ops:

* ``_npu_reshape_and_cache``: the KV cache write ``[T, Hkv, D]`` -> ``[NB, bs, Hkv, D]`` at slots;
* ``npu_fused_infer_attention_score`` (FIA, ``input_layout="TND"``): decode rows with
  :func:`gsa.reference.paged_decode_attention`, multi-token rows (prefill) with a plain
  causal softmax (``sparse_mode=3``, right-down aligned); it checks what the NPU kernel
  requires of its arguments (host integer lists, one length per row, lengths within the
  table) and records every call in :data:`CALLS`;
* ``_npu_paged_attention``: :func:`gsa.reference.paged_decode_attention` on ``context_lens``
  (a host tensor, checked);
* ``npu_fusion_attention`` (TND, causal): prefill of 512-dim heads, a plain causal softmax;
* MLA (``vllm_ascend/attention/mla_v1.py``): ``npu_kv_rmsnorm_rope_cache`` (RMSNorm of ``c_kv``,
  interleaved RoPE of ``k_pe``, both written into the latent caches at slots),
  ``npu_interleave_rope``, ``npu_fused_infer_attention_score_v2`` (``BNSD_NBSD`` decode:
  :func:`gsa.reference.paged_decode_attention` over ``[c_kv, k_pe]`` with V the ``c_kv`` part,
  host ``actual_seq_kvlen`` checked, recorded in :data:`CALLS`), ``npu_transpose_batchmatmul``,
  ``npu_format_cast`` (identity); FIA's ``query_rope`` / ``key_rope`` for MLA prefill.

Every other attribute is a placeholder that raises ``NotImplementedError`` naming the op
when called, so a code path that needs an op not emulated here fails loudly. ``torch.npu``
is a namespace with the classes vllm-ascend names at import time; ``Tensor.pin_memory``
becomes a no-op (the real torch_npu makes pinned host memory available; a CPU-only torch
refuses it without an accelerator).
"""
from __future__ import annotations

import types
from typing import Any, Dict, List

import torch

from gsa import reference as R

#: one dict per FIA / paged-attention call: op name, block table, host lengths, output
CALLS: List[Dict[str, Any]] = []


class _Missing:
    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(f"fake torch_npu: {self.name} is not emulated")

    def __getattr__(self, n: str):
        if n.startswith("__"):
            raise AttributeError(n)
        return _Missing(f"{self.name}.{n}")


def __getattr__(name: str):  # module-level: any other torch_npu op
    if name.startswith("__"):
        raise AttributeError(name)
    return _Missing(name)


class _NpuNamespace(types.ModuleType):
    """``torch.npu``: classes named in annotations at import time; functions raise when called."""

    def is_available(self) -> bool:
        return False

    def __getattr__(self, n: str):
        if n.startswith("__"):
            raise AttributeError(n)
        if n[:1].isupper():  # Event, ExternalEvent, NPUGraph, Stream, ...: placeholder classes
            t = type(n, (), {})
            setattr(self, n, t)
            return t
        return _Missing(f"torch.npu.{n}")


npu = _NpuNamespace("torch.npu")
torch.npu = npu
if torch._C._get_privateuse1_backend_name() != "npu":  # as torch_npu does: ``torch.device("npu")`` parses
    torch.utils.rename_privateuse1_backend("npu")
torch.Tensor.pin_memory = lambda self, *a, **k: self  # type: ignore[assignment]


def _host_list(name: str, value: Any) -> List[int]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(x, int) for x in value):
        raise TypeError(f"fake FIA: {name} must be a host list of ints, got {type(value).__name__}")
    return list(value)


def _npu_reshape_and_cache(key, value, key_cache, value_cache, slot_indices):
    """``key, value [T, Hkv, D]`` into ``key_cache, value_cache [NB, bs, Hkv, D]`` at ``slot_indices [T]``."""
    bs = key_cache.shape[1]
    slots = slot_indices.to(torch.int64)
    keep = slots >= 0
    s = slots[keep]
    key_cache[s // bs, s % bs] = key[: slots.shape[0]][keep].to(key_cache.dtype)
    value_cache[s // bs, s % bs] = value[: slots.shape[0]][keep].to(value_cache.dtype)


def _causal_rows(q, k, v, scale):
    """``q [n, Hq, D]`` over ``k, v [L, Hkv, D]``, token ``i`` sees ``L - n + i + 1`` keys."""
    n, hq, d = q.shape
    L, hkv, _ = k.shape
    g = hq // hkv
    qf = q.float().reshape(n, hkv, g, d)
    logits = torch.einsum("nkgd,tkd->kgnt", qf, k.float()) * scale
    allowed = torch.arange(L).unsqueeze(0) <= (L - n + torch.arange(n)).unsqueeze(1)  # [n, L]
    logits = logits.masked_fill(~allowed, float("-inf"))
    out = torch.einsum("kgnt,tkd->nkgd", torch.softmax(logits, dim=-1), v.float())
    return out.reshape(n, hq, v.shape[-1])


def npu_fused_infer_attention_score(query, key, value, *, num_heads, num_key_value_heads, scale,
                                    input_layout="TND", block_table=None, block_size=128, actual_seq_lengths=None,
                                    actual_seq_lengths_kv=None, sparse_mode=0, atten_mask=None, pre_tokens=None,
                                    next_tokens=None, **unused):
    if input_layout != "TND":
        raise NotImplementedError(f"fake FIA: input_layout {input_layout!r}")
    if sparse_mode not in (0, 3):
        raise NotImplementedError(f"fake FIA: sparse_mode {sparse_mode}")
    q_ends = _host_list("actual_seq_lengths", actual_seq_lengths)
    kv = _host_list("actual_seq_lengths_kv", actual_seq_lengths_kv)
    b = len(q_ends)
    if len(kv) != b:
        raise ValueError(f"fake FIA: actual_seq_lengths_kv has {len(kv)} entries for batch {b}")
    hq, hkv = num_heads, num_key_value_heads
    if unused.get("query_rope") is not None:  # MLA prefill: the rope parts score as well
        if block_table is not None:
            raise NotImplementedError("fake FIA: query_rope with a block table")
        query = torch.cat([query, unused["query_rope"].to(query.dtype)], dim=-1)
        key = torch.cat([key, unused["key_rope"].to(key.dtype)], dim=-1)
    d = query.shape[-1]
    # no table: value [T, Hkv, Dv] (Dv may differ from the query's: MLA prefill); paged: Dv = D
    dv = value.shape[-1] if block_table is None else d
    out = torch.zeros(query.shape[0], hq, dv, dtype=torch.float32)
    starts = [0] + q_ends[:-1]
    if block_table is None:  # PrefillNoCache: K/V are the step's tokens, kv lengths cumulative
        kv_starts = [0] + kv[:-1]
        for r in range(b):
            out[starts[r]:q_ends[r]] = _causal_rows(query[starts[r]:q_ends[r]], key[kv_starts[r]:kv[r]],
                                                    value[kv_starts[r]:kv[r]], scale)
    else:
        if block_table.shape[0] < b:
            raise ValueError(f"fake FIA: block_table has {block_table.shape[0]} rows for batch {b}")
        nb, bs = key.shape[0], key.shape[1]
        if bs != block_size:
            raise ValueError(f"fake FIA: cache block size {bs} != block_size {block_size}")
        width = block_table.shape[1] * bs
        if max(kv) > width:
            raise ValueError(f"fake FIA: a kv length {max(kv)} exceeds the block table ({width} tokens)")
        k_cache = key.reshape(nb, bs, hkv, d)
        v_cache = value.reshape(nb, bs, hkv, d)
        decode = [r for r in range(b) if q_ends[r] - starts[r] == 1]
        if decode:
            rows = torch.tensor(decode)
            q = query[torch.tensor([starts[r] for r in decode])]
            o = R.paged_decode_attention(q, k_cache, v_cache, block_table[rows].to(torch.int32),
                                         torch.tensor([kv[r] for r in decode], dtype=torch.int32), scale)
            out[torch.tensor([starts[r] for r in decode])] = o.float()
        for r in range(b):
            n = q_ends[r] - starts[r]
            if n <= 1:
                continue
            L = kv[r]
            ids = block_table[r, : (L + bs - 1) // bs].to(torch.int64)
            k = k_cache[ids].reshape(-1, hkv, d)[:L]
            v = v_cache[ids].reshape(-1, hkv, d)[:L]
            out[starts[r]:q_ends[r]] = _causal_rows(query[starts[r]:q_ends[r]], k, v, scale)
    CALLS.append({"op": "npu_fused_infer_attention_score", "block_table": None if block_table is None else
                  block_table.clone(), "actual_seq_lengths_kv": list(kv), "actual_seq_lengths": list(q_ends),
                  "sparse_mode": sparse_mode})
    out = out.to(query.dtype)
    return out, torch.zeros(hq, query.shape[0], dtype=torch.float32)


def npu_fusion_attention(query, key, value, head_num, input_layout, *, scale, actual_seq_qlen, actual_seq_kvlen,
                         sparse_mode=0, atten_mask=None, pre_tockens=None, next_tockens=None, **unused):
    """Dense TND attention (vllm-ascend's prefill for 512-dim heads): cumulative host lengths."""
    if input_layout != "TND" or sparse_mode != 3:
        raise NotImplementedError(f"fake npu_fusion_attention: layout {input_layout!r}, sparse_mode {sparse_mode}")
    q_ends = _host_list("actual_seq_qlen", actual_seq_qlen)
    kv_ends = _host_list("actual_seq_kvlen", actual_seq_kvlen)
    out = torch.zeros(query.shape[0], head_num, query.shape[-1], dtype=torch.float32)
    for qs, qe, ks, ke in zip([0] + q_ends[:-1], q_ends, [0] + kv_ends[:-1], kv_ends):
        out[qs:qe] = _causal_rows(query[qs:qe], key[ks:ke], value[ks:ke], scale)
    CALLS.append({"op": "npu_fusion_attention", "actual_seq_qlen": q_ends, "actual_seq_kvlen": kv_ends})
    return (out.to(query.dtype),)


def _npu_paged_attention(query, key_cache, value_cache, num_kv_heads, num_heads, scale_value, block_table,
                         context_lens, out, workspace=None):
    if not isinstance(context_lens, torch.Tensor) or context_lens.device.type != "cpu":
        raise TypeError("fake _npu_paged_attention: context_lens must be a host tensor")
    b = query.shape[0]
    o = R.paged_decode_attention(query, key_cache, value_cache, block_table[:b].to(torch.int32),
                                 context_lens[:b].to(torch.int32), scale_value)
    out.view(b, num_heads, -1).copy_(o.to(out.dtype))
    CALLS.append({"op": "_npu_paged_attention", "block_table": block_table.clone(),
                  "context_lens": context_lens.clone()})
    return out


# ---------------------------------------------------------------- MLA (vllm_ascend/attention/mla_v1.py)
def npu_format_cast(x, fmt):
    """Formats are a device-memory matter: the CPU stand-in keeps the tensor (ND)."""
    return x


def _rope_interleaved(x, cos, sin):
    """``x [..., D]``: pairs ``(x[2i], x[2i+1])`` de-interleaved to halves, then rotated by ``cos, sin``
    (broadcast ``[..., D]``, the two halves repeated), as torch_npu documents its interleave rope."""
    d = x.shape[-1]
    y = torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1).float()
    rot = torch.cat([-y[..., d // 2:], y[..., : d // 2]], dim=-1)
    return (y * cos.float() + rot * sin.float()).to(x.dtype)


def npu_interleave_rope(x, cos, sin):
    """``x [B, N, 1, D]``, ``cos, sin [B, 1, 1, D]``."""
    return _rope_interleaved(x, cos, sin)


def npu_kv_rmsnorm_rope_cache(kv, gamma, cos, sin, index, k_cache, ckv_cache, *, epsilon=1e-6, cache_mode="PA",
                              is_output_kv=False, c_kv_scale=None, **unused):
    """``kv [T, 1, 1, L + P]``: RMSNorm(c_kv) * gamma into ``ckv_cache [NB, bs, 1, L]`` and the roped
    ``k_pe`` into ``k_cache [NB, bs, 1, P]`` at ``index [T]`` (``-1`` skipped). Returns
    ``(k_cache, ckv_cache, k_pe, c_kv)``, the last two only with ``is_output_kv``."""
    if cache_mode != "PA" or c_kv_scale is not None:
        raise NotImplementedError(f"fake npu_kv_rmsnorm_rope_cache: cache_mode {cache_mode!r}, c_kv_scale")
    lora = ckv_cache.shape[-1]
    c, pe = kv[..., :lora].float(), kv[..., lora:]
    c = (c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + epsilon) * gamma.float()).to(kv.dtype)
    pe = _rope_interleaved(pe, cos, sin)
    bs = ckv_cache.shape[1]
    slots = index.to(torch.int64)
    keep = slots >= 0
    s = slots[keep]
    ckv_cache[s // bs, s % bs] = c.reshape(-1, 1, lora)[keep].to(ckv_cache.dtype)
    k_cache[s // bs, s % bs] = pe.reshape(-1, 1, pe.shape[-1])[keep].to(k_cache.dtype)
    CALLS.append({"op": "npu_kv_rmsnorm_rope_cache", "slots": slots.clone()})
    if is_output_kv:
        return k_cache, ckv_cache, pe, c
    return k_cache, ckv_cache, None, None


def npu_fused_infer_attention_score_v2(query, key, value, *, query_rope, key_rope, num_query_heads,
                                       num_key_value_heads, input_layout, softmax_scale, block_table, block_size,
                                       actual_seq_kvlen, actual_seq_qlen=None, sparse_mode=0, atten_mask=None,
                                       **unused):
    """MLA decode (``BNSD_NBSD``): ``query [B, N, 1, L]``, ``query_rope [B, N, 1, P]``, ``key``
    the latent cache ``[NB, 1, bs, L]``, ``key_rope [NB, 1, bs, P]`` (``value`` = ``key``).
    One latent head: :func:`gsa.reference.paged_decode_attention` over ``[c_kv, k_pe]``, V the
    ``c_kv`` part. Returns ``([N, B, 1, L], lse)``; records the call in :data:`CALLS`."""
    if input_layout != "BNSD_NBSD" or sparse_mode != 0 or num_key_value_heads != 1:
        raise NotImplementedError(f"fake FIA v2: layout {input_layout!r}, sparse_mode {sparse_mode}, "
                                  f"{num_key_value_heads} kv heads")
    kv = _host_list("actual_seq_kvlen", actual_seq_kvlen)
    b, n, _, lora = query.shape
    if len(kv) != b or block_table.shape[0] < b:
        raise ValueError(f"fake FIA v2: {len(kv)} kv lengths, {block_table.shape[0]} table rows for batch {b}")
    nb, _, bs, _ = key.shape
    if bs != block_size:
        raise ValueError(f"fake FIA v2: cache block size {bs} != block_size {block_size}")
    if max(kv) > block_table.shape[1] * bs:
        raise ValueError(f"fake FIA v2: a kv length {max(kv)} exceeds the block table")
    q = torch.cat([query, query_rope.to(query.dtype)], dim=-1).reshape(b, n, -1)
    lat = torch.cat([key, key_rope.to(key.dtype)], dim=-1).reshape(nb, bs, 1, -1)
    o = R.paged_decode_attention(q, lat, lat, block_table[:b].to(torch.int32), torch.tensor(kv, dtype=torch.int32),
                                 softmax_scale)[..., :lora]
    out = o.to(query.dtype).transpose(0, 1).reshape(n, b, 1, lora).contiguous()
    CALLS.append({"op": "npu_fused_infer_attention_score_v2", "query": q.clone(), "block_table": block_table.clone(),
                  "actual_seq_kvlen": list(kv), "out": out.clone()})
    return out, torch.zeros(1, dtype=torch.float32)


def npu_transpose_batchmatmul(x, weight, perm_y=(1, 0, 2)):
    """``x [N, B, L] @ weight [N, L, V]``, the result permuted by ``perm_y``."""
    return torch.bmm(x, weight.to(x.dtype)).permute(*perm_y)
