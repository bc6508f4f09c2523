// AVX-512 building blocks shared by the few-row CPU kernels (small_linear.cpp, decode_attention.cpp): lane traits
// for float32 and bfloat16 rows, a 16-vector horizontal sum, and exp on 16 lanes. Only on x86-64 GCC/Clang
// builds (RGD_AVX512_LANES); each function carries its own target attribute, so the kernels pick it at run time
// (small_linear_is_native).
#pragma once

#if defined(__GNUC__) && defined(__x86_64__)
#define RGD_AVX512_LANES 1

#include <immintrin.h>

#include <cstdint>

#include "kernels.h"

namespace rgd {
namespace cpu {
namespace lanes {

// Lane traits: L elements of T per vector; load() (full or masked) and dot(), one multiply-add step in fp32.
struct Bf16Lanes {
  using T = BFloat16;
  static constexpr int L = 32;
  __attribute__((target("avx512f,avx512bw"))) static inline __m512i load(const T* p) { return _mm512_loadu_si512(p); }
  __attribute__((target("avx512f,avx512bw"))) static inline __m512i load(const T* p, int64_t n) {
    return _mm512_maskz_loadu_epi16(static_cast<__mmask32>((uint64_t(1) << n) - 1), p);
  }
  __attribute__((target("avx512f,avx512bw,avx512bf16"))) static inline __m512 dot(__m512 acc, __m512i w, __m512i x) {
    return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)x);
  }
};

struct F32Lanes {
  using T = float;
  static constexpr int L = 16;
  __attribute__((target("avx512f"))) static inline __m512 load(const T* p) { return _mm512_loadu_ps(p); }
  __attribute__((target("avx512f"))) static inline __m512 load(const T* p, int64_t n) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
  }
  __attribute__((target("avx512f"))) static inline __m512 dot(__m512 acc, __m512 w, __m512 x) {
    return _mm512_fmadd_ps(w, x, acc);
  }
};

// The 16 vectors a[0..15] -> one vector whose lane j is the sum of a[j]'s lanes. Each a[j] is summed as
// _mm512_reduce_add_ps sums one vector (lanes i + 8, then + 4, + 2, + 1: the same pairs in the same order), so
// the result is bit-identical to 16 such reductions, in 15 shuffle-and-add steps instead of 16 x 4.
__attribute__((target("avx512f"))) inline __m512 sum16(const __m512* a) {
  __m512 b[8], c[4], d[2];
  for (int j = 0; j < 8; ++j)  // 256-bit halves: lanes [0, 8) of b[j] from a[j], [8, 16) from a[j + 8]
    b[j] = _mm512_add_ps(_mm512_shuffle_f32x4(a[j], a[j + 8], 0x44), _mm512_shuffle_f32x4(a[j], a[j + 8], 0xEE));
  for (int j = 0; j < 4; ++j)  // 128-bit blocks: c[j]'s blocks 0 - 3 hold the 4 sums of a[j], a[j + 8], a[j + 4], a[j + 12]
    c[j] = _mm512_add_ps(_mm512_shuffle_f32x4(b[j], b[j + 4], 0x88), _mm512_shuffle_f32x4(b[j], b[j + 4], 0xDD));
  for (int j = 0; j < 2; ++j)  // lanes i + 2 within each block
    d[j] = _mm512_add_ps(_mm512_unpacklo_ps(c[j], c[j + 2]), _mm512_unpackhi_ps(c[j], c[j + 2]));
  // lanes i + 1: block r now holds the sums of a[4 r'], ..., a[4 r' + 3] with r' = 0, 2, 1, 3; swap blocks 1 and 2
  const __m512 e = _mm512_add_ps(_mm512_unpacklo_ps(d[0], d[1]), _mm512_unpackhi_ps(d[0], d[1]));
  return _mm512_shuffle_f32x4(e, e, 0xD8);
}

// 16 floats of p as fp32 lanes: the first n only (the rest 0) when n < 16.
__attribute__((target("avx512f"))) inline __m512 widen16(const float* p, int64_t n = 16) {
  return n >= 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
}
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 widen16(const BFloat16* p, int64_t n = 16) {
  const __m256i h = n >= 16 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                            : _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1), p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));  // bf16 = the float's high half
}

// exp(x) on 16 lanes, to about 1 ulp (Cephes' expf): x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two for an
// exact n ln2), exp(r) by a degree-6 polynomial, times 2^n by VSCALEFPS (which overflows to inf and underflows
// through the subnormals to 0). x below -150 is clamped there (exp = 0); NaN stays NaN.
__attribute__((target("avx512f"))) inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-150.f), x);  // second operand returned for NaN: NaN stays
  x = _mm512_min_ps(_mm512_set1_ps(150.f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

}  // namespace lanes
}  // namespace cpu
}  // namespace rgd
#endif
