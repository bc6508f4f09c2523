// Fused token-level gather + score + select.
//
// One warp per row b, candidate token ids v_j = cand_ids[b, j]:
//   r_j = E_{v_j} . q_b + offset_b - ratio * logprob_j   (lanes stride d, warp-sum; then (dot + offset) - ratio * lp)
//   s_j = logprob_j + weight_b * r_j                     (separate multiply and add, as the reference: no FMA)
//   selection by lane 0 (select_index, common.cuh): greedy = first argmax of s; sample = inverse CDF of
//   softmax(s / tau) at rand_b.
//   -inf rule: the ratio term only when ratio != 0; logprob_j = -inf -> s_j = -inf, never chosen (all -inf -> 0).
#include "common.cuh"
#include "rgd_kernels.cuh"

namespace rgd {
namespace cuda {
namespace {

constexpr int kRowsPerBlock = 4;  // warps per block, one row each

template <typename T>
__global__ void gather_score_select_kernel(const float* __restrict__ query, const T* __restrict__ emb,
                                           const int64_t* __restrict__ cand_ids, const float* __restrict__ offset,
                                           const float* __restrict__ logprob, const float* __restrict__ weight,
                                           float ratio, int64_t B, int64_t k, int64_t d, bool sample, float tau,
                                           const float* __restrict__ rand, int64_t* __restrict__ chosen,
                                           float* __restrict__ scores, float* __restrict__ rewards) {
  const int lane = threadIdx.x & 31;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  if (b >= B) return;
  const float* q = query + b * d;
  const float off = offset[b], wb = weight[b];
  for (int64_t j = 0; j < k; ++j) {
    const T* e = emb + cand_ids[b * k + j] * d;
    float acc = 0.f;
    for (int64_t i = lane; i < d; i += 32) acc += q[i] * to_float(e[i]);
    const float dot = warp_sum(acc);
    if (lane == 0) {
      const float lp = logprob[b * k + j];
      float r = __fadd_rn(dot, off);
      if (ratio != 0.f) r = __fsub_rn(r, __fmul_rn(ratio, lp));  // ratio 0 never multiplies a -inf logprob
      rewards[b * k + j] = r;
      scores[b * k + j] = lp == -INFINITY ? -INFINITY : __fadd_rn(lp, __fmul_rn(wb, r));
    }
  }
  if (lane == 0) chosen[b] = select_index(scores + b * k, k, sample, tau, sample ? rand[b] : 0.f);
}

}  // namespace

template <typename T>
cudaError_t launch_gather_score_select(const float* query, const T* emb, const int64_t* cand_ids, const float* offset,
                                       const float* logprob, const float* weight, float ratio, int64_t B, int64_t k,
                                       int64_t d, bool sample, float tau, const float* rand, int64_t* chosen,
                                       float* scores, float* rewards, cudaStream_t stream) {
  if (B == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>((B + kRowsPerBlock - 1) / kRowsPerBlock);
  gather_score_select_kernel<T><<<blocks, 32 * kRowsPerBlock, 0, stream>>>(query, emb, cand_ids, offset, logprob,
                                                                            weight, ratio, B, k, d, sample, tau, rand,
                                                                            chosen, scores, rewards);
  return cudaGetLastError();
}

#define RGD_INSTANTIATE(T)                                                                                          \
  template cudaError_t launch_gather_score_select<T>(const float*, const T*, const int64_t*, const float*,        \
                                                     const float*, const float*, float, int64_t, int64_t, int64_t, \
                                                     bool, float, const float*, int64_t*, float*, float*,          \
                                                     cudaStream_t);
RGD_INSTANTIATE(float)
RGD_INSTANTIATE(__half)
RGD_INSTANTIATE(__nv_bfloat16)
#undef RGD_INSTANTIATE

}  // namespace cuda
}  // namespace rgd
