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
#include <type_traits>

#include "../../fpx_format.h"
#include "dequant.cuh"
#include "loads.cuh"
#include "mma.cuh"
#include "params.cuh"

namespace jax_fpx {
namespace cuda {

// One MMA k-step J (0..3) of a 16x64 block: quads 2J, 2J+1 -> A fragment, MT token tiles.
template <int E, int MB, bool F16, int MT, int J>
__device__ __forceinline__ void Step(const uint32_t (&w)[1 + E + MB], const uint32_t (&xr)[MT][8],
                                     float (&acc)[MT][4], const bool (&tile_on)[MT]) {
  using DQ = Dequant<E, MB, F16>;
  uint32_t a[4];
  DQ::Pair(Quad<1 + E + MB, 2 * J>(w), a[0], a[1]);
  DQ::Pair(Quad<1 + E + MB, 2 * J + 1>(w), a[2], a[3]);
#pragma unroll
  for (int i = 0; i < MT; ++i)
    if (tile_on[i]) Mma16816<F16>(acc[i], a, xr[i][2 * J], xr[i][2 * J + 1]);
}

// Activations of one lane for one 16x64 block and token tile: x[tok, kb*64 + 16t .. +16] as
// 8 registers (two 16-byte loads); register 2j / 2j+1 are the B fragment of MMA k-step j.
__device__ __forceinline__ void LoadActFast(const uint16_t* p, uint32_t (&r)[8]) {
  const uint4 a = *reinterpret_cast<const uint4*>(p);
  const uint4 b = *reinterpret_cast<const uint4*>(p + 8);
  r[0] = a.x; r[1] = a.y; r[2] = a.z; r[3] = a.w;
  r[4] = b.x; r[5] = b.y; r[6] = b.z; r[7] = b.w;
}
// Same with a bounds check per element (K tail, or rows not 16-byte aligned).
__device__ __forceinline__ void LoadActSlow(const uint16_t* p, int64_t kleft, uint32_t (&r)[8]) {
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const uint32_t lo = (2 * e < kleft) ? static_cast<uint32_t>(p[2 * e]) : 0u;
    const uint32_t hi = (2 * e + 1 < kleft) ? static_cast<uint32_t>(p[2 * e + 1]) : 0u;
    r[e] = lo | (hi << 16);
  }
}

// Calls f(std::integral_constant<int, i>) for i = 0 .. N-1 (compile-time ring slots).
template <int I, int N, class F>
__device__ __forceinline__ void UnrollFrom(F&& f) {
  if constexpr (I < N) {
    f(std::integral_constant<int, I>{});
    UnrollFrom<I + 1, N>(f);
  }
}
template <int N, class F>
__device__ __forceinline__ void Unroll(F&& f) {
  UnrollFrom<0, N>(f);
}

// Epilogue: the lane holds rows (row0, row0 + 8) x tokens (2t, 2t+1) of each 8-token tile;
// split == 1 stores y (+ bias), otherwise the f32 partial of split s goes to the workspace.
template <bool F16, int MT>
__device__ __forceinline__ void StoreTiles(const GemmParams& p, const float (&tot)[MT][4],
                                           const bool (&tile_on)[MT], int b, int s, int64_t tok0,
                                           int64_t row0, int t) {
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

// Resident CTAs per SM the register budget is capped for (more warps -> more bytes in flight).
// (Measured 2026-11-26, H100, 8192x28672 M=1: capping MT=1 at 80 registers / 6 CTAs spilled and
// ran 112 us vs 94 us at 5 CTAs / 96 registers.)
template <int MT, int BITS>
constexpr int MinCtasPerSm() {
  return MT == 1 ? 5 : 4;
}

template <int E, int MB, bool F16, int MT, int D>
__global__ void __launch_bounds__(kThreads, MinCtasPerSm<MT, 1 + E + MB>()) FpxGemmKernel(GemmParams p) {
  constexpr int BITS = 1 + E + MB;
  constexpr int kBlockWords = kLanes * BITS;

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int64_t nt = int64_t(blockIdx.x) * kWarpsPerCta + warp;
  if (nt >= p.row_tiles) return;  // whole warp; the kernel has no block-level barriers
  const int zb = blockIdx.z;
  const int b = zb / p.split, s = zb - b * p.split;
  const int64_t kb0 = s * p.k_blocks / p.split, kb1 = (s + 1) * p.k_blocks / p.split;
  const int nblocks = static_cast<int>(kb1 - kb0);
  const int64_t tok0 = int64_t(blockIdx.y) * (8 * MT);

  const uint32_t* wp =
      p.data + (((p.w_batched ? int64_t(b) : 0) * p.row_tiles + nt) * p.k_blocks + kb0) * kBlockWords;
  const uint16_t* xb = p.x + (p.x_batched ? int64_t(b) : 0) * p.m * p.k;
  const float* sc = p.scale + ((p.w_batched ? int64_t(b) : 0) * p.n_pad + nt * kRowTile + g) * p.groups;

  // Activation row of this lane in each 8-token tile (B column n = g). Rows past M are clamped
  // to a valid row: they only feed output columns that are never stored.
  const uint16_t* xp[MT];
  bool tile_on[MT];
#pragma unroll
  for (int i = 0; i < MT; ++i) {
    int64_t tok = tok0 + 8 * i + g;
    tile_on[i] = tok0 + 8 * i < p.m;
    tok = tok < p.m ? tok : p.m - 1;
    xp[i] = xb + tok * p.k + kb0 * kKBlock + 16 * t;
  }
  // Blocks (from kb0) whose 64 activations are all inside K, on 16-byte aligned rows.
  int nfast = 0;
  if (p.x_vec) {
    const int64_t full = p.k / kKBlock - kb0;
    nfast = full < 0 ? 0 : (full > nblocks ? nblocks : static_cast<int>(full));
  }
  const int64_t kleft0 = p.k - (kb0 * kKBlock + 16 * t);

  float acc[MT][4], tot[MT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[i][c] = tot[i][c] = 0.0f;

  // Activations of block ib for every token tile (fast path: two 16-byte loads per tile).
  auto load_x = [&](int ib, uint32_t(&dst)[MT][8]) {
#pragma unroll
    for (int i = 0; i < MT; ++i) {
      if (!tile_on[i]) continue;
      if (ib < nfast) LoadActFast(xp[i] + ib * kKBlock, dst[i]);
      else LoadActSlow(xp[i] + ib * kKBlock, kleft0 - int64_t(ib) * kKBlock, dst[i]);
    }
  };
  // Activations come two blocks ahead in two register slots (their L1/L2 latency hides behind
  // the dequantization); slot = block parity (D is even). (Larger token tiles are the tiled
  // kernel's job: gemm_tiled.cuh.)
  static_assert(D % 2 == 0, "ring depth must be even");
  static_assert(MT <= 2, "the warp kernel holds at most two 8-token tiles");
  uint32_t xs[2][MT][8];
  if (nblocks > 0) load_x(0, xs[0]);
  if (nblocks > 1) load_x(1, xs[1]);

  // Weight ring: block i0 + d sits in ring[d]; it is consumed first, then refilled with block
  // i0 + d + D (no register copies).
  uint32_t ring[D][BITS];
#pragma unroll
  for (int d = 0; d < D; ++d)
    if (d < nblocks) LoadBlock<BITS>(wp + d * kBlockWords, lane, ring[d]);

  // Relative block index after which the group accumulators are scaled into the totals.
  int flush_rel = nblocks;
  if (p.group_blocks < p.k_blocks) {
    const int64_t next = (kb0 / p.group_blocks + 1) * p.group_blocks - kb0;
    flush_rel = next < nblocks ? static_cast<int>(next) : nblocks;
  }
  const int gb = static_cast<int>(p.group_blocks);

  const bool grouped = p.group_blocks < p.k_blocks;
  auto flush = [&](int ib) {
    const int64_t grp = p.groups == 1 ? 0 : (kb0 + ib) / gb;
    const float s0 = __ldg(sc + grp) * p.fold, s1 = __ldg(sc + 8 * p.groups + grp) * p.fold;
#pragma unroll
    for (int i = 0; i < MT; ++i) {
      tot[i][0] = fmaf(acc[i][0], s0, tot[i][0]);
      tot[i][1] = fmaf(acc[i][1], s0, tot[i][1]);
      tot[i][2] = fmaf(acc[i][2], s1, tot[i][2]);
      tot[i][3] = fmaf(acc[i][3], s1, tot[i][3]);
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[i][c] = 0.0f;
    }
  };
  // One block: ring slot d holds block ib; consume it, then refill it with block ib + D.
  auto block = [&](auto dconst, int ib, const uint32_t* wnext) {
    constexpr int d = decltype(dconst)::value;
    uint32_t(&xr)[MT][8] = xs[d & 1];

    Step<E, MB, F16, MT, 0>(ring[d], xr, acc, tile_on);
    Step<E, MB, F16, MT, 1>(ring[d], xr, acc, tile_on);
    Step<E, MB, F16, MT, 2>(ring[d], xr, acc, tile_on);
    Step<E, MB, F16, MT, 3>(ring[d], xr, acc, tile_on);

    LoadBlockIf<BITS>(wnext + d * kBlockWords, lane, ib + D < nblocks, ring[d]);
    if (ib + 2 < nblocks) load_x(ib + 2, xr);
    if (grouped && ib + 1 == flush_rel) {  // end of a scale group (or of this split's K range)
      flush(ib);
      flush_rel = flush_rel + gb < nblocks ? flush_rel + gb : nblocks;
    }
  };

  const uint32_t* wnext = wp + D * kBlockWords;
  int i0 = 0;
  for (; i0 + D <= nblocks; i0 += D, wnext += D * kBlockWords) {  // whole rounds of the ring
    Unroll<D>([&](auto dc) { block(dc, i0 + decltype(dc)::value, wnext); });
  }
  Unroll<D>([&](auto dc) {  // the remainder
    if (i0 + decltype(dc)::value < nblocks) block(dc, i0 + decltype(dc)::value, wnext);
  });
  if (!grouped) flush(nblocks - 1);

  StoreTiles<F16, MT>(p, tot, tile_on, b, s, tok0, nt * kRowTile + g, t);
}

}  // namespace cuda
}  // namespace jax_fpx
