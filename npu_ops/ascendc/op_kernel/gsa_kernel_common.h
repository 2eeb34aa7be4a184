/**
 * Shared device helpers of the GSA AscendC kernels (Atlas A2 / A3, dav-c220).
 *
 * Why the kernels look the way they do:
 *  - A2/A3 have no vector popcount, so Hamming similarity uses the scalar unit's
 *    popcount instruction (bcnt1) on 32-bit code words. Scores are integers in
 *    1/16 units (spec 1.1) held in int32; nothing is ever quantised. (The faster
 *    design on the cube unit: npu_ops/ascendc/fast_scoring.md.)
 *  - Bulk data (codes, weights) moves GM <-> UB with DataCopyPad (any byte count,
 *    A2/A3 support it; split into pieces of at most kMaxCopyBytes); small per-row
 *    values (block ids, lengths) are read with GlobalTensor::GetValue on the scalar unit.
 *  - Between an MTE copy and scalar/vector use of the same buffer the kernels
 *    place a full PipeBarrier<PIPE_ALL>(). It is the coarsest correct sync; finer
 *    SetFlag/WaitFlag pairs are a later optimisation, after hardware runs.
 *  - Every kernel strides its work items over GetBlockNum() cores (one launch of
 *    "number of vector cores" blocks), so the grid never depends on the batch.
 */
#ifndef GSA_KERNEL_COMMON_H
#define GSA_KERNEL_COMMON_H

#include "kernel_operator.h"

namespace gsa {

constexpr int32_t kInt32Min = -2147483647 - 1;
constexpr int32_t kInt32Max = 2147483647;

/**
 * Set bits of a 32-bit word: the scalar unit's population count (AscendC::GetBitCount<1>,
 * the bcnt1 instruction, one per 64-bit word; dav-c220 has it on the scalar unit only).
 */
__aicore__ inline int32_t Popc32(uint32_t v)
{
    return static_cast<int32_t>(AscendC::GetBitCount<1>(static_cast<uint64_t>(v)));
}

/**
 * Largest DataCopyPad the kernels issue, in bytes. DataCopyExtParams::blockLen is 32-bit, but
 * the AscendC API's own parameter check holds it in 16 bits (kernel_check_copy.h builds
 * DataCopyPadApiParams with a uint16_t blockLen), so a longer copy would be checked on a
 * truncated length. Longer transfers are split; 32 KiB keeps every piece's UB offset 32-byte aligned.
 */
constexpr uint32_t kMaxCopyBytes = 32 * 1024;

/** GM -> UB copy of `count` contiguous elements (no alignment requirement on the length). */
template <typename T>
__aicore__ inline void CopyIn(const AscendC::LocalTensor<T>& dst, const AscendC::GlobalTensor<T>& src, uint32_t count)
{
    constexpr uint32_t piece = kMaxCopyBytes / sizeof(T);
    AscendC::DataCopyPadExtParams<T> pad{false, 0, 0, 0};
    for (uint32_t off = 0; off < count; off += piece) {
        const uint32_t n = (count - off) < piece ? (count - off) : piece;
        AscendC::DataCopyExtParams p{1, static_cast<uint32_t>(n * sizeof(T)), 0, 0, 0};
        AscendC::DataCopyPad(dst[off], src[off], p, pad);
    }
}

/** UB -> GM copy of `count` elements (exactly those bytes are written, nothing past them). */
template <typename T>
__aicore__ inline void CopyOut(const AscendC::GlobalTensor<T>& dst, const AscendC::LocalTensor<T>& src, uint32_t count)
{
    constexpr uint32_t piece = kMaxCopyBytes / sizeof(T);
    for (uint32_t off = 0; off < count; off += piece) {
        const uint32_t n = (count - off) < piece ? (count - off) : piece;
        AscendC::DataCopyExtParams p{1, static_cast<uint32_t>(n * sizeof(T)), 0, 0, 0};
        AscendC::DataCopyPad(dst[off], src[off], p);
    }
}

__aicore__ inline void FullSync()
{
    AscendC::PipeBarrier<PIPE_ALL>();
}

__aicore__ inline int64_t Clamp64(int64_t v, int64_t lo, int64_t hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

}  // namespace gsa

#endif  // GSA_KERNEL_COMMON_H
