// rms_norm, per row m of x [M, d] (HF's LlamaRMSNorm, normalized in fp32, the weight applied in T):
//   r_m = 1 / sqrt(sum_i x_mi^2 / d + eps),   y_mi = T( w_i * T(x_mi * r_m) )
// (for T = float both roundings vanish). Why a kernel: in a decode step the op has a few rows of d ~ 1k, so
// torch's composite (widen, pow, mean, rsqrt, mul, narrow, mul: seven ops) costs ~35 us of dispatch for
// ~1 us of arithmetic, twice per layer.
#include "kernels.h"

#include <cmath>
#include <cstring>

namespace rgd {
namespace cpu {
namespace {

inline float widen(float v) { return v; }
inline float widen(BFloat16 v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// round to nearest even (NaN stays a quiet NaN), as c10::BFloat16 does
inline float narrow_as(float v, const float*) { return v; }
inline float narrow_as(float v, const BFloat16*) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  u = (u & 0x7fffffffu) > 0x7f800000u ? 0x7fc00000u : (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  std::memcpy(&v, &u, sizeof(v));
  return v;
}

inline void store(float* y, float v) { *y = v; }
inline void store(BFloat16* y, float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  y->bits = static_cast<uint16_t>(u >> 16);  // v is already a bf16 value (narrow_as)
}

template <typename T>
void rms_norm_impl(const T* x, const T* w, int64_t M, int64_t d, float eps, T* y) {
  for (int64_t m = 0; m < M; ++m) {
    const T* xm = x + m * d;
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < d; ++i) ss += widen(xm[i]) * widen(xm[i]);
    const float r = 1.f / std::sqrt(ss / static_cast<float>(d) + eps);
    for (int64_t i = 0; i < d; ++i)
      store(y + m * d + i, narrow_as(widen(w[i]) * narrow_as(widen(xm[i]) * r, x), x));
  }
}

}  // namespace

void rms_norm(const float* x, const float* w, int64_t M, int64_t d, float eps, float* y) {
  rms_norm_impl(x, w, M, d, eps, y);
}

void rms_norm(const BFloat16* x, const BFloat16* w, int64_t M, int64_t d, float eps, BFloat16* y) {
  rms_norm_impl(x, w, M, d, eps, y);
}

}  // namespace cpu
}  // namespace rgd
