// Launch parameters shared by the GEMM kernel, the split-K reduction and the host handler.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace jax_fpx {
namespace cuda {

constexpr int kWarpsPerCta = 4;  // each warp owns one 16-row tile
constexpr int kThreads = kWarpsPerCta * 32;
// The tiled kernel (gemm_tiled.cuh): a CTA is kTileWarps x 16 rows by kTileTokens tokens.
constexpr int kTileTokens = 64;
constexpr int kTileWarps = 8;
constexpr int kTileThreads = kTileWarps * 32;

struct GemmParams {
  const uint16_t* x;       // [batch_x][m][k] (batch folded into m when the weight is shared)
  const uint32_t* data;    // [batch_w][row_tiles][k_blocks][32*bits]
  const float* scale;      // [batch_w][n_pad][groups]
  const float* bias;       // [n] or [batch][n] or null
  uint16_t* y;             // [batch][m][n]
  float* ws;               // [batch][split][m][n_pad] when split > 1
  int64_t m, k, n, n_pad;  // m: rows per grid batch item (folded rows when batched x, shared w)
  int64_t row_tiles, k_blocks, groups, group_blocks;
  int64_t m_item;          // rows per bias item in the folded case (bias index = row / m_item)
  int batch;               // grid batch items (1 when folded)
  int split;               // K splits
  int x_batched;           // x differs per grid batch item
  int w_batched;           // weights differ per grid batch item
  int bias_mode;           // 0 none, 1 shared, 2 per grid batch item, 3 per folded row / m_item
  int x_vec;               // x rows are 16-byte aligned (k % 8 == 0)
  float fold;              // extra power-of-two factor (f16 exponent-bias fix)
};

__device__ __forceinline__ float BiasAt(const GemmParams& p, int b, int64_t row, int64_t col) {
  switch (p.bias_mode) {
    case 1: return p.bias[col];
    case 2: return p.bias[b * p.n + col];
    case 3: return p.bias[(row / p.m_item) * p.n + col];
    default: return 0.0f;
  }
}

template <bool F16>
__device__ __forceinline__ uint16_t FromF32(float v) {
  if constexpr (F16) return __half_as_ushort(__float2half_rn(v));
  else return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

}  // namespace cuda
}  // namespace jax_fpx
