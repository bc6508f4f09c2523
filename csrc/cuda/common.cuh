// Device helpers shared by the kernels (element conversion, warp reductions).
#pragma once

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

}  // namespace cuda
}  // namespace rgd
