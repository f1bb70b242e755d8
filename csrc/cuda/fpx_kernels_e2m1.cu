// Kernel instantiations for fp4_e2m1 (bf16 and f16 activations).
#include "kernel/instantiate.cuh"

namespace jax_fpx {
namespace cuda {
FpxKernels KernelsE2M1(bool f16) { return f16 ? MakeKernels<2, 1, true>() : MakeKernels<2, 1, false>(); }
}  // namespace cuda
}  // namespace jax_fpx
