// decode_attention: the attention of a step's few query rows over the KV cache (DecoderStack's attention).
//
// For batch row b, step row t, query head h (kv head c = h / g, g = H / Hkv), over the used slots s < T:
//   e_s = (q_bth . k_bcs) / sqrt(D) + mask[b, t, s],
//   out[b, t, h] = T( sum_s exp(e_s - max e) v_bcs / sum_s exp(e_s - max e) )
// q . k summed in fp32 (bf16: VDPBF16PS, exact products summed pairwise), softmax and the weighted sum of V in fp32,
// one rounding to T at the end. torch's CPU attention (flash attention) rounds the probabilities to T before
// multiplying V, and sums in another order, so the two agree to T's rounding, not bit for bit.
//
// Why: a step of 1 - 16 rows spends 35 - 120 us per layer in torch's scaled_dot_product_attention (2 - 4 ms of a
// 10 - 16 ms bf16 step of the demo model), mostly in setting up its blocked kernel; the arithmetic is a few us.
// Work split: one job per (b, c) reads that kv head's K and V once for all g nq query rows sharing it (or for a
// part of them, when there are too few kv heads for the threads). Per job:
// (1) scores, 16 slots at a time: one accumulator per slot, reduced across lanes by one sum16; (2) per row, max,
// exp (16 lanes) and sum; (3) P V: V's rows widened to fp32 once per slot and multiplied into the accumulators
// of up to 16 / NC rows (NC = 16-lane column chunks, columns in slices of 8 chunks).
#include "kernels.h"

#include "bf16.h"
#include "lanes.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace rgd {
namespace cpu {
namespace {

#ifdef RGD_AVX512_LANES
using lanes::Bf16Lanes;
using lanes::F32Lanes;

constexpr int SLOTS = 16;         // slots per score block: one sum16
constexpr int MAX_CHUNKS = 8;     // 16-lane column chunks per P V slice (128 columns)
constexpr int ACCUMULATORS = 16;  // P V accumulators: RB rows x NC chunks, with NC loaded V chunks in registers

// out rows [r0, r0 + RB) (of R), columns [d0, d0 + 16 NC) clipped to D: sum_s p[r, s] v_s (p [R + RB, T], rows past
// R zero) times inv[r].
template <typename T, int NC>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void weighted_values(const float* p, const float* inv,
                                                                          const T* v, int64_t R, int64_t T_, int64_t D,
                                                                          int64_t d0, int64_t r0, T* const* rows) {
  constexpr int RB = ACCUMULATORS / NC;
  __m512 acc[RB][NC];
  for (int i = 0; i < RB; ++i)
    for (int c = 0; c < NC; ++c) acc[i][c] = _mm512_setzero_ps();
  int64_t width[NC];
  for (int c = 0; c < NC; ++c) width[c] = std::clamp<int64_t>(D - d0 - 16 * c, 0, 16);
  for (int64_t s = 0; s < T_; ++s) {
    __m512 vs[NC];
    for (int c = 0; c < NC; ++c) vs[c] = lanes::widen16(v + s * D + d0 + 16 * c, width[c]);
    for (int i = 0; i < RB; ++i) {
      const __m512 ps = _mm512_set1_ps(p[(r0 + i) * T_ + s]);
      for (int c = 0; c < NC; ++c) acc[i][c] = _mm512_fmadd_ps(ps, vs[c], acc[i][c]);
    }
  }
  alignas(64) float tmp[16];
  for (int i = 0; i < RB && r0 + i < R; ++i)
    for (int c = 0; c < NC; ++c) {
      _mm512_store_ps(tmp, _mm512_mul_ps(acc[i][c], _mm512_set1_ps(inv[r0 + i])));
      for (int64_t l = 0; l < width[c]; ++l) store(rows[r0 + i] + d0 + 16 * c + l, tmp[l]);
    }
}

template <typename T, int NC>
void values_slice(const float* p, const float* inv, const T* v, int64_t R, int64_t T_, int64_t D, int64_t d0,
                  T* const* rows) {
  for (int64_t r0 = 0; r0 < R; r0 += ACCUMULATORS / NC) weighted_values<T, NC>(p, inv, v, R, T_, D, d0, r0, rows);
}

// Rows [r_lo, r_hi) of the (b, c) job (of its g nq query rows): R = r_hi - r_lo. scratch: [(R + 16) T + R] floats.
template <typename Lanes>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void attend_kv_head(
    const typename Lanes::T* q, const typename Lanes::T* k, const typename Lanes::T* v, const typename Lanes::T* mask,
    const AttentionShape& a, int64_t b, int64_t c, int64_t r_lo, int64_t r_hi, typename Lanes::T* out,
    std::vector<float>& scratch) {
  using T = typename Lanes::T;
  constexpr int L = Lanes::L;
  const int64_t g = a.H / a.Hkv, R = r_hi - r_lo, T_ = a.T, D = a.D;
  const T* kb = k + (b * a.Hkv + c) * a.S * D;
  const T* vb = v + (b * a.Hkv + c) * a.S * D;
  scratch.resize((R + ACCUMULATORS) * T_ + R);
  float* p = scratch.data();  // [R + 16, T]: scores, then exp(e - max); the rows past R are zeros
  float* inv = p + (R + ACCUMULATORS) * T_;
  std::fill(p + R * T_, inv, 0.f);  // the score rows are all written below
  std::vector<T*> rows(R);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  for (int64_t r = 0; r < R; ++r) {  // job row j = r_lo + r: query head c g + j / nq at step t = j % nq
    const int64_t h = c * g + (r_lo + r) / a.nq, t = (r_lo + r) % a.nq;
    const T* qr = q + b * a.q_b + t * a.q_t + h * D;
    const T* mr = mask + (b * a.nq + t) * T_;
    rows[r] = out + ((b * a.nq + t) * a.H + h) * D;
    float* pr = p + r * T_;
    for (int64_t s0 = 0; s0 < T_; s0 += SLOTS) {
      const int64_t n = std::min<int64_t>(SLOTS, T_ - s0);
      const T* ks[SLOTS];  // slots past T repeat the last one; their lanes are not stored
      for (int i = 0; i < SLOTS; ++i) ks[i] = kb + (s0 + std::min<int64_t>(i, n - 1)) * D;
      __m512 acc[SLOTS];
      for (int i = 0; i < SLOTS; ++i) acc[i] = _mm512_setzero_ps();
      for (int64_t d0 = 0; d0 < D; d0 += L) {  // 16 independent chains per chunk
        const int64_t m = std::min<int64_t>(L, D - d0);
        const auto qv = Lanes::load(qr + d0, m);
        for (int i = 0; i < SLOTS; ++i) acc[i] = Lanes::dot(acc[i], qv, Lanes::load(ks[i] + d0, m));
      }
      const __m512 e = _mm512_fmadd_ps(lanes::sum16(acc), _mm512_set1_ps(scale), lanes::widen16(mr + s0, n));
      _mm512_mask_storeu_ps(pr + s0, static_cast<__mmask16>((1u << n) - 1), e);
    }
    __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t s0 = 0; s0 < T_; s0 += 16) {
      const __mmask16 in = static_cast<__mmask16>((1u << std::min<int64_t>(16, T_ - s0)) - 1);
      mx = _mm512_mask_max_ps(mx, in, mx, _mm512_maskz_loadu_ps(in, pr + s0));
    }
    const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t s0 = 0; s0 < T_; s0 += 16) {
      const __mmask16 in = static_cast<__mmask16>((1u << std::min<int64_t>(16, T_ - s0)) - 1);
      const __m512 e = lanes::exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(in, pr + s0), top));
      _mm512_mask_storeu_ps(pr + s0, in, e);
      sum = _mm512_mask_add_ps(sum, in, sum, e);
    }
    inv[r] = 1.f / _mm512_reduce_add_ps(sum);
  }
  for (int64_t d0 = 0; d0 < D; d0 += 16 * MAX_CHUNKS) {
    switch (std::min<int64_t>(MAX_CHUNKS, (D - d0 + 15) / 16)) {
      case 1: values_slice<T, 1>(p, inv, vb, R, T_, D, d0, rows.data()); break;
      case 2: values_slice<T, 2>(p, inv, vb, R, T_, D, d0, rows.data()); break;
      case 3: values_slice<T, 3>(p, inv, vb, R, T_, D, d0, rows.data()); break;
      case 4: values_slice<T, 4>(p, inv, vb, R, T_, D, d0, rows.data()); break;
      case 5: values_slice<T, 5>(p, inv, vb, R, T_, D, d0, rows.data()); break;
      case 6: values_slice<T, 6>(p, inv, vb, R, T_, D, d0, rows.data()); break;
      case 7: values_slice<T, 7>(p, inv, vb, R, T_, D, d0, rows.data()); break;
      default: values_slice<T, 8>(p, inv, vb, R, T_, D, d0, rows.data()); break;
    }
  }
}

template <typename Lanes>
void attend(const typename Lanes::T* q, const typename Lanes::T* k, const typename Lanes::T* v,
            const typename Lanes::T* mask, const AttentionShape& a, typename Lanes::T* out) {
  const int64_t heads = a.B * a.Hkv, R = a.H / a.Hkv * a.nq;
  // a second thread pays off once the step is more than a few microseconds of work
  const bool parallel = a.nq * a.H * a.T * a.D >= (int64_t(1) << 15);
  const int64_t threads = parallel ? omp_get_max_threads() : 1;
  // Fewer kv heads than 2 per thread (the demo model's 3 on 2 threads) leave a thread idle: split each head's rows
  // into parts (of at least 4 rows; each part reads the head's K and V again, from cache). Rows are independent,
  // so the split changes no result.
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(R / 4, (2 * threads + heads - 1) / heads));
#pragma omp parallel if (parallel)
  {
    std::vector<float> scratch;
#pragma omp for schedule(static)
    for (int64_t j = 0; j < heads * parts; ++j) {
      const int64_t head = j / parts, part = j % parts;
      attend_kv_head<Lanes>(q, k, v, mask, a, head / a.Hkv, head % a.Hkv, part * R / parts, (part + 1) * R / parts,
                            out, scratch);
    }
  }
}
#endif

}  // namespace

#ifdef RGD_AVX512_LANES
void decode_attention(const float* q, const float* k, const float* v, const float* mask, const AttentionShape& a,
                      float* out) {
  attend<F32Lanes>(q, k, v, mask, a, out);
}

void decode_attention(const BFloat16* q, const BFloat16* k, const BFloat16* v, const BFloat16* mask,
                      const AttentionShape& a, BFloat16* out) {
  attend<Bf16Lanes>(q, k, v, mask, a, out);
}
#else
// Not an x86-64 GCC/Clang build: small_linear_is_native is false, so the binding and DecoderStack refuse first.
void decode_attention(const float*, const float*, const float*, const float*, const AttentionShape&, float*) {}
void decode_attention(const BFloat16*, const BFloat16*, const BFloat16*, const BFloat16*, const AttentionShape&,
                      BFloat16*) {}
#endif

}  // namespace cpu
}  // namespace rgd
