// The FPx GEMM for M > 16: a CTA is 8 warps x 16 weight rows = 128 rows by a 64-token tile.
//
// Why a second kernel: in the warp kernel (gemm.cuh) every warp loads its own activations
// through L1 and dequantizes each weight block for at most 32 tokens, so at M = 64..1024 the
// dequantization is repeated per token tile and activation traffic grows with every warp.
// Here the CTA's 64 x 64 activation tile of each k-block is staged once in shared memory by
// cp.async (a kXStages ring, one barrier per k-block) and read by all eight warps; each warp
// dequantizes its 16 x 64 weight block once (register ring, as in gemm.cuh) and feeds 8 token
// tiles = 32 MMAs. Token tiles run along gridDim.x (fastest), so the CTAs that share a weight
// block run together and the repeats hit L2. Measured (H100, 70B MLP shapes, 2026-11-26; see
// benchmarks/KERNEL_NOTES.md section 7): 8 warps (128 rows) per CTA halve the activation re-reads
// of 4 warps (7.5 GB of L2->SM traffic at M = 1024) and ran 10-15% faster; per-channel kernels keep
// no separate group accumulators (128 registers: 2 CTAs per SM). 128-token CTAs ran 1.4-1.7x slower.
//
// Shared-memory tile: row r (token) = 64 activations = 8 chunks of 16 B; chunk c is stored at
// c ^ (r & 1). A lane (g, t) of token tile i reads chunks 2t and 2t+1 of row 8i + g (its B
// fragments for k-steps 0,1 and 2,3, thanks to the layout's k permutation); with the swizzle each
// quarter-warp's eight 16-byte reads hit 32 distinct banks.
#pragma once

#include "gemm.cuh"

namespace jax_fpx {
namespace cuda {

constexpr int kTileMT = kTileTokens / 8;   // 8-token MMA tiles per warp
// cp.async ring depth (k-blocks): 4 blocks of look-ahead, 40 KB static smem. (Chosen because a
// k-block's compute is short at M = 64, so 2 blocks of look-ahead may not cover the L2 latency;
// measured on the H100 against 3 stages: within run-to-run noise, -5% .. +5%.)
constexpr int kXStages = 5;
constexpr int kXRowBytes = kKBlock * 2;    // one token's 64 activations
constexpr int kXStageBytes = kTileTokens * kXRowBytes;

__device__ __forceinline__ void CpAsync16(uint32_t smem, const void* gmem, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem), "l"(gmem), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// Requires x rows 16-byte aligned (p.x_vec): a 16-byte chunk is either inside K or past it.
template <int E, int MB, bool F16, int D, bool GROUPED>
__global__ void __launch_bounds__(kTileThreads, GROUPED ? 1 : 2) FpxGemmTiledKernel(GemmParams p) {
  constexpr int BITS = 1 + E + MB;
  constexpr int kBlockWords = kLanes * BITS;
  constexpr int MT = kTileMT;
  using DQ = Dequant<E, MB, F16>;
  __shared__ __align__(128) uint8_t xs[kXStages][kXStageBytes];

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int64_t nt_raw = int64_t(blockIdx.y) * kTileWarps + warp;
  // Warps past the last row tile still take part in the barriers; they stream (a clamped copy
  // of) the last tile and store nothing.
  const bool warp_on = nt_raw < p.row_tiles;
  const int64_t nt = warp_on ? nt_raw : p.row_tiles - 1;
  const int zb = blockIdx.z;
  const int b = zb / p.split, s = zb - b * p.split;
  const int64_t kb0 = s * p.k_blocks / p.split, kb1 = (s + 1) * p.k_blocks / p.split;
  const int nblocks = static_cast<int>(kb1 - kb0);
  const int64_t tok0 = int64_t(blockIdx.x) * kTileTokens;

  const uint32_t* wp =
      p.data + (((p.w_batched ? int64_t(b) : 0) * p.row_tiles + nt) * p.k_blocks + kb0) * kBlockWords;
  const uint16_t* xb = p.x + (p.x_batched ? int64_t(b) : 0) * p.m * p.k;
  const float* sc = p.scale + ((p.w_batched ? int64_t(b) : 0) * p.n_pad + nt * kRowTile + g) * p.groups;

  bool tile_on[MT];
#pragma unroll
  for (int i = 0; i < MT; ++i) tile_on[i] = tok0 + 8 * i < p.m;

  // cp.async of k-block ib's activation tile: each thread copies 2 of the 512 chunks.
  const uint32_t xs_base = static_cast<uint32_t>(__cvta_generic_to_shared(&xs[0][0]));
  auto stage_x = [&](int ib) {
    const uint32_t dst0 = xs_base + (ib % kXStages) * kXStageBytes;
    const int64_t kbase = (kb0 + ib) * kKBlock;
#pragma unroll
    for (int j = 0; j < kTileTokens * 8 / kTileThreads; ++j) {
      const int c = threadIdx.x + j * kTileThreads;
      const int r = c >> 3, cc = c & 7;
      const int64_t tok = tok0 + r, kk = kbase + cc * 8;
      const bool in = tok < p.m && kk < p.k;  // zero-fill rows past M and the K tail
      const uint16_t* src = in ? xb + tok * p.k + kk : xb;
      CpAsync16(dst0 + r * kXRowBytes + ((cc ^ (r & 1)) << 4), src, in ? 16 : 0);
    }
  };
  // This lane's B fragments for k-steps (2h, 2h+1) of every token tile, from stage `st`
  // (plain C++ shared loads: ordered by the barrier, free to be scheduled early otherwise).
  const int lane_off = g * kXRowBytes;
  auto load_b = [&](int st, int h, uint32_t(&bf)[MT][4]) {
    const uint8_t* base = &xs[st][0] + lane_off + (((2 * t + h) ^ (g & 1)) << 4);
#pragma unroll
    for (int i = 0; i < MT; ++i) {
      if (!tile_on[i]) continue;
      const uint4 v = *reinterpret_cast<const uint4*>(base + i * 8 * kXRowBytes);
      bf[i][0] = v.x; bf[i][1] = v.y; bf[i][2] = v.z; bf[i][3] = v.w;
    }
  };

  // Per channel, the scale is applied once at the end: acc doubles as the total.
  float acc[MT][4], tot_g[GROUPED ? MT : 1][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[i][c] = 0.0f;
  if constexpr (GROUPED) {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int c = 0; c < 4; ++c) tot_g[i][c] = 0.0f;
  }

#pragma unroll
  for (int st = 0; st < kXStages - 1; ++st) {
    if (st < nblocks) stage_x(st);
    CpAsyncCommit();
  }
  uint32_t ring[D][BITS];
#pragma unroll
  for (int d = 0; d < D; ++d)
    if (d < nblocks) LoadBlock<BITS>(wp + d * kBlockWords, lane, ring[d]);

  int flush_rel = nblocks;
  if (GROUPED) {
    const int64_t next = (kb0 / p.group_blocks + 1) * p.group_blocks - kb0;
    flush_rel = next < nblocks ? static_cast<int>(next) : nblocks;
  }
  const int gb = static_cast<int>(p.group_blocks);
  auto flush = [&](int ib) {
    const int64_t grp = p.groups == 1 ? 0 : (kb0 + ib) / gb;
    const float s0 = __ldg(sc + grp) * p.fold, s1 = __ldg(sc + 8 * p.groups + grp) * p.fold;
#pragma unroll
    for (int i = 0; i < MT; ++i) {
      if constexpr (GROUPED) {
        tot_g[i][0] = fmaf(acc[i][0], s0, tot_g[i][0]);
        tot_g[i][1] = fmaf(acc[i][1], s0, tot_g[i][1]);
        tot_g[i][2] = fmaf(acc[i][2], s1, tot_g[i][2]);
        tot_g[i][3] = fmaf(acc[i][3], s1, tot_g[i][3]);
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[i][c] = 0.0f;
      } else {
        acc[i][0] *= s0; acc[i][1] *= s0; acc[i][2] *= s1; acc[i][3] *= s1;
      }
    }
  };

  auto block = [&](auto dconst, int ib, const uint32_t* wnext) {
    constexpr int d = decltype(dconst)::value;
    CpAsyncWait<kXStages - 2>();  // block ib's tile has landed (this thread's copies) ...
    __syncthreads();              // ... and everyone's; stage (ib - 1) % S is free again
    if (ib + kXStages - 1 < nblocks) stage_x(ib + kXStages - 1);
    CpAsyncCommit();  // (possibly empty: keeps the group count uniform)

    const int st = ib % kXStages;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      uint32_t bf[MT][4];
      load_b(st, h, bf);
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) {
        const int j = 2 * h + jj;  // k-step: quads 2j, 2j+1
        uint32_t a[4];
        if (j == 0) { DQ::Pair(Quad<BITS, 0>(ring[d]), a[0], a[1]); DQ::Pair(Quad<BITS, 1>(ring[d]), a[2], a[3]); }
        if (j == 1) { DQ::Pair(Quad<BITS, 2>(ring[d]), a[0], a[1]); DQ::Pair(Quad<BITS, 3>(ring[d]), a[2], a[3]); }
        if (j == 2) { DQ::Pair(Quad<BITS, 4>(ring[d]), a[0], a[1]); DQ::Pair(Quad<BITS, 5>(ring[d]), a[2], a[3]); }
        if (j == 3) { DQ::Pair(Quad<BITS, 6>(ring[d]), a[0], a[1]); DQ::Pair(Quad<BITS, 7>(ring[d]), a[2], a[3]); }
#pragma unroll
        for (int i = 0; i < MT; ++i)
          if (tile_on[i]) Mma16816<F16>(acc[i], a, bf[i][2 * jj], bf[i][2 * jj + 1]);
      }
    }
    LoadBlockIf<BITS>(wnext + d * kBlockWords, lane, ib + D < nblocks, ring[d]);
    if (GROUPED && ib + 1 == flush_rel) {
      flush(ib);
      flush_rel = flush_rel + gb < nblocks ? flush_rel + gb : nblocks;
    }
  };

  const uint32_t* wnext = wp + D * kBlockWords;
  int i0 = 0;
  for (; i0 + D <= nblocks; i0 += D, wnext += D * kBlockWords) {
    Unroll<D>([&](auto dc) { block(dc, i0 + decltype(dc)::value, wnext); });
  }
  Unroll<D>([&](auto dc) {
    if (i0 + decltype(dc)::value < nblocks) block(dc, i0 + decltype(dc)::value, wnext);
  });
  CpAsyncWait<0>();  // no copy may still target shared memory when the CTA exits
  if (!GROUPED) flush(nblocks - 1);
  if (warp_on) {
    if constexpr (GROUPED) StoreTiles<F16, MT>(p, tot_g, tile_on, b, s, tok0, nt * kRowTile + g, t);
    else StoreTiles<F16, MT>(p, acc, tile_on, b, s, tok0, nt * kRowTile + g, t);
  }
}

}  // namespace cuda
}  // namespace jax_fpx
