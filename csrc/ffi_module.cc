// nanobind module `_jax_fpx`: exposes the FFI handlers as capsules. Nothing else.
#include <nanobind/nanobind.h>

#include "cpu/linear_cpu.h"
#include "linear_args.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
namespace nb = nanobind;

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxFpxLinearCpu, jax_fpx::LinearCpu,
                              jax_fpx::BindLinearOperands(ffi::Ffi::Bind()));

#ifdef JAX_FPX_WITH_CUDA
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxFpxLinearCuda);      // csrc/cuda/fpx_gemm.cu
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxFpxDequantizeCuda);  // csrc/cuda/dequantize.cu
#endif

NB_MODULE(_jax_fpx, m) {
  m.def("registrations", []() {
    nb::dict d;
    d["jax_fpx_linear_cpu"] = nb::capsule(reinterpret_cast<void*>(JaxFpxLinearCpu));
#ifdef JAX_FPX_WITH_CUDA
    d["jax_fpx_linear_cuda"] = nb::capsule(reinterpret_cast<void*>(JaxFpxLinearCuda));
    d["jax_fpx_dequantize_cuda"] = nb::capsule(reinterpret_cast<void*>(JaxFpxDequantizeCuda));
#endif
    return d;
  });
  m.def("cuda_enabled", []() {
#ifdef JAX_FPX_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
  m.attr("layout_version") = 1;
}
