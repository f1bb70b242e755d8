// The decode GEMM (small M, sm_90): persistent, warp-specialised, stream-K.
//
// A CTA is kWarps consumer warps + 1 producer warp. Work tile = 16*kWarps weight rows x all M
// tokens; each tile is `iters` ring stages of kStageBlocks 64-k blocks. The tile-major iteration
// space is cut into `ctas` contiguous ranges (one per resident CTA), so every SM streams the same
// number of weight bytes whatever the shape (stream-K).
// - Producer: per stage one bulk copy (copy engine, L2 evict-first) of each warp's contiguous run
//   of packed blocks plus the stage's activations (bulk per token row when 16-byte aligned, else
//   plain loads), completing on the stage's `full` mbarrier. No registers spent on weights.
// - Consumers: each warp decodes its 16-row tile's blocks from shared memory (layout v2: a shift
//   and a mask per register, decode.cuh) into mma.m16n8k16 A fragments; activations are the B
//   operand (padded rows: conflict-free 4-byte loads). Group scales are applied when a group ends.
// - Fix-up: a tile split between CTAs is finished by the CTA holding its first stage ("owner");
//   the later CTAs store their partial sums and raise a flag (release); the owner adds them in CTA
//   order (acquire), so results are deterministic, in one launch. The flags are zeroed by the
//   handler (cudaMemsetAsync on the same stream) before the launch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "decode.cuh"
#include "mma.cuh"
#include "params.cuh"
#include "sync.cuh"

namespace jax_fpx {
namespace cuda {

constexpr int kXRow = kStageBlocks * 64 + kXPad;  // bf16 elements per staged activation row

template <int BITS, int MT>
struct StageShape {
  static constexpr uint32_t kWWords = kWarps * kStageBlocks * BITS * 32;
  static constexpr uint32_t kBytes = kWWords * 4 + MT * 8 * kXRow * 2;
};

__device__ __forceinline__ int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Position in the iteration space, advanced without divisions: ring slot and phase, tile, stage.
struct Cursor {
  int s = 0;
  uint32_t phase = 0;
  int kit = 0;                       // stage within the tile
  int64_t tile = 0, bi = 0, rt0 = 0;  // tile, its batch item and first row tile
  int64_t rg = 0;                    // row group within the batch item
  __device__ __forceinline__ Cursor(const GemmParams& p, int64_t it) {
    tile = it / p.iters;
    kit = static_cast<int>(it - tile * p.iters);
    bi = tile / p.tiles_per_item;
    rg = tile - bi * p.tiles_per_item;
    rt0 = rg * kWarps;
  }
  __device__ __forceinline__ void Next(const GemmParams& p) {
    if (++s == p.stages) {
      s = 0;
      phase ^= 1u;
    }
    if (++kit == p.iters) {
      kit = 0;
      ++tile;
      rt0 += kWarps;
      if (++rg == p.tiles_per_item) {
        rg = 0;
        rt0 = 0;
        ++bi;
      }
    }
  }
};

__device__ __forceinline__ int CtaOf(int64_t it, const GemmParams& p) {
  return static_cast<int>(((it + 1) * p.ctas + p.total - 1) / p.total - 1);
}

// Independent accumulator sets: k-step J accumulates into set J % kAccSets, so the MMAs of a
// block do not wait on each other (one set per token tile would chain 16 MMAs per stage).
template <int MT>
constexpr int AccSets() {
  return MT <= 2 ? 4 : MT == 4 ? 2 : 1;
}

template <int E, int MB, bool F16, int MT, int J = 0>
__device__ __forceinline__ void Steps(const uint32_t (&w)[1 + E + MB], const uint16_t* xs, int b, int g,
                                      int t, float (&acc)[AccSets<MT>()][MT][4]) {
  if constexpr (J < 4) {
    uint32_t a[4];
    DecodeStep<E, MB, F16, J>(w, a);
#pragma unroll
    for (int i = 0; i < MT; ++i) {
      const uint16_t* xr = xs + (8 * i + g) * kXRow + b * 64 + 16 * J + 2 * t;
      const uint32_t b0 = *reinterpret_cast<const uint32_t*>(xr);
      const uint32_t b1 = *reinterpret_cast<const uint32_t*>(xr + 8);
      Mma16816<F16>(acc[J % AccSets<MT>()][i], a, b0, b1);
    }
    Steps<E, MB, F16, MT, J + 1>(w, xs, b, g, t, acc);
  }
}

template <int MT>
__device__ __forceinline__ void Flush(float (&acc)[MT][4], float (&gacc)[AccSets<MT>()][MT][4], float s_lo,
                                      float s_hi) {
#pragma unroll
  for (int i = 0; i < MT; ++i) {
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int a = 0; a < AccSets<MT>(); ++a)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        v[r] += gacc[a][i][r];
        gacc[a][i][r] = 0.0f;
      }
    acc[i][0] += v[0] * s_lo;
    acc[i][1] += v[1] * s_lo;
    acc[i][2] += v[2] * s_hi;
    acc[i][3] += v[3] * s_hi;
  }
}

template <int E, int MB, bool F16, int MT>
__global__ void __launch_bounds__(kThreads, CtasPerSm(MT)) DecodeGemmKernel(const __grid_constant__ GemmParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int kBits = 1 + E + MB;
  using SS = StageShape<kBits, MT>;
  extern __shared__ __align__(128) unsigned char smem[];
  uint64_t* full = reinterpret_cast<uint64_t*>(smem);
  uint64_t* empty = full + p.stages;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int cta = blockIdx.x;
  const int64_t begin = p.total * cta / p.ctas, end = p.total * (cta + 1) / p.ctas;
  auto stage_w = [&](int s) { return reinterpret_cast<uint32_t*>(smem + kBarBytes + size_t(s) * SS::kBytes); };
  auto stage_x = [&](int s) { return reinterpret_cast<uint16_t*>(stage_w(s) + SS::kWWords); };

  if (threadIdx.x == 0) {
    for (int s = 0; s < p.stages; ++s) {
      MbarInit(full + s, 32);
      MbarInit(empty + s, kWarps);
    }
    FenceBarrierInit();
  }
  // Activation rows of tokens >= m are read (their MMA columns are discarded) but never staged:
  // zero them once, and order these generic writes before the copy engine's.
  for (int s = 0; s < p.stages; ++s)
    for (int i = threadIdx.x; i < MT * 8 * kXRow / 2; i += blockDim.x) reinterpret_cast<uint32_t*>(stage_x(s))[i] = 0u;
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  __syncthreads();

  if (warp == kWarps) {  // ---------------- producer ----------------
    const uint64_t policy = EvictFirstPolicy();
    Cursor c(p, begin);
    for (int64_t it = begin; it < end; ++it, c.Next(p)) {
      MbarWait(empty + c.s, c.phase ^ 1);
      const int64_t kb0 = int64_t(c.kit) * kStageBlocks;
      const int nb = static_cast<int>(Min64(kStageBlocks, p.k_blocks - kb0));
      const int vt = static_cast<int>(Min64(kWarps, p.row_tiles - c.rt0));
      const int64_t k0 = kb0 * 64, klen = int64_t(nb) * 64;
      const bool xb = p.x_bulk && k0 + klen <= p.k;
      const uint16_t* xsrc = p.x + (p.x_batched ? c.bi * p.m * p.k : 0);
      uint16_t* xs = stage_x(c.s);
      if (lane == 0) {
        const uint32_t wbytes = uint32_t(nb) * kBits * 128;
        MbarExpectTx(full + c.s, wbytes * vt + (xb ? uint32_t(p.m * klen * 2) : 0u));
        const uint32_t* wsrc = p.data + (p.w_batched ? c.bi * p.row_tiles * p.k_blocks * kBits * 32 : 0);
        for (int w = 0; w < vt; ++w)
          BulkCopy(stage_w(c.s) + w * kStageBlocks * kBits * 32,
                   wsrc + ((c.rt0 + w) * p.k_blocks + kb0) * kBits * 32, wbytes, full + c.s, policy);
        if (xb)
          for (int64_t tok = 0; tok < p.m; ++tok)
            BulkCopyPlain(xs + tok * kXRow, xsrc + tok * p.k + k0, uint32_t(klen * 2), full + c.s);
      }
      if (!xb) {
        for (int64_t tok = 0; tok < p.m; ++tok)
          for (int e = lane; e < kStageBlocks * 64; e += 32)
            xs[tok * kXRow + e] = (e < klen && k0 + e < p.k) ? xsrc[tok * p.k + k0 + e] : uint16_t(0);
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      }
      MbarArrive(full + c.s);
    }
    return;
  }

  // ---------------- consumers ----------------
  const int g = lane >> 2, t = lane & 3;
  float acc[MT][4], gacc[AccSets<MT>()][MT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      acc[i][r] = 0.0f;
#pragma unroll
      for (int a = 0; a < AccSets<MT>(); ++a) gacc[a][i][r] = 0.0f;
    }
  float s_lo = 1.0f, s_hi = 1.0f;
  int seg_kit = 0;  // first stage of the current tile segment
  Cursor c(p, begin);
  for (int64_t it = begin; it < end; ++it, c.Next(p)) {
    const int s = c.s;
    const int kit = c.kit;
    const int64_t tile = c.tile, bi = c.bi, rt0 = c.rt0;
    const int64_t kb0 = int64_t(kit) * kStageBlocks;
    const int nb = static_cast<int>(Min64(kStageBlocks, p.k_blocks - kb0));
    const bool active = rt0 + warp < p.row_tiles;
    const int64_t row0 = (rt0 + warp) * 16 + g;
    const int64_t sbase = (p.w_batched ? bi : 0) * p.n_pad * p.groups;
    if (it == begin || kit == 0) seg_kit = kit;
    MbarWait(full + s, c.phase);
    if (active) {
      const uint32_t* ws = stage_w(s) + warp * kStageBlocks * kBits * 32;
      const uint16_t* xs = stage_x(s);
#pragma unroll
      for (int b = 0; b < kStageBlocks; ++b) {
        if (b < nb) {
          const int64_t kb = kb0 + b;
          if (p.scale_bf16 && (kb % p.group_blocks == 0 || (kit == seg_kit && b == 0))) {
            const uint16_t* sc = static_cast<const uint16_t*>(p.scale) + sbase;
            const int64_t grp = kb / p.group_blocks;
            s_lo = Bf16BitsToFloat(sc[row0 * p.groups + grp]);
            s_hi = Bf16BitsToFloat(sc[(row0 + 8) * p.groups + grp]);
          }
          uint32_t wr[kBits];
#pragma unroll
          for (int i = 0; i < kBits; ++i) wr[i] = ws[(b * kBits + i) * 32 + lane];
          Steps<E, MB, F16, MT>(wr, xs, b, g, t, gacc);
          if (p.scale_bf16 && (kb + 1) % p.group_blocks == 0) Flush<MT>(acc, gacc, s_lo, s_hi);
        }
      }
    }
    __syncwarp();
    if (lane == 0) MbarArrive(empty + s);
    if (!(kit == p.iters - 1 || it == end - 1) || !active) continue;

    // ---- end of a tile segment ----
    Flush<MT>(acc, gacc, p.scale_bf16 ? s_lo : 1.0f, p.scale_bf16 ? s_hi : 1.0f);
    if (seg_kit != 0) {  // a later segment: hand the partial sums to the tile's owner
      float* dst = p.partial + (int64_t(cta) * kWarps + warp) * (MT * 4 * 32);
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          __stcg(dst + (i * 4 + r) * 32 + lane, acc[i][r]);
          acc[i][r] = 0.0f;
        }
      __threadfence();
      __syncwarp();
      if (lane == 0) FlagRelease(p.flags + cta * kWarps + warp);
      continue;
    }
    if (kit != p.iters - 1) {  // the owner of a split tile: add the later segments in CTA order
      const int last = CtaOf(tile * p.iters + p.iters - 1, p);
      for (int c = cta + 1; c <= last; ++c) {
        if (lane == 0) FlagAcquire(p.flags + c * kWarps + warp);
        __syncwarp();
        const float* src = p.partial + (int64_t(c) * kWarps + warp) * (MT * 4 * 32);
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
          for (int r = 0; r < 4; ++r) acc[i][r] += __ldcg(src + (i * 4 + r) * 32 + lane);
      }
    }
    const float* scf = static_cast<const float*>(p.scale) + sbase;
    const float f_lo = (p.scale_bf16 ? 1.0f : scf[row0 * p.groups]) * p.fold;
    const float f_hi = (p.scale_bf16 ? 1.0f : scf[(row0 + 8) * p.groups]) * p.fold;
    uint16_t* yb = p.y + bi * p.m * p.n;
#pragma unroll
    for (int i = 0; i < MT; ++i) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int64_t tok = 8 * i + 2 * t + c;
        if (tok >= p.m) continue;
        if (row0 < p.n) yb[tok * p.n + row0] = FromF32<F16>(acc[i][c] * f_lo + BiasAt(p, bi, tok, row0));
        if (row0 + 8 < p.n)
          yb[tok * p.n + row0 + 8] = FromF32<F16>(acc[i][2 + c] * f_hi + BiasAt(p, bi, tok, row0 + 8));
      }
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][r] = 0.0f;
    }
  }
#endif
}

}  // namespace cuda
}  // namespace jax_fpx
