// Shared declarations of the gsa-ops C++ CPU backend (docs/spec.md).
//
// Everything works on raw, contiguous, host buffers: the Python side
// (cpu_ops/_kernels.py) passes torch CPU tensors' data pointers, so the
// extension never includes torch headers and is independent of the torch version.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace gsa_cpu {

// The popcount code paths. All are compiled into the one binary (GCC/Clang
// target attributes); the fastest one the running CPU supports is the default.
enum class Path : int { Portable = 0, Avx2 = 1, Avx512 = 2 };

const char* path_name(Path p);
bool path_supported(Path p);  // compiled in AND the running CPU/OS has it
Path best_path();

// Scoring problem of spec 4 for one call (all pointers contiguous).
struct ScoreProblem {
  const uint8_t* q;    // q_codes   uint8 [B, Hq, C]
  const uint8_t* kc;   // key_cache uint8 [NB, Hkv, bs, C]
  const int32_t* bt;   // block_table int32 [B, M]
  int64_t B, Hq, Hkv, G, C, NB, bs, M;
  int64_t rope_bytes;  // last rope_bytes of each code are the MLA rope part
  int64_t w16;         // 16 * rope_score_weight (an integer in [0, 256])
};

// Weighted mismatch count of one token: 32 * popcount(main part) +
// 2 * w16 * popcount(rope part), summed over all (h, g) query/key pairs.
// The S16 token score of spec 4 (1.1) is then  s16_const - cost.
//
// score_blocks_<path> writes, for row b and logical blocks [j0, j1) (all with
// at least one valid token), the per-block key into keys[j]: for "max" the
// largest S16 (exact, as a double), for "mean" float32(sum S16) / float32(count)
// widened to double. Implementations live in score_paths.cpp.
struct BlockRange {
  int64_t b, j0, j1;
  int64_t seq_len;
};
using ScoreFn = void (*)(const ScoreProblem&, const BlockRange&, bool mean, double* keys);
ScoreFn score_fn(Path p);

// Bytes prefetched from the start of each head run of the next block while a
// block is scored (a tuning knob; 0 turns prefetching off).
constexpr int64_t kDefaultPrefetchBytes = 128;  // best or near-best on the Intel and AMD hosts measured
int64_t prefetch_bytes();
void set_prefetch_bytes(int64_t n);

// Run fn(c) for every chunk c in [0, n_chunks) on up to `threads` threads of a
// persistent pool (the caller included; chunks taken from a shared counter).
// Used with the GIL released.
void parallel_chunks(int64_t n_chunks, int threads, const std::function<void(int64_t)>& fn);
// fn(begin, end) over [0, n) split into `threads` equal chunks.
void parallel_for(int64_t n, int threads, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace gsa_cpu
