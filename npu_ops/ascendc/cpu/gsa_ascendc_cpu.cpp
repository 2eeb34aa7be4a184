/**
 * CPU twin-debug runner of the GSA AscendC kernels, built against the REAL AscendC API
 * (asc-devkit headers, asc-tools cpudebug framework) with g++: see cpu/README.md.
 *
 *   gsa_ascendc_cpu <op> <dir> <vector cores>
 *
 * <op> is hash | topk | kvsel. <dir>/params holds the op's integer arguments (whitespace
 * separated, in the order below); <dir>/<name>.bin holds each tensor's raw bytes. Every
 * tensor is copied into GmAlloc'd global memory (guard page after it), the kernel runs
 * through ICPU_RUN_KF (one forked process per core, as on the device each core runs the
 * whole kernel body), and the output tensors are written back to their files.
 * Driven by tests/test_npu_ascendc_cpu.py.
 */
#include "kernel_operator.h"

#include "../op_kernel/hash_encode_and_cache.cpp"
#include "../op_kernel/hamming_dist_top_k.cpp"
#include "../op_kernel/kv_select.cpp"
#include "../op_host/gsa_tiling.h"

#include "tikicpulib.h"
#include "run_kernel.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace {

struct Tensor {
    std::string path;
    uint8_t* gm = nullptr;
    size_t bytes = 0;
};

/** GmAlloc'd buffers (files under /tmp mapped shared): freed on every exit of the parent. */
std::vector<void*>& Allocations()
{
    static std::vector<void*> v;
    return v;
}

void FreeAll()
{
    for (void* p : Allocations()) {
        AscendC::GmFree(p);
    }
    Allocations().clear();
}

[[noreturn]] void Die(const std::string& msg)
{
    std::fprintf(stderr, "gsa_ascendc_cpu: %s\n", msg.c_str());
    FreeAll();
    std::exit(2);
}

Tensor Load(const char* name)
{
    Tensor t;
    t.path = std::string(name) + ".bin";
    std::ifstream f(t.path, std::ios::binary);
    if (!f) {
        Die("cannot read " + t.path);
    }
    std::vector<char> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    t.bytes = data.size();
    t.gm = static_cast<uint8_t*>(AscendC::GmAlloc(t.bytes > 0 ? t.bytes : 1));
    Allocations().push_back(t.gm);
    std::memcpy(t.gm, data.data(), t.bytes);
    return t;
}

void Store(const Tensor& t)
{
    std::ofstream f(t.path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(t.gm), static_cast<std::streamsize>(t.bytes));
    if (!f) {
        Die("cannot write " + t.path);
    }
}

std::vector<int64_t> Params(size_t n)
{
    std::ifstream f("params");
    std::vector<int64_t> p;
    int64_t v;
    while (f >> v) {
        p.push_back(v);
    }
    if (p.size() != n) {
        Die("params: expected " + std::to_string(n) + " integers, got " + std::to_string(p.size()));
    }
    return p;
}

/** Runs one launch; exits non-zero unless every core finished its kernel body. */
#define RUN_KERNEL(kernel, blockDim, ...)                                                              \
    do {                                                                                               \
        const int64_t lost_ = GSA_RUN_KERNEL(kernel, blockDim, __VA_ARGS__);                           \
        if (lost_ != 0) {                                                                              \
            Die(std::string(#kernel) + ": " + std::to_string(lost_) +                                  \
                " core(s) did not finish (see the messages above)");                                   \
        }                                                                                              \
    } while (0)

}  // namespace

int main(int argc, char** argv)
{
    if (argc != 4) {
        Die("usage: gsa_ascendc_cpu hash|topk|kvsel <dir> <vector cores>");
    }
    const std::string op = argv[1], dir = argv[2];
    const int64_t cores = std::atoll(argv[3]);
    if (cores < 1 || cores > 50) {  // dav-c220: 2 vector cores in each of up to 25 AI cores
        Die("vector cores: expected 1..50, got " + std::string(argv[3]));
    }
    if (chdir(dir.c_str()) != 0) {  // the framework writes stub_reg.log into the working directory
        Die("cannot enter " + dir);
    }
    AscendC::SetKernelMode(KernelMode::AIV_MODE);  // vector-core kernels: up to 2 x 25 AIV on dav-c220
    if (op == "hash") {
        // x f32 [T,H,D], w f32 [H,D,R], cache u8 [NB,H,bs,C] (in/out), slots i64 [T], thr f32 [H,R] (spec 13;
        // read only when the 9th parameter is 1)
        const auto p = Params(9);
        const int64_t t = p[0], h = p[1], d = p[2], r = p[3], nb = p[4], bs = p[5], cTotal = p[6], colOff = p[7],
                      hasThr = p[8];
        Tensor x = Load("x"), w = Load("w"), cache = Load("cache"), slots = Load("slots");
        Tensor thr = hasThr ? Load("thr") : w;
        const int64_t dTile = gsa::HashDTile(d, r);
        RUN_KERNEL(gsa_hash_encode_and_cache, gsa::BlockDim(t * h, cores), x.gm, w.gm, cache.gm, slots.gm, thr.gm, t,
                    h, d, r, nb, bs, cTotal, colOff, dTile, hasThr);
        Store(cache);
    } else if (op == "topk") {
        // two launches on one stream, as launch_hamming_dist_top_k does on the device
        const auto p = Params(12);
        const int64_t b = p[0], m = p[1], nb = p[2], hkv = p[3], g = p[4], c = p[5], mainBytes = p[6], w16 = p[7],
                      bs = p[8], isMean = p[9], k = p[10], f = p[11];
        Tensor q = Load("q"), kc = Load("kc"), bt = Load("bt"), seq = Load("seq");
        Tensor budgets = Load("budgets"), forced = Load("forced"), scores = Load("scores");
        Tensor idx = Load("idx"), nsel = Load("nsel");
        const uint32_t blockDim = gsa::BlockDim(b * m, cores);
        RUN_KERNEL(gsa_block_scores, blockDim, q.gm, kc.gm, bt.gm, seq.gm, scores.gm, b, m, nb, hkv, g, c,
                    mainBytes, w16, bs, isMean);
        RUN_KERNEL(gsa_select, blockDim, scores.gm, seq.gm, budgets.gm, forced.gm, idx.gm, nsel.gm, b, m, k, f, bs,
                    isMean);
        Store(scores);
        Store(idx);
        Store(nsel);
    } else if (op == "kvsel") {
        const auto p = Params(5);
        const int64_t b = p[0], k = p[1], m = p[2], bs = p[3], pad = p[4];
        Tensor idx = Load("idx"), nsel = Load("nsel"), bt = Load("bt"), seq = Load("seq");
        Tensor table = Load("table"), lens = Load("lens");
        RUN_KERNEL(gsa_kv_select, gsa::BlockDim(b, cores), idx.gm, nsel.gm, bt.gm, seq.gm, table.gm, lens.gm, b, k,
                    m, bs, pad);
        Store(table);
        Store(lens);
    } else {
        Die("unknown op " + op);
    }
    FreeAll();
    return 0;
}
