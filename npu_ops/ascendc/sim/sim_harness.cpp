/**
 * CPU harness for the GSA AscendC kernels on the host stub API (kernel_operator.h
 * here): each "launch" runs the kernel body once per simulated core, in order.
 * Built and driven by tests/test_npu_ascendc_sim.py through ctypes.
 */
#define GSA_CPU_SIM 1
#include "kernel_operator.h"

#include "../op_kernel/hash_encode_and_cache.cpp"
#include "../op_kernel/hamming_dist_top_k.cpp"
#include "../op_kernel/kv_select.cpp"
#include "../op_host/gsa_tiling.h"

template <typename F>
static void Launch(int64_t cores, F&& body)
{
    gsa_sim::block_num() = cores;
    for (int64_t i = 0; i < cores; ++i) {
        gsa_sim::block_idx() = i;
        body();
    }
}

extern "C" {

void sim_hash_encode_and_cache(float* x, float* w, uint8_t* cache, int64_t* slots, int64_t t, int64_t h, int64_t d,
                               int64_t r, int64_t nb, int64_t bs, int64_t cTotal, int64_t colOff, int64_t cores)
{
    const int64_t dTile = gsa::HashDTile(d, r);
    Launch(gsa::BlockDim(t * h, cores), [&] {
        gsa_hash_encode_and_cache((GM_ADDR)x, (GM_ADDR)w, cache, (GM_ADDR)slots, t, h, d, r, nb, bs, cTotal, colOff,
                                  dTile);
    });
}

void sim_hamming_dist_top_k(uint8_t* q, uint8_t* kc, int32_t* bt, int32_t* seq, int32_t* budgets, int32_t* forced,
                            void* scores, int32_t* idx, int32_t* nsel, int64_t b, int64_t m, int64_t nb, int64_t hkv,
                            int64_t g, int64_t c, int64_t mainBytes, int64_t w16, int64_t bs, int64_t isMean,
                            int64_t k, int64_t f, int64_t cores)
{
    const int64_t blockDim = gsa::BlockDim(b * m, cores);
    Launch(blockDim, [&] {
        gsa_block_scores(q, kc, (GM_ADDR)bt, (GM_ADDR)seq, (GM_ADDR)scores, b, m, nb, hkv, g, c, mainBytes, w16, bs,
                         isMean);
    });
    Launch(blockDim, [&] {
        gsa_select((GM_ADDR)scores, (GM_ADDR)seq, (GM_ADDR)budgets, (GM_ADDR)forced, (GM_ADDR)idx, (GM_ADDR)nsel, b,
                   m, k, f, bs, isMean);
    });
}

void sim_kv_select(int32_t* idx, int32_t* nsel, int32_t* bt, int32_t* seq, int32_t* table, int32_t* lens, int64_t b,
                   int64_t k, int64_t m, int64_t bs, int64_t pad, int64_t cores)
{
    Launch(gsa::BlockDim(b, cores), [&] {
        gsa_kv_select((GM_ADDR)idx, (GM_ADDR)nsel, (GM_ADDR)bt, (GM_ADDR)seq, (GM_ADDR)table, (GM_ADDR)lens, b, k, m,
                      bs, pad);
    });
}

}  // extern "C"
