"""Triton kernels shaped for Ascend (triton-ascend 3.2), also valid upstream Triton.

Why separate variants from ``cuda_ops``: an Ascend NPU runs one program per AI
vector core and launches are expensive, so every kernel here takes a 1-D grid
of ``NPROG`` programs (the core count) and strides over its work items inside
the kernel; no kernel assumes warps, shared memory layouts or ``popc`` (absent
in triton-ascend 3.2: popcount is a SWAR bit trick on int32 words).

Every loop over work items masks its loads and stores with ``item < n_items``:
the last stride may run past the end, and the interpreter (like the hardware)
would otherwise touch memory it does not own.

Semantics are docs/spec.md, bit for bit where the spec says so; see
``npu_ops/triton/__init__.py`` for the launchers (shapes and dtypes there).
"""
import triton
import triton.language as tl

INT32_MAX = tl.constexpr(2147483647)
INT32_MIN = tl.constexpr(-2147483648)


@triton.jit
def _popc32(v):
    """Set bits of each int32 lane (SWAR; arithmetic shifts are masked off)."""
    v = v - ((v >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F
    v = v + (v >> 8)
    v = v + (v >> 16)
    return v & 0x3F


@triton.jit
def _vand(v, s):
    """``v & s`` for a bool vector ``v`` and a bool scalar ``s``, as bool.

    Compiled Triton gives i1 either way; the Triton interpreters (3.2 and 3.9)
    return int32 for a scalar-vector ``&``, which their ``load`` rejects as a mask.
    """
    return (v & s) != 0


@triton.jit
def hash_encode_kernel(
    x_ptr, w_ptr, out_ptr, slot_ptr, thr_ptr,
    n_items, H, D, C, X_ROW, W_HEAD, G_W, T_HEAD,
    N_SLOTS, OUT_HEADS, OUT_BS, OUT_C, COL_OFF,
    USE_SLOTS: tl.constexpr, HAS_THR: tl.constexpr, NPROG: tl.constexpr,
    C_P2: tl.constexpr, DT: tl.constexpr,
):
    """Project one (token, head) per item and write its ``C`` sign-bit code bytes.

    ``x`` rows ``[T, H, D]`` (token stride ``X_ROW``, head stride ``D``), weight
    ``[Hw, D, 8*C]`` (head stride ``W_HEAD``; head ``h`` uses ``h // G_W``; a
    shared ``[D, R]`` weight has ``W_HEAD = 0``). Output layout
    ``[*, OUT_HEADS, OUT_BS, OUT_C]`` uint8: token ``t`` goes to ``slot[t]``
    (block ``slot // OUT_BS``, offset ``slot % OUT_BS``) when ``USE_SLOTS``, else
    to row ``t`` (``OUT_BS = 1``); its bytes start at column ``COL_OFF``.
    Slots ``< 0`` (padding) or ``>= N_SLOTS`` are never written.
    Accumulation is fp32 products and sums on the vector unit: no TF32/HF32.
    ``HAS_THR`` (spec 13): ``thr fp32 [Hw, 8*C]`` (head stride ``T_HEAD``, 0 for a
    shared weight) is subtracted from the projection: bit = ``x . W[:, r] - t[r] > 0``.
    """
    pid = tl.program_id(0)
    c = tl.arange(0, C_P2)
    bit = tl.arange(0, 8)
    d_off = tl.arange(0, DT)
    col = c[:, None] * 8 + bit[None, :]  # [C_P2, 8] projection columns, bit i of byte c
    col_ok = (c < C)[:, None] & (bit < 8)[None, :]
    r = C * 8
    for i in range(0, tl.cdiv(n_items, NPROG)):
        item = pid + i * NPROG
        live = item < n_items
        t = (item // H).to(tl.int64)
        h = item % H
        if USE_SLOTS:
            slot = tl.load(slot_ptr + t, mask=live, other=-1).to(tl.int64)
            live = live & (slot >= 0) & (slot < N_SLOTS)
            slot = tl.where(live, slot, 0)
        else:
            slot = t
        acc = tl.zeros((C_P2, 8), dtype=tl.float32)
        wbase = w_ptr + (h // G_W) * W_HEAD
        for d0 in range(0, D, DT):
            d = d0 + d_off
            dm = d < D
            xv = tl.load(x_ptr + t * X_ROW + h * D + d, mask=_vand(dm, live), other=0.0).to(tl.float32)
            wv = tl.load(wbase + d[:, None, None] * r + col[None, :, :],
                         mask=_vand(dm[:, None, None] & col_ok[None, :, :], live), other=0.0).to(tl.float32)
            acc += tl.sum(xv[:, None, None] * wv, axis=0)
        if HAS_THR:
            acc -= tl.load(thr_ptr + (h // G_W) * T_HEAD + col, mask=_vand(col_ok, live), other=0.0).to(tl.float32)
        byte = tl.sum(tl.where(acc > 0, 1, 0) << bit[None, :], axis=1)
        dst = (((slot // OUT_BS) * OUT_HEADS + h) * OUT_BS + slot % OUT_BS) * OUT_C + COL_OFF + c
        tl.store(out_ptr + dst, byte.to(tl.uint8), mask=_vand(c < C, live))


@triton.jit
def block_scores_kernel(
    q_ptr, k_ptr, bt_ptr, seq_ptr, out_ptr,
    n_items, M, NB, HKV, G, CW, MAIN_W, W16,
    BS: tl.constexpr, IS_MEAN: tl.constexpr, NPROG: tl.constexpr,
    BS_P2: tl.constexpr, CW_P2: tl.constexpr,
):
    """Spec 4 block scores of one (row, logical block) per item, in 1/16 units.

    ``q`` int32 words ``[B, HKV*G, CW]``; ``k`` int32 words ``[NB, HKV, BS, CW]``
    (the uint8 codes reinterpreted, 4 bytes a word; the last ``CW - MAIN_W``
    words are the MLA rope part, weighted ``W16 / 16``); ``bt`` int32 ``[B, M]``;
    ``seq`` int32 ``[B]``. Out ``[B, M]``: int32 ``max S16`` (``INT32_MIN`` for a
    block with no valid token) or, if ``IS_MEAN``, float32
    ``div_rn(float32(sum S16), float32(count))`` (``-inf`` when empty).
    Physical ids are clamped into ``[0, NB)`` so a bad table never reads out of bounds.
    """
    pid = tl.program_id(0)
    tok = tl.arange(0, BS_P2)
    w = tl.arange(0, CW_P2)
    hq = HKV * G
    r_main = MAIN_W * 32
    r_rope = (CW - MAIN_W) * 32
    for i in range(0, tl.cdiv(n_items, NPROG)):
        item = pid + i * NPROG
        live = item < n_items
        b = item // M
        m = item % M
        seq = tl.load(seq_ptr + b, mask=live, other=0)
        n_tok = tl.minimum(tl.maximum(seq - m * BS, 0), BS)
        phys = tl.load(bt_ptr + b.to(tl.int64) * M + m, mask=live, other=0)
        phys = tl.minimum(tl.maximum(phys, 0), NB - 1).to(tl.int64)
        tmask = _vand(tok < BS, live)
        pc_main = tl.zeros((BS_P2,), dtype=tl.int32)
        pc_rope = tl.zeros((BS_P2,), dtype=tl.int32)
        for h in range(0, HKV):
            kt = tl.load(k_ptr + ((phys * HKV + h) * BS + tok[:, None]) * CW + w[None, :],
                         mask=tmask[:, None] & (w < CW)[None, :], other=0)
            for g in range(0, G):
                qv = tl.load(q_ptr + (b.to(tl.int64) * hq + h * G + g) * CW + w, mask=_vand(w < CW, live), other=0)
                pc = _popc32(kt ^ qv[None, :])
                pc_main += tl.sum(tl.where((w < MAIN_W)[None, :], pc, 0), axis=1)
                pc_rope += tl.sum(tl.where(((w >= MAIN_W) & (w < CW))[None, :], pc, 0), axis=1)
        s16 = 16 * (hq * r_main - 2 * pc_main) + W16 * (hq * r_rope - 2 * pc_rope)
        valid = tok < n_tok
        if IS_MEAN:
            total = tl.sum(tl.where(valid, s16, 0).to(tl.int64), axis=0)
            mean = tl.div_rn(total.to(tl.float32), tl.maximum(n_tok, 1).to(tl.float32))
            val = tl.where(n_tok > 0, mean, float("-inf"))
        else:
            best = tl.max(tl.where(valid, s16, INT32_MIN), axis=0)
            val = tl.where(n_tok > 0, best, INT32_MIN)
        tl.store(out_ptr + b.to(tl.int64) * M + m, val, mask=live)


@triton.jit
def _forced(j, n_blk, forced_ptr, F):
    """bool per lane: logical block ``j`` is named by a must-select entry (spec 5)."""
    hit = j < 0
    for f in range(0, F):
        e = tl.load(forced_ptr + f)
        target = tl.where(e >= 0, e, n_blk + e)
        hit = hit | _vand(j == target, (target >= 0) & (target < n_blk))
    return hit


@triton.jit
def _rank_key(s_ptr, row, j, M, n_blk, forced_ptr, F, IS_MEAN: tl.constexpr):
    """Ranking key of blocks ``j``: forced -> +inf (INT32_MAX), past the row -> -inf."""
    s = tl.load(s_ptr + row * M + j, mask=j < M, other=0)
    fo = _forced(j, n_blk, forced_ptr, F)
    if IS_MEAN:
        key = tl.where(fo, float("inf"), tl.where(j < n_blk, s, float("-inf")))
    else:
        key = tl.where(fo, INT32_MAX, tl.where(j < n_blk, s, INT32_MIN))
    return key


@triton.jit
def select_kernel(
    s_ptr, seq_ptr, bud_ptr, forced_ptr, idx_ptr, nsel_ptr,
    B, M, K, F,
    BS: tl.constexpr, IS_MEAN: tl.constexpr, NPROG: tl.constexpr,
    TJ: tl.constexpr, TI: tl.constexpr, TK: tl.constexpr,
):
    """Spec 5 selection for one row per item, no sort: block ``j`` is chosen iff
    ``rank(j) < n_sel`` with ``rank(j) = #{i : key_i > key_j or (key_i == key_j and i < j)}``
    (ties to the smaller index); its output slot is the number of chosen blocks
    before it (ascending order). O(M^2) compares in ``[TI, TJ]`` tiles.

    ``s`` block scores ``[B, M]`` (int32 max or float32 mean), ``seq``/``bud``
    int32 ``[B]``, ``forced`` int32 ``[F]``. Out ``idx`` int32 ``[B, K]`` (-1 after
    ``n_sel``) and ``nsel`` int32 ``[B]`` (clamped to ``K``).
    """
    pid = tl.program_id(0)
    tj = tl.arange(0, TJ)
    ti = tl.arange(0, TI)
    tk = tl.arange(0, TK)
    for it in range(0, tl.cdiv(B, NPROG)):
        row = pid + it * NPROG
        live = row < B
        row64 = row.to(tl.int64)
        seq = tl.load(seq_ptr + row, mask=live, other=1)
        bud = tl.load(bud_ptr + row, mask=live, other=1)
        n_blk = tl.minimum((seq + BS - 1) // BS, M)
        n_forced = 0
        for j0 in range(0, M, TJ):
            j = j0 + tj
            n_forced += tl.sum(tl.where(_forced(j, n_blk, forced_ptr, F) & (j < M), 1, 0), axis=0)
        n_sel = tl.where(bud >= n_blk, n_blk, tl.maximum(bud, n_forced))
        n_out = tl.minimum(n_sel, K)
        for k0 in range(0, K, TK):
            k = k0 + tk
            tl.store(idx_ptr + row64 * K + k, tl.full((TK,), -1, tl.int32), mask=_vand((k < K) & (k >= n_out), live))
        placed = 0
        for j0 in range(0, M, TJ):
            j = j0 + tj
            key_j = _rank_key(s_ptr, row64, j, M, n_blk, forced_ptr, F, IS_MEAN)
            rank = tl.zeros((TJ,), dtype=tl.int32)
            for i0 in range(0, M, TI):
                i = i0 + ti
                key_i = _rank_key(s_ptr, row64, i, M, n_blk, forced_ptr, F, IS_MEAN)
                ahead = (key_i[:, None] > key_j[None, :]) | ((key_i[:, None] == key_j[None, :]) & (i[:, None] < j[None, :]))
                rank += tl.sum(tl.where(ahead & (i < M)[:, None], 1, 0), axis=0)
            chosen = (rank < n_sel) & (j < n_blk)
            c = tl.where(chosen, 1, 0)
            pos = placed + tl.cumsum(c, axis=0) - c
            tl.store(idx_ptr + row64 * K + pos, j.to(tl.int32), mask=_vand(chosen & (pos < K), live))
            placed += tl.sum(c, axis=0)
        tl.store(nsel_ptr + row, n_out.to(tl.int32), mask=live)


@triton.jit
def kv_select_kernel(
    idx_ptr, nsel_ptr, bt_ptr, seq_ptr, table_ptr, lens_ptr,
    B, K, M, BS, PAD,
    NPROG: tl.constexpr, TK: tl.constexpr,
):
    """Spec 6 for one row per item: ``table[b, i] = bt[b, idx[b, i]]`` for
    ``i < nsel[b]`` else ``PAD``; ``lens[b]`` = tokens of the chosen blocks
    (``BS`` each, fewer for the sequence's last block). Logical ids are clamped
    into ``[0, M)`` so the table is never read out of bounds."""
    pid = tl.program_id(0)
    tk = tl.arange(0, TK)
    for it in range(0, tl.cdiv(B, NPROG)):
        row = pid + it * NPROG
        live = row < B
        row64 = row.to(tl.int64)
        n = tl.load(nsel_ptr + row, mask=live, other=0)
        seq = tl.load(seq_ptr + row, mask=live, other=0)
        total = 0
        for k0 in range(0, K, TK):
            k = k0 + tk
            km = _vand(k < K, live)
            on = km & (k < n)
            logical = tl.load(idx_ptr + row64 * K + k, mask=on, other=0)
            logical = tl.minimum(tl.maximum(logical, 0), M - 1)
            phys = tl.load(bt_ptr + row64 * M + logical, mask=on, other=0)
            tl.store(table_ptr + row64 * K + k, tl.where(on, phys, PAD).to(tl.int32), mask=km)
            ln = tl.minimum(tl.maximum(seq - logical * BS, 0), BS)
            total += tl.sum(tl.where(on, ln, 0), axis=0)
        tl.store(lens_ptr + row, total.to(tl.int32), mask=live)
