// Kernel instantiations for fp6_e2m3 (bf16 and f16 activations).
#include "kernel/instantiate.cuh"

namespace jax_fpx {
namespace cuda {
FpxKernels KernelsE2M3(bool f16) { return f16 ? MakeKernels<2, 3, true>() : MakeKernels<2, 3, false>(); }
}  // namespace cuda
}  // namespace jax_fpx
