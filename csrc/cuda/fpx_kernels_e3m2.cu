// Kernel instantiations for fp6_e3m2 (bf16 and f16 activations).
#include "kernel/instantiate.cuh"

namespace jax_fpx {
namespace cuda {
FpxKernels KernelsE3M2(bool f16) { return f16 ? MakeKernels<3, 2, true>() : MakeKernels<3, 2, false>(); }
}  // namespace cuda
}  // namespace jax_fpx
