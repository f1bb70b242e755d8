// Kernel instantiations for fp5_e2m2 (bf16 and f16 activations).
#include "kernel/instantiate.cuh"

namespace jax_fpx {
namespace cuda {
FpxKernels KernelsE2M2(bool f16) { return f16 ? MakeKernels<2, 2, true>() : MakeKernels<2, 2, false>(); }
}  // namespace cuda
}  // namespace jax_fpx
