// Layout facts and the scalar codec shared by host and device code. The layout itself (geometry,
// register placement, the per-format recipes) is generated from jax_fpx/layout.py at build time
// into fpx_layout_gen.h: one source for Python and C++.
#pragma once

#include <cstdint>

#include "fpx_layout_gen.h"

#if defined(__CUDACC__)
#define FPX_HD __host__ __device__ __forceinline__
#else
#define FPX_HD inline
#endif

namespace jax_fpx {

constexpr int kBf16ExpLsb = 7;  // bit of bf16's exponent LSB: the code's field sits right under it

// Index of (ebits, mbits) in kRecipes, or -1.
constexpr int FindRecipe(int ebits, int mbits) {
  for (int i = 0; i < kNumRecipes; ++i)
    if (kRecipes[i].ebits == ebits && kRecipes[i].mbits == mbits) return i;
  return -1;
}

// (row, k) inside a 16x64 block of the value in half `h` of register `r` of `lane`.
FPX_HD constexpr int ElementRow(int lane, int r) { return (lane >> 2) + 8 * (r & 1); }
FPX_HD constexpr int ElementK(int lane, int r, int h) {
  return 16 * (r >> 2) + 2 * (lane & 3) + 8 * ((r & 3) >> 1) + h;
}

FPX_HD uint32_t ShiftWord(uint32_t v, int s) { return s >= 0 ? v << s : v >> (-s); }

// The code in half `h` of a register (bf16 placement, see layout.py).
FPX_HD uint32_t CodeOfHalf(uint32_t reg, int h, int ebits, int mbits) {
  const uint32_t half = (reg >> (16 * h)) & 0xFFFFu;
  const int bits = 1 + ebits + mbits;
  return ((half >> 15) << (bits - 1)) | ((half >> (kBf16ExpLsb - mbits)) & ((1u << (bits - 1)) - 1u));
}

// The 32 codes of `lane` in a block whose words are `block[i * 32 + lane]`, as codes[r * 2 + h]:
// the one unpacking routine of the CPU handler and the CUDA dequantize kernel (which passes a
// __constant__ copy of the recipe). The GEMM kernels unroll the same recipe at compile time
// (cuda/kernel/decode.cuh).
FPX_HD void UnpackLane(const uint32_t* block, const Recipe& rec, int lane, uint8_t* codes) {
  for (int r = 0; r < kRegs; ++r) {
    uint32_t reg = 0;
    for (int i = 0; i < kMaxPieces; ++i) {
      const Piece& p = rec.regs[r][i];
      if (p.mask) reg |= ShiftWord(block[p.word * kLanes + lane], p.shift) & p.mask;
    }
    for (int h = 0; h < 2; ++h) codes[2 * r + h] = static_cast<uint8_t>(CodeOfHalf(reg, h, rec.ebits, rec.mbits));
  }
}

// Exact float value of an eXmY code (finite-only; the NaN code of e4m3fn never appears).
FPX_HD float DecodeCode(uint32_t code, int ebits, int mbits) {
  const int bits = 1 + ebits + mbits;
  const int bias = (1 << (ebits - 1)) - 1;
  const int e = static_cast<int>((code >> mbits) & ((1u << ebits) - 1u));
  const int m = static_cast<int>(code & ((1u << mbits) - 1u));
  const int sig = e == 0 ? m : m + (1 << mbits);
  const int unit_exp = (e == 0 ? 1 - bias : e - bias) - mbits;
  // 2^unit_exp is representable in float for every supported format (|exp| < 64).
  float mag = static_cast<float>(sig);
  float p2 = 1.0f;
  if (unit_exp >= 0) {
    for (int i = 0; i < unit_exp; ++i) p2 *= 2.0f;
  } else {
    for (int i = 0; i < -unit_exp; ++i) p2 *= 0.5f;
  }
  mag *= p2;
  return ((code >> (bits - 1)) & 1u) ? -mag : mag;
}

// bf16 bits -> float (scales of per-group weights are stored as bf16).
FPX_HD float Bf16BitsToFloat(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
#endif
}

}  // namespace jax_fpx
