// small_linear: y = x W^T (+ b) for the few-row inputs of decoding, streaming W once from memory.
//
//   y[m, n] = round_T( sum_k x[m, k] W[n, k]  (+ b[n]) ),   x [M, K], W [N, K] row-major, b [N], y [M, N]
//   accumulated in fp32 (bf16 products are exact in fp32), the bias added in fp32, one rounding to T at the end.
//
// Why: a decode step multiplies M = B * q <= 16 rows by every weight matrix of the model, so its time is the
// time to read the weights. torch's CPU matmul reaches about a third of the read bandwidth on such inputs
// (11 GB/s bf16 on the 2-core EPYC this was written on, against 27-55 GB/s for a plain read); this kernel reads
// at about the plain read's rate. Work split: the N weight rows are cut into groups of 16; a group reads its
// rows one after the other, front to back (one sequential stream: tiles that interleaved 2 - 4 rows reached two
// thirds of the rate), prefetching a few KiB ahead into L2, each row against up to 8 x rows held in L1 (more
// x rows: passes that read weight rows in pairs, see group_rows). OpenMP splits the groups.
// bf16: VDPBF16PS (32 bf16 products per instruction, summed pairwise in fp32).
// fp32: VFMADD on 16 lanes. Each (n, m) sum is reduced across lanes at the end (sum16), so the summation order
// differs from torch's.
#include "kernels.h"

#include "bf16.h"
#include "lanes.h"

#include <algorithm>

namespace rgd {
namespace cpu {
namespace {

#ifdef RGD_AVX512_LANES
#define RGD_SMALL_LINEAR 1
using lanes::Bf16Lanes;
using lanes::F32Lanes;
using lanes::sum16;

constexpr int GROUP = 16;       // weight rows per group: one sum16 per x row
constexpr int MAX_MT_PAIR = 6;  // x rows per pass when weight rows go in pairs: 24 accumulators of 32 registers
// Bytes ahead of the current weight load that each load prefetches into L2. The hardware prefetcher alone
// fell behind once a cache line took more than a few cycles of arithmetic: with it, 8 x rows went from 14 to
// 29 GB/s and one row from 26 to 29 GB/s (demo-model shapes, 2-core EPYC; 4 - 16 KiB did about as well).
constexpr int PREFETCH_BYTES = 8192;

// The dot products of R consecutive weight rows wr[0 .. R) (row stride K) with the MT x rows, into
// sums[m][j + r]. Per (row, x row): two accumulators, even and odd blocks of L (the tail block into the first),
// then their sum; so the result does not depend on R. R = 1 reads one weight row front to back (one sequential
// stream: what a memory-bound pass of 1 - 2 x rows wants); R = 2 loads each x block once for two weight rows,
// halving the x loads that bound a pass of many x rows.
template <typename Lanes, int MT, int R>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline void rows_dot(const typename Lanes::T* x,
                                                                            const typename Lanes::T* wr, int64_t K,
                                                                            __m512 (*sums)[GROUP], int j) {
  constexpr int L = Lanes::L;
  __m512 a0[R][MT], a1[R][MT];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MT; ++m) a0[r][m] = a1[r][m] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 2 * L <= K; i += 2 * L) {
    decltype(Lanes::load(wr)) w0[R], w1[R];
    for (int r = 0; r < R; ++r) {
      const auto* p = wr + r * K + i;  // 2 L elements: two cache lines
      w0[r] = Lanes::load(p);
      w1[r] = Lanes::load(p + L);
      _mm_prefetch(reinterpret_cast<const char*>(p) + PREFETCH_BYTES, _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(p) + PREFETCH_BYTES + 64, _MM_HINT_T1);
    }
    for (int m = 0; m < MT; ++m) {
      const auto x0 = Lanes::load(x + m * K + i), x1 = Lanes::load(x + m * K + i + L);
      for (int r = 0; r < R; ++r) {
        a0[r][m] = Lanes::dot(a0[r][m], w0[r], x0);
        a1[r][m] = Lanes::dot(a1[r][m], w1[r], x1);
      }
    }
  }
  for (; i < K; i += L) {
    const int64_t n = std::min<int64_t>(L, K - i);
    decltype(Lanes::load(wr)) w0[R];
    for (int r = 0; r < R; ++r) w0[r] = Lanes::load(wr + r * K + i, n);
    for (int m = 0; m < MT; ++m) {
      const auto x0 = Lanes::load(x + m * K + i, n);
      for (int r = 0; r < R; ++r) a0[r][m] = Lanes::dot(a0[r][m], w0[r], x0);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MT; ++m) sums[m][j + r] = _mm512_add_ps(a0[r][m], a1[r][m]);
}

// y[m * ldy + n0 + j] for the weight rows n0 + j < N, j < GROUP, and the x rows m < MT: the group's rows in
// memory order, R at a time (the last odd row alone), each against the MT x rows (which stay in L1); sum16
// reduces a group's 16 rows at once. Out: T, or float for the LM head's logits.
template <typename Lanes, int MT, int R, typename Out>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void group(const typename Lanes::T* x, const typename Lanes::T* w,
                                                                  const typename Lanes::T* bias, int64_t N, int64_t K,
                                                                  int64_t n0, Out* y, int64_t ldy) {
  const int rows = static_cast<int>(std::min<int64_t>(GROUP, N - n0));
  __m512 sums[MT][GROUP];
  int j = 0;
  for (; j + R <= rows; j += R) rows_dot<Lanes, MT, R>(x, w + (n0 + j) * K, K, sums, j);
  for (; j < rows; ++j) rows_dot<Lanes, MT, 1>(x, w + (n0 + j) * K, K, sums, j);
  for (j = rows; j < GROUP; ++j)
    for (int m = 0; m < MT; ++m) sums[m][j] = _mm512_setzero_ps();
  alignas(64) float out[GROUP];
  for (int m = 0; m < MT; ++m) {
    _mm512_store_ps(out, sum16(sums[m]));
    for (j = 0; j < rows; ++j) store(y + m * ldy + n0 + j, bias != nullptr ? out[j] + to_float(bias[n0 + j]) : out[j]);
  }
}

// One group against x rows [0, M): up to 8 rows (16 accumulators) in one pass that reads each weight row once,
// one at a time; more rows in passes of at most MAX_MT_PAIR rows, sizes balanced (10 = 5 + 5), reading weight rows in
// pairs: the later passes re-read the group's rows from cache, and there the x loads that pairs halve bound the
// time (10 rows: 10.0 -> 9.0 ms for a step's projections; at 8 rows one pass beat 4 + 4 paired).
template <typename Lanes, typename Out>
void group_rows(const typename Lanes::T* x, const typename Lanes::T* w, const typename Lanes::T* bias, int64_t M,
                int64_t N, int64_t K, int64_t n0, Out* y, int64_t ldy) {
  switch (M) {
    case 1: return group<Lanes, 1, 1>(x, w, bias, N, K, n0, y, ldy);
    case 2: return group<Lanes, 2, 1>(x, w, bias, N, K, n0, y, ldy);
    case 3: return group<Lanes, 3, 1>(x, w, bias, N, K, n0, y, ldy);
    case 4: return group<Lanes, 4, 1>(x, w, bias, N, K, n0, y, ldy);
    case 5: return group<Lanes, 5, 1>(x, w, bias, N, K, n0, y, ldy);
    case 6: return group<Lanes, 6, 1>(x, w, bias, N, K, n0, y, ldy);
    case 7: return group<Lanes, 7, 1>(x, w, bias, N, K, n0, y, ldy);
    case 8: return group<Lanes, 8, 1>(x, w, bias, N, K, n0, y, ldy);
  }
  const int64_t passes = (M + MAX_MT_PAIR - 1) / MAX_MT_PAIR;
  for (int64_t p = 0, m0 = 0; p < passes; ++p) {
    const int64_t mt = (M - m0) / (passes - p);  // the remaining rows over the remaining passes: <= MAX_MT_PAIR
    const auto* xm = x + m0 * K;
    Out* ym = y + m0 * ldy;
    switch (mt) {
      case 1: group<Lanes, 1, 2>(xm, w, bias, N, K, n0, ym, ldy); break;
      case 2: group<Lanes, 2, 2>(xm, w, bias, N, K, n0, ym, ldy); break;
      case 3: group<Lanes, 3, 2>(xm, w, bias, N, K, n0, ym, ldy); break;
      case 4: group<Lanes, 4, 2>(xm, w, bias, N, K, n0, ym, ldy); break;
      case 5: group<Lanes, 5, 2>(xm, w, bias, N, K, n0, ym, ldy); break;
      default: group<Lanes, 6, 2>(xm, w, bias, N, K, n0, ym, ldy); break;
    }
    m0 += mt;
  }
}

template <typename Lanes>
void run(const typename Lanes::T* x, const typename Lanes::T* w, const typename Lanes::T* bias, int64_t M, int64_t N,
         int64_t K, typename Lanes::T* y) {
  const int64_t groups = (N + GROUP - 1) / GROUP;
#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < groups; ++g) group_rows<Lanes>(x, w, bias, M, N, K, g * GROUP, y, N);
}

template <typename Lanes>
void one_row_logits_impl(const typename Lanes::T* x, const typename Lanes::T* w, int64_t n0, int64_t len, int64_t K,
                         float* y) {
  // the rows [n0, n0 + len) as a matrix of len rows
  for (int64_t r = 0; r < len; r += GROUP) group<Lanes, 1, 1>(x, w + n0 * K, nullptr, len, K, r, y, len);
}

inline bool cpu_has(bool bf16) {
  static const bool f32 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl");  // VL: decode_attention's 256-bit masked loads
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
