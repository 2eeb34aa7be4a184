// Spec 12 (docs/spec.md): the MLP hash encoder, fused with spec 3's cache write.
//
// One (token, head) row at a time: the row goes through the head's MLP in fp32
// (SiLU between layers), the signs are packed LSB-first (spec 1) and the code is
// written straight into the paged hash cache at the token's slot, so no [T, H, R]
// projection is ever materialised. Spec 12 allows fp32 accumulation: results may
// differ from the float64 reference only inside its tolerance band.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "gsa_cpu.h"

namespace py = pybind11;

namespace gsa_cpu {
namespace {

struct MlpProblem {
  const float* x;  // [T, H, D] contiguous fp32
  int64_t T, H, D;
  std::vector<const float*> w;  // layer i: [H, in_i, out_i] contiguous
  std::vector<const float*> b;  // layer i: [H, out_i]
  std::vector<int64_t> width;   // in_0 = D, out_0, ..., out_{L-1} = R
  uint8_t* cache;               // [NB, H, bs, C] contiguous
  int64_t NB, bs;
  const void* slots;  // int32/int64 [T]; nullptr: row t goes to slot t (plain codes, bs = 1)
  bool slots64;
};

// y = a @ W + b for one row: W [in, out] row-major; the inner loop runs over
// contiguous outputs so the compiler vectorises it.
inline void affine(const float* a, int64_t in, const float* W, const float* b, int64_t out, float* y) {
  std::copy(b, b + out, y);
  for (int64_t k = 0; k < in; ++k) {
    const float ak = a[k];
    const float* row = W + k * out;
    for (int64_t j = 0; j < out; ++j) y[j] += ak * row[j];
  }
}

void encode_rows(const MlpProblem& p, int64_t t0, int64_t t1) {
  const int64_t L = static_cast<int64_t>(p.w.size());
  const int64_t wmax = *std::max_element(p.width.begin(), p.width.end());
  const int64_t R = p.width[L], C = R / 8;
  std::vector<float> buf_a(wmax), buf_b(wmax);
  for (int64_t t = t0; t < t1; ++t) {
    int64_t slot = t;
    if (p.slots) slot = p.slots64 ? static_cast<const int64_t*>(p.slots)[t] : static_cast<const int32_t*>(p.slots)[t];
    if (slot < 0 || slot >= p.NB * p.bs) continue;  // padding, or out of range: never written (spec 3)
    const int64_t blk = slot / p.bs, off = slot % p.bs;
    for (int64_t h = 0; h < p.H; ++h) {
      const float* a = p.x + (t * p.H + h) * p.D;
      float* y = buf_a.data();
      for (int64_t i = 0; i < L; ++i) {
        const int64_t in = p.width[i], out = p.width[i + 1];
        affine(a, in, p.w[i] + h * in * out, p.b[i] + h * out, out, y);
        if (i < L - 1)
          for (int64_t j = 0; j < out; ++j) y[j] = y[j] / (1.0f + std::exp(-y[j]));  // SiLU
        a = y;
        y = (y == buf_a.data()) ? buf_b.data() : buf_a.data();
      }
      uint8_t* dst = p.cache + ((blk * p.H + h) * p.bs + off) * C;
      for (int64_t c = 0; c < C; ++c) {
        uint8_t byte = 0;
        for (int i = 0; i < 8; ++i) byte |= static_cast<uint8_t>(a[8 * c + i] > 0.0f) << i;  // NaN > 0 is false
        dst[c] = byte;
      }
    }
  }
}

}  // namespace

void register_mlp_hash(py::module_& m) {
  m.def(
      "mlp_hash_encode_and_cache",
      [](uintptr_t x, int64_t T, int64_t H, int64_t D, std::vector<uintptr_t> w, std::vector<uintptr_t> b,
         std::vector<int64_t> width, uintptr_t cache, int64_t NB, int64_t bs, uintptr_t slots, bool slots64,
         int threads) {
        if (w.empty() || w.size() != b.size() || width.size() != w.size() + 1 || width[0] != D ||
            width.back() % 8 || NB < 1 || bs < 1)
          throw std::invalid_argument("gsa cpu mlp_hash_encode_and_cache: inconsistent shapes");
        MlpProblem p;
        p.x = reinterpret_cast<const float*>(x);
        p.T = T, p.H = H, p.D = D;
        for (size_t i = 0; i < w.size(); ++i) {
          p.w.push_back(reinterpret_cast<const float*>(w[i]));
          p.b.push_back(reinterpret_cast<const float*>(b[i]));
        }
        p.width = width;
        p.cache = reinterpret_cast<uint8_t*>(cache);
        p.NB = NB, p.bs = bs;
        p.slots = slots ? reinterpret_cast<const void*>(slots) : nullptr;
        p.slots64 = slots64;
        py::gil_scoped_release nogil;
        // threads over tokens; slots are distinct (checked), so rows never race
        parallel_for(T, T >= 16 ? threads : 1, [&](int64_t t0, int64_t t1) { encode_rows(p, t0, t1); });
      },
      "Spec 12 + 3: MLP hash of x fp32 [T, H, D] into cache uint8 [NB, H, bs, R/8] at slots "
      "(slots = 0: row t -> slot t, for plain codes with bs = 1).");
}

}  // namespace gsa_cpu
