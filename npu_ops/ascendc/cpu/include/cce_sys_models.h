/**
 * Scalar-unit and system-register intrinsics reached by the real TPipe/TQue code,
 * modelled on the CPU (included by stub_fun.h). Per-core state is per process:
 * ICPU_RUN_KF forks one process per core, so a plain global is per core.
 */
#ifndef GSA_CPU_CCE_SYS_MODELS_H
#define GSA_CPU_CCE_SYS_MODELS_H

#include <cstdint>

extern int64_t block_idx;  // set by the cpudebug framework (stub_base.cpp) before each core runs
extern int64_t block_num;

namespace gsa_cpu {
inline uint64_t& CtrlRegister() { static uint64_t v = 0; return v; }
}  // namespace gsa_cpu

/** Index of this core in [0, block_num). */
inline int64_t get_block_idx() { return block_idx; }
/** Number of cores of the launch. */
inline int64_t get_block_num() { return block_num; }

/** CTRL special register (saturation/mask modes): read and written whole. */
inline uint64_t get_ctrl() { return gsa_cpu::CtrlRegister(); }
inline void set_ctrl(uint64_t v) { gsa_cpu::CtrlRegister() = v; }

/** Index of the lowest 0 bit of x (LSB = 0), -1 if every bit is 1. */
inline int64_t sff0(uint64_t x) { return ~x == 0 ? -1 : __builtin_ctzll(~x); }
/** Index of the lowest 1 bit of x, -1 if x == 0. */
inline int64_t sff1(uint64_t x) { return x == 0 ? -1 : __builtin_ctzll(x); }
/** x with bit `idx` cleared / set. */
inline uint64_t sbitset0(uint64_t x, int64_t idx) { return x & ~(uint64_t(1) << idx); }
inline uint64_t sbitset1(uint64_t x, int64_t idx) { return x | (uint64_t(1) << idx); }
/** Leading zero bits of x (64 for 0). */
inline int64_t clz(uint64_t x) { return x == 0 ? 64 : __builtin_clzll(x); }
/** Set bits / zero bits of x. */
inline int64_t bcnt1(uint64_t x) { return __builtin_popcountll(x); }
inline int64_t bcnt0(uint64_t x) { return 64 - __builtin_popcountll(x); }
/** Bits after the sign bit that equal it. */
inline int64_t sflbits(int64_t x) { return __builtin_clrsbll(x); }

// Launch hooks of the cpudebug framework (kern_fwk.h's RunKernelFunctionOnCpu), modelled for
// vector-core-only launches (KernelMode::AIV_MODE): one process per launched vector core.
extern int32_t g_coreType;
extern int32_t g_taskRation;
extern int32_t sub_block_idx;
/** Processes to fork: one per launched block. */
inline int get_process_num() { return static_cast<int>(block_num); }
/** Core `idx` of the launch: GetBlockIdx() = block_idx * g_taskRation + sub_block_idx = idx. */
inline void set_block_dim(int idx) { block_idx = idx / g_taskRation; sub_block_idx = idx % g_taskRation; }
/** Every core of our launches is a vector core (AscendC::AIV == 2). */
inline void set_core_type(int /*idx*/) { g_coreType = 2; }
inline void set_ffts_base_addr(uint64_t) {}

// Cube-unit registers written on AIC-only paths (never taken by our vector cores, but they
// must link): calling one aborts, the cube unit is not modelled.
void set_padding(uint64_t);
void set_l1_3d_size(uint64_t);
[[noreturn]] void GsaCubeNotModelled(const char* intrinsic);
/** GM <-> L1 copies: reached by DataCopy's runtime dispatch on the tensor position; abort if run. */
template <typename... A> inline void copy_gm_to_cbuf(A...) { GsaCubeNotModelled("copy_gm_to_cbuf"); }
template <typename... A> inline void copy_cbuf_to_gm(A...) { GsaCubeNotModelled("copy_cbuf_to_gm"); }

// Special registers read by API paths our kernels do not take: typed, never defined.
uint64_t get_vms4_sr();
uint64_t get_pc();
int64_t get_arch_ver();
int64_t get_max_min_cnt();
int64_t get_rsvd_cnt();
uint64_t get_st_atomic_cfg();
int64_t get_icache_prl_st();

// The cpudebug check-model bookkeeping hooks (buffer/queue life cycle, libcpudebug_*.so in
// CANN, absent here): no-ops. Our own checks (bounds, alignment) live in the intrinsic models.
template <typename... A> inline void AscendCBufAbsAddr(A...) {}
template <typename... A> inline void AscendCBufInit(A...) {}
template <typename... A> inline void AscendCBufAlloc(A...) {}
template <typename... A> inline void AscendCBufFree(A...) {}
template <typename... A> inline void AscendCBufEnque(A...) {}
template <typename... A> inline void AscendCBufDeque(A...) {}
template <typename... A> inline void AscendCBufGet(A...) {}
template <typename... A> inline void AscendCQueCreate(A...) {}
template <typename... A> inline void AscendCTBufPoolInit(A...) {}
template <typename... A> inline void AscendCRecordPoolHierarchy(A...) {}
template <typename... A> inline void AscendCUpdateTbufPoolStatus(A...) {}
template <typename... A> inline void AscendCTBufPoolResetCheck(A...) {}

#endif  // GSA_CPU_CCE_SYS_MODELS_H
