// rms_norm, per row m of x [M, d] (HF's LlamaRMSNorm, normalized in fp32, the weight applied in T):
//   r_m = 1 / sqrt(sum_i x_mi^2 / d + eps),   y_mi = T( w_i * T(x_mi * r_m) )
// (for T = float both roundings vanish). Why a kernel: in a decode step the op has a few rows of d ~ 1k, so
// torch's composite (widen, pow, mean, rsqrt, mul, narrow, mul: seven ops) costs ~35 us of dispatch for
// ~1 us of arithmetic, twice per layer.
#include "kernels.h"

#include "bf16.h"

#include <cmath>

namespace rgd {
namespace cpu {
namespace {

template <typename T>
void rms_norm_impl(const T* x, const T* w, int64_t M, int64_t d, float eps, T* y) {
  for (int64_t m = 0; m < M; ++m) {
    const T* xm = x + m * d;
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < d; ++i) ss += to_float(xm[i]) * to_float(xm[i]);
    const float r = 1.f / std::sqrt(ss / static_cast<float>(d) + eps);
    for (int64_t i = 0; i < d; ++i)
      store(y + m * d + i, to_float(w[i]) * round_as(to_float(xm[i]) * r, x));
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
