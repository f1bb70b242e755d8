// nanobind module `_jax_fpx`: exposes the FFI handlers as capsules and the facts Python reads
// from the build (layout version, formats with kernels per platform). Nothing else.
#include <nanobind/nanobind.h>

#include "cpu/linear_cpu.h"
#include "cuda/kernel/launch_shape.h"
#include "cuda_formats_gen.h"
#include "fpx_format.h"
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
  m.def("layout_version", []() { return jax_fpx::kLayoutVersion; });
  // float32 workspace elements the CUDA GEMM handler needs for `rows` folded tokens.
  m.def("kernel_workspace_elems", [](int64_t rows) { return jax_fpx::cuda::WorkspaceElems(rows); });
  // {"cpu": [(ebits, mbits), ...], "cuda": [...]}: formats each platform's GEMM handler runs
  // ("cuda" only in CUDA builds; there the other formats go through dequantize + XLA dot).
  m.def("kernel_formats", []() {
    nb::dict d;
    nb::list cpu;
    for (int i = 0; i < jax_fpx::kNumRecipes; ++i)
      cpu.append(nb::make_tuple(jax_fpx::kRecipes[i].ebits, jax_fpx::kRecipes[i].mbits));
    d["cpu"] = cpu;
#ifdef JAX_FPX_WITH_CUDA
    nb::list cuda;
#define JAX_FPX_APPEND_FORMAT(E, M) cuda.append(nb::make_tuple(E, M));
    JAX_FPX_CUDA_FORMATS(JAX_FPX_APPEND_FORMAT)
#undef JAX_FPX_APPEND_FORMAT
    d["cuda"] = cuda;
#endif
    return d;
  });
}
