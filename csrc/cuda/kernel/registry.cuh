// Which kernels exist: a small set of (format x activation dtype x token-tile) instantiations.
// Each format's instantiations live in their own .cu file (parallel compilation).
#pragma once

#include "params.cuh"

namespace jax_fpx {
namespace cuda {

using KernelFn = void (*)(GemmParams);

// 8-token MMA tiles per warp of the warp kernel: 1 for M <= 8, 2 above (M > 16 normally runs the
// tiled kernel; the warp kernel serves it only for rows that are not 16-byte aligned, K % 8 != 0,
// with more token CTAs). (An MT=8 variant ran 392-480 us at M=64 on the 70B MLP shapes vs 168-201 us
// for MT=4 at M=32; MT=4 was dropped with the tiled kernel, which is 1.6-1.8x faster at M=64.)
constexpr int kNumTokenTiles = 2;
constexpr int kTokenTiles[kNumTokenTiles] = {1, 2};

struct FpxKernels {
  KernelFn gemm[kNumTokenTiles] = {};  // warp kernel (gemm.cuh), by token tiles
  KernelFn gemm_tiled[2] = {};           // shared-memory tiled kernel (gemm_tiled.cuh), M > 16:
                                         // [0] per channel, [1] per group
  KernelFn reduce = nullptr;
  float fold = 1.0f;
};

// Returns false if (ebits, mbits) has no compiled kernel.
bool FindKernels(int ebits, int mbits, bool f16, FpxKernels* out);

// Per-format accessors (one per instantiation file).
FpxKernels KernelsE3M2(bool f16);
FpxKernels KernelsE2M3(bool f16);
FpxKernels KernelsE2M2(bool f16);
FpxKernels KernelsE2M1(bool f16);

}  // namespace cuda
}  // namespace jax_fpx
