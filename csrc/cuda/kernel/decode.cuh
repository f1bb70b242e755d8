// Register decode of layout v2 (jax_fpx/layout.py): a lane's `bits` words of a 16x64 block ->
// the 16 A-fragment registers (4 k-steps x 4), bf16x2 or f16x2, unrolled at compile time from the
// generated recipe. Per piece one shift (when its shift is not 0) and one AND/LOP3; the compiler
// shares a shifted word between pieces.
#pragma once

#include <cstdint>

#include "../../fpx_format.h"

namespace jax_fpx {
namespace cuda {

template <int S>
__device__ __forceinline__ uint32_t ShiftC(uint32_t v) {
  if constexpr (S > 0) return v << S;
  else if constexpr (S < 0) return v >> (-S);
  else return v;
}

template <int E, int MB>
struct Layout {
  static constexpr int kBits = 1 + E + MB;
  static constexpr int kRecipe = FindRecipe(E, MB);
  static_assert(kRecipe >= 0, "no layout recipe for this format");
  static constexpr int kBias = (1 << (E - 1)) - 1;
  // 2^(127 - bias) as bf16, twice: multiplies the bf16-placed pattern to the exact value.
  static constexpr uint32_t kBf16Fix = ((127u + (127u - kBias)) << 7) * 0x00010001u;
  // f16 patterns read decode(code) * 2^(bias - 15): the factor is folded into the f32 scale.
  static constexpr float FoldFactor(bool f16) { return f16 ? static_cast<float>(1u << (15 - kBias)) : 1.0f; }
};

// One piece of register R (bf16 placement, or f16: the exponent+mantissa bits 3 higher).
template <int RI, int R, int I, bool F16, int BITS>
__device__ __forceinline__ uint32_t PieceOf(const uint32_t (&w)[BITS]) {
  constexpr Piece p = kRecipes[RI].regs[R][I];
  if constexpr (p.mask == 0u) {
    return 0u;
  } else if constexpr (!F16) {
    return ShiftC<p.shift>(w[p.word]) & p.mask;
  } else {
    constexpr uint32_t kSign = p.mask & 0x80008000u, kField = p.mask & ~0x80008000u;
    uint32_t v = 0u;
    if constexpr (kSign != 0u) v |= ShiftC<p.shift>(w[p.word]) & kSign;
    if constexpr (kField != 0u) v |= ShiftC<p.shift + 3>(w[p.word]) & (kField << 3);
    return v;
  }
}

template <int RI, int R, bool F16, int BITS, int I = 0>
__device__ __forceinline__ uint32_t RegisterOf(const uint32_t (&w)[BITS]) {
  if constexpr (I == kMaxPieces) return 0u;
  else return PieceOf<RI, R, I, F16, BITS>(w) | RegisterOf<RI, R, F16, BITS, I + 1>(w);
}

// bf16x2 multiply by a power of two (exact, subnormals too). fma with -0 runs on sm_80.
__device__ __forceinline__ uint32_t Bf16x2Scale(uint32_t a, uint32_t b) {
  uint32_t r;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(0x80008000u));
  return r;
}

// The 4 A registers of k-step J of the block held in `w`.
template <int E, int MB, bool F16, int J>
__device__ __forceinline__ void DecodeStep(const uint32_t (&w)[1 + E + MB], uint32_t (&a)[4]) {
  using L = Layout<E, MB>;
  a[0] = RegisterOf<L::kRecipe, 4 * J + 0, F16>(w);
  a[1] = RegisterOf<L::kRecipe, 4 * J + 1, F16>(w);
  a[2] = RegisterOf<L::kRecipe, 4 * J + 2, F16>(w);
  a[3] = RegisterOf<L::kRecipe, 4 * J + 3, F16>(w);
  if constexpr (!F16) {
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = Bf16x2Scale(a[i], L::kBf16Fix);
  }
}

}  // namespace cuda
}  // namespace jax_fpx
