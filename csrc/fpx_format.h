// Bit layout constants and scalar codec shared by host and device code.
// The layout itself is documented in jax_fpx/layout.py (LAYOUT_VERSION 1); keep both in sync.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FPX_HD __host__ __device__ __forceinline__
#else
#define FPX_HD inline
#endif

namespace jax_fpx {

constexpr int kLayoutVersion = 1;
constexpr int kRowTile = 16;  // output channels per block (MMA M)
constexpr int kKBlock = 64;   // reduction elements per block (4 MMA k-steps)
constexpr int kLanes = 32;

// Parts of a `bits`-wide code, widest first: returns the width of part `i` (0 if none).
FPX_HD constexpr int PartWidth(int bits, int i) {
  if (bits == 8) return i == 0 ? 8 : 0;
  int seen = 0;
  for (int w = 4; w >= 1; w >>= 1) {
    if (bits & w) {
      if (seen == i) return w;
      ++seen;
    }
  }
  return 0;
}
// Offset (bits from the top of the code) of part `i`.
FPX_HD constexpr int PartOffset(int bits, int i) {
  int off = 0;
  for (int j = 0; j < i; ++j) off += PartWidth(bits, j);
  return off;
}
FPX_HD constexpr int NumParts(int bits) {
  int n = 0;
  while (n < 4 && PartWidth(bits, n) != 0) ++n;
  return n;
}

// Position of a lane's value v = 4*z + beta inside its 16x64 block.
FPX_HD constexpr int ValueRow(int lane, int v) { return (lane >> 2) + 8 * ((v & 3) >> 1); }
FPX_HD constexpr int ValueK(int lane, int v) { return 16 * (lane & 3) + 2 * (v >> 2) + (v & 1); }

// Code of value v (0..31) of `lane` from the block's words (block = 32*bits uint32).
FPX_HD uint32_t ExtractCode(const uint32_t* block, int bits, int lane, int v) {
  const int z = v >> 2, beta = v & 3;
  uint32_t code = 0;
  const uint32_t* part = block;
  for (int i = 0; i < NumParts(bits); ++i) {
    const int p = PartWidth(bits, i), o = PartOffset(bits, i), q = 8 / p;
    const uint32_t word = part[lane * p + z / q];
    const int shift = 8 * beta + 8 - p - p * (z % q);
    code |= ((word >> shift) & ((1u << p) - 1u)) << (bits - o - p);
    part += kLanes * p;
  }
  return code;
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

}  // namespace jax_fpx
