// Fused LM-head top-k with exact log-softmax.
//
// Per row b:  z_v = h_b . W_v (v < V, never written to global memory as [B, V])
//   stage 1, block (c, row-block): the z of V-block c (kVBlock rows) for kBRows rows of B go to a shared tile
//            (hidden staged in shared memory kDTile columns at a time);
//            m_c = max z, s_c = sum exp(z - m_c); top-KC of the block by KC rounds of warp argmax
//            ordered (value desc, id asc)  -> part_m/part_s [B, NB], part_v/part_i [B, NB, KC]
//   stage 2, one warp per row: lse = m + log(sum_c s_c exp(m_c - m)), m = max_c m_c; the NB sorted partial
//            lists are k-way merged (k rounds of warp argmax over the list heads); logprob = z - lse.
#include <cmath>

#include "common.cuh"
#include "rgd_kernels.cuh"

namespace rgd {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kBRows = 16;                 // rows of B per stage-1 block: W is read once per 16 rows
constexpr int kPerLane = kVBlock / 32;     // tile entries each lane owns in the top-k phase
constexpr int kDTile = 256;                // hidden columns staged in shared memory at a time (16 KB)
static_assert(kVBlock % 32 == 0, "a V-block is split evenly over the 32 lanes of a warp");
static_assert(kPerLane <= 32, "phase B's `taken` is a 32-bit mask with one bit per tile entry a lane owns");
static_assert((kBRows * kVBlock + kBRows * kDTile) * sizeof(float) <= 48 * 1024, "static shared memory limit");

template <typename T>
__global__ void __launch_bounds__(kThreads) lmhead_partial_kernel(const float* __restrict__ hidden,
                                                                  const T* __restrict__ weight, int64_t B, int64_t V,
                                                                  int64_t d, int64_t kc, LmheadScratch sc) {
  __shared__ float tile[kBRows][kVBlock];  // [rows of B, rows of the V-block]: logits z
  __shared__ float h_tile[kBRows][kDTile];  // [rows of B, one d-tile] of hidden
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t nb = gridDim.x, c = blockIdx.x;
  const int64_t b0 = static_cast<int64_t>(blockIdx.y) * kBRows;
  const int nbr = static_cast<int>(B - b0 < kBRows ? B - b0 : kBRows);
  const int64_t v0 = c * kVBlock;

  // Phase A: one warp per W row; lanes stride d (coalesced), one accumulator per row of B. hidden is staged in
  // shared memory one d-tile at a time: every W row of the block reads it, so from global memory it is read
  // once per block instead of once per W row. Each tile entry is owned by one warp and accumulated over d-tiles.
  for (int idx = threadIdx.x; idx < kBRows * kVBlock; idx += kThreads)
    tile[idx / kVBlock][idx % kVBlock] = v0 + idx % kVBlock < V ? 0.f : -INFINITY;
  for (int64_t d0 = 0; d0 < d; d0 += kDTile) {
    const int dl = static_cast<int>(d - d0 < kDTile ? d - d0 : kDTile);
    __syncthreads();  // the previous d-tile is consumed (and, first time, the tile is initialized)
    for (int idx = threadIdx.x; idx < kBRows * kDTile; idx += kThreads) {
      const int bb = idx / kDTile, i = idx % kDTile;
      h_tile[bb][i] = bb < nbr && i < dl ? hidden[(b0 + bb) * d + d0 + i] : 0.f;
    }
    __syncthreads();
    for (int r = warp; r < kVBlock; r += kWarps) {
      const int64_t v = v0 + r;
      if (v >= V) continue;
      float acc[kBRows];
#pragma unroll
      for (int bb = 0; bb < kBRows; ++bb) acc[bb] = 0.f;
      const T* w = weight + v * d + d0;
#pragma unroll 4
      for (int i = lane; i < dl; i += 32) {
        const float wi = to_float(w[i]);
#pragma unroll
        for (int bb = 0; bb < kBRows; ++bb)
          if (bb < nbr) acc[bb] += wi * h_tile[bb][i];
      }
#pragma unroll
      for (int bb = 0; bb < kBRows; ++bb) {
        if (bb < nbr) {
          const float z = warp_sum(acc[bb]);
          if (lane == 0) tile[bb][r] += z;
        }
      }
    }
  }
  __syncthreads();

  // Phase B: one warp per row of B; each lane holds kPerLane tile entries (ids lane, lane + 32, ...).
  for (int bb = warp; bb < nbr; bb += kWarps) {
    float z[kPerLane];
    float m = -INFINITY;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      z[i] = tile[bb][lane + 32 * i];
      m = fmaxf(m, z[i]);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float s = 0.f;
    if (m != -INFINITY) {
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) s += expf(z[i] - m);
    }
    s = warp_sum(s);
    const int64_t p = (b0 + bb) * nb + c;  // [B, NB] index
    if (lane == 0) {
      sc.part_m[p] = m;
      sc.part_s[p] = s;
    }
    unsigned taken = 0;  // bit i: entry lane + 32 i already emitted (or past V)
#pragma unroll
    for (int i = 0; i < kPerLane; ++i)
      if (v0 + lane + 32 * i >= V) taken |= 1u << i;
    for (int64_t r = 0; r < kc; ++r) {
      float bv = -INFINITY;
      int64_t bid = -1;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        const int64_t id = v0 + lane + 32 * i;
        if (!(taken & (1u << i)) && ranks_before(z[i], id, bv, bid)) {
          bv = z[i];
          bid = id;
        }
      }
      warp_best(bv, bid);
      if (bid >= 0 && (bid - v0) % 32 == lane) taken |= 1u << ((bid - v0) / 32);
      if (lane == 0) {
        sc.part_v[p * kc + r] = bv;
        sc.part_i[p * kc + r] = bid;
      }
    }
  }
}

__global__ void lmhead_merge_kernel(LmheadScratch sc, int64_t nb, int64_t kc, int64_t k, float* __restrict__ logprob,
                                    int64_t* __restrict__ ids, float* __restrict__ lse) {
  extern __shared__ int64_t head[];  // [NB] next unread position of each partial list
  const int lane = threadIdx.x;
  const int64_t b = blockIdx.x;
  const float* pm = sc.part_m + b * nb;
  const float* ps = sc.part_s + b * nb;
  const float* pv = sc.part_v + b * nb * kc;
  const int64_t* pi = sc.part_i + b * nb * kc;

  float m = -INFINITY;
  for (int64_t c = lane; c < nb; c += 32) m = fmaxf(m, pm[c]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  float s = 0.f;
  if (m != -INFINITY) {
    for (int64_t c = lane; c < nb; c += 32)
      if (pm[c] != -INFINITY) s += ps[c] * expf(pm[c] - m);
  }
  s = warp_sum(s);
  const float row_lse = m == -INFINITY ? -INFINITY : m + logf(s);
  if (lane == 0) lse[b] = row_lse;

  for (int64_t c = lane; c < nb; c += 32) head[c] = 0;
  __syncwarp();
  for (int64_t r = 0; r < k; ++r) {
    float bv = -INFINITY;
    int64_t bid = -1, blist = -1;
    for (int64_t c = lane; c < nb; c += 32) {
      const int64_t h = head[c];
      if (h >= kc) continue;
      const int64_t id = pi[c * kc + h];
      if (ranks_before(pv[c * kc + h], id, bv, bid)) {
        bv = pv[c * kc + h];
        bid = id;
        blist = c;
      }
    }
    warp_best(bv, bid);
    // The owner of the winning list advances its head (ids are unique, so exactly one lane matches).
    if (blist >= 0 && pi[blist * kc + head[blist]] == bid) head[blist] += 1;
    __syncwarp();
    if (lane == 0) {
      logprob[b * k + r] = bv - row_lse;
      ids[b * k + r] = bid;
    }
  }
}

}  // namespace

template <typename T>
cudaError_t launch_lmhead_topk(const float* hidden, const T* weight, int64_t B, int64_t V, int64_t d, int64_t k,
                               LmheadScratch scratch, float* logprob, int64_t* ids, float* lse, cudaStream_t stream) {
  if (B == 0) return cudaSuccess;
  const int64_t nb = lmhead_num_blocks(V), kc = lmhead_partial_k(k);
  const dim3 grid(static_cast<unsigned>(nb), static_cast<unsigned>((B + kBRows - 1) / kBRows));
  lmhead_partial_kernel<T><<<grid, kThreads, 0, stream>>>(hidden, weight, B, V, d, kc, scratch);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const size_t smem = static_cast<size_t>(nb) * sizeof(int64_t);
  if (smem > 48 * 1024) {
    err = cudaFuncSetAttribute(lmhead_merge_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  lmhead_merge_kernel<<<static_cast<unsigned>(B), 32, smem, stream>>>(scratch, nb, kc, k, logprob, ids, lse);
  return cudaGetLastError();
}

template cudaError_t launch_lmhead_topk<float>(const float*, const float*, int64_t, int64_t, int64_t, int64_t,
                                               LmheadScratch, float*, int64_t*, float*, cudaStream_t);
template cudaError_t launch_lmhead_topk<__half>(const float*, const __half*, int64_t, int64_t, int64_t, int64_t,
                                                LmheadScratch, float*, int64_t*, float*, cudaStream_t);
template cudaError_t launch_lmhead_topk<__nv_bfloat16>(const float*, const __nv_bfloat16*, int64_t, int64_t, int64_t,
                                                       int64_t, LmheadScratch, float*, int64_t*, float*,
                                                       cudaStream_t);

}  // namespace cuda
}  // namespace rgd
