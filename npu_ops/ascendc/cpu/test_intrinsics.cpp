/**
 * Tests of the intrinsic stand-ins (include/cce_vec_models.h), each through the REAL
 * AscendC API call that issues it (so the API's own mask/repeat splitting and parameter
 * checks run too), on one vector core via ICPU_RUN_KF (GSA_RUN_KERNEL). Expected values are computed here
 * from what the AscendC documentation says each API call does, independently of the models.
 *
 *   test_intrinsics            run every case; exit 0 iff all pass
 *   test_intrinsics misaligned DataCopy of 250 int16 (500 bytes, not 32-byte aligned):
 *                              exit 0 iff the real API's check aborts the core
 *   test_intrinsics ub_overrun an intrinsic writing past the Unified Buffer: exit 0 iff the
 *                              model's bounds check aborts the core
 */
#include "kernel_operator.h"
#include "tikicpulib.h"
#include "run_kernel.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

using namespace AscendC;

namespace {
int g_failures = 0;
int g_checks = 0;

#define EXPECT(cond, ...)                                                      \
    do {                                                                       \
        ++g_checks;                                                            \
        if (!(cond)) {                                                         \
            ++g_failures;                                                      \
            std::printf("FAIL %s:%d: ", __FILE__, __LINE__);                   \
            std::printf(__VA_ARGS__);                                          \
            std::printf("\n");                                                 \
        }                                                                      \
    } while (0)

/** One launch on one vector core; a core that did not finish is a failure. */
#define RUN_ON_ONE_CORE(kernel, ...) EXPECT(GSA_RUN_KERNEL(kernel, 1, __VA_ARGS__) == 0, "%s: the core did not finish", #kernel)

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
// DataCopyPad: GM -> UB with 2 blocks of 3 floats, a 4-byte GM gap between them, right
// padding of 2 elements with value 7; then UB -> GM of the 2 blocks of 5 floats with a
// 12-byte GM gap. Docs: each UB block starts 32-byte aligned; GM blocks are blockLen + gap apart.
__global__ __aicore__ void CopyPadKernel(GM_ADDR src, GM_ADDR dst)
{
    TPipe pipe;
    TBuf<TPosition::VECCALC> buf;
    pipe.InitBuffer(buf, 64);
    GlobalTensor<float> gs, gd;
    gs.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(src), 8);
    gd.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(dst), 16);
    LocalTensor<float> x = buf.Get<float>();
    DataCopyExtParams in{2, 3 * sizeof(float), 4, 0, 0};
    DataCopyPadExtParams<float> pad{true, 0, 2, 7.0f};
    DataCopyPad(x, gs, in, pad);
    PipeBarrier<PIPE_ALL>();
    DataCopyExtParams out{2, 5 * sizeof(float), 0, 12, 0};
    DataCopyPad(gd, x, out);
}

// A 500-byte (250 x int16) round trip: exactly those bytes are written, the rest of GM keeps its value.
__global__ __aicore__ void CopyPadOddKernel(GM_ADDR src, GM_ADDR dst)
{
    TPipe pipe;
    TBuf<TPosition::VECCALC> buf;
    pipe.InitBuffer(buf, 512);
    GlobalTensor<int16_t> gs, gd;
    gs.SetGlobalBuffer(reinterpret_cast<__gm__ int16_t*>(src), 250);
    gd.SetGlobalBuffer(reinterpret_cast<__gm__ int16_t*>(dst), 256);
    LocalTensor<int16_t> x = buf.Get<int16_t>();
    DataCopyPad(x, gs, {1, 500, 0, 0, 0}, {false, 0, 0, 0});
    PipeBarrier<PIPE_ALL>();
    DataCopyPad(gd, x, {1, 500, 0, 0, 0});
}

void TestCopyPad()
{
    float* src = GmNew<float>(8);
    float* dst = GmNew<float>(16);
    for (int i = 0; i < 8; ++i) src[i] = 1.0f + i;
    for (int i = 0; i < 16; ++i) dst[i] = -5.0f;
    RUN_ON_ONE_CORE(CopyPadKernel, reinterpret_cast<uint8_t*>(src), reinterpret_cast<uint8_t*>(dst));
    // GM block 0 = src[0..2], block 1 starts 3 floats + 4 bytes later = src[4..6]
    const float want[16] = {1, 2, 3, 7, 7, -5, -5, -5, 5, 6, 7, 7, 7, -5, -5, -5};
    int bad = 0;
    for (int i = 0; i < 16; ++i) bad += !Same(dst[i], want[i]);
    EXPECT(bad == 0, "DataCopyPad with gaps and right padding: %d of 16 floats differ", bad);

    int16_t* s16 = GmNew<int16_t>(250);
    int16_t* d16 = GmNew<int16_t>(256);
    for (int i = 0; i < 250; ++i) s16[i] = static_cast<int16_t>(i * 37 - 4000);
    for (int i = 0; i < 256; ++i) d16[i] = 12345;
    RUN_ON_ONE_CORE(CopyPadOddKernel, reinterpret_cast<uint8_t*>(s16), reinterpret_cast<uint8_t*>(d16));
    bad = 0;
    for (int i = 0; i < 256; ++i) bad += d16[i] != (i < 250 ? s16[i] : 12345);
    EXPECT(bad == 0, "DataCopyPad of 500 bytes: %d of 256 int16 differ", bad);
    GmFree(src);
    GmFree(dst);
    GmFree(s16);
    GmFree(d16);
}

// ---------------------------------------------------------------------------------------------
// Compare (level 2, float, LT) into a bit mask, then Select mode 2 (bit tensor) and mode 0
// (compare-mask register: every iteration reads its first 64 (b32) / 128 (b16) bits).
template <CMPMODE MODE>
__global__ __aicore__ void CompareSelectKernel(GM_ADDR a, GM_ADDR b, GM_ADDR bits, GM_ADDR sel2, GM_ADDR sel0)
{
    constexpr int32_t n = 256;  // 4 iterations of 64 floats
    TPipe pipe;
    TBuf<TPosition::VECCALC> buf;
    pipe.InitBuffer(buf, 4 * n * sizeof(float) + 64);
    GlobalTensor<float> ga, gb, g2, g0;
    GlobalTensor<uint8_t> gbits;
    ga.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(a), n);
    gb.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(b), n);
    g2.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(sel2), n);
    g0.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(sel0), n);
    gbits.SetGlobalBuffer(reinterpret_cast<__gm__ uint8_t*>(bits), n / 8);
    LocalTensor<float> x = buf.Get<float>();
    LocalTensor<float> y = x[n];
    LocalTensor<float> z2 = x[2 * n];
    LocalTensor<float> z0 = x[3 * n];
    LocalTensor<uint8_t> m = buf.Get<uint8_t>()[4 * n * sizeof(float)];
    DataCopy(x, ga, n);
    DataCopy(y, gb, n);
    PipeBarrier<PIPE_ALL>();
    Compare(m, x, y, MODE, n);
    PipeBarrier<PIPE_ALL>();
    Select(z2, m, x, y, SELMODE::VSEL_TENSOR_TENSOR_MODE, n);
    Select(z0, m, x, y, SELMODE::VSEL_CMPMASK_SPR, n);
    PipeBarrier<PIPE_ALL>();
    DataCopyPad(gbits, m, {1, n / 8, 0, 0, 0});
    DataCopy(g2, z2, n);
    DataCopy(g0, z0, n);
}

template <CMPMODE MODE>
bool CmpExpected(float a, float b)
{
    if constexpr (MODE == CMPMODE::LT) return a < b;
    if constexpr (MODE == CMPMODE::GT) return a > b;
    if constexpr (MODE == CMPMODE::EQ) return a == b;
    if constexpr (MODE == CMPMODE::LE) return a <= b;
    if constexpr (MODE == CMPMODE::GE) return a >= b;
    return a != b;  // NE
}

template <CMPMODE MODE>
void TestCompareSelect(const char* name, std::mt19937& rng)
{
    constexpr int n = 256;
    float* a = GmNew<float>(n);
    float* b = GmNew<float>(n);
    uint8_t* bits = GmNew<uint8_t>(n / 8);
    float* s2 = GmNew<float>(n);
    float* s0 = GmNew<float>(n);
    for (int i = 0; i < n; ++i) {
        a[i] = static_cast<float>(static_cast<int>(rng() % 9) - 4);
        b[i] = static_cast<float>(static_cast<int>(rng() % 9) - 4);  // many ties: LT must be strict
    }
    RUN_ON_ONE_CORE(CompareSelectKernel<MODE>, reinterpret_cast<uint8_t*>(a), reinterpret_cast<uint8_t*>(b), bits,
                reinterpret_cast<uint8_t*>(s2), reinterpret_cast<uint8_t*>(s0));
    int badBits = 0, bad2 = 0, bad0 = 0;
    for (int i = 0; i < n; ++i) {
        const bool lt = CmpExpected<MODE>(a[i], b[i]);
        badBits += (((bits[i / 8] >> (i % 8)) & 1) != 0) != lt;
        bad2 += !Same(s2[i], lt ? a[i] : b[i]);
        // mode 0: every iteration selects by the register's first 64 bits (b32; 128 for b16),
        // i.e. by the first 64 compare results
        const int j = i % 64;
        bad0 += !Same(s0[i], CmpExpected<MODE>(a[j], b[j]) ? a[i] : b[i]);
    }
    EXPECT(badBits == 0, "Compare %s bit mask: %d of %d bits differ", name, badBits, n);
    EXPECT(bad2 == 0, "Select mode 2 (bit tensor) after %s: %d of %d differ", name, bad2, n);
    EXPECT(bad0 == 0, "Select mode 0 (compare-mask register) after %s: %d of %d differ", name, bad0, n);
    GmFree(a);
    GmFree(b);
    GmFree(bits);
    GmFree(s2);
    GmFree(s0);
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

// DataCopyPad of bytes with left padding: UB gets [pad x2][37 bytes][...], pad value 0xEE.
__global__ __aicore__ void CopyPadBytesKernel(GM_ADDR src, GM_ADDR dst)
{
    TPipe pipe;
    TBuf<TPosition::VECCALC> buf;
    pipe.InitBuffer(buf, 64);
    GlobalTensor<uint8_t> gs, gd;
    gs.SetGlobalBuffer(reinterpret_cast<__gm__ uint8_t*>(src), 37);
    gd.SetGlobalBuffer(reinterpret_cast<__gm__ uint8_t*>(dst), 39);
    LocalTensor<uint8_t> x = buf.Get<uint8_t>();
    DataCopyPad(x, gs, {1, 37, 0, 0, 0}, {true, 2, 0, static_cast<uint8_t>(0xEE)});
    PipeBarrier<PIPE_ALL>();
    DataCopyPad(gd, x, {1, 39, 0, 0, 0});
}

void TestCopyPadBytes()
{
    uint8_t* src = GmNew<uint8_t>(37);
    uint8_t* dst = GmNew<uint8_t>(39);
    for (int i = 0; i < 37; ++i) src[i] = static_cast<uint8_t>(i * 7 + 1);
    RUN_ON_ONE_CORE(CopyPadBytesKernel, src, dst);
    int bad = (dst[0] != 0xEE) + (dst[1] != 0xEE);
    for (int i = 0; i < 37; ++i) bad += dst[2 + i] != src[i];
    EXPECT(bad == 0, "DataCopyPad uint8 with left padding: %d of 39 bytes differ", bad);
    GmFree(src);
    GmFree(dst);
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
    TestCopyPad();
    TestCompareSelect<CMPMODE::LT>("LT", rng);
    TestCompareSelect<CMPMODE::GT>("GT", rng);
    TestCompareSelect<CMPMODE::EQ>("EQ", rng);
    TestCompareSelect<CMPMODE::LE>("LE", rng);
    TestCompareSelect<CMPMODE::GE>("GE", rng);
    TestCompareSelect<CMPMODE::NE>("NE", rng);
    TestHalfAdd(rng);
    TestCopyPadBytes();
    TestScalarIntrinsics();
    std::printf("test_intrinsics: %d checks, %d failed\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
