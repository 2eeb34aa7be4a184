/**
 * Stand-in for CANN's binary-only `stub_fun.h` (absent from the open-source asc-devkit):
 * the CCE types and hardware-intrinsic declarations that the real AscendC API headers
 * call in CPU ("twin debug") mode. See npu_ops/ascendc/cpu/README.md.
 *
 * Two kinds of intrinsic live here:
 *  - modelled ones (cce_models.h): small C++ models of what the AscendC docs say the
 *    instruction does, tested in cpu/test_intrinsics.cpp;
 *  - the rest (unmodelled_list.inc): declared as catch-all templates that are never
 *    defined, so the real headers compile, and a kernel that REACHES one fails at link
 *    time naming it ("undefined reference to `vexp<...>`") instead of running wrong.
 */
#ifndef GSA_CPU_STUB_FUN_H
#define GSA_CPU_STUB_FUN_H

#include <cstdint>

// ---- CCE enums (names as the API headers use them; values are ours) --------------------
enum pipe_t : uint8_t { PIPE_S = 0, PIPE_V, PIPE_M, PIPE_MTE1, PIPE_MTE2, PIPE_MTE3, PIPE_ALL, PIPE_MTE4, PIPE_MTE5,
                        PIPE_V2, PIPE_FIX };
enum event_t : uint8_t { EVENT_ID0 = 0, EVENT_ID1, EVENT_ID2, EVENT_ID3, EVENT_ID4, EVENT_ID5, EVENT_ID6, EVENT_ID7 };
enum mem_t : uint8_t { MEM_L1 = 0, MEM_L0A, MEM_L0B, MEM_L0C, MEM_UB, MEM_BT };
enum mem_dsb_t : uint8_t { DSB_ALL = 0, DSB_DDR, DSB_UB, DSB_SEQ };
enum addr_cal_mode_t : uint8_t { inc = 0, dec = 1 };
enum atomic_type_t : uint8_t { ATOMIC_NONE_TYPE = 0 };
enum atomic_op_t : uint8_t { ATOMIC_NONE_OP = 0 };
enum class cache_line_t : uint8_t { SINGLE_CACHE_LINE = 0, ENTIRE_DATA_CACHE };
enum class dcci_dst_t : uint8_t { CACHELINE_ALL = 0, CACHELINE_UB, CACHELINE_OUT, CACHELINE_ATOMIC };
enum class pad_t : uint8_t { PAD_NONE = 0, PAD_MODE1, PAD_MODE2, PAD_MODE3, PAD_MODE4, PAD_MODE5, PAD_MODE6,
                             PAD_MODE7, PAD_MODE8 };
enum class Order_t : uint8_t { VALUE_INDEX = 0, INDEX_VALUE, ONLY_VALUE, ONLY_INDEX };
enum class QuantMode_t : uint8_t {
    NoQuant = 0, F322F16, F322BF16, DEQF16, VDEQF16, DEQS16, VDEQS16, REQ8, VREQ8, REQ4, VREQ4,
    QF322B8_PRE, VQF322B8_PRE, QF162B8_PRE, VQF162B8_PRE, QF162S4_PRE, VQF162S4_PRE, QF162S16_PRE, VQF162S16_PRE,
    QF322F16_PRE, VQF322F16_PRE, QF322BF16_PRE, VQF322BF16_PRE, QS322BF16_PRE, VQS322BF16_PRE, QF322F32_PRE,
    VQF322F32_PRE, QF322FP8_PRE, VQF322FP8_PRE, QF322HIF8_PRE, VQF322HIF8_PRE, QF322HIF8_PRE_HYBRID,
    VQF322HIF8_PRE_HYBRID
};
enum ub_addr8_t : uint8_t { VA0 = 0, VA1, VA2, VA3, VA4, VA5, VA6, VA7 };
enum vld_va_mode_t : uint8_t { L128 = 0, H128 };

#include "cce_sys_models.h"
#include "cce_vec_models.h"

// ---- unmodelled intrinsics: declared, never defined (reaching one is a link error) ------
struct GsaCceUnmodelled {
    template <typename T> operator T() const;  // lets `x = intrinsic(...)` compile; never defined
};
#define GSA_CCE_UNMODELLED(name) template <typename... A> GsaCceUnmodelled name(A...);
#include "unmodelled_list.inc"
#undef GSA_CCE_UNMODELLED

#endif  // GSA_CPU_STUB_FUN_H
