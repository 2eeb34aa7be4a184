/**
 * Shared helpers of the intrinsic tests (test_intrinsics.cpp, test_intrinsics_dma_select.cpp):
 * check counting, GM allocation, bitwise equality, one-core launches.
 */
#ifndef GSA_CPU_TEST_INTRINSICS_COMMON_H
#define GSA_CPU_TEST_INTRINSICS_COMMON_H

#include "kernel_operator.h"
#include "tikicpulib.h"
#include "run_kernel.h"

#include <cstdio>
#include <cstring>
#include <random>

namespace gsa_test {
inline int g_failures = 0;
inline int g_checks = 0;

template <typename T>
T* GmNew(size_t n)
{
    return static_cast<T*>(AscendC::GmAlloc(n * sizeof(T)));
}

template <typename T>
bool Same(T a, T b)
{
    return std::memcmp(&a, &b, sizeof(T)) == 0;
}

// test_intrinsics_dma_select.cpp
void TestCopyPad();
void TestCopyPadBytes();
void TestCompareSelectAll(std::mt19937& rng);
void TestCastAndUnpack(std::mt19937& rng);
}  // namespace gsa_test

#define EXPECT(cond, ...)                                                      \
    do {                                                                       \
        ++gsa_test::g_checks;                                                  \
        if (!(cond)) {                                                         \
            ++gsa_test::g_failures;                                            \
            std::printf("FAIL %s:%d: ", __FILE__, __LINE__);                   \
            std::printf(__VA_ARGS__);                                          \
            std::printf("\n");                                                 \
        }                                                                      \
    } while (0)

/** One launch on one vector core; a core that did not finish is a failure. */
#define RUN_ON_ONE_CORE(kernel, ...) \
    EXPECT(GSA_RUN_KERNEL(kernel, 1, __VA_ARGS__) == 0, "%s: the core did not finish", #kernel)

#endif  // GSA_CPU_TEST_INTRINSICS_COMMON_H
