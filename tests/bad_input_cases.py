"""Bad-input and odd-layout cases for every op, run by tests/test_bad_inputs.py in a
child process (a crash there is a test failure, not a dead test runner).

``python tests/bad_input_cases.py BACKEND ENTRY`` runs every case with backend
``BACKEND`` forced, through ``ENTRY`` = ``ops`` (the public ``gsa.ops`` API) or
``raw`` (``torch.ops.gsa.<op>`` positional, what ``torch.compile`` and graph
capture call), prints one ``CASE name`` line before each case (so a crash names
it) and a final ``RESULT {json}`` with the failures. Each case is either

* an error case: the call must raise ``GSAInputError`` naming the argument with
  the expected fragments, and leave every written buffer untouched; or
* a good case with strided / offset views: the result must equal the reference
  backend's on contiguous copies, and a written cache must change exactly in its
  view (canary bytes all around it, in the same storage, stay as they were).

Inputs are small integers, so float projections are exact on every backend and
codes compare bit for bit.
"""
from __future__ import annotations

import json
import sys
from typing import Callable, Dict, List, Optional

import torch

import gsa
from gsa import GSAInputError, ops

G = torch.Generator().manual_seed(1234)
SCHEMA = {  # positional order of each torch.ops.gsa op
    "sign_bits_pack": ["x"],
    "hash_encode": ["x", "weight"],
    "hash_encode_and_cache": ["k", "weight", "cache", "slot_mapping"],
    "mla_hash_encode": ["x_lora", "x_rope", "w_lora", "w_rope"],
    "mla_hash_encode_and_cache": ["c_kv", "k_pe", "w_lora", "w_rope", "cache", "slot_mapping"],
    "hamming_dist_top_k": ["q_codes", "key_cache", "block_table", "seq_lens", "budgets", "k",
                           "must_select_blocks", "chunk_repre_method", "rope_bytes", "rope_score_weight"],
    "kv_select": ["indices", "n_sel", "block_table", "seq_lens", "block_size", "pad_id"],
    "paged_decode_attention": ["q", "k_cache", "v_cache", "block_table", "seq_lens", "scale"],
}
DEFAULTS = {"must_select_blocks": (), "chunk_repre_method": "max", "rope_bytes": 0, "rope_score_weight": 1.0,
            "pad_id": 0, "scale": None}


def ints(*shape, lo=-2, hi=3, dtype=torch.float32):
    return torch.randint(lo, hi, shape, generator=G).to(dtype)


def i32(values):
    return torch.tensor(values, dtype=torch.int32)


def strided(t: torch.Tensor, step: int = 2, offset: int = 1) -> torch.Tensor:
    """The same values as ``t`` in a view with inner stride ``step`` and a storage
    offset: neighbours hold garbage a contiguous read would pick up."""
    buf = torch.full((offset + t.numel() * step,), 77, dtype=t.dtype) if t.dtype != torch.uint8 else \
        torch.full((offset + t.numel() * step,), 0xEE, dtype=t.dtype)
    v = buf[offset:].as_strided(t.shape, [s * step for s in t.contiguous().stride()], offset)
    v.copy_(t)
    return v


def canaried(shape, fill=0xA5, pad=64, inner_step=1, outer_pad=0):
    """A uint8 cache view inside a larger buffer of canary bytes: ``pad`` bytes on
    both sides, an optional gap between rows (``outer_pad``) and inner stride."""
    nb, h, bs, c = shape
    row = c * inner_step + outer_pad
    strides = (h * bs * row, bs * row, row, inner_step)
    total = pad * 2 + nb * strides[0]
    buf = torch.full((total,), fill, dtype=torch.uint8)
    return buf, buf.as_strided(shape, strides, pad)


# ---------------------------------------------------------------- base inputs

def base(op: str) -> Dict[str, object]:
    if op == "sign_bits_pack":
        return dict(x=ints(3, 16))
    if op == "hash_encode":
        return dict(x=ints(2, 4, 8), weight=ints(2, 8, 32))
    if op == "hash_encode_and_cache":
        _, cache = canaried((4, 2, 4, 4))
        return dict(k=ints(5, 2, 8), weight=ints(2, 8, 32), cache=cache, slot_mapping=i32([0, 3, -1, 9, 15]))
    if op == "mla_hash_encode":
        return dict(x_lora=ints(3, 16), x_rope=ints(3, 8), w_lora=ints(16, 32), w_rope=ints(8, 32))
    if op == "mla_hash_encode_and_cache":
        _, cache = canaried((4, 1, 4, 8))
        return dict(c_kv=ints(3, 16), k_pe=ints(3, 8), w_lora=ints(16, 32), w_rope=ints(8, 32), cache=cache,
                    slot_mapping=i32([2, -1, 7]))
    if op == "hamming_dist_top_k":
        kc = torch.randint(0, 256, (10, 2, 4, 8), generator=G, dtype=torch.uint8)
        return dict(q_codes=torch.randint(0, 256, (3, 4, 8), generator=G, dtype=torch.uint8), key_cache=kc,
                    block_table=i32([[3, 1, 4, 0], [9, 2, 6, 5], [8, 7, 0, 1]]), seq_lens=i32([16, 5, 13]),
                    budgets=i32([2, 1, 3]), k=4, must_select_blocks=[0, -1], chunk_repre_method="max")
    if op == "kv_select":
        return dict(indices=i32([[0, 2, -1], [1, -1, -1], [0, 1, 3]]), n_sel=i32([2, 1, 3]),
                    block_table=i32([[3, 1, 4, 0], [9, 2, 6, 5], [8, 7, 0, 1]]), seq_lens=i32([10, 5, 13]),
                    block_size=4, pad_id=0)
    if op == "paged_decode_attention":
        return dict(q=torch.randn(3, 4, 8, generator=G), k_cache=torch.randn(10, 4, 2, 8, generator=G),
                    v_cache=torch.randn(10, 4, 2, 8, generator=G),
                    block_table=i32([[3, 1, 4, 0], [9, 2, 6, 5], [8, 7, 0, 1]]), seq_lens=i32([16, 5, 13]))
    raise KeyError(op)


# (op, name, overrides: dict or callable(args) -> None, expected: None (good) or (arg, [fragments]),
#  public_only: the bad value cannot be expressed in the custom op's schema)
CASES: List[tuple] = []


def case(op, name, change, expect=None, public_only=False):
    CASES.append((op, name, change, expect, public_only))


def _set(**kv):
    return lambda a: a.update(kv)


# hashing + cache writes
case("sign_bits_pack", "n_not_multiple_of_8", _set(x=ints(2, 12)), ("x", ["multiple of 8"]))
case("sign_bits_pack", "int_dtype", _set(x=torch.ones(2, 8, dtype=torch.int32)), ("x", ["dtype", "int32"]))
case("sign_bits_pack", "strided_x", lambda a: a.update(x=strided(a["x"])))
case("sign_bits_pack", "transposed_x", _set(x=ints(16, 3).t()))
case("hash_encode", "strided_x_and_weight", lambda a: a.update(x=strided(a["x"]), weight=strided(a["weight"])))
case("hash_encode", "transposed_weight", _set(weight=ints(2, 32, 8).transpose(1, 2)))
case("hash_encode", "weight_D_mismatch", _set(weight=ints(2, 6, 32)), ("weight", ["shape[-2] == 8"]))
case("hash_encode", "weight_heads_not_dividing", _set(weight=ints(3, 8, 32)), ("weight", ["dividing"]))
case("hash_encode", "weight_zero_heads", _set(weight=ints(0, 8, 32)), ("weight", ["shape[0] >= 1"]))
case("hash_encode", "bits_not_multiple_of_32", _set(weight=ints(2, 8, 24)), ("weight", ["multiple of 32"]))
case("hash_encode", "weight_on_meta", _set(weight=torch.zeros(2, 8, 32, device="meta")), ("weight", ["device cpu"]))
case("hash_encode_and_cache", "slot_past_cache", _set(slot_mapping=i32([0, 3, -1, 9, 16])),
     ("slot_mapping", ["NB*bs = 16", "got 16"]))
case("hash_encode_and_cache", "duplicate_slot", _set(slot_mapping=i32([0, 3, -1, 3, 15])),
     ("slot_mapping", ["distinct slots", "slot 3"]))
case("hash_encode_and_cache", "cache_too_few_heads", lambda a: a.update(cache=canaried((4, 1, 4, 4))[1]),
     ("cache", ["shape[1] == 2"]))
case("hash_encode_and_cache", "cache_too_few_code_bytes", lambda a: a.update(cache=canaried((4, 2, 4, 3))[1]),
     ("cache", ["shape[3] == 4"]))
case("hash_encode_and_cache", "cache_empty", lambda a: a.update(cache=canaried((0, 2, 4, 4))[1]),
     ("cache", ["shape[0] >= 1"]))
case("hash_encode_and_cache", "cache_last_stride_2", lambda a: a.update(cache=canaried((4, 2, 4, 4), inner_step=2)[1]),
     ("cache", ["last-dim stride of 1"]))
case("hash_encode_and_cache", "cache_overlapping", lambda a: a.update(
    cache=torch.zeros(4, 1, 4, 4, dtype=torch.uint8).expand(4, 2, 4, 4)), ("cache", ["non-overlapping"]))
case("hash_encode_and_cache", "slot_float", _set(slot_mapping=torch.zeros(5)), ("slot_mapping", ["dtype int32 or int64"]))
case("hash_encode_and_cache", "slot_wrong_length", _set(slot_mapping=i32([0, 1])), ("slot_mapping", ["shape[0] == 5"]))
case("hash_encode_and_cache", "k_int", lambda a: a.update(k=a["k"].to(torch.int32)), ("k", ["dtype"]))
case("hash_encode_and_cache", "cache_rows_padded", lambda a: a.update(cache=canaried((4, 2, 4, 4), outer_pad=3)[1]))
case("hash_encode_and_cache", "strided_slots_int64", lambda a: a.update(
    slot_mapping=strided(a["slot_mapping"].long()), k=strided(a["k"])))
case("hash_encode_and_cache", "no_tokens", lambda a: a.update(k=ints(0, 2, 8), slot_mapping=i32([])))
case("mla_hash_encode", "strided", lambda a: a.update(x_lora=strided(a["x_lora"]), w_rope=strided(a["w_rope"])))
case("mla_hash_encode", "lead_mismatch", _set(x_rope=ints(2, 8)), ("x_rope", ["leading dims"]))
case("mla_hash_encode_and_cache", "cache_two_heads", lambda a: a.update(cache=canaried((4, 2, 4, 8))[1]),
     ("cache", ["shape[1] == 1"]))
case("mla_hash_encode_and_cache", "cache_last_stride_2",
     lambda a: a.update(cache=canaried((4, 1, 4, 8), inner_step=2)[1]), ("cache", ["last-dim stride of 1"]))
case("mla_hash_encode_and_cache", "slot_past_cache", _set(slot_mapping=i32([2, -1, 99])), ("slot_mapping", ["got 99"]))
case("mla_hash_encode_and_cache", "strided_slots", lambda a: a.update(
    slot_mapping=strided(a["slot_mapping"]), cache=canaried((4, 1, 4, 8), outer_pad=5)[1]))

# selection
case("hamming_dist_top_k", "strided_indices_inputs", lambda a: a.update(
    seq_lens=strided(a["seq_lens"]), budgets=strided(a["budgets"]), block_table=strided(a["block_table"]),
    q_codes=strided(a["q_codes"]), key_cache=strided(a["key_cache"])))
case("hamming_dist_top_k", "table_column_view", lambda a: a.update(
    block_table=torch.cat([a["block_table"], i32([[5, 5]] * 3)], 1)[:, :4], seq_lens=a["seq_lens"][:, None][:, 0]))
case("hamming_dist_top_k", "mean", _set(chunk_repre_method="mean", must_select_blocks=[]))
case("hamming_dist_top_k", "no_rows", lambda a: a.update(
    q_codes=a["q_codes"][:0], block_table=a["block_table"][:0], seq_lens=a["seq_lens"][:0], budgets=a["budgets"][:0]))
case("hamming_dist_top_k", "table_int64", lambda a: a.update(block_table=a["block_table"].long()),
     ("block_table", ["dtype int32", "int64"]))
case("hamming_dist_top_k", "seq_lens_int64", lambda a: a.update(seq_lens=a["seq_lens"].long()), ("seq_lens", ["dtype int32"]))
case("hamming_dist_top_k", "key_cache_empty", _set(key_cache=torch.zeros(0, 2, 4, 8, dtype=torch.uint8)),
     ("key_cache", ["shape[0] >= 1"]))
case("hamming_dist_top_k", "seq_len_int32_max", _set(seq_lens=i32([16, 2**31 - 1, 13])), ("seq_lens", ["got 2147483647"]))
case("hamming_dist_top_k", "block_id_past_cache", _set(block_table=i32([[3, 1, 4, 0], [10, 2, 6, 5], [8, 7, 0, 1]])),
     ("block_table", ["10 blocks", "got 10"]))
case("hamming_dist_top_k", "nine_forced", _set(must_select_blocks=list(range(9))),
     ("must_select_blocks", ["at most 8 distinct"]))
case("hamming_dist_top_k", "forced_huge", _set(must_select_blocks=[2**40]), ("must_select_blocks", ["int32"]))
case("hamming_dist_top_k", "eight_forced_with_duplicates", _set(must_select_blocks=list(range(8)) + [0, 1], k=4))
case("hamming_dist_top_k", "forced_float", _set(must_select_blocks=[1.7]), ("must_select_blocks", ["integers", "1.7"]), True)
case("hamming_dist_top_k", "forced_str", _set(must_select_blocks=["1"]), ("must_select_blocks", ["integers", "'1'"]), True)
case("hamming_dist_top_k", "forced_word", _set(must_select_blocks=["x"]), ("must_select_blocks", ["integers", "'x'"]), True)
case("hamming_dist_top_k", "forced_not_a_list", _set(must_select_blocks="01"), ("must_select_blocks", ["list"]), True)
case("hamming_dist_top_k", "k_float", _set(k=2.5), ("k", ["integer", "2.5"]), True)
case("hamming_dist_top_k", "k_bool", _set(k=True), ("k", ["integer", "True"]), True)
case("hamming_dist_top_k", "k_zero", _set(k=0), ("k", ["int >= 1", "got 0"]))
case("hamming_dist_top_k", "k_too_small", _set(k=1), ("k", ["largest n_sel"]))
case("hamming_dist_top_k", "method", _set(chunk_repre_method="avg"), ("chunk_repre_method", ["'max' or 'mean'"]))
case("hamming_dist_top_k", "budget_zero", _set(budgets=i32([2, 0, 3])), ("budgets", ["budgets >= 1"]))
case("hamming_dist_top_k", "table_no_columns", lambda a: a.update(block_table=a["block_table"][:, :0]),
     ("block_table", ["shape[1] >= 1"]))
case("hamming_dist_top_k", "q_on_meta", lambda a: a.update(budgets=a["budgets"].to("meta")), ("budgets", ["device cpu"]))
case("hamming_dist_top_k", "rope_weight", _set(rope_bytes=4, rope_score_weight=0.3), ("rope_score_weight", ["1/16"]))

# kv_select
case("kv_select", "strided_everything", lambda a: a.update(
    indices=strided(a["indices"]), n_sel=strided(a["n_sel"]), block_table=strided(a["block_table"]),
    seq_lens=strided(a["seq_lens"])))
case("kv_select", "pad_id_negative", _set(pad_id=-7))
case("kv_select", "no_rows", lambda a: a.update(indices=a["indices"][:0], n_sel=a["n_sel"][:0],
                                                 block_table=a["block_table"][:0], seq_lens=a["seq_lens"][:0]))
case("kv_select", "pad_id_2_40", _set(pad_id=2**40), ("pad_id", ["int32", "1099511627776"]))
case("kv_select", "pad_id_float", _set(pad_id=1.5), ("pad_id", ["integer"]), True)
case("kv_select", "block_size_zero", _set(block_size=0), ("block_size", ["int >= 1"]))
case("kv_select", "indices_int64", lambda a: a.update(indices=a["indices"].long()), ("indices", ["dtype int32"]))
case("kv_select", "n_sel_past_k", _set(n_sel=i32([2, 1, 4])), ("n_sel", ["K = 3", "got 4"]))
case("kv_select", "index_past_row", _set(indices=i32([[0, 3, -1], [1, -1, -1], [0, 1, 3]])), ("indices", ["row 0"]))
case("kv_select", "seq_len_too_long", _set(seq_lens=i32([10, 5, 17])), ("seq_lens", ["M*bs = 16"]))

# attention
case("paged_decode_attention", "strided_rows", lambda a: a.update(
    block_table=strided(a["block_table"]), seq_lens=strided(a["seq_lens"]), q=strided(a["q"]),
    k_cache=a["k_cache"].transpose(1, 2).contiguous().transpose(1, 2)))
case("paged_decode_attention", "transposed_q", lambda a: a.update(q=a["q"].transpose(1, 2).contiguous().transpose(1, 2)))
case("paged_decode_attention", "no_rows", lambda a: a.update(q=a["q"][:0], block_table=a["block_table"][:0],
                                                              seq_lens=a["seq_lens"][:0]))
case("paged_decode_attention", "k_cache_empty", lambda a: a.update(
    k_cache=torch.zeros(0, 4, 2, 8), v_cache=torch.zeros(0, 4, 2, 8)), ("k_cache", ["shape[0] >= 1"]))
case("paged_decode_attention", "v_dtype", lambda a: a.update(v_cache=a["v_cache"].half()), ("v_cache", ["dtype float32"]))
case("paged_decode_attention", "block_id_negative", _set(block_table=i32([[3, 1, 4, 0], [-1, 2, 6, 5], [8, 7, 0, 1]])),
     ("block_table", ["got -1"]))
case("paged_decode_attention", "seq_len_zero", _set(seq_lens=i32([16, 0, 13])), ("seq_lens", ["lengths >= 1"]))
case("paged_decode_attention", "table_int64", lambda a: a.update(block_table=a["block_table"].long()),
     ("block_table", ["dtype int32"]))


# ---------------------------------------------------------------- runner

def _call(op: str, entry: str, args: Dict[str, object]):
    if entry == "ops":
        return getattr(ops, op)(**args)
    full = {**DEFAULTS, **args}
    pos = [full[n] for n in SCHEMA[op]]
    if op == "hamming_dist_top_k":
        pos[6] = list(pos[6])
    return getattr(torch.ops.gsa, op)(*pos)


def _written(args) -> List[torch.Tensor]:
    return [args["cache"]] if "cache" in args else []


def _storage_bytes(t: torch.Tensor) -> torch.Tensor:
    """The whole storage under ``t`` (its canaries included), as uint8, copied."""
    return torch.tensor(bytearray(t.untyped_storage()), dtype=torch.uint8)


def _same(a, b, op) -> Optional[str]:
    if isinstance(a, (tuple, list)):
        for x, y in zip(a, b):
            msg = _same(x, y, op)
            if msg:
                return msg
        return None
    if a is None and b is None:
        return None
    if a.shape != b.shape or a.dtype != b.dtype:
        return f"shape/dtype {tuple(a.shape)} {a.dtype} vs reference {tuple(b.shape)} {b.dtype}"
    if a.is_floating_point():
        ok = torch.allclose(a.float(), b.float(), atol=1e-4, rtol=1e-4)
    else:
        ok = torch.equal(a, b)
    return None if ok else f"differs from the reference: {a.tolist()} vs {b.tolist()}"


def run_case(backend: str, entry: str, op: str, change: Callable, expect) -> Optional[str]:
    """None when the case behaves, else a description of what went wrong."""
    args = base(op)
    change(args)
    before = [_storage_bytes(t) for t in _written(args)]
    try:
        with gsa.use_backend(backend):
            out = _call(op, entry, args)
    except GSAInputError as exc:
        msg = str(exc)
        if expect is None:
            return f"refused a good input: {msg}"
        arg, frags = expect
        missing = [f for f in [f"argument '{arg}'", "expected", "got"] + frags if f not in msg]
        if missing:
            return f"message lacks {missing}: {msg}"
        for t, b in zip(_written(args), before):
            if not torch.equal(_storage_bytes(t), b):
                return "refused, but wrote into the cache buffer"
        return None
    except Exception as exc:  # anything but a GSAInputError is a failure
        return f"{type(exc).__name__} instead of GSAInputError: {exc}"
    if expect is not None:
        return f"accepted a bad input (expected an error on '{expect[0]}')"
    # good case: compare with the reference on contiguous copies
    ref_args = {k: (v.contiguous().clone() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    if "cache" in args:  # the reference writes into a copy of the whole buffer, through the same view
        buf = before[0].clone()
        c = args["cache"]
        ref_args["cache"] = buf.as_strided(c.shape, c.stride(), c.storage_offset())
    with gsa.use_backend("reference"):
        want = getattr(ops, op)(**ref_args)
    if "cache" in args:
        if not torch.equal(_storage_bytes(args["cache"]), buf):
            diff = (_storage_bytes(args["cache"]) != buf).nonzero().flatten().tolist()
            return f"cache buffer differs from the reference's (canaries included) at bytes {diff[:10]}"
        return None
    return _same(out, want, op)


def main(backend: str, entry: str) -> int:
    failures = {}
    ran = 0
    for op, name, change, expect, public_only in CASES:
        if public_only and entry == "raw":
            continue
        label = f"{op}/{name}"
        print(f"CASE {label}", flush=True)
        msg = run_case(backend, entry, op, change, expect)
        ran += 1
        if msg:
            failures[label] = msg
    print("RESULT " + json.dumps({"ran": ran, "failures": failures}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
