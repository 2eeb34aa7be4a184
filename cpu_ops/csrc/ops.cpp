// The gsa ops on raw host buffers: selection (spec 5), kv_select (spec 6),
// sign-bit packing (spec 1) and the hash-cache scatter (spec 3).
#include "ops.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <cstring>
#include <thread>
#include <vector>

namespace gsa_cpu {

namespace {

// A persistent pool of worker threads. A job is n chunks handed out through an
// atomic counter; the calling thread works on it too and returns as soon as
// every chunk is done. Workers that wake up late (a busy machine) find no chunk
// left and go back to sleep, so the caller never waits for a thread that has
// not started; it waits only for chunks another thread has claimed. The job
// lives in a shared_ptr, so a late worker never touches freed state. After a
// fork() the child has no workers, and the caller simply runs every chunk.
// The pool is never destroyed (workers die with the process).
class Pool {
 public:
  static Pool& get() {
    static Pool* pool = new Pool();
    return *pool;
  }

  void run(int64_t n_chunks, int threads, const std::function<void(int64_t)>& fn) {
    if (n_chunks <= 0) return;
    const int helpers = static_cast<int>(std::min<int64_t>(threads, n_chunks)) - 1;
    if (helpers <= 0) {
      for (int64_t c = 0; c < n_chunks; ++c) fn(c);
      return;
    }
    auto job = std::make_shared<Job>();
    job->fn = &fn;
    job->n = n_chunks;
    job->seats = helpers;
    {
      std::lock_guard<std::mutex> lock(mu_);
      while (static_cast<int>(workers_.size()) < helpers) workers_.emplace_back([this] { loop(); }).detach();
      job_ = job;
      ++gen_;
    }
    cv_.notify_all();
    work(*job);
    while (job->done.load(std::memory_order_acquire) < n_chunks) std::this_thread::yield();
    std::lock_guard<std::mutex> lock(mu_);
    if (job_ == job) job_.reset();
  }

 private:
  struct Job {
    const std::function<void(int64_t)>* fn = nullptr;  // valid while chunks remain (the caller waits)
    int64_t n = 0;
    std::atomic<int64_t> next{0}, done{0};
    std::atomic<int> seats{0};
  };

  static void work(Job& job) {
    for (int64_t c = job.next.fetch_add(1); c < job.n; c = job.next.fetch_add(1)) {
      (*job.fn)(c);
      job.done.fetch_add(1, std::memory_order_release);
    }
  }

  void loop() {
    uint64_t seen = 0;
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return gen_ != seen; });
        seen = gen_;
        job = job_;
      }
      if (job && job->seats.fetch_sub(1) > 0) work(*job);
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::shared_ptr<Job> job_;
  uint64_t gen_ = 0;
  std::vector<std::thread> workers_;
};

}  // namespace

void parallel_chunks(int64_t n_chunks, int threads, const std::function<void(int64_t)>& fn) {
  Pool::get().run(n_chunks, threads, fn);
}

void parallel_for(int64_t n, int threads, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int64_t t = std::max<int64_t>(1, std::min<int64_t>(threads, n));
  parallel_chunks(t, static_cast<int>(t), [&](int64_t c) { fn(n * c / t, n * (c + 1) / t); });
}

namespace {

// Logical blocks of a row: ceil(seq_len / bs), at most M (spec 5); 0 for a
// (rejected upstream) non-positive length so nothing is read.
int64_t row_blocks(int64_t seq_len, int64_t bs, int64_t m) {
  if (seq_len <= 0) return 0;
  return std::min<int64_t>((seq_len + bs - 1) / bs, m);
}

// Spec 5 for one row, given its block keys: forced blocks, then the best
// others by (key descending, index ascending); writes ascending indices.
void select_row(const double* keys, int64_t nb, int64_t budget, const std::vector<int64_t>& must, int64_t k,
                int32_t* out_idx, int32_t* out_nsel) {
  std::vector<char> chosen(static_cast<size_t>(nb), 0);
  int64_t n_forced = 0;
  for (int64_t m : must) {
    const int64_t t = m >= 0 ? m : nb + m;
    if (t >= 0 && t < nb && !chosen[t]) {
      chosen[t] = 1;
      ++n_forced;
    }
  }
  const int64_t n_sel = budget >= nb ? nb : std::max(budget, n_forced);
  if (n_sel >= nb) {
    std::fill(chosen.begin(), chosen.end(), 1);
  } else {
    std::vector<int32_t> cand;
    cand.reserve(static_cast<size_t>(nb - n_forced));
    for (int64_t j = 0; j < nb; ++j)
      if (!chosen[j]) cand.push_back(static_cast<int32_t>(j));
    const int64_t r = n_sel - n_forced;  // >= 0: n_sel >= n_forced
    // a strict total order, so the top-r set is unique: ties go to the smaller index
    auto better = [keys](int32_t a, int32_t b) { return keys[a] > keys[b] || (keys[a] == keys[b] && a < b); };
    if (r > 0 && r < static_cast<int64_t>(cand.size()))
      std::nth_element(cand.begin(), cand.begin() + r, cand.end(), better);
    for (int64_t i = 0; i < r && i < static_cast<int64_t>(cand.size()); ++i) chosen[cand[i]] = 1;
  }
  int64_t w = 0;
  for (int64_t j = 0; j < nb && w < k; ++j)
    if (chosen[j]) out_idx[w++] = static_cast<int32_t>(j);
  for (; w < k; ++w) out_idx[w] = -1;
  *out_nsel = static_cast<int32_t>(std::min(n_sel, k));  // spec 1.1: clamped to K, stays in bounds
}

}  // namespace

void hamming_dist_top_k(const ScoreProblem& p, const int32_t* seq_lens, const int32_t* budgets, int64_t k,
                        const std::vector<int64_t>& must, bool mean, Path path, int threads, int32_t* out_idx,
                        int32_t* out_nsel) {
  const int64_t B = p.B, M = p.M, bs = p.bs;
  std::vector<int64_t> nblk(static_cast<size_t>(B)), start(static_cast<size_t>(B + 1), 0);
  for (int64_t b = 0; b < B; ++b) {
    nblk[b] = row_blocks(seq_lens[b], bs, M);
    start[b + 1] = start[b] + nblk[b];
  }
  std::vector<double> keys(static_cast<size_t>(B * M));
  const ScoreFn score = score_fn(path);
  // Scoring: the concatenated (row, block) list is cut into chunks (about 8
  // per thread, at least ~2048 tokens each) that threads take from a shared
  // counter, so a thread that is descheduled on a busy machine delays only its
  // own chunk. A chunk is a few contiguous block ranges, one per row it touches.
  const int64_t total = start[B];
  const int64_t min_chunk = std::max<int64_t>(1, 2048 / std::max<int64_t>(1, bs));
  const int st = static_cast<int>(std::min<int64_t>(threads, std::max<int64_t>(1, total / min_chunk)));
  const int64_t n_chunks = st == 1 ? 1 : std::max<int64_t>(st, std::min<int64_t>(8 * st, total / min_chunk));
  parallel_chunks(n_chunks, st, [&](int64_t c) {
    const int64_t g0 = total * c / n_chunks, g1 = total * (c + 1) / n_chunks;
    int64_t b = std::upper_bound(start.begin(), start.end(), g0) - start.begin() - 1;
    for (int64_t g = g0; g < g1 && b < B; ++b) {
      const int64_t j0 = g - start[b], j1 = std::min(g1, start[b + 1]) - start[b];
      if (j1 > j0) score(p, BlockRange{b, j0, j1, seq_lens[b]}, mean, keys.data() + b * M);
      g = start[b + 1];
    }
  });
  parallel_for(B, B >= 64 ? threads : 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      select_row(keys.data() + b * M, nblk[b], budgets[b], must, k, out_idx + b * k, out_nsel + b);
  });
}

void kv_select(const int32_t* indices, const int32_t* n_sel, const int32_t* block_table, const int32_t* seq_lens,
               int64_t B, int64_t K, int64_t M, int64_t bs, int64_t pad_id, int32_t* out_table, int32_t* out_lens) {
  for (int64_t b = 0; b < B; ++b) {
    const int64_t live = std::min<int64_t>(std::max<int64_t>(n_sel[b], 0), K);
    const int64_t seq = seq_lens[b];
    int64_t total = 0;
    for (int64_t i = 0; i < K; ++i) {
      if (i < live) {
        const int64_t j = std::min<int64_t>(std::max<int64_t>(indices[b * K + i], 0), M - 1);  // stay in bounds
        out_table[b * K + i] = block_table[b * M + j];
        total += std::min<int64_t>(std::max<int64_t>(seq - j * bs, 0), bs);  // last block may be partial
      } else {
        out_table[b * K + i] = static_cast<int32_t>(pad_id);
      }
    }
    out_lens[b] = static_cast<int32_t>(total);
  }
}

namespace {
// x > 0 on the raw bits: sign clear, not +0, not NaN, i.e. 0 < bits <= +inf.
template <class Bits, Bits kInf>
void pack_rows(const void* src, int64_t rows, int64_t n, uint8_t* dst, int64_t dst_stride, int threads) {
  const Bits* x = static_cast<const Bits*>(src);
  parallel_for(rows, rows * n >= (1 << 16) ? threads : 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const Bits* xr = x + r * n;
      uint8_t* out = dst + r * dst_stride;
      for (int64_t j = 0; j < n / 8; ++j) {
        unsigned byte = 0;
        for (int i = 0; i < 8; ++i) {
          const Bits v = xr[8 * j + i];
          byte |= static_cast<unsigned>(v != 0 && v <= kInf) << i;
        }
        out[j] = static_cast<uint8_t>(byte);
      }
    }
  });
}
}  // namespace

void sign_bits_pack(const void* src, DType dt, int64_t rows, int64_t n, uint8_t* dst, int64_t dst_stride,
                    int threads) {
  switch (dt) {
    case DType::F64: pack_rows<uint64_t, 0x7FF0000000000000ull>(src, rows, n, dst, dst_stride, threads); break;
    case DType::F32: pack_rows<uint32_t, 0x7F800000u>(src, rows, n, dst, dst_stride, threads); break;
    case DType::F16: pack_rows<uint16_t, 0x7C00u>(src, rows, n, dst, dst_stride, threads); break;
    case DType::BF16: pack_rows<uint16_t, 0x7F80u>(src, rows, n, dst, dst_stride, threads); break;
  }
}

void threshold_pack(const double* y, int64_t rows, int64_t n, const float* thr, int64_t H, int64_t G, uint8_t* dst,
                    int64_t dst_stride, int threads) {
  // y > t, not y - t > 0: equal for every pair of doubles (gradual underflow: y - t == 0
  // only when y == t; NaN and inf - inf compare false either way), one pass fewer
  parallel_for(rows, rows * n >= (1 << 16) ? threads : 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const double* yr = y + r * n;
      const float* tr = thr + ((r % H) / G) * n;
      uint8_t* out = dst + r * dst_stride;
      for (int64_t j = 0; j < n / 8; ++j) {
        unsigned byte = 0;
        for (int i = 0; i < 8; ++i) byte |= static_cast<unsigned>(yr[8 * j + i] > static_cast<double>(tr[8 * j + i])) << i;
        out[j] = static_cast<uint8_t>(byte);
      }
    }
  });
}

int64_t scatter_codes(const uint8_t* codes, int64_t T, int64_t H, int64_t C, uint8_t* cache, int64_t NB, int64_t bs,
                      const void* slots, bool slots64) {
  int64_t written = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t slot = slots64 ? static_cast<const int64_t*>(slots)[t]
                                 : static_cast<int64_t>(static_cast<const int32_t*>(slots)[t]);
    if (slot < 0 || slot >= NB * bs) continue;  // padding; past the cache: never written
    const int64_t blk = slot / bs, off = slot % bs;
    for (int64_t h = 0; h < H; ++h)
      std::memcpy(cache + ((blk * H + h) * bs + off) * C, codes + (t * H + h) * C, static_cast<size_t>(C));
    ++written;
  }
  return written;
}

}  // namespace gsa_cpu
