/**
 * Tiling: how much each launch puts in the Unified Buffer and how many cores it uses.
 * Pure C++ (no CANN headers) so that it is the same on host and in tests.
 *
 * Budgets are for Atlas A2/A3 AI vector cores (192 KiB UB each); the kernels use
 * well under that so double-buffering can be added later without retiling.
 */
#ifndef GSA_TILING_H
#define GSA_TILING_H

#include <algorithm>
#include <cstdint>

namespace gsa {

constexpr int64_t kUbBytes = 192 * 1024;
constexpr int64_t kWeightTileBytes = 96 * 1024;  // one D-tile of the fp32 projection

/** Cores for a launch of `items` independent work items: never more than the items, at least 1. */
inline uint32_t BlockDim(int64_t items, int64_t vectorCores)
{
    return static_cast<uint32_t>(std::max<int64_t>(1, std::min<int64_t>(items, vectorCores)));
}

/** Rows of W [D, R] fp32 per UB tile (>= 1; R % 32 == 0 keeps every row 128-byte aligned). */
inline int64_t HashDTile(int64_t d, int64_t r)
{
    return std::max<int64_t>(1, std::min<int64_t>(d, kWeightTileBytes / (r * 4)));
}

/** UB bytes of one block-score work item: the query row and one key block of codes. */
inline int64_t ScoreUbBytes(int64_t hq, int64_t hkv, int64_t bs, int64_t c)
{
    return hq * c + hkv * bs * c + 1024 * 4;
}

/** UB bytes of one select row: the row's keys and its output indices. */
inline int64_t SelectUbBytes(int64_t m, int64_t k, int64_t rowsPerCore)
{
    return m * 4 + k * 4 + rowsPerCore * 4;
}

/**
 * Largest |S16| a token can reach (spec 1.1); the kernels keep S16 in int32 and the
 * mean's block sum in int64, so the only bound to check is the token score.
 */
inline int64_t MaxAbsS16(int64_t hq, int64_t mainBits, int64_t ropeBits, int64_t w16)
{
    return 16 * hq * mainBits + w16 * hq * ropeBits;
}

}  // namespace gsa

#endif  // GSA_TILING_H
