// Launchers of the fused CUDA kernels (no torch headers: raw device pointers + a stream).
// Element type T of the large matrices: float, __half or __nv_bfloat16. Everything else is float32 / int64.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace rgd {
namespace cuda {

// Scratch for lmhead_topk: partial (max, sum-exp) [B, NB] and partial top-KC lists [B, NB, KC].
struct LmheadScratch {
  float* part_m;
  float* part_s;
  float* part_v;
  int64_t* part_i;
};

// W rows per stage-1 block: 128 gives ~400 blocks for V = 49k, enough loads in flight to fill HBM at B = 1.
constexpr int64_t kVBlock = 128;

inline int64_t lmhead_num_blocks(int64_t V) { return (V + kVBlock - 1) / kVBlock; }
inline int64_t lmhead_partial_k(int64_t k) { return k < kVBlock ? k : kVBlock; }

// hidden [B, d] f32, weight [V, d] T -> logprob [B, k] f32 (descending), ids [B, k] i64, lse [B] f32
template <typename T>
cudaError_t launch_lmhead_topk(const float* hidden, const T* weight, int64_t B, int64_t V, int64_t d, int64_t k,
                               LmheadScratch scratch, float* logprob, int64_t* ids, float* lse, cudaStream_t stream);

// cand_hidden [B, k, d] T, bank_w [U, d] T, bank_b [U], slot [B] i64, logprob [B, k], weight [B], rand [B]
// -> chosen [B] i64, scores [B, k], rewards [B, k]
template <typename T>
cudaError_t launch_score_select(const T* cand_hidden, const T* bank_w, const float* bank_b, const int64_t* slot,
                                const float* logprob, const float* weight, int64_t B, int64_t k, int64_t d,
                                bool sample, float tau, const float* rand, int64_t* chosen, float* scores,
                                float* rewards, cudaStream_t stream);

// query [B, d] f32, emb [V, d] T, cand_ids [B, k] i64 in [0, V), offset [B], logprob [B, k], weight [B], rand [B]
// -> chosen [B] i64, scores [B, k], rewards [B, k]
template <typename T>
cudaError_t launch_gather_score_select(const float* query, const T* emb, const int64_t* cand_ids, const float* offset,
                                       const float* logprob, const float* weight, float ratio, int64_t B, int64_t k,
                                       int64_t d, bool sample, float tau, const float* rand, int64_t* chosen,
                                       float* scores, float* rewards, cudaStream_t stream);

}  // namespace cuda
}  // namespace rgd
