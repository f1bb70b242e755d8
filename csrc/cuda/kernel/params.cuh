// Launch parameters shared by the decode GEMM kernel and its host handler.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "launch_shape.h"

namespace jax_fpx {
namespace cuda {

constexpr int kStageBlocks = 4;  // 64-k blocks per ring stage (256 k)
constexpr int kXPad = 8;         // bf16 elements of padding per staged activation row (banks)
constexpr int kBarBytes = 128;   // shared memory for the mbarriers, before the stages (<= 8 stages)

struct GemmParams {
  const uint16_t* x;       // [batch_x][m][k] (batch folded into m when the weight is shared)
  const uint32_t* data;    // [batch_w][row_tiles][k_blocks][bits][32]
  const void* scale;       // [batch_w][n_pad][groups], f32 per channel / bf16 per group
  const float* bias;       // [n] or [batch][n] or null
  uint16_t* y;             // [batch][m][n]
  float* partial;          // [ctas][kWarps][MT*4][32] stream-K partial sums
  int* flags;              // [ctas][kWarps], zeroed before the launch
  int64_t m, k, n, n_pad;  // m: rows per grid batch item (folded rows when batched x, shared w)
  int64_t row_tiles, k_blocks, groups, group_blocks;
  int64_t m_item;          // rows per bias item in the folded case (bias index = row / m_item)
  int batch;               // weight batch items (1 when folded)
  int x_batched;           // x differs per batch item
  int w_batched;           // weights differ per batch item
  int bias_mode;           // 0 none, 1 shared, 2 per batch item, 3 per folded row / m_item
  int x_bulk;              // x rows are 16-byte aligned (k % 8 == 0): bulk-copied
  int scale_bf16;          // per-group bf16 scales (else per-channel f32)
  float fold;              // power-of-two factor of the f16 placement
  // Stream-K schedule: `tiles` work tiles (batch x row groups of 16*kWarps rows), each `iters`
  // ring stages long, split into `ctas` contiguous ranges of the tile-major iteration space.
  int64_t tiles_per_item, tiles, iters, total;
  int ctas;
  int stages;              // ring depth
};

__device__ __forceinline__ float BiasAt(const GemmParams& p, int64_t b, int64_t row, int64_t col) {
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
