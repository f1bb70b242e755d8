// Builds the kernel table of one format (included by fpx_kernels_eXmY.cu).
#pragma once

#include "gemm.cuh"
#include "gemm_tiled.cuh"
#include "registry.cuh"
#include "splitk_reduce.cuh"

namespace jax_fpx {
namespace cuda {

// Register ring depth (blocks in flight per warp) for a code width.
template <int BITS>
constexpr int RingDepth() {
  return BITS <= 4 ? 8 : 4;
}

template <int E, int MB, bool F16>
FpxKernels MakeKernels() {
  constexpr int D = RingDepth<1 + E + MB>();
  FpxKernels k;
  k.gemm[0] = FpxGemmKernel<E, MB, F16, 1, D>;
  k.gemm[1] = FpxGemmKernel<E, MB, F16, 2, D>;
  k.gemm_tiled[0] = FpxGemmTiledKernel<E, MB, F16, D, false>;
  k.gemm_tiled[1] = FpxGemmTiledKernel<E, MB, F16, D, true>;
  k.reduce = SplitKReduceKernel<F16>;
  k.fold = Dequant<E, MB, F16>::FoldFactor();
  return k;
}

}  // namespace cuda
}  // namespace jax_fpx
