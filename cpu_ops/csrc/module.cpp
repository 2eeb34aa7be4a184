// pybind11 bindings of the gsa-ops CPU backend (module cpu_ops._gsa_cpu).
//
// Every op takes raw data pointers (torch's Tensor.data_ptr()) plus shapes, so
// no torch headers are needed and no copy is made; cpu_ops/_kernels.py checks
// dtypes, contiguity and sizes before calling. The GIL is released while the
// C++ code runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <stdexcept>
#include <string>
#include <thread>

#include "ops.h"

namespace py = pybind11;
using namespace gsa_cpu;

namespace gsa_cpu {
void register_mlp_hash(py::module_& m);  // mlp_hash.cpp (spec 12)
}

namespace {

std::atomic<int> g_path{static_cast<int>(best_path())};
std::atomic<int> g_threads{static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))};

template <class T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

Path parse_path(const std::string& name) {
  if (name == "portable") return Path::Portable;
  if (name == "avx2") return Path::Avx2;
  if (name == "avx512") return Path::Avx512;
  throw std::invalid_argument("gsa cpu backend: unknown code path '" + name +
                              "', expected 'portable', 'avx2' or 'avx512'");
}

void set_path(const std::string& name) {
  const Path p = parse_path(name);
  if (!path_supported(p))
    throw std::invalid_argument(std::string("gsa cpu backend: code path '") + name +
                                "' is not supported by this CPU (supported: " + "see cpu_ops.supported_paths())");
  g_path = static_cast<int>(p);
}

py::list supported_paths() {
  py::list out;
  for (Path p : {Path::Portable, Path::Avx2, Path::Avx512})
    if (path_supported(p)) out.append(path_name(p));
  return out;
}

}  // namespace

PYBIND11_MODULE(_gsa_cpu, m) {
  m.doc() = "gsa-ops C++ CPU kernels on raw host buffers (see cpu_ops/README.md)";
  m.def("supported_paths", &supported_paths, "Code paths this CPU can run, slowest first.");
  m.def("best_path", [] { return std::string(path_name(best_path())); });
  m.def("get_path", [] { return std::string(path_name(static_cast<Path>(g_path.load()))); });
  m.def("set_path", &set_path, py::arg("name"), "Force a code path: 'portable', 'avx2' or 'avx512'.");
  m.def("get_num_threads", [] { return g_threads.load(); });
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw std::invalid_argument("gsa cpu backend: threads must be >= 1");
    g_threads = n;
  });

  m.def("get_prefetch_bytes", &prefetch_bytes);
  m.def("set_prefetch_bytes", &set_prefetch_bytes, py::arg("n"),
        "Bytes of each head run of the next block prefetched during scoring (tuning; 0 = off).");
  m.def(
      "hamming_dist_top_k",
      [](uintptr_t q, uintptr_t kc, uintptr_t bt, uintptr_t seq, uintptr_t bud, int64_t B, int64_t Hq, int64_t Hkv,
         int64_t C, int64_t NB, int64_t bs, int64_t M, int64_t k, std::vector<int64_t> must, bool mean,
         int64_t rope_bytes, int64_t w16, uintptr_t out_idx, uintptr_t out_nsel) {
        if (Hkv < 1 || Hq % Hkv || C % 4 || rope_bytes % 4 || rope_bytes >= C || bs < 1 || NB < 1 || k < 1)
          throw std::invalid_argument("gsa cpu hamming_dist_top_k: inconsistent shapes");
        ScoreProblem p{ptr<const uint8_t>(q), ptr<const uint8_t>(kc), ptr<const int32_t>(bt), B, Hq, Hkv,
                       Hq / Hkv, C, NB, bs, M, rope_bytes, w16};
        const Path path = static_cast<Path>(g_path.load());
        const int threads = g_threads.load();
        py::gil_scoped_release nogil;
        hamming_dist_top_k(p, ptr<const int32_t>(seq), ptr<const int32_t>(bud), k, must, mean, path, threads,
                           ptr<int32_t>(out_idx), ptr<int32_t>(out_nsel));
      },
      "Spec 5 selection; pointers to contiguous buffers (see cpu_ops/_kernels.py).");

  m.def("kv_select", [](uintptr_t idx, uintptr_t nsel, uintptr_t bt, uintptr_t seq, int64_t B, int64_t K, int64_t M,
                        int64_t bs, int64_t pad_id, uintptr_t out_table, uintptr_t out_lens) {
    py::gil_scoped_release nogil;
    kv_select(ptr<const int32_t>(idx), ptr<const int32_t>(nsel), ptr<const int32_t>(bt), ptr<const int32_t>(seq), B,
              K, M, bs, pad_id, ptr<int32_t>(out_table), ptr<int32_t>(out_lens));
  });

  m.def("sign_bits_pack", [](uintptr_t src, int dtype, int64_t rows, int64_t n, uintptr_t dst, int64_t dst_stride) {
    if (dtype < 0 || dtype > 3 || n % 8) throw std::invalid_argument("gsa cpu sign_bits_pack: bad dtype or width");
    const int threads = g_threads.load();
    py::gil_scoped_release nogil;
    sign_bits_pack(ptr<const void>(src), static_cast<DType>(dtype), rows, n, ptr<uint8_t>(dst), dst_stride, threads);
  });

  m.def("threshold_pack", [](uintptr_t y, int64_t rows, int64_t n, uintptr_t thr, int64_t H, int64_t G, uintptr_t dst,
                             int64_t dst_stride) {
    if (n % 8 || H < 1 || G < 1 || H % G) throw std::invalid_argument("gsa cpu threshold_pack: bad width or heads");
    const int threads = g_threads.load();
    py::gil_scoped_release nogil;
    threshold_pack(ptr<const double>(y), rows, n, ptr<const float>(thr), H, G, ptr<uint8_t>(dst), dst_stride, threads);
  });

  m.def("scatter_codes", [](uintptr_t codes, int64_t T, int64_t H, int64_t C, uintptr_t cache, int64_t NB, int64_t bs,
                            uintptr_t slots, bool slots64) {
    py::gil_scoped_release nogil;
    return scatter_codes(ptr<const uint8_t>(codes), T, H, C, ptr<uint8_t>(cache), NB, bs, ptr<const void>(slots),
                         slots64);
  });

  register_mlp_hash(m);
}
