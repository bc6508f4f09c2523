// float <-> bfloat16 (kernels.h's BFloat16: the high 16 bits of an IEEE float) for the CPU kernels.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels.h"

namespace rgd {
namespace cpu {

inline float to_float(float x) { return x; }
inline float to_float(BFloat16 x) {
  uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// float -> bf16, round to nearest even (NaN stays a quiet NaN), as c10::BFloat16 does.
inline BFloat16 to_bf16(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return BFloat16{0x7fc0};
  return BFloat16{static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}

// v rounded to T's precision, as a float (identity for float)
inline float round_as(float v, const float*) { return v; }
inline float round_as(float v, const BFloat16*) { return to_float(to_bf16(v)); }

inline void store(float* y, float v) { *y = v; }
inline void store(BFloat16* y, float v) { *y = to_bf16(v); }

}  // namespace cpu
}  // namespace rgd
