/**
 * Intrinsic tests, part 2 (see test_intrinsics.cpp): DMA (DataCopyPad with gaps and padding),
 * compare/select, Cast half <-> int8, and the +-1 unpacking step of the cube design
 * (../fast_scoring.md), through the real API calls, against the documented behaviour.
 */
#include "test_intrinsics_common.h"

#include <cmath>

using namespace AscendC;
using gsa_test::GmNew;
using gsa_test::Same;

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

void gsa_test::TestCopyPad()
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

void gsa_test::TestCopyPadBytes()
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

// ---------------------------------------------------------------------------------------------
// Compare (level 2, float, all six modes) into a bit mask, then Select mode 2 (bit tensor) and mode 0
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

namespace gsa_test {
void TestCompareSelectAll(std::mt19937& rng)
{
    TestCompareSelect<CMPMODE::LT>("LT", rng);
    TestCompareSelect<CMPMODE::GT>("GT", rng);
    TestCompareSelect<CMPMODE::EQ>("EQ", rng);
    TestCompareSelect<CMPMODE::LE>("LE", rng);
    TestCompareSelect<CMPMODE::GE>("GE", rng);
    TestCompareSelect<CMPMODE::NE>("NE", rng);
}
}  // namespace gsa_test

// ---------------------------------------------------------------------------------------------
// Cast half -> int8 in every rounding mode, and back (exact). Docs: CAST_NONE rounds to nearest
// (ties to even) when the value is not exact; RINT ties to even, ROUND ties away from zero.
template <RoundMode MODE>
__global__ __aicore__ void CastKernel(GM_ADDR src, GM_ADDR out8, GM_ADDR back)
{
    constexpr int32_t n = 128;
    TPipe pipe;
    TBuf<TPosition::VECCALC> buf;
    pipe.InitBuffer(buf, 2 * n * sizeof(half) + n);
    GlobalTensor<half> gs, gb;
    GlobalTensor<int8_t> go;
    gs.SetGlobalBuffer(reinterpret_cast<__gm__ half*>(src), n);
    gb.SetGlobalBuffer(reinterpret_cast<__gm__ half*>(back), n);
    go.SetGlobalBuffer(reinterpret_cast<__gm__ int8_t*>(out8), n);
    LocalTensor<half> x = buf.Get<half>();
    LocalTensor<half> y = x[n];
    LocalTensor<int8_t> q = buf.Get<int8_t>()[2 * n * sizeof(half)];
    DataCopy(x, gs, n);
    PipeBarrier<PIPE_ALL>();
    Cast(q, x, MODE, n);
    PipeBarrier<PIPE_ALL>();
    Cast(y, q, RoundMode::CAST_NONE, n);
    PipeBarrier<PIPE_ALL>();
    DataCopy(go, q, n);
    DataCopy(gb, y, n);
}

template <RoundMode MODE>
void TestCast(const char* name, int8_t (*expect)(float))
{
    constexpr int n = 128;
    const float edge[] = {2.5f, -2.5f, 1.5f, -1.5f, 0.5f, -0.5f, 3.75f, -3.75f, 127.0f, -128.0f, 0.0f, 1.0f, -1.0f};
    half* src = GmNew<half>(n);
    int8_t* out8 = GmNew<int8_t>(n);
    half* back = GmNew<half>(n);
    for (int i = 0; i < n; ++i) {
        src[i] = static_cast<half>(i < 13 ? edge[i] : static_cast<float>((i * 37) % 241 - 120) / 4.0f);
    }
    RUN_ON_ONE_CORE(CastKernel<MODE>, reinterpret_cast<uint8_t*>(src), reinterpret_cast<uint8_t*>(out8),
                    reinterpret_cast<uint8_t*>(back));
    int bad = 0;
    for (int i = 0; i < n; ++i) {
        const int8_t want = expect(static_cast<float>(src[i]));
        bad += out8[i] != want;
        bad += static_cast<float>(back[i]) != static_cast<float>(want);
    }
    EXPECT(bad == 0, "Cast half -> int8 (%s) and back: %d mismatches", name, bad);
    GmFree(src);
    GmFree(out8);
    GmFree(back);
}

// The cube design's first step: packed codes -> +-1 int8, bit i of byte j -> dimension 8j+i.
__global__ __aicore__ void UnpackKernel(GM_ADDR codes, GM_ADDR out)
{
    constexpr int32_t bits = 512;
    TPipe pipe;
    TBuf<TPosition::VECCALC> buf;
    pipe.InitBuffer(buf, 3 * bits * sizeof(half) + bits + bits / 8 + 32);
    GlobalTensor<uint8_t> gc;
    GlobalTensor<int8_t> go;
    gc.SetGlobalBuffer(reinterpret_cast<__gm__ uint8_t*>(codes), bits / 8);
    go.SetGlobalBuffer(reinterpret_cast<__gm__ int8_t*>(out), bits);
    LocalTensor<half> plus = buf.Get<half>();
    LocalTensor<half> minus = plus[bits];
    LocalTensor<half> pm = plus[2 * bits];
    LocalTensor<int8_t> pm8 = buf.Get<int8_t>()[3 * bits * sizeof(half)];
    LocalTensor<uint8_t> c = buf.Get<uint8_t>()[3 * bits * sizeof(half) + bits];
    DataCopy(c, gc, bits / 8);
    Duplicate(plus, static_cast<half>(1.0f), bits);
    Duplicate(minus, static_cast<half>(-1.0f), bits);
    PipeBarrier<PIPE_ALL>();
    Select(pm, c, plus, minus, SELMODE::VSEL_TENSOR_TENSOR_MODE, bits);
    PipeBarrier<PIPE_ALL>();
    Cast(pm8, pm, RoundMode::CAST_NONE, bits);
    PipeBarrier<PIPE_ALL>();
    DataCopy(go, pm8, bits);
}

namespace gsa_test {
void TestCastAndUnpack(std::mt19937& rng)
{
    TestCast<RoundMode::CAST_NONE>("NONE", [](float x) { return static_cast<int8_t>(std::nearbyint(x)); });
    TestCast<RoundMode::CAST_RINT>("RINT", [](float x) { return static_cast<int8_t>(std::nearbyint(x)); });
    TestCast<RoundMode::CAST_FLOOR>("FLOOR", [](float x) { return static_cast<int8_t>(std::floor(x)); });
    TestCast<RoundMode::CAST_CEIL>("CEIL", [](float x) { return static_cast<int8_t>(std::ceil(x)); });
    TestCast<RoundMode::CAST_ROUND>("ROUND", [](float x) { return static_cast<int8_t>(std::round(x)); });
    TestCast<RoundMode::CAST_TRUNC>("TRUNC", [](float x) { return static_cast<int8_t>(std::trunc(x)); });

    uint8_t* codes = GmNew<uint8_t>(64);
    int8_t* out = GmNew<int8_t>(512);
    for (int j = 0; j < 64; ++j) codes[j] = static_cast<uint8_t>(rng());
    RUN_ON_ONE_CORE(UnpackKernel, codes, reinterpret_cast<uint8_t*>(out));
    int bad = 0;
    for (int d = 0; d < 512; ++d) bad += out[d] != (((codes[d / 8] >> (d % 8)) & 1) ? 1 : -1);
    EXPECT(bad == 0, "unpack codes to +-1 int8 (Duplicate, Select mode 2, Cast): %d of 512 differ", bad);
    GmFree(codes);
    GmFree(out);
}
}  // namespace gsa_test
