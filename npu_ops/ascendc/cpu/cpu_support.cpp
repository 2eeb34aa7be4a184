/**
 * Out-of-line parts of the CPU stand-ins (see include/stub_fun.h): the vector-register
 * state, the UB bounds check, the DMA models, and the few cpudebug support symbols that
 * CANN ships only inside libcpudebug_model.a (ProcessLock, CheckSyncState, the intrinsic
 * format table used by StubInit).
 */
#include "kernel_operator.h"
#include "tikicpulib.h"

#include <pthread.h>
#include <sys/mman.h>

#include <cstdio>
#include <cstdlib>

namespace gsa_cpu {

VecRegs& Regs()
{
    static VecRegs r;  // one per core: ICPU_RUN_KF runs each core in its own process
    return r;
}

[[noreturn]] void Fail(const char* intrinsic, const char* what)
{
    std::fprintf(stderr, "[gsa cpu model] %s: %s\n", intrinsic, what);
    std::fflush(stderr);
    std::abort();
}

void CheckUb(const void* p, size_t bytes, const char* intrinsic)
{
    const uint8_t* ub = AscendC::ConstDefiner::Instance().cpuUB;
    const size_t len = AscendC::ConstDefiner::Instance().bufferInitLen.at(AscendC::Hardware::UB);
    const uint8_t* b = static_cast<const uint8_t*>(p);
    if (ub == nullptr || b < ub || b + bytes > ub + len) {
        std::fprintf(stderr, "[gsa cpu model] %s: UB access [%p, +%zu) outside the Unified Buffer [%p, +%zu)\n",
                     intrinsic, p, bytes, static_cast<const void*>(ub), len);
        std::fflush(stderr);
        std::abort();
    }
}

}  // namespace gsa_cpu

namespace {
size_t Ceil32(size_t n) { return (n + 31) / 32 * 32; }
}  // namespace

void GsaCopyGmToUbAlign(void* dst, const void* src, uint32_t elemBytes, uint16_t nBurst, uint32_t lenBurst,
                        uint8_t leftPad, uint8_t rightPad, uint64_t srcGap, uint64_t dstGap)
{
    uint8_t* d = static_cast<uint8_t*>(dst);
    const uint8_t* s = static_cast<const uint8_t*>(src);
    const size_t row = leftPad * elemBytes + lenBurst + rightPad * elemBytes;
    const size_t rowUb = Ceil32(row);
    const uint64_t pad = gsa_cpu::Regs().movPadVal;
    for (uint16_t i = 0; i < nBurst; ++i) {
        uint8_t* out = d + i * (rowUb + dstGap * 32);
        gsa_cpu::CheckUb(out, rowUb, "copy_gm_to_ubuf_align");
        std::memset(out, 0xA5, rowUb);  // undefined bytes up to the 32-byte boundary
        for (uint8_t k = 0; k < leftPad; ++k) {
            std::memcpy(out + k * elemBytes, &pad, elemBytes);
        }
        std::memcpy(out + leftPad * elemBytes, s + i * (lenBurst + srcGap), lenBurst);
        for (uint8_t k = 0; k < rightPad; ++k) {
            std::memcpy(out + leftPad * elemBytes + lenBurst + k * elemBytes, &pad, elemBytes);
        }
    }
}

void GsaCopyUbToGmAlign(void* dst, const void* src, uint16_t nBurst, uint32_t lenBurst, uint64_t srcGap,
                        uint64_t dstGap)
{
    uint8_t* d = static_cast<uint8_t*>(dst);
    const uint8_t* s = static_cast<const uint8_t*>(src);
    for (uint16_t i = 0; i < nBurst; ++i) {
        const uint8_t* in = s + i * (Ceil32(lenBurst) + srcGap * 32);
        gsa_cpu::CheckUb(in, lenBurst, "copy_ubuf_to_gm_align");
        std::memcpy(d + i * (lenBurst + dstGap), in, lenBurst);
    }
}

void GsaCopyBlocks(void* dst, const void* src, bool dstIsUb, uint16_t nBurst, uint16_t lenBurst, uint16_t srcGap,
                   uint16_t dstGap)
{
    uint8_t* d = static_cast<uint8_t*>(dst);
    const uint8_t* s = static_cast<const uint8_t*>(src);
    const size_t len = static_cast<size_t>(lenBurst) * 32;
    for (uint16_t i = 0; i < nBurst; ++i) {
        uint8_t* out = d + i * (len + dstGap * 32u);
        const uint8_t* in = s + i * (len + srcGap * 32u);
        gsa_cpu::CheckUb(dstIsUb ? static_cast<const void*>(out) : static_cast<const void*>(in), len,
                         dstIsUb ? "copy_gm_to_ubuf" : "copy_ubuf_to_gm");
        std::memcpy(out, in, len);
    }
}

void GsaCubeNotModelled(const char* intrinsic) { gsa_cpu::Fail(intrinsic, "L1 / cube unit: not modelled"); }
void set_padding(uint64_t) { GsaCubeNotModelled("set_padding"); }
void set_l1_3d_size(uint64_t) { GsaCubeNotModelled("set_l1_3d_size"); }

// ---- cpudebug support symbols (binary-only in CANN) ------------------------------------------
namespace AscendC {

ProcessLock* ProcessLock::processLock = nullptr;
bool g_isAtomic = false;  // fixpipe (cube output) atomic flag: never set by vector kernels

ProcessLock::ProcessLock() { Init(); }
ProcessLock::~ProcessLock() { UnInit(); }

inline void ProcessLock::Init()
{
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_rwlock_init(&lock, &attr);
}

void ProcessLock::UnInit()
{
    pthread_rwlock_destroy(&lock);
    pthread_rwlockattr_destroy(&attr);
}

/** The lock lives in shared anonymous memory so the forked core processes share it. */
ProcessLock* ProcessLock::CreateLock()
{
    void* mem = mmap(nullptr, sizeof(ProcessLock), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        gsa_cpu::Fail("ProcessLock", "mmap failed");
    }
    return new (mem) ProcessLock();
}

void ProcessLock::FreeLock()
{
    if (processLock != nullptr && getpid() == g_mainPid) {
        processLock->~ProcessLock();
        munmap(processLock, sizeof(ProcessLock));
    }
    processLock = nullptr;
}

int ProcessLock::Read() { return pthread_rwlock_rdlock(&lock); }
int ProcessLock::Write() { return pthread_rwlock_wrlock(&lock); }
int ProcessLock::Unlock() { return pthread_rwlock_unlock(&lock); }

/** CANN checks here that every set_flag had its wait_flag; synchronisation is not modelled. */
void CheckSyncState() {}

}  // namespace AscendC

/** StubInit looks each intrinsic up by name with dlsym; no name resolves here (models are linked in). */
IntriFmtT* IntriFmtGet(int32_t fid)
{
    static IntriFmtT fmt{0, "gsa_cpu_unregistered_%.*s"};
    fmt.fid = fid;
    return &fmt;
}
void IntriFunAdd(int32_t, IntriTypeT, PfIntriFun) {}
