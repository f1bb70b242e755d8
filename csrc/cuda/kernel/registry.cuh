// Which kernels exist: a small set of (format x activation dtype x token-tile) instantiations.
// Each format's instantiations live in their own .cu file (parallel compilation).
#pragma once

#include "params.cuh"

namespace jax_fpx {
namespace cuda {

using KernelFn = void (*)(GemmParams);

// 8-token MMA tiles per warp. (An MT=8 variant ran 392-480 us at M=64 on the 70B MLP shapes vs
// 168-201 us for MT=4 at M=32, i.e. no better than two MT=4 token tiles: dropped.)
constexpr int kNumTokenTiles = 3;
constexpr int kTokenTiles[kNumTokenTiles] = {1, 2, 4};

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
