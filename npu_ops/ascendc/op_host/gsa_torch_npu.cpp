/**
 * PrivateUse1 (NPU) kernels of the gsa_npu library: argument checks, tiling, and
 * the launch, enqueued through torch_npu's OpCommand so it is ordered with other
 * NPU ops on the current stream (and recorded by ACL graph capture).
 *
 * No function here reads device data on the host: every decision uses shapes
 * and the int arguments only.
 */
#include <torch/library.h>
#include <ATen/ATen.h>

#include "acl/acl.h"
#include "torch_npu/csrc/core/npu/NPUStream.h"
#include "torch_npu/csrc/framework/OpCommand.h"

#include <tuple>

#include "gsa_kernels.h"
#include "gsa_tiling.h"

namespace {

int64_t VectorCores()
{
    int32_t device = 0;
    TORCH_CHECK(aclrtGetDevice(&device) == ACL_SUCCESS, "gsa_npu: aclrtGetDevice failed");
    int64_t n = 0;
    TORCH_CHECK(aclGetDeviceCapability(device, ACL_DEVICE_INFO_VECTOR_CORE_NUM, &n) == ACL_SUCCESS && n > 0,
                "gsa_npu: cannot read the vector core count");
    return n;
}

void CheckNpu(const char* op, const char* arg, const at::Tensor& t, at::ScalarType dtype, int64_t dim)
{
    TORCH_CHECK(t.device().type() == c10::DeviceType::PrivateUse1, "gsa_npu.", op, ": argument '", arg,
                "': expected an NPU tensor, got ", t.device());
    TORCH_CHECK(t.scalar_type() == dtype, "gsa_npu.", op, ": argument '", arg, "': expected dtype ", dtype,
                ", got ", t.scalar_type());
    TORCH_CHECK(t.dim() == dim, "gsa_npu.", op, ": argument '", arg, "': expected a ", dim, "-D tensor, got shape ",
                t.sizes());
    TORCH_CHECK(t.is_contiguous(), "gsa_npu.", op, ": argument '", arg, "': expected a contiguous tensor");
}

template <typename F>
void Enqueue(const char* name, F&& launch)
{
    at_npu::native::OpCommand cmd;
    cmd.Name(name);
    cmd.SetCustomHandler([launch]() -> int {
        launch();
        return 0;
    });
    cmd.Run();
}

void HashEncodeAndCache(const at::Tensor& k, const at::Tensor& weight, at::Tensor& cache, const at::Tensor& slots,
                        int64_t colOff, const c10::optional<at::Tensor>& threshold)
{
    const char* op = "hash_encode_and_cache";
    TORCH_CHECK(k.dim() == 3 && weight.dim() == 3, "gsa_npu.", op, ": k [T, H, D] and weight [H, D, R] expected");
    at::Tensor x = k.to(at::kFloat).contiguous();      // fp16/bf16 -> fp32 is exact
    at::Tensor w = weight.to(at::kFloat).contiguous();
    at::Tensor s = slots.to(at::kLong).contiguous();
    CheckNpu(op, "cache", cache, at::kByte, 4);
    const int64_t t = x.size(0), h = x.size(1), d = x.size(2), r = w.size(2);
    TORCH_CHECK(w.size(0) == h && w.size(1) == d, "gsa_npu.", op, ": weight shape ", w.sizes(), " does not match k ",
                x.sizes());
    TORCH_CHECK(r % 32 == 0, "gsa_npu.", op, ": hash bits R must be a multiple of 32, got ", r);
    TORCH_CHECK(cache.size(1) == h, "gsa_npu.", op, ": cache heads ", cache.size(1), " != k heads ", h);
    TORCH_CHECK(colOff >= 0 && colOff + r / 8 <= cache.size(3), "gsa_npu.", op, ": code bytes [", colOff, ", ",
                colOff + r / 8, ") do not fit the cache's ", cache.size(3), " bytes per slot");
    TORCH_CHECK(s.dim() == 1 && s.size(0) == t, "gsa_npu.", op, ": slot_mapping must be [T]");
    // spec 13: fp32 [H, R] thresholds (a shared [R] is expanded per head); none: never read
    const bool hasThr = threshold.has_value() && threshold->defined();
    at::Tensor th = hasThr ? threshold->to(at::kFloat).expand({h, r}).contiguous() : w;
    TORCH_CHECK(!hasThr || (th.size(0) == h && th.size(1) == r), "gsa_npu.", op, ": threshold shape ",
                threshold->sizes(), " does not match [H, R] = [", h, ", ", r, "]");
    if (t == 0) {
        return;
    }
    const uint32_t blockDim = gsa::BlockDim(t * h, VectorCores());
    const int64_t dTile = gsa::HashDTile(d, r);
    void* stream = c10_npu::getCurrentNPUStream().stream();
    void *px = x.data_ptr(), *pw = w.data_ptr(), *pc = cache.data_ptr(), *ps = s.data_ptr(), *pt = th.data_ptr();
    const int64_t nb = cache.size(0), bs = cache.size(2), cTotal = cache.size(3);
    // the lambda holds x/w/s (temporaries of this call) until the queued launch has run
    Enqueue("GsaHashEncodeAndCache", [=, keep = std::make_tuple(x, w, s, cache, th)]() {
        (void)keep;
        gsa::launch_hash_encode_and_cache(stream, blockDim, px, pw, pc, ps, pt, t, h, d, r, nb, bs, cTotal, colOff,
                                          dTile, hasThr ? 1 : 0);
    });
}

std::tuple<at::Tensor, at::Tensor> HammingDistTopK(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& bt,
                                                   const at::Tensor& seq, const at::Tensor& budgets,
                                                   const at::Tensor& forced, int64_t k, int64_t mean,
                                                   int64_t ropeBytes, int64_t w16)
{
    const char* op = "hamming_dist_top_k";
    CheckNpu(op, "q_codes", q, at::kByte, 3);
    CheckNpu(op, "key_cache", kc, at::kByte, 4);
    CheckNpu(op, "block_table", bt, at::kInt, 2);
    CheckNpu(op, "seq_lens", seq, at::kInt, 1);
    CheckNpu(op, "budgets", budgets, at::kInt, 1);
    CheckNpu(op, "forced", forced, at::kInt, 1);
    const int64_t b = q.size(0), hq = q.size(1), c = q.size(2);
    const int64_t nb = kc.size(0), hkv = kc.size(1), bs = kc.size(2), m = bt.size(1);
    TORCH_CHECK(c % 4 == 0 && kc.size(3) == c, "gsa_npu.", op, ": code bytes must match and be a multiple of 4");
    TORCH_CHECK(hq % hkv == 0, "gsa_npu.", op, ": Hq = ", hq, " is not a multiple of Hkv = ", hkv);
    TORCH_CHECK(k >= 1 && ropeBytes >= 0 && ropeBytes < c && ropeBytes % 4 == 0 && w16 >= 0 && w16 <= 256,
                "gsa_npu.", op, ": bad static arguments (k, rope_bytes, w16)");
    TORCH_CHECK(gsa::MaxAbsS16(hq, (c - ropeBytes) * 8, ropeBytes * 8, w16) < (int64_t{1} << 31), "gsa_npu.", op,
                ": token scores would overflow int32 for Hq = ", hq, ", R = ", c * 8);
    TORCH_CHECK(gsa::ScoreUbBytes(hq, hkv, bs, c) <= gsa::kUbBytes, "gsa_npu.", op,
                ": one key block of codes does not fit the Unified Buffer (Hkv*bs*C = ", hkv * bs * c, " bytes)");
    auto opts = q.options().dtype(at::kInt);
    at::Tensor idx = at::empty({b, k}, opts);
    at::Tensor nsel = at::empty({b}, opts);
    at::Tensor scores = at::empty({b, m}, q.options().dtype(mean ? at::kFloat : at::kInt));
    if (b == 0) {
        return {idx, nsel};
    }
    const int64_t cores = VectorCores();
    const uint32_t blockDim = gsa::BlockDim(b * m, cores);
    TORCH_CHECK(gsa::SelectUbBytes(m, k, (b + blockDim - 1) / blockDim) <= gsa::kUbBytes, "gsa_npu.", op,
                ": a row of M = ", m, " block scores does not fit the Unified Buffer");
    void* stream = c10_npu::getCurrentNPUStream().stream();
    void *pq = q.data_ptr(), *pk = kc.data_ptr(), *pbt = bt.data_ptr(), *ps = seq.data_ptr();
    void *pbud = budgets.data_ptr(), *pf = forced.data_ptr(), *psc = scores.data_ptr();
    void *pidx = idx.data_ptr(), *pn = nsel.data_ptr();
    const int64_t f = forced.size(0), g = hq / hkv, mainBytes = c - ropeBytes;
    Enqueue("GsaHammingDistTopK", [=, keep = std::make_tuple(scores, idx, nsel)]() {
        (void)keep;
        gsa::launch_hamming_dist_top_k(stream, blockDim, pq, pk, pbt, ps, pbud, pf, psc, pidx, pn, b, m, nb, hkv, g,
                                       c, mainBytes, w16, bs, mean, k, f);
    });
    return {idx, nsel};
}

std::tuple<at::Tensor, at::Tensor> KvSelect(const at::Tensor& indices, const at::Tensor& nsel, const at::Tensor& bt,
                                            const at::Tensor& seq, int64_t bs, int64_t pad)
{
    const char* op = "kv_select";
    CheckNpu(op, "indices", indices, at::kInt, 2);
    CheckNpu(op, "n_sel", nsel, at::kInt, 1);
    CheckNpu(op, "block_table", bt, at::kInt, 2);
    CheckNpu(op, "seq_lens", seq, at::kInt, 1);
    TORCH_CHECK(bs >= 1, "gsa_npu.", op, ": block_size must be >= 1, got ", bs);
    const int64_t b = indices.size(0), k = indices.size(1), m = bt.size(1);
    auto opts = indices.options().dtype(at::kInt);
    at::Tensor table = at::empty({b, k}, opts);
    at::Tensor lens = at::empty({b}, opts);
    if (b == 0) {
        return {table, lens};
    }
    const uint32_t blockDim = gsa::BlockDim(b, VectorCores());
    void* stream = c10_npu::getCurrentNPUStream().stream();
    void *pi = indices.data_ptr(), *pn = nsel.data_ptr(), *pbt = bt.data_ptr(), *ps = seq.data_ptr();
    void *pt = table.data_ptr(), *pl = lens.data_ptr();
    Enqueue("GsaKvSelect", [=]() { gsa::launch_kv_select(stream, blockDim, pi, pn, pbt, ps, pt, pl, b, k, m, bs, pad); });
    return {table, lens};
}

}  // namespace

TORCH_LIBRARY_IMPL(gsa_npu, PrivateUse1, m)
{
    m.impl("hash_encode_and_cache", &HashEncodeAndCache);
    m.impl("hamming_dist_top_k", &HammingDistTopK);
    m.impl("kv_select", &KvSelect);
}
