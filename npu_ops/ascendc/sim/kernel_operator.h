/**
 * Host stub of the small AscendC API subset the GSA kernels use, for a CPU
 * simulation of the kernels' logic (tests/test_npu_ascendc_sim.py).
 *
 * What it checks: index arithmetic, work splitting over cores, selection logic,
 * byte layouts, and that every GM/UB access stays in bounds (each access is
 * range-checked and aborts with a message). What it cannot check: the real
 * API's semantics and timing (pipe synchronisation, alignment rules, DMA
 * behaviour, Axpy rounding, scalar float division on the AI core). Those need
 * an Ascend machine (npu_ops/README.md).
 */
#ifndef GSA_SIM_KERNEL_OPERATOR_H
#define GSA_SIM_KERNEL_OPERATOR_H

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#define __global__
#define __aicore__
#define __gm__
using GM_ADDR = uint8_t*;

enum pipe_t { PIPE_ALL, PIPE_V, PIPE_S, PIPE_MTE2, PIPE_MTE3 };

namespace gsa_sim {
inline int64_t& block_idx() { static int64_t v = 0; return v; }
inline int64_t& block_num() { static int64_t v = 1; return v; }
inline int64_t& ub_used() { static int64_t v = 0; return v; }
[[noreturn]] inline void fail(const char* what, int64_t i, int64_t n)
{
    std::fprintf(stderr, "gsa sim: %s out of bounds: index %lld, size %lld\n", what, (long long)i, (long long)n);
    std::abort();
}
}  // namespace gsa_sim

namespace AscendC {

inline int64_t GetBlockIdx() { return gsa_sim::block_idx(); }
inline int64_t GetBlockNum() { return gsa_sim::block_num(); }

template <pipe_t P> inline void PipeBarrier() {}

enum class TPosition { VECIN, VECOUT, VECCALC };

template <typename T>
class LocalTensor {
public:
    LocalTensor() = default;
    LocalTensor(std::shared_ptr<std::vector<uint8_t>> mem, int64_t byteOff) : mem_(mem), off_(byteOff) {}
    int64_t Size() const { return (static_cast<int64_t>(mem_->size()) - off_) / static_cast<int64_t>(sizeof(T)); }
    T GetValue(int64_t i) const
    {
        if (i < 0 || i >= Size()) gsa_sim::fail("LocalTensor::GetValue", i, Size());
        T v; std::memcpy(&v, mem_->data() + off_ + i * sizeof(T), sizeof(T)); return v;
    }
    void SetValue(int64_t i, T v)
    {
        if (i < 0 || i >= Size()) gsa_sim::fail("LocalTensor::SetValue", i, Size());
        std::memcpy(mem_->data() + off_ + i * sizeof(T), &v, sizeof(T));
    }
    LocalTensor operator[](int64_t i) const
    {
        if (i < 0 || i > Size()) gsa_sim::fail("LocalTensor::operator[]", i, Size());
        if (((off_ + i * (int64_t)sizeof(T)) % 32) != 0) gsa_sim::fail("LocalTensor offset not 32-byte aligned", i, Size());
        return LocalTensor(mem_, off_ + i * sizeof(T));
    }
    template <typename U> LocalTensor<U> ReinterpretCast() const { return LocalTensor<U>(mem_, off_); }
    uint8_t* Bytes() const { return mem_->data() + off_; }
private:
    std::shared_ptr<std::vector<uint8_t>> mem_;
    int64_t off_ = 0;
};

template <TPosition P>
class TBuf {
public:
    template <typename T> LocalTensor<T> Get() const { return LocalTensor<T>(mem_, 0); }
    std::shared_ptr<std::vector<uint8_t>> mem_;
};

class TPipe {
public:
    template <TPosition P> void InitBuffer(TBuf<P>& buf, uint32_t bytes)
    {
        if (bytes % 32) gsa_sim::fail("UB buffer size not a multiple of 32", bytes, 32);
        gsa_sim::ub_used() += bytes;
        if (gsa_sim::ub_used() > 192 * 1024) gsa_sim::fail("Unified Buffer budget (192 KiB)", gsa_sim::ub_used(), 192 * 1024);
        buf.mem_ = std::make_shared<std::vector<uint8_t>>(bytes, 0xA5);  // garbage, as real UB
    }
    ~TPipe() { gsa_sim::ub_used() = 0; }
};

template <typename T>
class GlobalTensor {
public:
    void SetGlobalBuffer(T* p, int64_t n) { base_ = p; size_ = n; off_ = 0; }
    T GetValue(int64_t i) const
    {
        if (off_ + i < 0 || off_ + i >= size_) gsa_sim::fail("GlobalTensor::GetValue", off_ + i, size_);
        return base_[off_ + i];
    }
    GlobalTensor operator[](int64_t i) const { GlobalTensor g = *this; g.off_ += i; return g; }
    T* base_ = nullptr;
    int64_t size_ = 0, off_ = 0;
};

struct DataCopyExtParams {
    uint16_t blockCount; uint32_t blockLen; uint32_t srcStride; uint32_t dstStride; uint32_t rsv;
};
template <typename T> struct DataCopyPadExtParams { bool isPad; uint8_t leftPadding; uint8_t rightPadding; T paddingValue; };

template <typename T>
void DataCopyPad(const LocalTensor<T>& dst, const GlobalTensor<T>& src, const DataCopyExtParams& p,
                 const DataCopyPadExtParams<T>&)
{
    const int64_t n = p.blockLen / sizeof(T);
    if (p.blockCount != 1 || p.blockLen % sizeof(T)) gsa_sim::fail("DataCopyPad GM->UB params", p.blockLen, sizeof(T));
    if (src.off_ < 0 || src.off_ + n > src.size_) gsa_sim::fail("DataCopyPad GM read", src.off_ + n, src.size_);
    if (n > dst.Size()) gsa_sim::fail("DataCopyPad UB write", n, dst.Size());
    std::memcpy(dst.Bytes(), src.base_ + src.off_, p.blockLen);
}

template <typename T>
void DataCopyPad(const GlobalTensor<T>& dst, const LocalTensor<T>& src, const DataCopyExtParams& p)
{
    const int64_t n = p.blockLen / sizeof(T);
    if (p.blockCount != 1) gsa_sim::fail("DataCopyPad UB->GM params", p.blockCount, 1);
    if (dst.off_ < 0 || dst.off_ + n > dst.size_) gsa_sim::fail("DataCopyPad GM write", dst.off_ + n, dst.size_);
    if (n > src.Size()) gsa_sim::fail("DataCopyPad UB read", n, src.Size());
    std::memcpy(dst.base_ + dst.off_, src.Bytes(), p.blockLen);
}

inline void Duplicate(const LocalTensor<float>& dst, float v, int32_t n)
{
    for (int32_t i = 0; i < n; ++i) const_cast<LocalTensor<float>&>(dst).SetValue(i, v);
}

inline void Axpy(const LocalTensor<float>& dst, const LocalTensor<float>& src, float a, int32_t n)
{
    for (int32_t i = 0; i < n; ++i) {
        const_cast<LocalTensor<float>&>(dst).SetValue(i, dst.GetValue(i) + src.GetValue(i) * a);
    }
}

}  // namespace AscendC

#endif  // GSA_SIM_KERNEL_OPERATOR_H
