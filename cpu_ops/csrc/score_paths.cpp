// Block scoring (spec 4, v1.1 S16 units) for every popcount code path.
//
// One binary carries every path: the SIMD functions carry GCC/Clang target
// attributes, so the rest of the library stays baseline x86-64 (or whatever the
// compiler targets) and runs anywhere; the path is picked at run time from
// __builtin_cpu_supports (which also checks that the OS saves the AVX state).
//
// Layout trick: for one (physical block, KV head) the bs token codes are one
// contiguous run of bs*C bytes in key_cache [NB, Hkv, bs, C]. Seen as a flat
// array of 64-bit words, word i belongs to token i / W and code word i % W
// (W = C/8). Query words repeat with period W, so a SIMD register of 4 (AVX2)
// or 8 (AVX-512) key words is XORed with a query pattern that repeats every
// lcm(W, 8) words; the per-word popcounts, summed over all (head, group) pairs,
// land in acc[token * W + word]. Per-token costs are then a short weighted sum.
// Codes whose size or rope part is not a multiple of 8 bytes use 32-bit units
// (a scalar loop) instead: MLA layouts with a 32-bit rope part, for example.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "gsa_cpu.h"

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define GSA_X86 1
#include <immintrin.h>
#else
#define GSA_X86 0
#endif

#define GSA_INLINE inline __attribute__((always_inline))

namespace gsa_cpu {

namespace {
std::atomic<int64_t> g_prefetch_bytes{kDefaultPrefetchBytes};
}  // namespace
int64_t prefetch_bytes() { return g_prefetch_bytes.load(std::memory_order_relaxed); }
void set_prefetch_bytes(int64_t n) { g_prefetch_bytes = n < 0 ? 0 : n; }

namespace {

// acc[s * U + u] = sum over (h, g) of popcount(q[h*G+g] unit u ^ key[h, s] unit u)
// for tokens s < n of one block. kblk points at key_cache[phys] ([Hkv, bs, C]);
// qrow at q_codes[b] ([Hq, C]); qrep is the row's query words repeated with
// period L8 = lcm(W, 8) per (h, g) (64-bit-unit layout only).
// qaux is what the path's PrepFn (if any) derived from qrep once per row range.
using AccFn = void (*)(const ScoreProblem&, const uint8_t* qrow, const uint64_t* qrep, int64_t L8,
                       const uint8_t* kblk, int64_t n, uint64_t* acc, const uint64_t* qaux);
using PrepFn = void (*)(const ScoreProblem&, const uint64_t* qrep, int64_t L8, std::vector<uint64_t>& qaux);

template <int UB>
GSA_INLINE uint64_t load_unit(const uint8_t* p) {
  if (UB == 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
  }
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// HW: the caller's target has a popcount instruction. Otherwise, on baseline
// x86-64 the builtin becomes a libgcc call per word, so count bits with the
// SWAR bit trick inline instead (other targets' builtins are fine as they are).
template <int UB, bool HW>
GSA_INLINE uint64_t popc(uint64_t x) {
#if GSA_X86 && !defined(__POPCNT__)
  if (!HW) {
    x -= (x >> 1) & 0x5555555555555555ull;
    x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
    return (x * 0x0101010101010101ull) >> 56;
  }
#endif
  return UB == 8 ? static_cast<uint64_t>(__builtin_popcountll(x))
                 : static_cast<uint64_t>(__builtin_popcount(static_cast<uint32_t>(x)));
}

// Scalar body, inlined into each path's function so that it gets that path's
// popcount instruction (baseline: the compiler's bit-trick routine).
template <int UB, bool HW>
GSA_INLINE void acc_scalar_body(const ScoreProblem& p, const uint8_t* qrow, const uint8_t* kblk, int64_t n,
                                uint64_t* acc) {
  const int64_t U = p.C / UB, C = p.C, G = p.G, bs = p.bs;
  std::fill(acc, acc + n * U, uint64_t{0});
  for (int64_t h = 0; h < p.Hkv; ++h) {
    const uint8_t* kh = kblk + h * bs * C;
    const uint8_t* qh = qrow + h * G * C;
    for (int64_t s = 0; s < n; ++s) {
      const uint8_t* ks = kh + s * C;
      uint64_t* as = acc + s * U;
      for (int64_t u = 0; u < U; ++u) {
        const uint64_t x = load_unit<UB>(ks + u * UB);
        uint64_t c = 0;
        for (int64_t g = 0; g < G; ++g) c += popc<UB, HW>(x ^ load_unit<UB>(qh + g * C + u * UB));
        as[u] += c;
      }
    }
  }
}

void acc_portable_u64(const ScoreProblem& p, const uint8_t* qrow, const uint64_t*, int64_t, const uint8_t* kblk,
                      int64_t n, uint64_t* acc, const uint64_t*) {
  acc_scalar_body<8, false>(p, qrow, kblk, n, acc);
}
void acc_portable_u32(const ScoreProblem& p, const uint8_t* qrow, const uint64_t*, int64_t, const uint8_t* kblk,
                      int64_t n, uint64_t* acc, const uint64_t*) {
  acc_scalar_body<4, false>(p, qrow, kblk, n, acc);
}

#if GSA_X86
__attribute__((target("popcnt"))) void acc_popcnt_u32(const ScoreProblem& p, const uint8_t* qrow, const uint64_t*,
                                                      int64_t, const uint8_t* kblk, int64_t n, uint64_t* acc,
                                                      const uint64_t*) {
  acc_scalar_body<4, true>(p, qrow, kblk, n, acc);
}

// AVX2 has no vector popcount: count each nibble with a 16-entry shuffle table
// (the "Mula" method), add byte counts over up to 31 (h, g) pairs (31 * 8 < 256),
// then sum bytes into 64-bit lanes with vpsadbw. Nibbles commute with XOR, so
// the query nibbles are split once per block and the key nibbles once per
// load: each (key vector, query) pair costs 2 XOR, 2 shuffles, 2 adds.
// Query nibbles, once per row range: qn[((h*G + g) * P + v % P) * 8 + {0..3: low, 4..7: high}]
// (uint64_t storage and unaligned loads: a std::vector of __m256i would drop its alignment).
__attribute__((target("avx2,popcnt"))) void prep_avx2_u64(const ScoreProblem& p, const uint64_t* qrep, int64_t L8,
                                                          std::vector<uint64_t>& qn) {
  const int64_t P = L8 / 4;
  const __m256i low = _mm256_set1_epi8(0x0f);
  qn.resize(static_cast<size_t>(p.Hq * P * 8));
  for (int64_t i = 0; i < p.Hq * P; ++i) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qrep + (i / P) * L8 + (i % P) * 4));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(qn.data() + 8 * i), _mm256_and_si256(x, low));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(qn.data() + 8 * i + 4),
                        _mm256_and_si256(_mm256_srli_epi16(x, 4), low));
  }
}

// Main loop, with the group size G a compile-time constant for the common
// values (GT > 0) so the (h, g) loops unroll and the counters stay in registers.
// Byte counters take up to 31 (h, g) pairs before they are widened.
template <int GT>
__attribute__((target("avx2,popcnt"))) GSA_INLINE void avx2_main(const ScoreProblem& p, int64_t nv, int64_t P,
                                                                 const uint8_t* kblk, uint64_t* acc,
                                                                 const uint64_t* qn) {
  const int64_t G = GT > 0 ? GT : p.G, Hkv = p.Hkv, blk_stride = p.bs * p.C;
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1,
                                       2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i zero = _mm256_setzero_si256();
  // heads per byte-counter widening: 31 / G (G > 31: widen inside the g loop)
  const int64_t hc = G <= 31 ? 31 / G : 1;
  int64_t pv = 0;  // v % P
  for (int64_t v = 0; v < nv; ++v) {
    __m256i a = zero;
    for (int64_t h0 = 0; h0 < Hkv; h0 += hc) {
      const int64_t h1 = std::min(Hkv, h0 + hc);
      // two byte counters (even / odd g) halve the add dependency chain
      __m256i b0 = zero, b1 = zero;
      for (int64_t h = h0; h < h1; ++h) {
        const __m256i kv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kblk + h * blk_stride + 32 * v));
        const __m256i klo = _mm256_and_si256(kv, low);
        const __m256i khi = _mm256_and_si256(_mm256_srli_epi16(kv, 4), low);
        const uint64_t* qh = qn + (h * G * P + pv) * 8;
        for (int64_t g = 0; g < G; ++g) {
          if (GT == 0 && G > 31 && g > 0 && g % 31 == 0) {
            a = _mm256_add_epi64(a, _mm256_sad_epu8(_mm256_add_epi8(b0, b1), zero));
            b0 = b1 = zero;
          }
          const __m256i* qg = reinterpret_cast<const __m256i*>(qh + g * P * 8);
          const __m256i t =
              _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_xor_si256(klo, _mm256_loadu_si256(qg))),
                              _mm256_shuffle_epi8(lut, _mm256_xor_si256(khi, _mm256_loadu_si256(qg + 1))));
          if (g & 1)
            b1 = _mm256_add_epi8(b1, t);
          else
            b0 = _mm256_add_epi8(b0, t);
        }
      }
      a = _mm256_add_epi64(a, _mm256_sad_epu8(_mm256_add_epi8(b0, b1), zero));  // <= 31 pairs: no overflow
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + 4 * v), a);
    if (++pv == P) pv = 0;
  }
}

__attribute__((target("avx2,popcnt"))) void acc_avx2_u64(const ScoreProblem& p, const uint8_t*,
                                                         const uint64_t* qrep, int64_t L8, const uint8_t* kblk,
                                                         int64_t n, uint64_t* acc, const uint64_t* qn) {
  const int64_t W = p.C / 8, G = p.G, Hkv = p.Hkv, blk_stride = p.bs * p.C;
  const int64_t nw = n * W, nv = nw / 4, P = L8 / 4;
  switch (G) {
    case 1: avx2_main<1>(p, nv, P, kblk, acc, qn); break;
    case 2: avx2_main<2>(p, nv, P, kblk, acc, qn); break;
    case 4: avx2_main<4>(p, nv, P, kblk, acc, qn); break;
    case 8: avx2_main<8>(p, nv, P, kblk, acc, qn); break;
    default: avx2_main<0>(p, nv, P, kblk, acc, qn); break;
  }
  for (int64_t i = 4 * nv; i < nw; ++i) {  // < 4 leftover words
    uint64_t c = 0;
    for (int64_t h = 0; h < Hkv; ++h) {
      const uint64_t x = load_unit<8>(kblk + h * blk_stride + 8 * i);
      const uint64_t* qh = qrep + h * G * L8 + (i % L8);
      for (int64_t g = 0; g < G; ++g) c += static_cast<uint64_t>(_mm_popcnt_u64(x ^ qh[g * L8]));
    }
    acc[i] = c;
  }
}

// AVX-512 VPOPCNTDQ: a native 64-bit lane popcount; masked loads/stores cover
// the ragged end of a block without reading past it. G is a compile-time
// constant for common values; two accumulators halve the add chain.
template <int GT>
__attribute__((target("avx512f,avx512vpopcntdq,avx2,popcnt"))) GSA_INLINE void avx512_main(
    const ScoreProblem& p, const uint64_t* qrep, int64_t L8, const uint8_t* kblk, int64_t nw, uint64_t* acc) {
  const int64_t G = GT > 0 ? GT : p.G, Hkv = p.Hkv, blk_stride = p.bs * p.C;
  int64_t off = 0;  // (8 v) % L8
  for (int64_t i = 0; i < nw; i += 8) {
    const int64_t left = nw - i;
    const __mmask8 m = left >= 8 ? static_cast<__mmask8>(0xff) : static_cast<__mmask8>((1u << left) - 1u);
    __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
    for (int64_t h = 0; h < Hkv; ++h) {
      const __m512i kv = _mm512_maskz_loadu_epi64(m, kblk + h * blk_stride + 8 * i);
      const uint64_t* qh = qrep + h * G * L8 + off;
      for (int64_t g = 0; g < G; ++g) {
        const __m512i c = _mm512_popcnt_epi64(_mm512_xor_si512(kv, _mm512_loadu_si512(qh + g * L8)));
        if (g & 1)
          a1 = _mm512_add_epi64(a1, c);
        else
          a0 = _mm512_add_epi64(a0, c);
      }
    }
    _mm512_mask_storeu_epi64(acc + i, m, _mm512_add_epi64(a0, a1));
    off += 8;
    if (off == L8) off = 0;
  }
}

__attribute__((target("avx512f,avx512vpopcntdq,avx2,popcnt"))) void acc_avx512_u64(
    const ScoreProblem& p, const uint8_t*, const uint64_t* qrep, int64_t L8, const uint8_t* kblk, int64_t n,
    uint64_t* acc, const uint64_t*) {
  const int64_t nw = n * (p.C / 8);
  switch (p.G) {
    case 1: avx512_main<1>(p, qrep, L8, kblk, nw, acc); break;
    case 2: avx512_main<2>(p, qrep, L8, kblk, nw, acc); break;
    case 4: avx512_main<4>(p, qrep, L8, kblk, nw, acc); break;
    case 8: avx512_main<8>(p, qrep, L8, kblk, nw, acc); break;
    default: avx512_main<0>(p, qrep, L8, kblk, nw, acc); break;
  }
}
#endif  // GSA_X86

// Shared driver: per block, accumulate unit popcounts, weight them into token
// costs, reduce to the block key. Integer arithmetic throughout; the only
// float operation is mean's single float32 division (spec 4, round to nearest).
void score_range(const ScoreProblem& p, const BlockRange& r, bool mean, double* keys, AccFn acc_fn, int UB,
                 PrepFn prep = nullptr) {
  const int64_t U = p.C / UB, C = p.C, Hq = p.Hq, bs = p.bs;
  const int64_t main_bytes = p.C - p.rope_bytes;
  const int64_t s16_const = 16 * Hq * 8 * main_bytes + p.w16 * Hq * 8 * p.rope_bytes;
  std::vector<int64_t> wt(U);
  for (int64_t u = 0; u < U; ++u) wt[u] = (u * UB < main_bytes) ? 32 : 2 * p.w16;
  const uint8_t* qrow = p.q + r.b * Hq * C;
  // query words repeated with period L8 = lcm(W, 8) for the 64-bit SIMD paths
  std::vector<uint64_t> qrep;
  int64_t L8 = 0;
  if (UB == 8) {
    const int64_t W = C / 8;
    L8 = std::lcm<int64_t>(W, 8);
    qrep.resize(static_cast<size_t>(Hq * L8));
    for (int64_t hg = 0; hg < Hq; ++hg)
      for (int64_t i = 0; i < L8; ++i) qrep[hg * L8 + i] = load_unit<8>(qrow + hg * C + (i % W) * 8);
  }
  std::vector<uint64_t> qaux;
  if (prep != nullptr) prep(p, qrep.data(), L8, qaux);
  std::vector<uint64_t> acc(static_cast<size_t>(bs * U));
  const int64_t block_bytes = p.Hkv * bs * C;
  auto physical = [&](int64_t j) {  // clamped: never read out of bounds
    return std::min<int64_t>(std::max<int64_t>(p.bt[r.b * p.M + j], 0), p.NB - 1);
  };
  // Blocks come in block-table order, i.e. scattered over the cache: the
  // hardware prefetcher follows each contiguous head run once it has seen a
  // few misses, but not the jump to the next block, so the start of each head
  // run of the next block is prefetched (into L2) while this one is scored.
  const int64_t run_bytes = bs * C;
  const int64_t pf_bytes = std::min<int64_t>(run_bytes, prefetch_bytes());
  for (int64_t j = r.j0; j < r.j1; ++j) {
    const int64_t phys = physical(j);
    if (j + 1 < r.j1 && pf_bytes > 0) {
      const uint8_t* next = p.kc + physical(j + 1) * block_bytes;
      for (int64_t h = 0; h < p.Hkv; ++h)
        for (int64_t off = 0; off < pf_bytes; off += 64) __builtin_prefetch(next + h * run_bytes + off, 0, 2);
    }
    const int64_t n = std::min<int64_t>(bs, r.seq_len - j * bs);
    acc_fn(p, qrow, qrep.data(), L8, p.kc + phys * block_bytes, n, acc.data(), qaux.data());
    int64_t min_cost = std::numeric_limits<int64_t>::max(), sum_cost = 0;
    for (int64_t s = 0; s < n; ++s) {
      int64_t cost = 0;
      const uint64_t* as = acc.data() + s * U;
      for (int64_t u = 0; u < U; ++u) cost += wt[u] * static_cast<int64_t>(as[u]);
      min_cost = std::min(min_cost, cost);
      sum_cost += cost;
    }
    if (mean) {
      const int64_t total = n * s16_const - sum_cost;
      const float q = static_cast<float>(total) / static_cast<float>(n);  // IEEE float32, round to nearest
      keys[j] = static_cast<double>(q);
    } else {
      keys[j] = static_cast<double>(s16_const - min_cost);  // |S16| < 2^53: exact
    }
  }
}

bool fast_layout(const ScoreProblem& p) { return p.C % 8 == 0 && p.rope_bytes % 8 == 0; }

void score_portable(const ScoreProblem& p, const BlockRange& r, bool mean, double* keys) {
  if (fast_layout(p))
    score_range(p, r, mean, keys, acc_portable_u64, 8);
  else
    score_range(p, r, mean, keys, acc_portable_u32, 4);
}

#if GSA_X86
void score_avx2(const ScoreProblem& p, const BlockRange& r, bool mean, double* keys) {
  if (fast_layout(p))
    score_range(p, r, mean, keys, acc_avx2_u64, 8, prep_avx2_u64);
  else
    score_range(p, r, mean, keys, acc_popcnt_u32, 4);
}
void score_avx512(const ScoreProblem& p, const BlockRange& r, bool mean, double* keys) {
  if (fast_layout(p))
    score_range(p, r, mean, keys, acc_avx512_u64, 8);
  else
    score_range(p, r, mean, keys, acc_popcnt_u32, 4);
}
#endif

}  // namespace

const char* path_name(Path p) {
  switch (p) {
    case Path::Avx2: return "avx2";
    case Path::Avx512: return "avx512";
    default: return "portable";
  }
}

bool path_supported(Path p) {
  if (p == Path::Portable) return true;
#if GSA_X86
  __builtin_cpu_init();
  if (p == Path::Avx2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
  if (p == Path::Avx512)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq") &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
#endif
  return false;
}

Path best_path() {
  if (path_supported(Path::Avx512)) return Path::Avx512;
  if (path_supported(Path::Avx2)) return Path::Avx2;
  return Path::Portable;
}

ScoreFn score_fn(Path p) {
#if GSA_X86
  if (p == Path::Avx512) return score_avx512;
  if (p == Path::Avx2) return score_avx2;
#endif
  (void)p;
  return score_portable;
}

}  // namespace gsa_cpu
