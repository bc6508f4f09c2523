// Device helpers shared by the kernels (element conversion, warp reductions, candidate selection).
#pragma once

#include <cmath>
#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace rgd {
namespace cuda {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// (value desc, id asc): true when (va, ia) ranks before (vb, ib). id < 0 means "no entry" and ranks last.
__device__ __forceinline__ bool ranks_before(float va, int64_t ia, float vb, int64_t ib) {
  if (ia < 0) return false;
  if (ib < 0) return true;
  return va > vb || (va == vb && ia < ib);
}

// Warp-wide best (value desc, id asc) entry; every lane gets the result.
__device__ __forceinline__ void warp_best(float& v, int64_t& id) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int64_t oid = __shfl_xor_sync(0xffffffffu, id, o);
    if (ranks_before(ov, oid, v, id)) {
      v = ov;
      id = oid;
    }
  }
}

// Chosen index of one row's scores s[0..k), k >= 1, by one thread.
//   greedy: first argmax of s.  sample: p_j = exp((s_j - max s) / tau); chosen = first j with
//   cumsum(p)_j > rand * sum(p), cumsum accumulated in double and rounded to float per element (the
//   arithmetic of torch's CPU cumsum in reference.inverse_cdf_choice); no hit -> last j with p_j > 0.
//   A -inf score is never chosen (p_j = 0; greedy's strict > skips it) unless the whole row is -inf: then 0.
// The _rn intrinsics keep nvcc from contracting into FMAs the reference does not do.
__device__ inline int64_t select_index(const float* s, int64_t k, bool sample, float tau, float rand) {
  int64_t best = 0;
  for (int64_t j = 1; j < k; ++j)
    if (s[j] > s[best]) best = j;
  if (!sample) return best;
  const float m = s[best];
  double total = 0.0;
  int64_t last_nonzero = 0;
  for (int64_t j = 0; j < k; ++j) {
    const float p = expf(__fdiv_rn(__fsub_rn(s[j], m), tau));
    if (p > 0.f) last_nonzero = j;
    total += p;
  }
  const float target = __fmul_rn(rand, static_cast<float>(total));
  double acc = 0.0;
  for (int64_t j = 0; j < k; ++j) {
    acc += expf(__fdiv_rn(__fsub_rn(s[j], m), tau));
    if (static_cast<float>(acc) > target) return j;
  }
  return last_nonzero;
}

}  // namespace cuda
}  // namespace rgd
