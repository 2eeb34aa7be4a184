/**
 * Tests of the intrinsic stand-ins (include/cce_*_models.h), each through the REAL AscendC
 * API call that issues it (so the API's own mask/repeat splitting and parameter checks run
 * too), on one vector core via ICPU_RUN_KF (GSA_RUN_KERNEL). Expected values are computed
 * here from what the AscendC documentation says each API call does, independently of the
 * models. Part 1: vector arithmetic, masks, scalar ops, negative cases; part 2 (DMA,
 * compare/select): test_intrinsics_dma_select.cpp.
 *
 *   test_intrinsics            run every case; exit 0 iff all pass
 *   test_intrinsics misaligned DataCopy of 250 int16 (500 bytes, not 32-byte aligned):
 *                              exit 0 iff the real API's check aborts the core
 *   test_intrinsics ub_overrun an intrinsic writing past the Unified Buffer: exit 0 iff the
 *                              model's bounds check aborts the core
 */
#include "test_intrinsics_common.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

using namespace AscendC;
using gsa_test::GmNew;
using gsa_test::Same;

namespace {
constexpr int32_t kN = 320;      // elements staged in UB per operand (a multiple of 32 bytes for 2/4-byte types)
constexpr int32_t kCount = 300;  // elements the level-2 calls process: a partial last iteration
}  // namespace

// ---------------------------------------------------------------------------------------------
// Binary and unary level-2 calls (counter mode): dst[i] = op(a[i], b[i]) for i < kCount; the
// elements past kCount keep what was there (a sentinel written with Duplicate first).
enum class Op { Add, Sub, Mul, Max, Min, And, Or, Not, Axpy };

template <typename T, Op OP>
__global__ __aicore__ void BinaryKernel(GM_ADDR a, GM_ADDR b, GM_ADDR out, T sentinel)
{
    TPipe pipe;
    TBuf<TPosition::VECCALC> buf;
    pipe.InitBuffer(buf, 3 * kN * sizeof(T));
    GlobalTensor<T> ga, gb, go;
    ga.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(a), kN);
    gb.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(b), kN);
    go.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(out), kN);
    LocalTensor<T> x = buf.Get<T>();
    LocalTensor<T> y = x[kN];
    LocalTensor<T> z = x[2 * kN];
    DataCopy(x, ga, kN);
    DataCopy(y, gb, kN);
    Duplicate(z, sentinel, kN);
    PipeBarrier<PIPE_ALL>();
    if constexpr (OP == Op::Add) Add(z, x, y, kCount);
    if constexpr (OP == Op::Sub) Sub(z, x, y, kCount);
    if constexpr (OP == Op::Mul) Mul(z, x, y, kCount);
    if constexpr (OP == Op::Max) Max(z, x, y, kCount);
    if constexpr (OP == Op::Min) Min(z, x, y, kCount);
    if constexpr (OP == Op::And) And(z, x, y, kCount);
    if constexpr (OP == Op::Or) Or(z, x, y, kCount);
    if constexpr (OP == Op::Not) Not(z, x, kCount);
    if constexpr (OP == Op::Axpy) {
        DataCopy(z, gb, kN);  // dst starts as b: z = a * 0.75 + b
        PipeBarrier<PIPE_ALL>();
        Axpy(z, x, static_cast<T>(0.75f), kCount);
    }
    PipeBarrier<PIPE_ALL>();
    DataCopy(go, z, kN);
}

template <typename T, Op OP>
T Expected(T a, T b)
{
    if constexpr (OP == Op::Add) return static_cast<T>(a + b);
    if constexpr (OP == Op::Sub) return static_cast<T>(a - b);
    if constexpr (OP == Op::Mul) return static_cast<T>(a * b);
    if constexpr (OP == Op::Max) return a > b ? a : b;
    if constexpr (OP == Op::Min) return a < b ? a : b;
    if constexpr (std::is_integral_v<T>) {
        if constexpr (OP == Op::And) return static_cast<T>(a & b);
        if constexpr (OP == Op::Or) return static_cast<T>(a | b);
        if constexpr (OP == Op::Not) return static_cast<T>(~a);
    }
    if constexpr (OP == Op::Axpy) {
        const T prod = a * static_cast<T>(0.75f);  // the multiply rounds to T, then the add
        return static_cast<T>(prod + b);
    }
    return T{};
}

template <typename T, Op OP>
void TestBinary(const char* name, std::mt19937& rng)
{
    T* a = GmNew<T>(kN);
    T* b = GmNew<T>(kN);
    T* out = GmNew<T>(kN);
    for (int32_t i = 0; i < kN; ++i) {
        if constexpr (std::is_floating_point_v<T>) {
            a[i] = std::uniform_real_distribution<float>(-100.f, 100.f)(rng);
            b[i] = std::uniform_real_distribution<float>(-100.f, 100.f)(rng);
        } else {
            a[i] = static_cast<T>(rng());
            b[i] = static_cast<T>(rng());
        }
    }
    const T sentinel = static_cast<T>(77);
    RUN_ON_ONE_CORE((BinaryKernel<T, OP>), reinterpret_cast<uint8_t*>(a), reinterpret_cast<uint8_t*>(b),
                reinterpret_cast<uint8_t*>(out), sentinel);
    int bad = 0;
    for (int32_t i = 0; i < kN; ++i) {
        const T past = OP == Op::Axpy ? b[i] : sentinel;  // Axpy's dst starts as b
        const T want = i < kCount ? Expected<T, OP>(a[i], b[i]) : past;
        if (!Same(out[i], want) && bad++ < 3) {
            std::printf("  %s[%d]: got %g want %g\n", name, i, double(out[i]), double(want));
        }
    }
    EXPECT(bad == 0, "%s: %d of %d elements differ", name, bad, kN);
    GmFree(a);
    GmFree(b);
    GmFree(out);
}

// ---------------------------------------------------------------------------------------------
// Level-0 call: Add with a bit mask, 2 iterations, and strides: dst block stride 2, src0
// repeat stride 16 blocks. Docs: element e of iteration r runs iff mask bit e is set, and
// lives at r*repStride*32 + (e/epb)*blkStride*32 + (e%epb)*size bytes of each operand.
__global__ __aicore__ void MaskedAddKernel(GM_ADDR a, GM_ADDR out, uint64_t maskLo)
{
    TPipe pipe;
    TBuf<TPosition::VECCALC> buf;
    constexpr int32_t n = 1024;  // floats per operand
    pipe.InitBuffer(buf, 2 * n * sizeof(float));
    GlobalTensor<float> ga, go;
    ga.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(a), n);
    go.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(out), n);
    LocalTensor<float> x = buf.Get<float>();
    LocalTensor<float> z = x[n];
    DataCopy(x, ga, n);
    Duplicate(z, -1.0f, n);
    PipeBarrier<PIPE_ALL>();
    uint64_t mask[2] = {maskLo, 0};
    // dst blk, src0 blk, src1 blk, dst rep, src0 rep, src1 rep (in 32-byte blocks)
    Add(z, x, x, mask, 2, {2, 1, 1, 16, 16, 8});
    PipeBarrier<PIPE_ALL>();
    DataCopy(go, z, n);
}

void TestMaskedAdd(std::mt19937& rng)
{
    constexpr int32_t n = 1024;
    float* a = GmNew<float>(n);
    float* out = GmNew<float>(n);
    for (int32_t i = 0; i < n; ++i) a[i] = std::uniform_real_distribution<float>(-8.f, 8.f)(rng);
    const uint64_t maskLo = 0xF0F0'0000'FFFF'0F0Full;
    RUN_ON_ONE_CORE(MaskedAddKernel, reinterpret_cast<uint8_t*>(a), reinterpret_cast<uint8_t*>(out), maskLo);
    std::vector<float> want(n, -1.0f);
    for (int r = 0; r < 2; ++r) {
        for (int e = 0; e < 64; ++e) {
            if (!((maskLo >> e) & 1)) continue;
            const int s0 = r * 16 * 8 + (e / 8) * 8 + e % 8;  // src0: blk 1, rep 16 (floats: 8 per block)
            const int s1 = r * 8 * 8 + (e / 8) * 8 + e % 8;   // src1: blk 1, rep 8
            const int d = r * 16 * 8 + (e / 8) * 2 * 8 + e % 8;  // dst: blk 2, rep 16
            want[d] = a[s0] + a[s1];
        }
    }
    int bad = 0;
    for (int32_t i = 0; i < n; ++i) bad += !Same(out[i], want[i]);
    EXPECT(bad == 0, "level-0 masked/strided Add: %d of %d elements differ", bad, n);
    GmFree(a);
    GmFree(out);
}
// ---------------------------------------------------------------------------------------------
// half: Add rounds the exact sum to half (round to nearest even), 128 elements per iteration.
__global__ __aicore__ void HalfAddKernel(GM_ADDR a, GM_ADDR b, GM_ADDR out)
{
    constexpr int32_t n = 256;
    TPipe pipe;
    TBuf<TPosition::VECCALC> buf;
    pipe.InitBuffer(buf, 3 * n * sizeof(half));
    GlobalTensor<half> ga, gb, go;
    ga.SetGlobalBuffer(reinterpret_cast<__gm__ half*>(a), n);
    gb.SetGlobalBuffer(reinterpret_cast<__gm__ half*>(b), n);
    go.SetGlobalBuffer(reinterpret_cast<__gm__ half*>(out), n);
    LocalTensor<half> x = buf.Get<half>();
    LocalTensor<half> y = x[n];
    LocalTensor<half> z = x[2 * n];
    DataCopy(x, ga, n);
    DataCopy(y, gb, n);
    PipeBarrier<PIPE_ALL>();
    Add(z, x, y, 200);  // one full iteration of 128, then 72
    Duplicate(z[224], static_cast<half>(3.0f), 32);
    PipeBarrier<PIPE_ALL>();
    DataCopy(go, z, n);
}

void TestHalfAdd(std::mt19937& rng)
{
    constexpr int n = 256;
    half* a = GmNew<half>(n);
    half* b = GmNew<half>(n);
    half* out = GmNew<half>(n);
    for (int i = 0; i < n; ++i) {
        a[i] = static_cast<half>(std::uniform_real_distribution<float>(-1000.f, 1000.f)(rng));
        b[i] = static_cast<half>(std::uniform_real_distribution<float>(-1.f, 1.f)(rng));
        out[i] = static_cast<half>(-7.0f);
    }
    RUN_ON_ONE_CORE(HalfAddKernel, reinterpret_cast<uint8_t*>(a), reinterpret_cast<uint8_t*>(b),
                    reinterpret_cast<uint8_t*>(out));
    int bad = 0;
    for (int i = 0; i < n; ++i) {
        // the float sum of two halves is exact (their exponents differ by < 24), so one rounding to half
        const half want = i < 200 ? static_cast<half>(static_cast<float>(a[i]) + static_cast<float>(b[i]))
                                  : (i >= 224 ? static_cast<half>(3.0f) : out[i]);
        if (i < 200 || i >= 224) bad += !Same(out[i], want);
    }
    EXPECT(bad == 0, "Add half / Duplicate half: %d of %d differ", bad, n);
    GmFree(a);
    GmFree(b);
    GmFree(out);
}

// ---------------------------------------------------------------------------------------------
// Reductions. WholeReduceSum: one sum per iteration of the first `mask` elements, written at
// dst[r * dstRepStride] (elements). ReduceSum level 2: the sum of `count` elements into dst[0].
// WholeReduceMax/Min: per iteration the extreme and its index in the iteration; value-index
// pairs take two dst slots per iteration, ONLY_VALUE one. Integer-valued floats: every order
// of the adds gives the same sum, so the check is exact.
__global__ __aicore__ void ReduceKernel(GM_ADDR src, GM_ADDR out)
{
    constexpr int32_t n = 320;
    TPipe pipe;
    TBuf<TPosition::VECCALC> buf;
    pipe.InitBuffer(buf, 2 * n * sizeof(float) + 64 * sizeof(float));
    GlobalTensor<float> gs, go;
    gs.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(src), n);
    go.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(out), 64);
    LocalTensor<float> x = buf.Get<float>();
    LocalTensor<float> work = x[n];
    LocalTensor<float> r = x[2 * n];
    DataCopy(x, gs, n);
    Duplicate(r, -1.0f, 64);
    PipeBarrier<PIPE_ALL>();
    WholeReduceSum(r, x, 50, 3, 1, 1, 8);                                      // r[0..2]
    ReduceSum(r[8], x, work, 300);                                              // r[8]
    WholeReduceMax(r[16], x, 64, 2, 1, 1, 8, ReduceOrder::ORDER_VALUE_INDEX);   // r[16..19]
    WholeReduceMin(r[24], x, 64, 2, 1, 1, 8, ReduceOrder::ORDER_ONLY_VALUE);    // r[24..25]
    WholeReduceMax(r[32], x, 64, 2, 1, 1, 8, ReduceOrder::ORDER_INDEX_VALUE);   // r[32..35]
    PipeBarrier<PIPE_ALL>();
    DataCopy(go, r, 64);
}

void TestReductions(std::mt19937& rng)
{
    constexpr int n = 320;
    float* src = GmNew<float>(n);
    float* out = GmNew<float>(64);
    std::vector<int> perm(n);
    for (int i = 0; i < n; ++i) perm[i] = i - 160;
    std::shuffle(perm.begin(), perm.end(), rng);  // distinct values: no ties for max/min
    for (int i = 0; i < n; ++i) src[i] = static_cast<float>(perm[i] * 3);
    RUN_ON_ONE_CORE(ReduceKernel, reinterpret_cast<uint8_t*>(src), reinterpret_cast<uint8_t*>(out));
    int bad = 0;
    for (int r = 0; r < 3; ++r) {
        float want = 0;
        for (int e = 0; e < 50; ++e) want += src[r * 64 + e];
        bad += !Same(out[r], want);
    }
    EXPECT(bad == 0 && out[3] == -1.0f, "WholeReduceSum (mask 50, 3 iterations): %d of 3 differ", bad);
    float total = 0;
    for (int i = 0; i < 300; ++i) total += src[i];
    EXPECT(Same(out[8], total), "ReduceSum level 2 (300 elements): got %g want %g", out[8], total);
    bad = 0;
    for (int r = 0; r < 2; ++r) {
        int iMax = 0, iMin = 0;
        for (int e = 1; e < 64; ++e) {
            if (src[r * 64 + e] > src[r * 64 + iMax]) iMax = e;
            if (src[r * 64 + e] < src[r * 64 + iMin]) iMin = e;
        }
        uint32_t idxVI = 0, idxIV = 0;
        std::memcpy(&idxVI, &out[16 + 2 * r + 1], 4);
        std::memcpy(&idxIV, &out[32 + 2 * r], 4);
        bad += !Same(out[16 + 2 * r], src[r * 64 + iMax]) + (idxVI != static_cast<uint32_t>(iMax));
        bad += !Same(out[33 + 2 * r], src[r * 64 + iMax]) + (idxIV != static_cast<uint32_t>(iMax));
        bad += !Same(out[24 + r], src[r * 64 + iMin]);
    }
    EXPECT(bad == 0 && out[26] == -1.0f, "WholeReduceMax/Min (value-index, index-value, value only): %d wrong", bad);
    GmFree(src);
    GmFree(out);
}

// Scalar-unit intrinsics (cce_sys_models.h), as the CCE docs define them.
void TestScalarIntrinsics()
{
    EXPECT(sff0(0x7) == 3 && sff0(~0ull) == -1 && sff0(0) == 0, "sff0");
    EXPECT(sff1(0x8) == 3 && sff1(0) == -1, "sff1");
    EXPECT(sbitset1(0, 5) == 32 && sbitset0(0xFF, 0) == 0xFE, "sbitset0/1");
    EXPECT(clz(1) == 63 && clz(0) == 64 && clz(~0ull) == 0, "clz");
    EXPECT(bcnt1(0xF0F0) == 8 && bcnt0(0xF0F0) == 56, "bcnt0/1");
    EXPECT(sflbits(-1) == 63 && sflbits(1) == 62, "sflbits");
}

// The model's own UB bounds check: an intrinsic issued directly on an address past the UB.
__global__ __aicore__ void UbOverrunKernel(GM_ADDR unused)
{
    TPipe pipe;
    TBuf<TPosition::VECCALC> buf;
    pipe.InitBuffer(buf, 256);
    LocalTensor<float> x = buf.Get<float>();
    float* past = reinterpret_cast<float*>(ConstDefiner::Instance().cpuUB) + 192 * 1024 / sizeof(float) - 32;
    (void)x;
    (void)unused;
    set_mask_norm();
    set_vector_mask(0, ~0ull);
    vector_dup(past, 1.0f, 1, 1, 1, 8, 0);  // 64 floats from 128 bytes before the UB end
}

// ---------------------------------------------------------------------------------------------
// The real API's parameter check: DataCopy (not DataCopyPad) needs a 32-byte multiple.
__global__ __aicore__ void MisalignedCopyKernel(GM_ADDR src)
{
    TPipe pipe;
    TBuf<TPosition::VECCALC> buf;
    pipe.InitBuffer(buf, 512);
    GlobalTensor<int16_t> gs;
    gs.SetGlobalBuffer(reinterpret_cast<__gm__ int16_t*>(src), 250);
    LocalTensor<int16_t> x = buf.Get<int16_t>();
    DataCopy(x, gs, 250);
}

int main(int argc, char** argv)
{
    AscendC::SetKernelMode(KernelMode::AIV_MODE);
    if (argc == 2 && std::string(argv[1]) == "ub_overrun") {
        uint8_t* unused = GmNew<uint8_t>(32);
        const int64_t lost = GSA_RUN_KERNEL(UbOverrunKernel, 1, unused);
        GmFree(unused);
        std::printf("UB overrun: %s\n", lost == 1 ? "the model's bounds check aborted the core (expected)"
                                                  : "the kernel returned (the bounds check did not fire)");
        return lost == 1 ? 0 : 1;
    }
    if (argc == 2 && std::string(argv[1]) == "misaligned") {
        int16_t* src = GmNew<int16_t>(256);
        const int64_t lost = GSA_RUN_KERNEL(MisalignedCopyKernel, 1, reinterpret_cast<uint8_t*>(src));
        std::printf("misaligned DataCopy: %s\n", lost == 1 ? "the API check aborted the core (expected)"
                                                            : "the kernel returned (the API check did not fire)");
        GmFree(src);
        return lost == 1 ? 0 : 1;
    }
    std::mt19937 rng(1234);
    TestBinary<float, Op::Add>("Add f32", rng);
    TestBinary<int16_t, Op::Add>("Add s16", rng);
    TestBinary<int32_t, Op::Add>("Add s32", rng);
    TestBinary<float, Op::Sub>("Sub f32", rng);
    TestBinary<int16_t, Op::Sub>("Sub s16", rng);
    TestBinary<float, Op::Mul>("Mul f32", rng);
    TestBinary<float, Op::Max>("Max f32", rng);
    TestBinary<int16_t, Op::Max>("Max s16", rng);
    TestBinary<int32_t, Op::Min>("Min s32", rng);
    TestBinary<float, Op::Min>("Min f32", rng);
    TestBinary<uint16_t, Op::And>("And u16", rng);
    TestBinary<int16_t, Op::Or>("Or s16", rng);
    TestBinary<int16_t, Op::Not>("Not s16", rng);
    TestBinary<float, Op::Axpy>("Axpy f32", rng);
    TestMaskedAdd(rng);
    gsa_test::TestCopyPad();
    gsa_test::TestCopyPadBytes();
    gsa_test::TestCompareSelectAll(rng);
    gsa_test::TestCastAndUnpack(rng);
    TestHalfAdd(rng);
    TestReductions(rng);
    TestScalarIntrinsics();
    std::printf("test_intrinsics: %d checks, %d failed\n", gsa_test::g_checks, gsa_test::g_failures);
    return gsa_test::g_failures == 0 ? 0 : 1;
}
