/**
 * CPU models of the AI-core intrinsics (dav-c220, Atlas A2/A3 vector core) that the real
 * AscendC API reaches from our kernels and from cpu/test_intrinsics.cpp. Each is written
 * from the AscendC documentation of the API call that issues it (DataCopyPad, Duplicate,
 * Axpy, Add/Sub/Mul/Max/Min/And/Or, Not, Compare, Select, level-0 masks and repeats) and
 * tested against that documented behaviour in cpu/test_intrinsics*.cpp. Also: the
 * reductions WholeReduceSum/ReduceSum (vcadd) and WholeReduceMax/Min (vcmax/vcmin), and the
 * int8 <-> half conversions (Cast) that unpack codes to +-1 for the cube (fast_scoring.md).
 *
 * They are MODELS, not hardware: no timing, no pipes. Synchronisation (set_flag /
 * wait_flag / pipe_barrier) is not modelled: each intrinsic completes before it returns,
 * so a kernel missing a flag still passes here.
 *
 * Vector instruction model (normal mode): one instruction = `repeat` iterations; an
 * iteration covers 8 blocks of 32 bytes (256 bytes: 64 b32 / 128 b16 elements); element e
 * of iteration r of an operand lives at base + r*repStride*32 + (e/epb)*blkStride*32 +
 * (e%epb)*size (epb = elements per 32-byte block). Element e runs iff its bit is set in the
 * vector mask (bits 0..63 in the low word, 64..127 in the high word). Counter mode
 * (set_mask_count): the low mask word is an element count N, the repeat argument is
 * ignored, and elements 0..N-1 run over ceil(N / per-iteration) iterations.
 * Every UB byte an intrinsic touches is checked against the UB the API allocated.
 */
#ifndef GSA_CPU_CCE_VEC_MODELS_H
#define GSA_CPU_CCE_VEC_MODELS_H

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace gsa_cpu {

/** Vector-unit registers that the modelled instructions read (one set per core/process). */
struct VecRegs {
    uint64_t maskHi = ~0ull, maskLo = ~0ull;
    bool counterMode = false;
    uint64_t movPadVal = 0;   // DataCopyPad padding value (set_mov_pad_val), raw bits
    uint8_t cmpMask[16] = {}; // 128-bit compare mask register (set_cmpmask / vcmpv results)
    int64_t acc = 0;          // reduction accumulator (vcadd mode 1, read by get_acc_val), raw bits
};
VecRegs& Regs();

/** Abort with a message if [p, p+bytes) is not inside the core's Unified Buffer. */
void CheckUb(const void* p, size_t bytes, const char* intrinsic);
[[noreturn]] void Fail(const char* intrinsic, const char* what);

template <typename T> struct Id { using type = T; };

/**
 * Calls f(r, e) for every element e of iteration r that runs, for an instruction whose
 * element type has `elemBytes` bytes.
 */
template <typename F>
void ForEachElement(size_t elemBytes, uint8_t repeat, F&& f)
{
    const uint32_t perIter = static_cast<uint32_t>(256 / elemBytes);
    VecRegs& R = Regs();
    if (R.counterMode) {
        const uint64_t n = R.maskLo;
        for (uint64_t i = 0; i < n; ++i) {
            f(static_cast<uint32_t>(i / perIter), static_cast<uint32_t>(i % perIter));
        }
        return;
    }
    for (uint32_t r = 0; r < repeat; ++r) {
        for (uint32_t e = 0; e < perIter; ++e) {
            const bool on = e < 64 ? ((R.maskLo >> e) & 1u) : ((R.maskHi >> (e - 64)) & 1u);
            if (on) {
                f(r, e);
            }
        }
    }
}

/** Address of element e of iteration r of an operand (strides in 32-byte blocks). */
template <typename T>
T* ElemAt(T* base, uint32_t r, uint32_t e, uint32_t blkStride, uint32_t repStride, const char* intrinsic)
{
    constexpr uint32_t epb = 32 / sizeof(T);
    T* p = reinterpret_cast<T*>(reinterpret_cast<uint8_t*>(const_cast<std::remove_const_t<T>*>(base)) +
                                static_cast<size_t>(r) * repStride * 32 + static_cast<size_t>(e / epb) * blkStride * 32 +
                                static_cast<size_t>(e % epb) * sizeof(T));
    CheckUb(p, sizeof(T), intrinsic);
    return p;
}

template <typename T, typename Op>
void Binary(const char* name, T* dst, T* s0, T* s1, uint8_t repeat, uint16_t dB, uint16_t s0B, uint16_t s1B,
            uint16_t dR, uint16_t s0R, uint16_t s1R, Op op)
{
    ForEachElement(sizeof(T), repeat, [&](uint32_t r, uint32_t e) {
        const T a = *ElemAt(s0, r, e, s0B, s0R, name);
        const T b = *ElemAt(s1, r, e, s1B, s1R, name);
        *ElemAt(dst, r, e, dB, dR, name) = op(a, b);
    });
}

/**
 * Compare element-wise into a bit mask: bit e of iteration r = op(src0, src1) goes to bit
 * (r * perIter + e) of dst, LSB first; the iterations' bits are contiguous (the level-2
 * Compare steps dst by 256/sizeof(T)/8 bytes per iteration), so dstRepStride is not used.
 */
template <typename T, typename Op>
void Compare(const char* name, uint8_t* dst, T* s0, T* s1, uint8_t repeat, uint16_t s0B, uint16_t s1B,
             uint16_t s0R, uint16_t s1R, Op op)
{
    const uint32_t perIter = 256 / sizeof(T);
    ForEachElement(sizeof(T), repeat, [&](uint32_t r, uint32_t e) {
        const T a = *ElemAt(s0, r, e, s0B, s0R, name);
        const T b = *ElemAt(s1, r, e, s1B, s1R, name);
        const uint64_t bitIdx = static_cast<uint64_t>(r) * perIter + e;
        uint8_t* byte = dst + bitIdx / 8;
        CheckUb(byte, 1, name);
        const uint8_t bit = static_cast<uint8_t>(1u << (bitIdx % 8));
        *byte = op(a, b) ? static_cast<uint8_t>(*byte | bit) : static_cast<uint8_t>(*byte & ~bit);
    });
}

}  // namespace gsa_cpu

// ---- mask / control registers -------------------------------------------------------------
/** Vector mask: bit e of (hi:lo) enables element e of every iteration (counter mode: lo = count). */
inline void set_vector_mask(uint64_t hi, uint64_t lo) { gsa_cpu::Regs().maskHi = hi; gsa_cpu::Regs().maskLo = lo; }
inline void set_mask_count() { gsa_cpu::Regs().counterMode = true; }
inline void set_mask_norm() { gsa_cpu::Regs().counterMode = false; }
inline void set_mov_pad_val(uint64_t v) { gsa_cpu::Regs().movPadVal = v; }
/** Loads the 128-bit compare mask register from 16 bytes of UB (vsel mode 0 reads it). */
template <typename T> inline void set_cmpmask(T* src)
{
    gsa_cpu::CheckUb(src, 16, "set_cmpmask");
    std::memcpy(gsa_cpu::Regs().cmpMask, reinterpret_cast<const void*>(src), 16);
}

// ---- synchronisation: NOT modelled (every model completes before it returns) ---------------
template <typename... A> inline void pipe_barrier(A...) {}
template <typename... A> inline void set_flag(A...) {}
template <typename... A> inline void wait_flag(A...) {}
template <typename... A> inline void hset_flag(A...) {}
template <typename... A> inline void hwait_flag(A...) {}
template <typename... A> inline void dsb(A...) {}
template <typename... A> inline void dcci(A...) {}
template <typename... A> inline void set_atomic_none(A...) {}

// ---- DMA: GM <-> UB ---------------------------------------------------------------------
/**
 * DataCopyPad GM -> UB (copy_gm_to_ubuf_align_b8/16/32): nBurst blocks of lenBurst bytes;
 * GM block i starts at src + i*(lenBurst + srcGap) bytes; in UB each block is
 * [leftPad elements][lenBurst bytes][rightPad elements], rounded up to 32 bytes, and
 * block i starts 32-byte aligned after block i-1 plus dstGap 32-byte blocks. Pad elements
 * take the set_mov_pad_val value; bytes between the data and the 32-byte boundary that no
 * padding covers are undefined on hardware: the model writes 0xA5 there.
 */
void GsaCopyGmToUbAlign(void* dst, const void* src, uint32_t elemBytes, uint16_t nBurst, uint32_t lenBurst,
                        uint8_t leftPad, uint8_t rightPad, uint64_t srcGap, uint64_t dstGap);
/** DataCopyPad UB -> GM: block i read at src + i*(ceil32(lenBurst) + srcGap*32), written at dst + i*(lenBurst + dstGap) bytes. */
void GsaCopyUbToGmAlign(void* dst, const void* src, uint16_t nBurst, uint32_t lenBurst, uint64_t srcGap,
                        uint64_t dstGap);
/** DataCopy GM <-> UB (copy_gm_to_ubuf / copy_ubuf_to_gm): lengths and gaps in 32-byte blocks on both sides. */
void GsaCopyBlocks(void* dst, const void* src, bool dstIsUb, uint16_t nBurst, uint16_t lenBurst, uint16_t srcGap,
                   uint16_t dstGap);

#define GSA_ALIGN_COPY(bits, bytes)                                                                             \
    template <typename D, typename S>                                                                          \
    inline void copy_gm_to_ubuf_align_##bits(D* dst, S* src, uint8_t /*sid*/, uint16_t nBurst, uint32_t lenBurst, \
                                             uint8_t leftPad, uint8_t rightPad, uint64_t srcGap, uint64_t dstGap) \
    {                                                                                                          \
        GsaCopyGmToUbAlign((void*)dst, (const void*)src, bytes, nBurst, lenBurst, leftPad, rightPad, srcGap, dstGap); \
    }                                                                                                          \
    template <typename D, typename S>                                                                          \
    inline void copy_ubuf_to_gm_align_##bits(D* dst, S* src, uint8_t /*sid*/, uint16_t nBurst, uint32_t lenBurst, \
                                             uint8_t, uint8_t, uint64_t srcGap, uint64_t dstGap)                 \
    {                                                                                                          \
        GsaCopyUbToGmAlign((void*)dst, (const void*)src, nBurst, lenBurst, srcGap, dstGap);                    \
    }
GSA_ALIGN_COPY(b8, 1)
GSA_ALIGN_COPY(b16, 2)
GSA_ALIGN_COPY(b32, 4)
#undef GSA_ALIGN_COPY

inline void copy_gm_to_ubuf(void* dst, void* src, uint8_t, uint16_t nBurst, uint16_t lenBurst, uint16_t srcGap,
                            uint16_t dstGap)
{
    GsaCopyBlocks(dst, src, true, nBurst, lenBurst, srcGap, dstGap);
}
inline void copy_ubuf_to_gm(void* dst, void* src, uint8_t, uint16_t nBurst, uint16_t lenBurst, uint16_t srcGap,
                            uint16_t dstGap)
{
    GsaCopyBlocks(dst, src, false, nBurst, lenBurst, srcGap, dstGap);
}

// ---- vector instructions ------------------------------------------------------------------
/** Duplicate: dst[e] = scalar for every running element. */
template <typename T>
inline void vector_dup(T* dst, typename gsa_cpu::Id<T>::type s, uint8_t repeat, uint16_t dB, uint16_t /*sB*/,
                       uint8_t dR, uint8_t /*sR*/)
{
    gsa_cpu::ForEachElement(sizeof(T), repeat, [&](uint32_t r, uint32_t e) {
        *gsa_cpu::ElemAt(dst, r, e, dB, dR, "vector_dup") = s;
    });
}

/** Axpy: dst[e] = src[e] * scalar + dst[e] (same type; multiply rounded, then add rounded). */
template <typename T>
inline void vaxpy(T* dst, T* src, typename gsa_cpu::Id<T>::type s, uint8_t repeat, uint16_t dB, uint16_t sB,
                  uint8_t dR, uint8_t sR)
{
    gsa_cpu::ForEachElement(sizeof(T), repeat, [&](uint32_t r, uint32_t e) {
        T* d = gsa_cpu::ElemAt(dst, r, e, dB, dR, "vaxpy");
        const T prod = *gsa_cpu::ElemAt(src, r, e, sB, sR, "vaxpy") * s;
        *d = static_cast<T>(prod + *d);
    });
}

#define GSA_BINARY(name, expr)                                                                                 \
    template <typename T>                                                                                      \
    inline void name(T* dst, T* s0, T* s1, uint8_t repeat, uint16_t dB, uint16_t s0B, uint16_t s1B, uint8_t dR, \
                     uint8_t s0R, uint8_t s1R)                                                                 \
    {                                                                                                          \
        gsa_cpu::Binary(#name, dst, s0, s1, repeat, dB, s0B, s1B, dR, s0R, s1R,                               \
                        [](T a, T b) { return static_cast<T>(expr); });                                        \
    }
GSA_BINARY(vadd, a + b)
GSA_BINARY(vsub, a - b)
GSA_BINARY(vmul, a * b)
GSA_BINARY(vmax, a > b ? a : b)
GSA_BINARY(vmin, a < b ? a : b)
GSA_BINARY(vand, a & b)
GSA_BINARY(vor, a | b)
#undef GSA_BINARY

/** Not: dst[e] = ~src[e] (bitwise, 16-bit types). */
template <typename T>
inline void vnot(T* dst, T* src, uint8_t repeat, uint16_t dB, uint16_t sB, uint8_t dR, uint8_t sR)
{
    gsa_cpu::ForEachElement(sizeof(T), repeat, [&](uint32_t r, uint32_t e) {
        *gsa_cpu::ElemAt(dst, r, e, dB, dR, "vnot") = static_cast<T>(~*gsa_cpu::ElemAt(src, r, e, sB, sR, "vnot"));
    });
}

#define GSA_COMPARE(name, expr)                                                                                 \
    template <typename T>                                                                                       \
    inline void name(uint8_t* dst, T* s0, T* s1, uint8_t repeat, uint16_t /*dB*/, uint16_t s0B, uint16_t s1B,   \
                     uint8_t /*dR*/, uint8_t s0R, uint8_t s1R)                                                  \
    {                                                                                                           \
        gsa_cpu::Compare(#name, dst, s0, s1, repeat, s0B, s1B, s0R, s1R, [](T a, T b) { return expr; });       \
    }
GSA_COMPARE(vcmpv_eq, a == b)
GSA_COMPARE(vcmpv_ne, a != b)
GSA_COMPARE(vcmpv_lt, a < b)
GSA_COMPARE(vcmpv_le, a <= b)
GSA_COMPARE(vcmpv_gt, a > b)
GSA_COMPARE(vcmpv_ge, a >= b)
#undef GSA_COMPARE

/**
 * Select: dst[e] = (selection bit of e) ? src0[e] : src1[e].
 *  - mode 0 (VSEL_CMPMASK_SPR): the bit is bit e of the compare mask register: every
 *    iteration reads the same first 128 (b16) / 64 (b32) bits;
 *  - mode 2 (VSEL_TENSOR_TENSOR_MODE): the register holds the UB address of a bit tensor
 *    (the API's CPU path stores it in the first 8 bytes); element e of iteration r reads
 *    bit (r * perIter + e) of it, so the bits run on across iterations.
 * Mode 1 (tensor-scalar) is not modelled and aborts.
 */
template <typename T, typename U>
inline void vsel(T* dst, T* s0, U* s1, uint8_t repeat, uint16_t dB, uint16_t s0B, uint16_t s1B, uint8_t dR,
                 uint8_t s0R, uint8_t s1R, uint8_t mode = 0)
{
    if constexpr (!std::is_same_v<T, U>) {
        gsa_cpu::Fail("vsel", "select mode 1 (tensor-scalar) is not modelled");
    } else {
        if (mode != 0 && mode != 2) {
            gsa_cpu::Fail("vsel", "select mode 1 (tensor-scalar) is not modelled");
        }
        const uint8_t* reg = gsa_cpu::Regs().cmpMask;
        const uint8_t* bits = reg;
        if (mode == 2) {
            int64_t addr = 0;
            std::memcpy(&addr, reg, sizeof(addr));
            bits = reinterpret_cast<const uint8_t*>(addr);
        }
        const uint32_t perIter = 256 / sizeof(T);
        gsa_cpu::ForEachElement(sizeof(T), repeat, [&](uint32_t r, uint32_t e) {
            const uint64_t i = mode == 0 ? e : static_cast<uint64_t>(r) * perIter + e;
            if (mode == 2) {
                gsa_cpu::CheckUb(bits + i / 8, 1, "vsel");
            }
            const bool pick0 = (bits[i / 8] >> (i % 8)) & 1u;
            const T v = pick0 ? *gsa_cpu::ElemAt(s0, r, e, s0B, s0R, "vsel")
                              : *gsa_cpu::ElemAt(s1, r, e, s1B, s1R, "vsel");
            *gsa_cpu::ElemAt(dst, r, e, dB, dR, "vsel") = v;
        });
    }
}

/** Reduction accumulator written by vcadd mode 1 (ReduceSum level 2 reads it back). */
inline int64_t get_acc_val() { return gsa_cpu::Regs().acc; }

/**
 * Sum of the running elements (WholeReduceSum, ReduceSum): mode 0 writes iteration r's sum to
 * dst[r * dstRepStride] (stride in elements); mode 1 (counter mode, ReduceSum level 2) sums
 * every running element into the accumulator register. The hardware's order of the adds is
 * NOT modelled: the model sums in double and rounds once to T, so it is exact for integer-
 * valued data (|sum| < 2^24 in float, 2^11 in half) and may differ in the last bit otherwise.
 */
template <typename T, typename A, typename B, typename C, typename D>
inline void vcadd(T* dst, T* src, A repeat, B dstRepStride, C srcBlkStride, D srcRepStride, int mode)
{
    if (mode == 1) {
        double total = 0;
        gsa_cpu::ForEachElement(sizeof(T), 1, [&](uint32_t r, uint32_t e) {
            total += static_cast<double>(*gsa_cpu::ElemAt(src, r, e, srcBlkStride, srcRepStride, "vcadd"));
        });
        const T v = static_cast<T>(static_cast<float>(total));
        int64_t bits = 0;
        std::memcpy(&bits, &v, sizeof(T));
        gsa_cpu::Regs().acc = bits;
        return;
    }
    for (uint32_t r = 0; r < static_cast<uint32_t>(repeat); ++r) {
        double total = 0;
        bool any = false;
        gsa_cpu::ForEachElement(sizeof(T), 1, [&](uint32_t, uint32_t e) {
            total += static_cast<double>(*gsa_cpu::ElemAt(src, r, e, srcBlkStride, srcRepStride, "vcadd"));
            any = true;
        });
        if (any) {
            T* out = dst + static_cast<size_t>(r) * dstRepStride;
            gsa_cpu::CheckUb(out, sizeof(T), "vcadd");
            *out = static_cast<T>(static_cast<float>(total));
        }
    }
}

namespace gsa_cpu {
/**
 * Max / min of each iteration's running elements and its index in the iteration (the first
 * one on ties), written per Order_t: VALUE_INDEX / INDEX_VALUE as a pair of T slots at
 * dst + r*dstRepStride*2 (the index's bits in a T-sized slot); ONLY_VALUE at dst[r*dstRepStride];
 * ONLY_INDEX as a uint32 at ((uint32_t*)dst)[r*dstRepStride].
 */
template <bool IsMax, typename T, typename A, typename B, typename C, typename D>
void ReduceExtreme(const char* name, T* dst, T* src, A repeat, B dstRepStride, C srcBlkStride, D srcRepStride,
                   Order_t order)
{
    for (uint32_t r = 0; r < static_cast<uint32_t>(repeat); ++r) {
        bool any = false;
        T best{};
        uint32_t bestIdx = 0;
        ForEachElement(sizeof(T), 1, [&](uint32_t, uint32_t e) {
            const T v = *ElemAt(src, r, e, srcBlkStride, srcRepStride, name);
            if (!any || (IsMax ? (v > best) : (v < best))) {
                best = v;
                bestIdx = e;
                any = true;
            }
        });
        if (!any) {
            continue;
        }
        using Slot = std::conditional_t<sizeof(T) == 2, uint16_t, uint32_t>;
        const Slot idx = static_cast<Slot>(bestIdx);
        uint8_t* base = reinterpret_cast<uint8_t*>(dst);
        const size_t stride = static_cast<size_t>(dstRepStride);
        if (order == Order_t::VALUE_INDEX || order == Order_t::INDEX_VALUE) {
            uint8_t* pair = base + r * stride * 2 * sizeof(T);
            CheckUb(pair, 2 * sizeof(T), name);
            const bool valueFirst = order == Order_t::VALUE_INDEX;
            std::memcpy(pair + (valueFirst ? 0 : sizeof(T)), &best, sizeof(T));
            std::memcpy(pair + (valueFirst ? sizeof(T) : 0), &idx, sizeof(T));
        } else if (order == Order_t::ONLY_VALUE) {
            CheckUb(base + r * stride * sizeof(T), sizeof(T), name);
            std::memcpy(base + r * stride * sizeof(T), &best, sizeof(T));
        } else {
            const uint32_t idx32 = bestIdx;
            CheckUb(base + r * stride * 4, 4, name);
            std::memcpy(base + r * stride * 4, &idx32, 4);
        }
    }
}
}  // namespace gsa_cpu

/** WholeReduceMax / WholeReduceMin: see gsa_cpu::ReduceExtreme. */
template <typename T, typename A, typename B, typename C, typename D>
inline void vcmax(T* dst, T* src, A repeat, B dstRepStride, C srcBlkStride, D srcRepStride, Order_t order)
{
    gsa_cpu::ReduceExtreme<true>("vcmax", dst, src, repeat, dstRepStride, srcBlkStride, srcRepStride, order);
}
template <typename T, typename A, typename B, typename C, typename D>
inline void vcmin(T* dst, T* src, A repeat, B dstRepStride, C srcBlkStride, D srcRepStride, Order_t order)
{
    gsa_cpu::ReduceExtreme<false>("vcmin", dst, src, repeat, dstRepStride, srcBlkStride, srcRepStride, order);
}

// ---- conversions (Cast) -------------------------------------------------------------------
namespace gsa_cpu {
enum class Round { Rint, Floor, Ceil, Away, Trunc };

/** x rounded per `mode`, then clamped to int8's range (saturation assumed, not documented here). */
inline int8_t RoundToS8(float x, Round mode)
{
    float r = 0;
    switch (mode) {
        case Round::Rint: r = std::nearbyint(x); break;  // default FE_TONEAREST: ties to even
        case Round::Floor: r = std::floor(x); break;
        case Round::Ceil: r = std::ceil(x); break;
        case Round::Away: r = std::round(x); break;
        case Round::Trunc: r = std::trunc(x); break;
    }
    return static_cast<int8_t>(r < -128.f ? -128.f : (r > 127.f ? 127.f : r));
}

/**
 * Element-wise conversion: an iteration covers 256 bytes of the wider type; each operand's
 * element e sits in its own 32-byte blocks (e / (32/size)), so block strides are only checked
 * here with contiguous blocks (stride 1, as the level-2 Cast issues them).
 */
template <typename D, typename S, typename F>
void Convert(const char* name, D* dst, S* src, uint8_t repeat, uint16_t dB, uint16_t sB, uint16_t dR, uint16_t sR, F f)
{
    ForEachElement(sizeof(D) > sizeof(S) ? sizeof(D) : sizeof(S), repeat, [&](uint32_t r, uint32_t e) {
        *ElemAt(dst, r, e, dB, dR, name) = f(*ElemAt(src, r, e, sB, sR, name));
    });
}
}  // namespace gsa_cpu

/** Cast half -> int8: `vconv_f162s8` (CAST_NONE: round to nearest even when inexact), r/f/c/a/z. */
#define GSA_F16_TO_S8(name, mode)                                                                               \
    template <typename D, typename S>                                                                          \
    inline void name(D* dst, S* src, uint8_t repeat, uint16_t dB, uint16_t sB, uint16_t dR, uint16_t sR)        \
    {                                                                                                          \
        gsa_cpu::Convert(#name, dst, src, repeat, dB, sB, dR, sR,                                              \
                         [](S v) { return gsa_cpu::RoundToS8(static_cast<float>(v), gsa_cpu::Round::mode); }); \
    }
GSA_F16_TO_S8(vconv_f162s8, Rint)
GSA_F16_TO_S8(vconv_f162s8r, Rint)
GSA_F16_TO_S8(vconv_f162s8f, Floor)
GSA_F16_TO_S8(vconv_f162s8c, Ceil)
GSA_F16_TO_S8(vconv_f162s8a, Away)
GSA_F16_TO_S8(vconv_f162s8z, Trunc)
#undef GSA_F16_TO_S8

/** Cast int8 -> half: exact. */
template <typename D, typename S>
inline void vconv_s82f16(D* dst, S* src, uint8_t repeat, uint16_t dB, uint16_t sB, uint16_t dR, uint16_t sR)
{
    gsa_cpu::Convert("vconv_s82f16", dst, src, repeat, dB, sB, dR, sR,
                     [](S v) { return static_cast<D>(static_cast<float>(v)); });
}

#endif  // GSA_CPU_CCE_VEC_MODELS_H
