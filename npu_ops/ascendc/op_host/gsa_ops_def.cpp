/**
 * Op definitions (schemas) of the gsa_npu torch library. The Python side
 * (npu_ops/custom.py) adapts gsa's public op signatures to these.
 */
#include <torch/library.h>

TORCH_LIBRARY(gsa_npu, m)
{
    // k [T, H, D] float, weight [H, D, R] float, cache uint8 [NB, H, bs, C] (written at byte col_off),
    // slot_mapping int32/int64 [T] (< 0: skipped)
    m.def("hash_encode_and_cache(Tensor k, Tensor weight, Tensor(a!) cache, Tensor slot_mapping, int col_off, "
          "Tensor? threshold=None) -> ()");
    // q_codes uint8 [B, Hq, C], key_cache uint8 [NB, Hkv, bs, C], block_table/seq_lens/budgets int32,
    // forced int32 [F]; mean: 0 (max) or 1; w16 = 16 * rope_score_weight
    m.def("hamming_dist_top_k(Tensor q_codes, Tensor key_cache, Tensor block_table, Tensor seq_lens, "
          "Tensor budgets, Tensor forced, int k, int mean, int rope_bytes, int w16) -> (Tensor, Tensor)");
    m.def("kv_select(Tensor indices, Tensor n_sel, Tensor block_table, Tensor seq_lens, int block_size, "
          "int pad_id) -> (Tensor, Tensor)");
}
