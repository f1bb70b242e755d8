// The FPx weight-only GEMM kernel: one warp streams one 16-row tile over a K range (split-K),
// dequantizes each 16x64 block in registers and feeds mma.m16n8k16 for MT token tiles of 8.
//
// Memory side: weights are loaded with 128-bit (+64-bit) L1-bypassing loads, D blocks ahead in a
// register ring (unrolled, compile-time indices), no shared memory and no block barriers.
// Activations (tiny at decode sizes) come through L1. Per-group scales: each group is summed into
// a fresh accumulator and added to the total with the group's scale (per channel: once at the end).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "../../fpx_format.h"
#include "dequant.cuh"
#include "loads.cuh"
#include "mma.cuh"
#include "params.cuh"

namespace jax_fpx {
namespace cuda {

// One MMA k-step J (0..3) of a 16x64 block: quads 2J, 2J+1 -> A fragment, MT token tiles.
template <int E, int MB, bool F16, int MT, int J>
__device__ __forceinline__ void Step(const uint32_t (&w)[1 + E + MB], const uint2 (&xq)[MT][4],
                                     float (&acc)[MT][4], const bool (&tile_on)[MT]) {
  using DQ = Dequant<E, MB, F16>;
  uint32_t a[4];
  DQ::Pair(Quad<1 + E + MB, 2 * J>(w), a[0], a[1]);
  DQ::Pair(Quad<1 + E + MB, 2 * J + 1>(w), a[2], a[3]);
#pragma unroll
  for (int i = 0; i < MT; ++i)
    if (tile_on[i]) Mma16816<F16>(acc[i], a, xq[i][J].x, xq[i][J].y);
}

template <int E, int MB, bool F16, int MT, int D>
__global__ void __launch_bounds__(kThreads) FpxGemmKernel(GemmParams p) {
  constexpr int BITS = 1 + E + MB;
  constexpr int kBlockWords = kLanes * BITS;

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int64_t nt = int64_t(blockIdx.x) * kWarpsPerCta + warp;
  if (nt >= p.row_tiles) return;  // whole warp; the kernel has no block-level barriers
  const int zb = blockIdx.z;
  const int b = zb / p.split, s = zb - b * p.split;
  const int64_t kb0 = s * p.k_blocks / p.split, kb1 = (s + 1) * p.k_blocks / p.split;
  const int64_t tok0 = int64_t(blockIdx.y) * (8 * MT);

  const uint32_t* wtile =
      p.data + ((p.w_batched ? int64_t(b) : 0) * p.row_tiles + nt) * p.k_blocks * kBlockWords;
  const uint16_t* xb = p.x + (p.x_batched ? int64_t(b) : 0) * p.m * p.k;
  const float* sc = p.scale + ((p.w_batched ? int64_t(b) : 0) * p.n_pad + nt * kRowTile + g) * p.groups;

  // Activation rows of this lane (B operand column n = g of each 8-token tile).
  const uint16_t* xrow[MT];
  bool xval[MT];
  bool tile_on[MT];
#pragma unroll
  for (int i = 0; i < MT; ++i) {
    const int64_t tok = tok0 + 8 * i + g;
    xval[i] = tok < p.m;
    xrow[i] = xb + (xval[i] ? tok : 0) * p.k;
    tile_on[i] = tok0 + 8 * i < p.m;
  }

  float acc[MT][4], tot[MT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[i][c] = tot[i][c] = 0.0f;

  uint32_t ring[D][BITS];
#pragma unroll
  for (int d = 0; d < D; ++d)
    if (kb0 + d < kb1) LoadBlock<BITS>(wtile + (kb0 + d) * kBlockWords, lane, ring[d]);

  int64_t flush_at = kb1;
  if (p.group_blocks < p.k_blocks) {
    const int64_t next = (kb0 / p.group_blocks + 1) * p.group_blocks;
    flush_at = next < kb1 ? next : kb1;
  }

  for (int64_t kb = kb0; kb < kb1; kb += D) {
#pragma unroll
    for (int d = 0; d < D; ++d) {
      const int64_t cur_kb = kb + d;
      if (cur_kb < kb1) {
        uint32_t w[BITS];
#pragma unroll
        for (int i = 0; i < BITS; ++i) w[i] = ring[d][i];
        if (cur_kb + D < kb1) LoadBlock<BITS>(wtile + (cur_kb + D) * kBlockWords, lane, ring[d]);

        // Activations for this block: x[tok, kb*64 + 16t + 4j .. +4] for k-step j.
        const int64_t kbase = cur_kb * kKBlock + 16 * t;
        uint2 xq[MT][4];
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j)
            xq[i][j] = tile_on[i] ? LoadActQuad(xrow[i], kbase + 4 * j, p.k, xval[i], p.x_vec)
                                  : make_uint2(0u, 0u);

        Step<E, MB, F16, MT, 0>(w, xq, acc, tile_on);
        Step<E, MB, F16, MT, 1>(w, xq, acc, tile_on);
        Step<E, MB, F16, MT, 2>(w, xq, acc, tile_on);
        Step<E, MB, F16, MT, 3>(w, xq, acc, tile_on);

        if (cur_kb + 1 == flush_at) {  // end of a scale group (or of this split's K range)
          const int64_t grp = p.groups == 1 ? 0 : cur_kb / p.group_blocks;
          const float s0 = sc[grp] * p.fold, s1 = sc[8 * p.groups + grp] * p.fold;
#pragma unroll
          for (int i = 0; i < MT; ++i) {
            tot[i][0] = fmaf(acc[i][0], s0, tot[i][0]);
            tot[i][1] = fmaf(acc[i][1], s0, tot[i][1]);
            tot[i][2] = fmaf(acc[i][2], s1, tot[i][2]);
            tot[i][3] = fmaf(acc[i][3], s1, tot[i][3]);
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[i][c] = 0.0f;
          }
          const int64_t next = flush_at + p.group_blocks;
          flush_at = next < kb1 ? next : kb1;
        }
      }
    }
  }

  // Epilogue: lane holds rows (g, g+8) x tokens (2t, 2t+1) of each 8-token tile.
  const int64_t row0 = nt * kRowTile + g;
#pragma unroll
  for (int i = 0; i < MT; ++i) {
    if (!tile_on[i]) continue;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int64_t tok = tok0 + 8 * i + 2 * t + (c & 1);
      const int64_t col = row0 + 8 * (c >> 1);
      if (tok >= p.m) continue;
      if (p.split == 1) {
        if (col < p.n) {
          const float v = tot[i][c] + BiasAt(p, b, tok, col);
          p.y[(int64_t(b) * p.m + tok) * p.n + col] = FromF32<F16>(v);
        }
      } else {
        p.ws[((int64_t(b) * p.split + s) * p.m + tok) * p.n_pad + col] = tot[i][c];
      }
    }
  }
}

}  // namespace cuda
}  // namespace jax_fpx
