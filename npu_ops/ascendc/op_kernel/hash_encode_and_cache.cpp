/**
 * hash_encode_and_cache (spec 2, 3, 9): project keys and write sign-bit codes into
 * the paged BNSD hash cache uint8 [NB, H, bs, C_total], in place.
 *
 * Inputs (prepared by the torch binding, op_host/gsa_torch_npu.cpp):
 *   x      float32 [T, H, D]   keys (the binding widens fp16/bf16 exactly)
 *   w      float32 [H, D, R]   per-head projection (a shared [D, R] is expanded)
 *   slots  int64   [T]         slot = block * bs + offset; < 0 or >= NB*bs: not written
 *   thr    float32 [H, R]      spec 13 (centred codes), read only when hasThr != 0:
 *                              bit r = y[r] > thr[head, r] (y > t is y - t > 0 without the
 *                              subtraction's rounding; the binding expands a shared [R])
 * Work item = (token, head), strided over the vector cores. The projection is
 * fp32 Axpy on the vector unit (y += x[d] * W[d, :]), never the cube: no HF32,
 * so codes differ from the float64 reference only inside the spec-2 band. The
 * sign packing (bit i of byte j <- y[8j+i] > 0; 0, -0, NaN -> 0) is done on the
 * scalar unit so its bit order is the spec's by construction.
 */
#include "gsa_kernel_common.h"

using namespace AscendC;

class HashEncodeAndCache {
public:
    __aicore__ inline void Init(GM_ADDR x, GM_ADDR w, GM_ADDR cache, GM_ADDR slots, GM_ADDR thr, int64_t t, int64_t h,
                                int64_t d, int64_t r, int64_t nb, int64_t bs, int64_t cTotal, int64_t colOff,
                                int64_t dTile, int64_t hasThr)
    {
        t_ = t; h_ = h; d_ = d; r_ = r; nSlots_ = nb * bs; bs_ = bs; cTotal_ = cTotal; colOff_ = colOff; dTile_ = dTile;
        hasThr_ = hasThr != 0;
        xG_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(x), t * h * d);
        wG_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(w), h * d * r);
        cacheG_.SetGlobalBuffer(reinterpret_cast<__gm__ uint8_t*>(cache), nb * h * bs * cTotal);
        slotG_.SetGlobalBuffer(reinterpret_cast<__gm__ int64_t*>(slots), t);
        pipe_.InitBuffer(xBuf_, Align32(d * sizeof(float)));
        pipe_.InitBuffer(wBuf_, Align32(dTile * r * sizeof(float)));
        pipe_.InitBuffer(yBuf_, Align32(r * sizeof(float)));
        pipe_.InitBuffer(codeBuf_, Align32(r / 8));
        if (hasThr_) {
            thrG_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(thr), h * r);
            pipe_.InitBuffer(thrBuf_, Align32(r * sizeof(float)));
        }
    }

    __aicore__ inline void Process()
    {
        const int64_t items = t_ * h_;
        for (int64_t item = GetBlockIdx(); item < items; item += GetBlockNum()) {
            const int64_t tok = item / h_;
            const int64_t head = item % h_;
            const int64_t slot = slotG_.GetValue(tok);
            if (slot < 0 || slot >= nSlots_) {
                continue;  // padding (or a slot past the cache): nothing is written
            }
            Project(tok, head);
            if (hasThr_) {
                gsa::CopyIn(thrBuf_.Get<float>(), thrG_[head * r_], static_cast<uint32_t>(r_));
                gsa::FullSync();
            }
            Pack();
            const int64_t dst = (((slot / bs_) * h_ + head) * bs_ + slot % bs_) * cTotal_ + colOff_;
            gsa::CopyOut(cacheG_[dst], codeBuf_.Get<uint8_t>(), static_cast<uint32_t>(r_ / 8));
            gsa::FullSync();  // the code buffer is rewritten by the next item
        }
    }

private:
    __aicore__ inline static uint32_t Align32(int64_t bytes)
    {
        return static_cast<uint32_t>((bytes + 31) / 32 * 32);
    }

    __aicore__ inline void Project(int64_t tok, int64_t head)
    {
        LocalTensor<float> x = xBuf_.Get<float>();
        LocalTensor<float> wt = wBuf_.Get<float>();
        LocalTensor<float> y = yBuf_.Get<float>();
        Duplicate(y, 0.0f, static_cast<int32_t>(r_));
        gsa::CopyIn(x, xG_[(tok * h_ + head) * d_], static_cast<uint32_t>(d_));
        gsa::FullSync();
        for (int64_t d0 = 0; d0 < d_; d0 += dTile_) {
            const int64_t dn = (d_ - d0) < dTile_ ? (d_ - d0) : dTile_;
            gsa::CopyIn(wt, wG_[(head * d_ + d0) * r_], static_cast<uint32_t>(dn * r_));
            gsa::FullSync();
            for (int64_t j = 0; j < dn; ++j) {
                // y += x[d] * W[d, :]; rows of wt start at multiples of R floats (R % 32 == 0): aligned
                Axpy(y, wt[j * r_], x.GetValue(d0 + j), static_cast<int32_t>(r_));
            }
            gsa::FullSync();  // wt is overwritten by the next tile
        }
    }

    __aicore__ inline void Pack()
    {
        LocalTensor<float> y = yBuf_.Get<float>();
        LocalTensor<uint8_t> code = codeBuf_.Get<uint8_t>();
        for (int64_t c = 0; c < r_ / 8; ++c) {
            uint32_t byte = 0;
            for (int64_t i = 0; i < 8; ++i) {
                // NaN > 0 and -0 > 0 are false: both give 0, as spec 1 says (spec 13: > t)
                const float t = hasThr_ ? thrBuf_.Get<float>().GetValue(c * 8 + i) : 0.0f;
                byte |= (y.GetValue(c * 8 + i) > t ? 1u : 0u) << i;
            }
            code.SetValue(c, static_cast<uint8_t>(byte));
        }
        gsa::FullSync();
    }

    TPipe pipe_;
    TBuf<TPosition::VECCALC> xBuf_, wBuf_, yBuf_, codeBuf_, thrBuf_;
    GlobalTensor<float> xG_, wG_, thrG_;
    GlobalTensor<uint8_t> cacheG_;
    GlobalTensor<int64_t> slotG_;
    int64_t t_, h_, d_, r_, nSlots_, bs_, cTotal_, colOff_, dTile_;
    bool hasThr_;
};

extern "C" __global__ __aicore__ void gsa_hash_encode_and_cache(GM_ADDR x, GM_ADDR w, GM_ADDR cache, GM_ADDR slots,
                                                                GM_ADDR thr, int64_t t, int64_t h, int64_t d,
                                                                int64_t r, int64_t nb, int64_t bs, int64_t cTotal,
                                                                int64_t colOff, int64_t dTile, int64_t hasThr)
{
    HashEncodeAndCache op;
    op.Init(x, w, cache, slots, thr, t, h, d, r, nb, bs, cTotal, colOff, dTile, hasThr);
    op.Process();
}

#ifndef ASCENDC_CPU_DEBUG  // <<<>>> needs bisheng; CPU twin-debug builds (cpu/build_and_test.sh) launch with ICPU_RUN_KF
namespace gsa {
void launch_hash_encode_and_cache(void* stream, uint32_t blockDim, void* x, void* w, void* cache, void* slots,
                                  void* thr, int64_t t, int64_t h, int64_t d, int64_t r, int64_t nb, int64_t bs,
                                  int64_t cTotal, int64_t colOff, int64_t dTile, int64_t hasThr)
{
    gsa_hash_encode_and_cache<<<blockDim, nullptr, stream>>>(
        static_cast<uint8_t*>(x), static_cast<uint8_t*>(w), static_cast<uint8_t*>(cache),
        static_cast<uint8_t*>(slots), static_cast<uint8_t*>(thr), t, h, d, r, nb, bs, cTotal, colOff, dTile,
        hasThr);
}
}  // namespace gsa
#endif
