/**
 * kv_select (spec 6): selected logical blocks -> (sparse_block_table int32 [B, K],
 * sparse_seq_lens int32 [B]).
 *   table[b, i] = block_table[b, indices[b, i]] for i < n_sel[b], else pad_id
 *   lens[b]     = sum over live i of clamp(seq_len - indices[b, i] * bs, 0, bs)
 * Rows are split into one contiguous range per core; each row's table is written
 * with one DataCopyPad, the lengths of a core's range with one more. Logical ids
 * are clamped into [0, M): never an out-of-bounds read of the block table.
 */
#include "gsa_kernel_common.h"

using namespace AscendC;

class KvSelect {
public:
    __aicore__ inline void Init(GM_ADDR idx, GM_ADDR nsel, GM_ADDR bt, GM_ADDR seq, GM_ADDR table, GM_ADDR lens,
                                int64_t b, int64_t k, int64_t m, int64_t bs, int64_t pad)
    {
        b_ = b; k_ = k; m_ = m; bs_ = bs; pad_ = pad;
        idxG_.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t*>(idx), b * k);
        nselG_.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t*>(nsel), b);
        btG_.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t*>(bt), b * m);
        seqG_.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t*>(seq), b);
        tableG_.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t*>(table), b * k);
        lensG_.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t*>(lens), b);
        pipe_.InitBuffer(inBuf_, Align32(k * 4));
        pipe_.InitBuffer(outBuf_, Align32(k * 4));
        pipe_.InitBuffer(lenBuf_, Align32(((b + GetBlockNum() - 1) / GetBlockNum()) * 4));
    }

    __aicore__ inline void Process()
    {
        const int64_t per = (b_ + GetBlockNum() - 1) / GetBlockNum();
        const int64_t start = GetBlockIdx() * per;
        const int64_t stop = (start + per) < b_ ? (start + per) : b_;
        if (start >= stop) {
            return;
        }
        LocalTensor<int32_t> in = inBuf_.Get<int32_t>();
        LocalTensor<int32_t> out = outBuf_.Get<int32_t>();
        LocalTensor<int32_t> lens = lenBuf_.Get<int32_t>();
        for (int64_t row = start; row < stop; ++row) {
            gsa::CopyIn(in, idxG_[row * k_], static_cast<uint32_t>(k_));
            gsa::FullSync();
            const int64_t n = nselG_.GetValue(row);
            const int64_t seq = seqG_.GetValue(row);
            int64_t total = 0;
            for (int64_t i = 0; i < k_; ++i) {
                if (i < n) {
                    const int64_t logical = gsa::Clamp64(in.GetValue(i), 0, m_ - 1);
                    out.SetValue(i, btG_.GetValue(row * m_ + logical));
                    total += gsa::Clamp64(seq - logical * bs_, 0, bs_);
                } else {
                    out.SetValue(i, static_cast<int32_t>(pad_));
                }
            }
            lens.SetValue(row - start, static_cast<int32_t>(total));
            gsa::FullSync();
            gsa::CopyOut(tableG_[row * k_], out, static_cast<uint32_t>(k_));
            gsa::FullSync();
        }
        gsa::CopyOut(lensG_[start], lens, static_cast<uint32_t>(stop - start));
        gsa::FullSync();
    }

private:
    __aicore__ inline static uint32_t Align32(int64_t bytes)
    {
        return static_cast<uint32_t>((bytes + 31) / 32 * 32);
    }

    TPipe pipe_;
    TBuf<TPosition::VECCALC> inBuf_, outBuf_, lenBuf_;
    GlobalTensor<int32_t> idxG_, nselG_, btG_, seqG_, tableG_, lensG_;
    int64_t b_, k_, m_, bs_, pad_;
};

extern "C" __global__ __aicore__ void gsa_kv_select(GM_ADDR idx, GM_ADDR nsel, GM_ADDR bt, GM_ADDR seq,
                                                    GM_ADDR table, GM_ADDR lens, int64_t b, int64_t k, int64_t m,
                                                    int64_t bs, int64_t pad)
{
    KvSelect op;
    op.Init(idx, nsel, bt, seq, table, lens, b, k, m, bs, pad);
    op.Process();
}

#ifndef ASCENDC_CPU_DEBUG  // <<<>>> needs bisheng; CPU twin-debug builds (cpu/build_and_test.sh) launch with ICPU_RUN_KF
namespace gsa {
void launch_kv_select(void* stream, uint32_t blockDim, void* idx, void* nsel, void* bt, void* seq, void* table,
                      void* lens, int64_t b, int64_t k, int64_t m, int64_t bs, int64_t pad)
{
    gsa_kv_select<<<blockDim, nullptr, stream>>>(
        static_cast<uint8_t*>(idx), static_cast<uint8_t*>(nsel), static_cast<uint8_t*>(bt),
        static_cast<uint8_t*>(seq), static_cast<uint8_t*>(table), static_cast<uint8_t*>(lens), b, k, m, bs, pad);
}
}  // namespace gsa
#endif
