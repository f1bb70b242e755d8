// Deterministic split-K reduction: y = cast(sum_s ws[s] + bias), splits summed in fixed order.
#pragma once

#include "params.cuh"

namespace jax_fpx {
namespace cuda {

template <bool F16>
__global__ void __launch_bounds__(256) SplitKReduceKernel(GemmParams p) {
  const int64_t per_item = p.m * p.n;
  const int64_t total = per_item * p.batch;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int b = static_cast<int>(i / per_item);
    const int64_t rem = i - b * per_item;
    const int64_t row = rem / p.n, col = rem - row * p.n;
    const float* src = p.ws + (int64_t(b) * p.split * p.m + row) * p.n_pad + col;
    float acc = 0.0f;
    for (int s = 0; s < p.split; ++s) acc += src[int64_t(s) * p.m * p.n_pad];
    acc += BiasAt(p, b, row, col);
    p.y[i] = FromF32<F16>(acc);
  }
}

}  // namespace cuda
}  // namespace jax_fpx
