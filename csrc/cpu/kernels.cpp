// Fused CPU kernels.
//
// lmhead_topk, per row b:   z_v = h_b . W_v                      (v = 0..V-1, never stored as [B, V])
//   lse_b = m + log(sum_v exp(z_v - m)),  m = max_v z_v             (log-sum-exp, merged across V-chunks:
//   chunk c contributes (m_c, s_c) and  s = sum_c s_c * exp(m_c - m))
//   top-k of z by (value desc, id asc); logprob = z - lse_b.
// Work split: V is cut into chunks of kChunkRows W rows; each OpenMP task streams one chunk once for all
// B rows (blocks of 4 W rows stay in L1 while they are dotted with every h_b, two h_b at a time) and keeps
// per-(chunk, row) partials; a second stage merges the partials of each row.
// bf16 hidden and weight on a CPU with AVX512-BF16: the chunk logits come from VDPBF16PS (32 bf16 products
// per instruction, exact in fp32, accumulated in fp32), a 4 W rows x 4 h rows register tile; otherwise the
// hidden rows are widened to fp32 and the portable loops above run (same maths, other summation order).
// One hidden row (B = 1, a decode step: bandwidth bound) on a CPU with AVX-512, in fp32 or bf16: the chunk
// logits come from small_linear's row groups (small_linear.cpp), which stream W faster.
//
// score_select, per row b with u = slot_b:
//   r_j = W_u . c_j + b_u (0 when u = -1),  s_j = logprob_j + weight_b * r_j
//   -inf rule (both ops): logprob_j = -inf -> s_j = -inf whatever w_b and r_j (never nan from -inf + inf).
//   greedy: first argmax of s;  sample: p_j = exp((s_j - max s) / tau), the first j with
//   cumsum(p)_j > rand_b * sum(p)  (same arithmetic as reference.inverse_cdf_choice).
//
// gather_score_select, per row b with candidate token ids v_j = cand_ids_bj:
//   r_j = E_{v_j} . q_b + offset_b - ratio * logprob_j,  s_j = logprob_j + weight_b * r_j
//   selection as in score_select (select_index).
//   -inf rule: the ratio term only when ratio != 0; logprob_j = -inf -> s_j = -inf, never chosen (all -inf -> 0).
#include "kernels.h"

#include "bf16.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace rgd {
namespace cpu {
namespace {

constexpr int64_t kChunkRows = 256;  // 256 rows x d=576 x 4 B = 590 KB of W per task
constexpr float kNegInf = -std::numeric_limits<float>::infinity();


// omp simd reduction lets the compiler split the sum into SIMD lanes without -ffast-math.
template <typename T>
inline float dot(const float* a, const T* b, int64_t d) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < d; ++i) acc += a[i] * to_float(b[i]);
  return acc;
}

// Register blocking: 4 W rows x NB hidden rows per pass gives 4 * NB independent SIMD accumulator chains
// and loads each W element once per NB hidden rows (SSE2 has 16 vector registers: NB <= 2 fits).
template <typename T>
inline void dot4x1(const float* h, const T* w, int64_t d, float* out) {
  const T *w0 = w, *w1 = w + d, *w2 = w + 2 * d, *w3 = w + 3 * d;
  float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
  for (int64_t i = 0; i < d; ++i) {
    a0 += h[i] * to_float(w0[i]);
    a1 += h[i] * to_float(w1[i]);
    a2 += h[i] * to_float(w2[i]);
    a3 += h[i] * to_float(w3[i]);
  }
  out[0] = a0, out[1] = a1, out[2] = a2, out[3] = a3;
}

template <typename T>
inline void dot4x2(const float* h, const float* g, const T* w, int64_t d, float* out_h, float* out_g) {
  const T *w0 = w, *w1 = w + d, *w2 = w + 2 * d, *w3 = w + 3 * d;
  float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f, c0 = 0.f, c1 = 0.f, c2 = 0.f, c3 = 0.f;
#pragma omp simd reduction(+ : a0, a1, a2, a3, c0, c1, c2, c3)
  for (int64_t i = 0; i < d; ++i) {
    const float x0 = to_float(w0[i]), x1 = to_float(w1[i]), x2 = to_float(w2[i]), x3 = to_float(w3[i]);
    a0 += h[i] * x0;
    a1 += h[i] * x1;
    a2 += h[i] * x2;
    a3 += h[i] * x3;
    c0 += g[i] * x0;
    c1 += g[i] * x1;
    c2 += g[i] * x2;
    c3 += g[i] * x3;
  }
  out_h[0] = a0, out_h[1] = a1, out_h[2] = a2, out_h[3] = a3;
  out_g[0] = c0, out_g[1] = c1, out_g[2] = c2, out_g[3] = c3;
}

// tile[b * kChunkRows + r] = h_b . W_{v0 + r} for r < len, b < B
template <typename T>
inline void chunk_logits(const float* hidden, const T* weight, int64_t B, int64_t d, int64_t v0, int64_t len,
                         float* tile) {
  int64_t r = 0;
  for (; r + 4 <= len; r += 4) {
    const T* w = weight + (v0 + r) * d;
    int64_t b = 0;
    for (; b + 2 <= B; b += 2)
      dot4x2(hidden + b * d, hidden + (b + 1) * d, w, d, tile + b * kChunkRows + r, tile + (b + 1) * kChunkRows + r);
    if (b < B) dot4x1(hidden + b * d, w, d, tile + b * kChunkRows + r);
  }
  for (; r < len; ++r)
    for (int64_t b = 0; b < B; ++b) tile[b * kChunkRows + r] = dot(hidden + b * d, weight + (v0 + r) * d, d);
}

#if defined(__GNUC__) && defined(__x86_64__)
#define RGD_DPBF16 1
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positive inside _mm512_reduce_add_ps
// tile[b * kChunkRows + r] = h_b . W_{v0 + r} for r < len, b < B, from NR W rows x NB h rows per pass.
// Rows past the end are clamped to the last valid row (computed again, never stored), so every pass runs the
// same fully unrolled register tile; the tail of d is a masked load (zeros contribute nothing).
template <int NR, int NB>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void dpbf16_tile(const BFloat16* hidden, int64_t b0,
                                                                          int64_t B, const BFloat16* weight,
                                                                          int64_t v0, int64_t len, int64_t d,
                                                                          float* tile) {
  for (int64_t r = 0; r < len; r += NR) {
    const uint16_t* w[NR];
    const uint16_t* h[NB];
    for (int j = 0; j < NR; ++j) w[j] = &weight[(v0 + std::min<int64_t>(r + j, len - 1)) * d].bits;
    for (int q = 0; q < NB; ++q) h[q] = &hidden[std::min<int64_t>(b0 + q, B - 1) * d].bits;
    __m512 acc[NR][NB];
    for (int j = 0; j < NR; ++j)
      for (int q = 0; q < NB; ++q) acc[j][q] = _mm512_setzero_ps();
    for (int64_t i = 0; i < d; i += 32) {
      const __mmask32 m = d - i >= 32 ? ~__mmask32(0) : (__mmask32(1) << (d - i)) - 1;
      __m512bh wv[NR], hv[NB];
      for (int j = 0; j < NR; ++j) wv[j] = (__m512bh)_mm512_maskz_loadu_epi16(m, w[j] + i);
      for (int q = 0; q < NB; ++q) hv[q] = (__m512bh)_mm512_maskz_loadu_epi16(m, h[q] + i);
      for (int j = 0; j < NR; ++j)
        for (int q = 0; q < NB; ++q) acc[j][q] = _mm512_dpbf16_ps(acc[j][q], wv[j], hv[q]);
    }
    for (int j = 0; j < NR && r + j < len; ++j)
      for (int q = 0; q < NB && b0 + q < B; ++q) tile[(b0 + q) * kChunkRows + r + j] = _mm512_reduce_add_ps(acc[j][q]);
  }
}

inline bool cpu_has_dpbf16() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512bf16");
  return ok;
}

// chunk_logits for bf16 hidden rows: groups of 4 h rows, then the 1-3 left over (8 W rows per pass for one).
inline void chunk_logits_dpbf16(const BFloat16* hidden, const BFloat16* weight, int64_t B, int64_t d, int64_t v0,
                                int64_t len, float* tile) {
  int64_t b = 0;
  for (; b + 4 <= B; b += 4) dpbf16_tile<4, 4>(hidden, b, B, weight, v0, len, d, tile);
  if (B - b == 3) dpbf16_tile<4, 3>(hidden, b, B, weight, v0, len, d, tile);
  if (B - b == 2) dpbf16_tile<4, 2>(hidden, b, B, weight, v0, len, d, tile);
  if (B - b == 1) dpbf16_tile<8, 1>(hidden, b, B, weight, v0, len, d, tile);
}
#pragma GCC diagnostic pop
#endif

template <typename T>
inline float dot2(const T* a, const T* b, int64_t d) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < d; ++i) acc += to_float(a[i]) * to_float(b[i]);
  return acc;
}

// Sorted (value desc, id asc) list of at most `cap` entries. Values arrive in ascending id order, so an
// equal value never displaces an earlier one: insertion is strict.
struct TopK {
  float* val;
  int64_t* id;
  int64_t cap;
  int64_t n = 0;

  inline void push(float x, int64_t i) {
    if (n == cap) {
      if (!(x > val[n - 1])) return;
      --n;
    }
    int64_t pos = n;
    while (pos > 0 && val[pos - 1] < x) {
      val[pos] = val[pos - 1];
      id[pos] = id[pos - 1];
      --pos;
    }
    val[pos] = x;
    id[pos] = i;
    ++n;
  }
};

// (max, sum exp(z - max)) of one chunk of logits; an all -inf chunk gives (-inf, 0).
inline void chunk_lse(const float* z, int64_t n, float* m_out, float* s_out) {
  float m = kNegInf;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, z[i]);
  double s = 0.0;
  if (m != kNegInf) {
    for (int64_t i = 0; i < n; ++i) s += std::exp(z[i] - m);  // float exp, double sum
  }
  *m_out = m;
  *s_out = static_cast<float>(s);
}

inline bool before(float va, int64_t ia, float vb, int64_t ib) { return va > vb || (va == vb && ia < ib); }

// Chosen index of one row's scores s[0..k), k >= 1: the first argmax (greedy), or the inverse-CDF draw at
// `rand` from softmax(s / tau) (sample). A -inf score is never chosen unless the whole row is -inf (then 0).
inline int64_t select_index(const float* s, int64_t k, bool sample, float tau, float rand) {
  int64_t best = 0;
  for (int64_t j = 1; j < k; ++j)
    if (s[j] > s[best]) best = j;
  if (!sample) return best;
  const float m = s[best];
  // Same arithmetic as the reference: float exp of (s - m) / tau, cumsum accumulated in double and
  // rounded to float per element (torch's CPU cumsum), target = rand * total in float.
  std::vector<float> c(k);
  double acc = 0.0;
  int64_t last_nonzero = 0;
  for (int64_t j = 0; j < k; ++j) {
    const float p = std::exp((s[j] - m) / tau);
    if (p > 0.f) last_nonzero = j;
    acc += p;
    c[j] = static_cast<float>(acc);
  }
  const float target = rand * c[k - 1];
  for (int64_t j = 0; j < k; ++j)
    if (c[j] > target) return j;
  return last_nonzero;  // rounding can leave no hit: take the last non-zero candidate
}

}  // namespace

namespace {
// chunk(v0, len, tile) fills tile[b * kChunkRows + r] = logit of row b, vocabulary entry v0 + r.
template <typename ChunkFn>
void lmhead_topk_impl(ChunkFn chunk, int64_t B, int64_t V, int64_t k, float* logprob, int64_t* ids, float* lse) {
  const int64_t n_chunks = (V + kChunkRows - 1) / kChunkRows;
  const int64_t kc = std::min(k, kChunkRows);  // a chunk can contribute at most kc candidates
  // partials indexed [chunk, b]
  std::vector<float> part_m(n_chunks * B), part_s(n_chunks * B), part_val(n_chunks * B * kc);
  std::vector<int64_t> part_id(n_chunks * B * kc), part_n(n_chunks * B);

#pragma omp parallel
  {
    std::vector<float> tile(B * kChunkRows);  // [B, kChunkRows] logits of one chunk
#pragma omp for schedule(static)
    for (int64_t c = 0; c < n_chunks; ++c) {
      const int64_t v0 = c * kChunkRows, len = std::min(kChunkRows, V - v0);
      chunk(v0, len, tile.data());
      for (int64_t b = 0; b < B; ++b) {
        const float* z = tile.data() + b * kChunkRows;
        const int64_t p = c * B + b;
        chunk_lse(z, len, &part_m[p], &part_s[p]);
        TopK top{part_val.data() + p * kc, part_id.data() + p * kc, std::min(kc, len)};
        for (int64_t r = 0; r < len; ++r) top.push(z[r], v0 + r);
        part_n[p] = top.n;
      }
    }

    // Stage 2: merge the chunk partials of each row.
    std::vector<std::pair<float, int64_t>> cand;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      float m = kNegInf;
      for (int64_t c = 0; c < n_chunks; ++c) m = std::max(m, part_m[c * B + b]);
      double s = 0.0;
      for (int64_t c = 0; c < n_chunks; ++c) {
        const float mc = part_m[c * B + b];
        if (mc != kNegInf) s += static_cast<double>(part_s[c * B + b]) * std::exp(static_cast<double>(mc - m));
      }
      const float row_lse = m == kNegInf ? kNegInf : static_cast<float>(static_cast<double>(m) + std::log(s));
      lse[b] = row_lse;

      cand.clear();
      for (int64_t c = 0; c < n_chunks; ++c) {
        const int64_t p = c * B + b;
        for (int64_t i = 0; i < part_n[p]; ++i) cand.emplace_back(part_val[p * kc + i], part_id[p * kc + i]);
      }
      std::partial_sort(cand.begin(), cand.begin() + k, cand.end(), [](const auto& x, const auto& y) {
        return before(x.first, x.second, y.first, y.second);
      });
      for (int64_t j = 0; j < k; ++j) {
        logprob[b * k + j] = cand[j].first - row_lse;
        ids[b * k + j] = cand[j].second;
      }
    }
  }
}
}  // namespace

template <typename T>
void lmhead_topk(const float* hidden, const T* weight, int64_t B, int64_t V, int64_t d, int64_t k,
                 float* logprob, int64_t* ids, float* lse) {
  if constexpr (std::is_same_v<T, float>) {
    if (B == 1 && small_linear_is_native(false)) {  // one row: bandwidth bound, small_linear's AVX-512 tiles
      lmhead_topk_impl([&](int64_t v0, int64_t len, float* tile) { one_row_logits(hidden, weight, v0, len, d, tile); },
                       B, V, k, logprob, ids, lse);
      return;
    }
  }
  lmhead_topk_impl([&](int64_t v0, int64_t len, float* tile) { chunk_logits(hidden, weight, B, d, v0, len, tile); },
                   B, V, k, logprob, ids, lse);
}

void lmhead_topk_bf16(const BFloat16* hidden, const BFloat16* weight, int64_t B, int64_t V, int64_t d, int64_t k,
                      float* logprob, int64_t* ids, float* lse) {
  if (B == 1 && small_linear_is_native(true)) {
    lmhead_topk_impl([&](int64_t v0, int64_t len, float* tile) { one_row_logits(hidden, weight, v0, len, d, tile); },
                     B, V, k, logprob, ids, lse);
    return;
  }
#ifdef RGD_DPBF16
  if (cpu_has_dpbf16()) {
    lmhead_topk_impl(
        [&](int64_t v0, int64_t len, float* tile) { chunk_logits_dpbf16(hidden, weight, B, d, v0, len, tile); }, B,
        V, k, logprob, ids, lse);
    return;
  }
#endif
  std::vector<float> wide(B * d);  // bf16 -> fp32 is exact
  for (int64_t i = 0; i < B * d; ++i) wide[i] = to_float(hidden[i]);
  lmhead_topk(wide.data(), weight, B, V, d, k, logprob, ids, lse);
}

bool lmhead_topk_bf16_is_native() {
#ifdef RGD_DPBF16
  return cpu_has_dpbf16();
#else
  return false;
#endif
}

template <typename T>
void score_select(const T* cand_hidden, const T* bank_w, const float* bank_b, const int64_t* slot,
                  const float* logprob, const float* weight, int64_t B, int64_t k, int64_t d, bool sample,
                  float tau, const float* rand, int64_t* chosen, float* scores, float* rewards) {
  // Threads only pay off for big batches; a decode step (B <= 16, k = 10) runs in microseconds.
#pragma omp parallel for schedule(static) if (B * k * d >= (1 << 18))
  for (int64_t b = 0; b < B; ++b) {
    float* s = scores + b * k;
    float* r = rewards + b * k;
    const int64_t u = slot[b];
    for (int64_t j = 0; j < k; ++j) {
      const float lp = logprob[b * k + j];
      r[j] = u < 0 ? 0.f : dot2(cand_hidden + (b * k + j) * d, bank_w + u * d, d) + bank_b[u];
      s[j] = lp == kNegInf ? kNegInf : lp + weight[b] * r[j];  // the -inf rule (see the top of the file)
    }
    chosen[b] = select_index(s, k, sample, tau, sample ? rand[b] : 0.f);
  }
}

template <typename T>
void gather_score_select(const float* query, const T* emb, const int64_t* cand_ids, const float* offset,
                         const float* logprob, const float* weight, float ratio, int64_t B, int64_t k, int64_t d,
                         bool sample, float tau, const float* rand, int64_t* chosen, float* scores, float* rewards) {
  // Same threading rule as score_select: a decode step is far too small to pay for a parallel region.
#pragma omp parallel for schedule(static) if (B * k * d >= (1 << 18))
  for (int64_t b = 0; b < B; ++b) {
    float* s = scores + b * k;
    float* r = rewards + b * k;
    const float* q = query + b * d;
    for (int64_t j = 0; j < k; ++j) {
      const float lp = logprob[b * k + j];
      // (dot + offset) - ratio * lp, in that order: the reference's float32 arithmetic. ratio 0 skips the
      // term (0 * -inf would be nan); a -inf logprob scores -inf whatever the weight and reward.
      float rj = dot(q, emb + cand_ids[b * k + j] * d, d) + offset[b];
      if (ratio != 0.f) rj -= ratio * lp;
      r[j] = rj;
      s[j] = lp == kNegInf ? kNegInf : lp + weight[b] * rj;
    }
    chosen[b] = select_index(s, k, sample, tau, sample ? rand[b] : 0.f);
  }
}

template void lmhead_topk<float>(const float*, const float*, int64_t, int64_t, int64_t, int64_t, float*, int64_t*,
                                 float*);
template void lmhead_topk<BFloat16>(const float*, const BFloat16*, int64_t, int64_t, int64_t, int64_t, float*,
                                    int64_t*, float*);
template void score_select<float>(const float*, const float*, const float*, const int64_t*, const float*,
                                  const float*, int64_t, int64_t, int64_t, bool, float, const float*, int64_t*,
                                  float*, float*);
template void score_select<BFloat16>(const BFloat16*, const BFloat16*, const float*, const int64_t*, const float*,
                                     const float*, int64_t, int64_t, int64_t, bool, float, const float*, int64_t*,
                                     float*, float*);
template void gather_score_select<float>(const float*, const float*, const int64_t*, const float*, const float*,
                                         const float*, float, int64_t, int64_t, int64_t, bool, float, const float*,
                                         int64_t*, float*, float*);
template void gather_score_select<BFloat16>(const float*, const BFloat16*, const int64_t*, const float*,
                                            const float*, const float*, float, int64_t, int64_t, int64_t, bool, float,
                                            const float*, int64_t*, float*, float*);

}  // namespace cpu
}  // namespace rgd
