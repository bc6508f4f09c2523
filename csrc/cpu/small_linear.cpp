// small_linear: y = x W^T (+ b) for the few-row inputs of decoding, streaming W once from memory.
//
//   y[m, n] = round_T( sum_k x[m, k] W[n, k]  (+ b[n]) ),   x [M, K], W [N, K] row-major, b [N], y [M, N]
//   accumulated in fp32 (bf16 products are exact in fp32), the bias added in fp32, one rounding to T at the end.
//
// Why: a decode step multiplies M = B * q <= 16 rows by every weight matrix of the model, so its time is the
// time to read the weights. torch's CPU matmul reaches about a third of the read bandwidth on such inputs
// (11 GB/s bf16 on the 2-core EPYC this was written on, against 27-35 GB/s for a plain read); this kernel about
// two thirds at one row. Work split: the N weight rows are cut into groups of NR; each group's NR rows are
// streamed once against MT x rows at a time (further x rows re-read the group from L1). OpenMP splits the groups.
// bf16: VDPBF16PS (32 bf16 products per instruction, summed pairwise in fp32). fp32: VFMADD on 16 lanes.
// The per-(n, m) fp32 sums are reduced across lanes at the end, so the summation order differs from torch's.
#include "kernels.h"

#include "bf16.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>

namespace rgd {
namespace cpu {
namespace {

#if defined(__GNUC__) && defined(__x86_64__)
#define RGD_SMALL_LINEAR 1

// Lane traits: L elements of T per vector, a masked load and one multiply-add step.
struct Bf16Lanes {
  using T = BFloat16;
  static constexpr int L = 32;
  __attribute__((target("avx512f,avx512bw,avx512bf16"))) static inline __m512 mac(__m512 acc, const T* w,
                                                                                  const T* x, __mmask32 m) {
    return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_maskz_loadu_epi16(m, w), (__m512bh)_mm512_maskz_loadu_epi16(m, x));
  }
};

struct F32Lanes {
  using T = float;
  static constexpr int L = 16;
  __attribute__((target("avx512f"))) static inline __m512 mac(__m512 acc, const T* w, const T* x, __mmask32 m) {
    const __mmask16 m16 = static_cast<__mmask16>(m);
    return _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m16, w), _mm512_maskz_loadu_ps(m16, x), acc);
  }
};



inline __mmask32 tail_mask(int64_t left, int L) {
  return left >= L ? static_cast<__mmask32>((uint64_t(1) << L) - 1) : static_cast<__mmask32>((uint64_t(1) << left) - 1);
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positive inside _mm512_reduce_add_ps
// y[m * ldy + n0 + j] for j < NR (rows past N are clamped to row N - 1: computed again, never stored), m < MT,
// with U accumulator sets (U = 2 halves the multiply-add dependency chain of the small tiles). Out: T, or float
// for the LM head's logits.
template <typename Lanes, int NR, int MT, int U, typename Out>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void tile(const typename Lanes::T* x, const typename Lanes::T* w,
                                                                 const typename Lanes::T* bias, int64_t N, int64_t K,
                                                                 int64_t n0, Out* y, int64_t ldy) {
  using T = typename Lanes::T;
  constexpr int L = Lanes::L;
  const T* wr[NR];
  for (int j = 0; j < NR; ++j) wr[j] = w + std::min<int64_t>(n0 + j, N - 1) * K;
  __m512 acc[U][NR][MT];
  for (int u = 0; u < U; ++u)
    for (int j = 0; j < NR; ++j)
      for (int m = 0; m < MT; ++m) acc[u][j][m] = _mm512_setzero_ps();
  const __mmask32 full = tail_mask(L, L);
  int64_t i = 0;
  for (; i + U * L <= K; i += U * L)
    for (int u = 0; u < U; ++u)
      for (int j = 0; j < NR; ++j)
        for (int m = 0; m < MT; ++m)
          acc[u][j][m] = Lanes::mac(acc[u][j][m], wr[j] + i + u * L, x + m * K + i + u * L, full);
  for (; i < K; i += L) {
    const __mmask32 mask = tail_mask(K - i, L);
    for (int j = 0; j < NR; ++j)
      for (int m = 0; m < MT; ++m) acc[0][j][m] = Lanes::mac(acc[0][j][m], wr[j] + i, x + m * K + i, mask);
  }
  for (int j = 0; j < NR && n0 + j < N; ++j)
    for (int m = 0; m < MT; ++m) {
      __m512 sum = acc[0][j][m];
      for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[u][j][m]);
      float v = _mm512_reduce_add_ps(sum);
      if (bias != nullptr) v += to_float(bias[n0 + j]);
      store(y + m * ldy + n0 + j, v);
    }
}
#pragma GCC diagnostic pop

// Register tiles: one x row streams 4 weight rows; more rows take 2 weight rows x 2 x rows per pass (and a
// 2 x 1 tile for an odd row left over). Both with U = 2.
template <typename Lanes>
void run(const typename Lanes::T* x, const typename Lanes::T* w, const typename Lanes::T* bias, int64_t M, int64_t N,
         int64_t K, typename Lanes::T* y) {
  const int64_t nr = M == 1 ? 4 : 2, groups = (N + nr - 1) / nr;
#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t n0 = g * nr;
    if (M == 1) {
      tile<Lanes, 4, 1, 2>(x, w, bias, N, K, n0, y, N);
      continue;
    }
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) tile<Lanes, 2, 2, 2>(x + m * K, w, bias, N, K, n0, y + m * N, N);
    if (m < M) tile<Lanes, 2, 1, 2>(x + m * K, w, bias, N, K, n0, y + m * N, N);
  }
}

template <typename Lanes>
void one_row_logits_impl(const typename Lanes::T* x, const typename Lanes::T* w, int64_t n0, int64_t len, int64_t K,
                         float* y) {
  // the rows [n0, n0 + len) as a matrix of len rows: tiles clamp at its end
  for (int64_t r = 0; r < len; r += 4) tile<Lanes, 4, 1, 2>(x, w + n0 * K, nullptr, len, K, r, y, len);
}

inline bool cpu_has(bool bf16) {
  static const bool f32 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  static const bool b16 = f32 && __builtin_cpu_supports("avx512bf16");
  return bf16 ? b16 : f32;
}
#endif

}  // namespace

#ifdef RGD_SMALL_LINEAR
bool small_linear_is_native(bool bf16) { return cpu_has(bf16); }

void small_linear(const float* x, const float* w, const float* bias, int64_t M, int64_t N, int64_t K, float* y) {
  run<F32Lanes>(x, w, bias, M, N, K, y);
}

void small_linear(const BFloat16* x, const BFloat16* w, const BFloat16* bias, int64_t M, int64_t N, int64_t K,
                  BFloat16* y) {
  run<Bf16Lanes>(x, w, bias, M, N, K, y);
}

void one_row_logits(const float* x, const float* w, int64_t n0, int64_t len, int64_t K, float* y) {
  one_row_logits_impl<F32Lanes>(x, w, n0, len, K, y);
}

void one_row_logits(const BFloat16* x, const BFloat16* w, int64_t n0, int64_t len, int64_t K, float* y) {
  one_row_logits_impl<Bf16Lanes>(x, w, n0, len, K, y);
}
#else
// Not an x86-64 GCC/Clang build: never native, so the binding refuses and lmhead_topk never calls these.
bool small_linear_is_native(bool) { return false; }
void small_linear(const float*, const float*, const float*, int64_t, int64_t, int64_t, float*) {}
void small_linear(const BFloat16*, const BFloat16*, const BFloat16*, int64_t, int64_t, int64_t, BFloat16*) {}
void one_row_logits(const float*, const float*, int64_t, int64_t, int64_t, float*) {}
void one_row_logits(const BFloat16*, const BFloat16*, int64_t, int64_t, int64_t, float*) {}
#endif

}  // namespace cpu
}  // namespace rgd
