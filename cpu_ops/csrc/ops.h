// Op entry points on raw host buffers (called from module.cpp with the GIL released).
#pragma once

#include <cstdint>
#include <vector>

#include "gsa_cpu.h"

namespace gsa_cpu {

enum class DType : int { F64 = 0, F32 = 1, F16 = 2, BF16 = 3 };

// Spec 5. Outputs: out_idx int32 [B, k], out_nsel int32 [B].
void hamming_dist_top_k(const ScoreProblem& p, const int32_t* seq_lens, const int32_t* budgets, int64_t k,
                        const std::vector<int64_t>& must, bool mean, Path path, int threads, int32_t* out_idx,
                        int32_t* out_nsel);

// Spec 6. indices/out_table int32 [B, K]; block_table int32 [B, M]; n_sel/seq_lens/out_lens int32 [B].
void kv_select(const int32_t* indices, const int32_t* n_sel, const int32_t* block_table, const int32_t* seq_lens,
               int64_t B, int64_t K, int64_t M, int64_t bs, int64_t pad_id, int32_t* out_table, int32_t* out_lens);

// Spec 1. src [rows, n] of dtype dt -> dst rows of n/8 bytes, row r at dst + r * dst_stride.
void sign_bits_pack(const void* src, DType dt, int64_t rows, int64_t n, uint8_t* dst, int64_t dst_stride,
                    int threads);

// Spec 13 (centred codes). y float64 [rows, n] (row r = head r % H of its vector) -> dst rows of
// n/8 bytes, bit = y > thr[(r % H) / G] (thr float32 [H / G, n]; a query head h uses row h / G).
void threshold_pack(const double* y, int64_t rows, int64_t n, const float* thr, int64_t H, int64_t G, uint8_t* dst,
                    int64_t dst_stride, int threads);

// Spec 3. codes uint8 [T, H, C] -> cache uint8 [NB, H, bs, C] at slots (int32 or int64 [T]).
// Slots < 0 and >= NB*bs are skipped (never written). Returns the number of tokens written.
int64_t scatter_codes(const uint8_t* codes, int64_t T, int64_t H, int64_t C, uint8_t* cache, int64_t NB, int64_t bs,
                      const void* slots, bool slots64);

}  // namespace gsa_cpu
