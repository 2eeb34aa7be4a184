/**
 * GSA_RUN_KERNEL: ICPU_RUN_KF plus a count of the cores that finished.
 *
 * ICPU_RUN_KF (asc-tools cpudebug) forks one process per core and prints "[SUCCESS]" for
 * each core that exits 0, but does not tell its caller when a core crashed or an API check
 * aborted it. Each core here counts itself, in memory shared across the fork, after its
 * kernel body returns; GSA_RUN_KERNEL evaluates to the number of cores that did not finish.
 * Include after kernel_operator.h and tikicpulib.h.
 */
#ifndef GSA_CPU_RUN_KERNEL_H
#define GSA_CPU_RUN_KERNEL_H

#include <sys/mman.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>

namespace gsa_cpu {

inline std::atomic<int64_t>* CoresDone()
{
    static std::atomic<int64_t>* done = [] {
        void* p = mmap(nullptr, sizeof(std::atomic<int64_t>), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                       -1, 0);
        if (p == MAP_FAILED) {
            std::abort();
        }
        return new (p) std::atomic<int64_t>(0);
    }();
    return done;
}

template <auto Kernel> struct Counted;
template <typename... A, void (*Kernel)(A...)> struct Counted<Kernel> {
    static void Run(A... a)
    {
        Kernel(a...);
        CoresDone()->fetch_add(1);
    }
};

}  // namespace gsa_cpu

/** Runs `kernel` on `blockDim` vector cores; the value is the number of cores that did not finish. */
#define GSA_RUN_KERNEL(kernel, blockDim, ...)                                   \
    ([&]() -> int64_t {                                                         \
        gsa_cpu::CoresDone()->store(0);                                         \
        const uint32_t dim_ = (blockDim);                                       \
        ICPU_RUN_KF(gsa_cpu::Counted<kernel>::Run, dim_, __VA_ARGS__);          \
        return static_cast<int64_t>(dim_) - gsa_cpu::CoresDone()->load();       \
    }())

#endif  // GSA_CPU_RUN_KERNEL_H
