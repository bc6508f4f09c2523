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

// x [M, K], w [N, K], bias [N] or nullptr -> y [M, N] = x w^T + bias, accumulated in fp32 (small_linear.cpp).
// Runs only where small_linear_is_native(bf16) (AVX-512F/BW/VL, and AVX512-BF16 for bf16); the binding checks.
void small_linear(const float* x, const float* w, const float* bias, int64_t M, int64_t N, int64_t K, float* y);
void small_linear(const BFloat16* x, const BFloat16* w, const BFloat16* bias, int64_t M, int64_t N, int64_t K,
                  BFloat16* y);
bool small_linear_is_native(bool bf16);
// y[r] = x . w[n0 + r] in fp32 for r < len, one x row, one thread: lmhead_topk's chunk logits on small_linear's
// row groups (where small_linear_is_native).
void one_row_logits(const float* x, const float* w, int64_t n0, int64_t len, int64_t K, float* y);
void one_row_logits(const BFloat16* x, const BFloat16* w, int64_t n0, int64_t len, int64_t K, float* y);

// Attention of a step's query rows over a KV cache (decode_attention.cpp). Batch row b, step row t, query head h
// (kv head h / (H / Hkv)): q row at q + b q_b + t q_t + h D; k, v [B, Hkv, S, D] (slots [0, T) used); mask
// [B, nq, T] additive -> out [B, nq, H, D] = softmax(q k^T / sqrt(D) + mask) v, in fp32, rounded once to T.
// Runs only where small_linear_is_native(bf16).
struct AttentionShape {
  int64_t B, nq, H, Hkv, D, S, T, q_b, q_t;
};
void decode_attention(const float* q, const float* k, const float* v, const float* mask, const AttentionShape& a,
                      float* out);
void decode_attention(const BFloat16* q, const BFloat16* k, const BFloat16* v, const BFloat16* mask,
                      const AttentionShape& a, BFloat16* out);

// x [M, d], w [d] -> y [M, d] = w * T(x / sqrt(mean(x^2) + eps)), the mean in fp32 (rms_norm.cpp).
void rms_norm(const float* x, const float* w, int64_t M, int64_t d, float eps, float* y);
void rms_norm(const BFloat16* x, const BFloat16* w, int64_t M, int64_t d, float eps, BFloat16* y);

}  // namespace cpu
}  // namespace rgd
