// Fused CPU kernels of the hot ops (plain C++17 + OpenMP, no torch headers).
// The torch binding (bindings.cpp) validates tensors and calls these on raw contiguous buffers.
#pragma once

#include <cstdint>

namespace rgd {
namespace cpu {

// bfloat16 storage: the high 16 bits of an IEEE float.
struct BFloat16 {
  uint16_t bits;
};

// hidden [B, d] float32, weight [V, d] (T = float or BFloat16), 1 <= k <= V
// -> logprob [B, k] descending, ids [B, k], lse [B]. Ties: lowest id first.
template <typename T>
void lmhead_topk(const float* hidden, const T* weight, int64_t B, int64_t V, int64_t d, int64_t k,
                 float* logprob, int64_t* ids, float* lse);

// hidden and weight both bfloat16: VDPBF16PS where the CPU has AVX512-BF16 (lmhead_topk_bf16_is_native),
// else the hidden rows widened to float32 and lmhead_topk<BFloat16>.
void lmhead_topk_bf16(const BFloat16* hidden, const BFloat16* weight, int64_t B, int64_t V, int64_t d, int64_t k,
                      float* logprob, int64_t* ids, float* lse);
bool lmhead_topk_bf16_is_native();

// cand_hidden [B, k, d], bank_w [U, d] (T), bank_b [U], slot [B] (-1 = no head), logprob [B, k],
// weight [B], rand [B] (sample only) -> chosen [B], scores [B, k], rewards [B, k].
template <typename T>
void score_select(const T* cand_hidden, const T* bank_w, const float* bank_b, const int64_t* slot,
                  const float* logprob, const float* weight, int64_t B, int64_t k, int64_t d, bool sample,
                  float tau, const float* rand, int64_t* chosen, float* scores, float* rewards);

// query [B, d] float32, emb [V, d] (T), cand_ids [B, k] in [0, V), offset [B], logprob [B, k], weight [B],
// rand [B] (sample only) -> chosen [B], scores [B, k], rewards [B, k].
template <typename T>
void gather_score_select(const float* query, const T* emb, const int64_t* cand_ids, const float* offset,
                         const float* logprob, const float* weight, float ratio, int64_t B, int64_t k, int64_t d,
                         bool sample, float tau, const float* rand, int64_t* chosen, float* scores, float* rewards);

}  // namespace cpu
}  // namespace rgd
