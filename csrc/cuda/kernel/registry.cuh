// Which kernels exist: per format (the list is CMake's JAX_FPX_CUDA_FORMATS, generated into
// cuda_formats_gen.h) x activation dtype x token tiles. Each format's instantiations are one
// generated .cu file (parallel compilation).
#pragma once

#include "cuda_formats_gen.h"
#include "params.cuh"

namespace jax_fpx {
namespace cuda {

using KernelFn = void (*)(GemmParams);

struct FpxKernels {
  KernelFn gemm[kNumTokenTiles] = {};
  uint32_t stage_bytes[kNumTokenTiles] = {};  // shared memory per ring stage
  float fold = 1.0f;
};

// Per-format accessors (one per generated instantiation file) and the lookup over them.
#define JAX_FPX_DECLARE_KERNELS(E, M) FpxKernels Kernels_e##E##m##M(bool f16);
JAX_FPX_CUDA_FORMATS(JAX_FPX_DECLARE_KERNELS)
#undef JAX_FPX_DECLARE_KERNELS

inline bool FindKernels(int ebits, int mbits, bool f16, FpxKernels* out) {
#define JAX_FPX_FIND_KERNELS(E, M)   \
  if (ebits == E && mbits == M) {    \
    *out = Kernels_e##E##m##M(f16);  \
    return true;                     \
  }
  JAX_FPX_CUDA_FORMATS(JAX_FPX_FIND_KERNELS)
#undef JAX_FPX_FIND_KERNELS
  return false;
}

}  // namespace cuda
}  // namespace jax_fpx
