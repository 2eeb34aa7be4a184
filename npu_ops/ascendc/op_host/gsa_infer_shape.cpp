/**
 * Shape inference: Meta kernels, so the ops trace under torch.compile and inside
 * ACL graph capture without touching device data.
 */
#include <torch/library.h>
#include <ATen/ATen.h>

namespace {

void HashEncodeAndCacheMeta(const at::Tensor& k, const at::Tensor& weight, at::Tensor& cache,
                            const at::Tensor& slots, int64_t colOff, const c10::optional<at::Tensor>& threshold)
{
    TORCH_CHECK(k.dim() == 3 && weight.dim() == 3 && cache.dim() == 4, "gsa_npu.hash_encode_and_cache: bad ranks");
}

std::tuple<at::Tensor, at::Tensor> HammingDistTopKMeta(const at::Tensor& q, const at::Tensor& kc,
                                                       const at::Tensor& bt, const at::Tensor& seq,
                                                       const at::Tensor& budgets, const at::Tensor& forced,
                                                       int64_t k, int64_t mean, int64_t ropeBytes, int64_t w16)
{
    auto opts = q.options().dtype(at::kInt);
    return {at::empty({q.size(0), k}, opts), at::empty({q.size(0)}, opts)};
}

std::tuple<at::Tensor, at::Tensor> KvSelectMeta(const at::Tensor& idx, const at::Tensor& nsel, const at::Tensor& bt,
                                                const at::Tensor& seq, int64_t bs, int64_t pad)
{
    auto opts = idx.options().dtype(at::kInt);
    return {at::empty({idx.size(0), idx.size(1)}, opts), at::empty({idx.size(0)}, opts)};
}

}  // namespace

TORCH_LIBRARY_IMPL(gsa_npu, Meta, m)
{
    m.impl("hash_encode_and_cache", &HashEncodeAndCacheMeta);
    m.impl("hamming_dist_top_k", &HammingDistTopKMeta);
    m.impl("kv_select", &KvSelectMeta);
}
