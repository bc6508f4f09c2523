// Fused ARGS score + select.
//
// One warp per row b with head u = slot[b]:
//   r_j = W_u . c_j + b_u (0 when u = -1)      (lanes stride d, warp-sum)
//   s_j = logprob_j + weight_b * r_j           (separate multiply and add, as the reference: no FMA)
//   -inf rule (as gather_score_select): logprob_j = -inf -> s_j = -inf whatever weight_b and r_j
//   selection by lane 0 (select_index, common.cuh): greedy = first argmax of s; sample = inverse CDF of
//   softmax(s / tau) at rand_b.
#include "common.cuh"
#include "rgd_kernels.cuh"

namespace rgd {
namespace cuda {
namespace {

constexpr int kRowsPerBlock = 4;  // warps per block, one row each

template <typename T>
__global__ void score_select_kernel(const T* __restrict__ cand, const T* __restrict__ bank_w,
                                    const float* __restrict__ bank_b, const int64_t* __restrict__ slot,
                                    const float* __restrict__ logprob, const float* __restrict__ weight, int64_t B,
                                    int64_t k, int64_t d, bool sample, float tau, const float* __restrict__ rand,
                                    int64_t* __restrict__ chosen, float* __restrict__ scores,
                                    float* __restrict__ rewards) {
  const int lane = threadIdx.x & 31;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  if (b >= B) return;
  const int64_t u = slot[b];
  const float wb = weight[b];
  for (int64_t j = 0; j < k; ++j) {
    float r = 0.f;
    if (u >= 0) {
      const T* c = cand + (b * k + j) * d;
      const T* w = bank_w + u * d;
      float acc = 0.f;
      for (int64_t i = lane; i < d; i += 32) acc += to_float(c[i]) * to_float(w[i]);
      r = warp_sum(acc) + bank_b[u];
    }
    if (lane == 0) {
      rewards[b * k + j] = r;
      const float lp = logprob[b * k + j];
      scores[b * k + j] = lp == -INFINITY ? -INFINITY : __fadd_rn(lp, __fmul_rn(wb, r));
    }
  }
  if (lane == 0) chosen[b] = select_index(scores + b * k, k, sample, tau, sample ? rand[b] : 0.f);
}

}  // namespace

template <typename T>
cudaError_t launch_score_select(const T* cand_hidden, const T* bank_w, const float* bank_b, const int64_t* slot,
                                const float* logprob, const float* weight, int64_t B, int64_t k, int64_t d,
                                bool sample, float tau, const float* rand, int64_t* chosen, float* scores,
                                float* rewards, cudaStream_t stream) {
  if (B == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>((B + kRowsPerBlock - 1) / kRowsPerBlock);
  score_select_kernel<T><<<blocks, 32 * kRowsPerBlock, 0, stream>>>(cand_hidden, bank_w, bank_b, slot, logprob,
                                                                     weight, B, k, d, sample, tau, rand, chosen,
                                                                     scores, rewards);
  return cudaGetLastError();
}

#define RGD_INSTANTIATE(T)                                                                                        \
  template cudaError_t launch_score_select<T>(const T*, const T*, const float*, const int64_t*, const float*,     \
                                              const float*, int64_t, int64_t, int64_t, bool, float, const float*, \
                                              int64_t*, float*, float*, cudaStream_t);
RGD_INSTANTIATE(float)
RGD_INSTANTIATE(__half)
RGD_INSTANTIATE(__nv_bfloat16)
#undef RGD_INSTANTIATE

}  // namespace cuda
}  // namespace rgd
