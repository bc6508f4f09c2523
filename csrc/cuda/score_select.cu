// Fused ARGS score + select.
//
// One warp per row b with head u = slot[b]:
//   r_j = W_u . c_j + b_u (0 when u = -1)      (lanes stride d, warp-sum)
//   s_j = logprob_j + weight_b * r_j           (separate multiply and add, as the reference: no FMA)
//   greedy: first argmax of s.  sample: p_j = exp((s_j - max s) / tau); chosen = first j with
//   cumsum(p)_j > rand_b * sum(p), cumsum accumulated in double and rounded to float per element (the
//   arithmetic of torch's CPU cumsum in reference.inverse_cdf_choice); no hit -> last j with p_j > 0.
#include <cmath>

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
      scores[b * k + j] = __fadd_rn(logprob[b * k + j], __fmul_rn(wb, r));
    }
  }
  if (lane != 0) return;
  const float* s = scores + b * k;
  int64_t best = 0;
  for (int64_t j = 1; j < k; ++j)
    if (s[j] > s[best]) best = j;
  if (sample) {
    const float m = s[best];
    double total = 0.0;
    int64_t last_nonzero = 0;
    for (int64_t j = 0; j < k; ++j) {
      const float p = expf(__fdiv_rn(__fsub_rn(s[j], m), tau));
      if (p > 0.f) last_nonzero = j;
      total += p;
    }
    const float target = __fmul_rn(rand[b], static_cast<float>(total));
    best = last_nonzero;
    double acc = 0.0;
    for (int64_t j = 0; j < k; ++j) {
      acc += expf(__fdiv_rn(__fsub_rn(s[j], m), tau));
      if (static_cast<float>(acc) > target) {
        best = j;
        break;
      }
    }
  }
  chosen[b] = best;
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
