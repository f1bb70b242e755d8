// Register dequantization: packed FPx codes -> f16x2 / bf16x2 Tensor Core A fragments.
//
// Per jax_fpx/layout.py, quad z of a lane is assembled from its parts as
//   U_z = OR_i ((word_i[z / Q_i] << (p_i * r)) & TOP_{p_i}) >> o_i,  r = z % Q_i,
// which leaves 4 codes top-aligned in the 4 bytes of U_z (byte b: sign at bit 7, then exponent,
// then mantissa, then zeros). A PRMT moves bytes (0,1) resp. (2,3) to the top byte of the two
// 16-bit halves; a right shift by s = (target exponent bits) - ebits of everything but the sign
// puts exponent and mantissa in place, so each half reads decode(code) * 2^(bias_fpx - bias_t).
// (Where that shift crosses a byte boundary, the same bits are assembled from two per-quad
// registers with a two-source PRMT instead; see Dequant::Pair.)
//   f16 : bias_t = 15; the 2^(15 - bias_fpx) goes into the f32 scale (f16 keeps every value exact).
//   bf16: bias_t = 127; the bf16x2 is multiplied by 2^(127 - bias_fpx) (exact, subnormals too)
//         so the MMA never sees values near the bottom of the f32 range.
#pragma once

#include <cstdint>

#include "../../fpx_format.h"

namespace jax_fpx {
namespace cuda {

template <int BITS>
struct PartInfo {
  static constexpr int kParts = NumParts(BITS);
};

// Top `p` bits of each byte.
__host__ __device__ constexpr uint32_t TopMask(int p) {
  return 0x01010101u * ((0xFFu << (8 - p)) & 0xFFu);
}

// Shift by a compile-time signed amount (left if > 0).
template <int S>
__device__ __forceinline__ uint32_t ShiftBy(uint32_t v) {
  if constexpr (S > 0) return v << S;
  else if constexpr (S < 0) return v >> (-S);
  else return v;
}

// U_z: four codes top-aligned in the bytes of one register.
template <int BITS, int Z>
__device__ __forceinline__ uint32_t Quad(const uint32_t (&w)[BITS]) {
  uint32_t u = 0;
  constexpr int p0 = PartWidth(BITS, 0), p1 = PartWidth(BITS, 1), p2 = PartWidth(BITS, 2);
  // part 0
  {
    constexpr int q = 8 / p0, r = Z % q, o = 0;
    u |= ShiftBy<p0 * r - o>(w[Z / q]) & (TopMask(p0) >> o);
  }
  if constexpr (p1 > 0) {
    constexpr int q = 8 / p1, r = Z % q, o = p0;
    u |= ShiftBy<p1 * r - o>(w[p0 + Z / q]) & (TopMask(p1) >> o);
  }
  if constexpr (p2 > 0) {
    constexpr int q = 8 / p2, r = Z % q, o = p0 + p1;
    u |= ShiftBy<p2 * r - o>(w[p0 + p1 + Z / q]) & (TopMask(p2) >> o);
  }
  return u;
}

__device__ __forceinline__ uint32_t Prmt2(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}

__device__ __forceinline__ uint32_t Prmt(uint32_t a, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, 0, %2;" : "=r"(r) : "r"(a), "r"(sel));
  return r;
}

// bf16x2 multiply by a power of two (exact). fma with -0 works on sm_80 (mul.bf16x2 needs sm_90).
__device__ __forceinline__ uint32_t Bf16x2MulExact(uint32_t a, uint32_t b) {
  uint32_t r;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(0x80008000u));
  return r;
}

template <int E, int M, bool F16>
struct Dequant {
  static constexpr int kBits = 1 + E + M;
  static constexpr int kShift = (F16 ? 5 : 8) - E;
  static constexpr int kBias = (1 << (E - 1)) - 1;
  // f16 with m <= 2: the shift fits inside each byte (no bits cross into the next byte),
  // so it is done once per 4 values before the PRMTs.
  static constexpr bool kByteShift = F16 && (kShift <= 8 - kBits);
  // 2^(127 - bias) as bf16, twice.
  static constexpr uint32_t kBf16Fix = ((127u + (127u - kBias)) << 7) * 0x00010001u;
  // Factor the f32 result still needs (f16 only).
  static constexpr float FoldFactor() { return F16 ? static_cast<float>(1u << (15 - kBias)) : 1.0f; }

  // Otherwise each half is (code magnitude << L) | sign << 15 with L = 8 - kShift: built per
  // quad as a "high byte" register uh (sign | magnitude >> (8 - L)) and a "low byte" register
  // ul (magnitude << L), then one two-source PRMT per A register interleaves them (4 ALU ops per
  // quad instead of 8 for the per-half mask/shift/or).
  static constexpr int kL = 8 - kShift;
  static constexpr uint32_t kHiMask = 0x01010101u * (0x7Fu >> (8 - kL));
  static constexpr uint32_t kLoMask = 0x01010101u * ((0xFFu << kL) & 0xFFu);

  // The two A registers of quad U: {row g: k, k+1} and {row g+8: k, k+1}.
  __device__ __forceinline__ static void Pair(uint32_t u, uint32_t& lo, uint32_t& hi) {
    if constexpr (kByteShift) {
      const uint32_t v = (u & 0x80808080u) | ((u & 0x7F7F7F7Fu) >> kShift);
      lo = Prmt(v, 0x1404);
      hi = Prmt(v, 0x3424);
    } else {
      const uint32_t uh = (u & 0x80808080u) | ((u >> (8 - kL)) & kHiMask);
      const uint32_t ul = (u << kL) & kLoMask;
      lo = Prmt2(ul, uh, 0x5140);
      hi = Prmt2(ul, uh, 0x7362);
      if constexpr (!F16) {
        lo = Bf16x2MulExact(lo, kBf16Fix);
        hi = Bf16x2MulExact(hi, kBf16Fix);
      }
    }
  }
};

}  // namespace cuda
}  // namespace jax_fpx
