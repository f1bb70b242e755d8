// Placeholder until the CUDA kernel lands: returns an error for every call.
#include "xla/ffi/api/ffi.h"
namespace ffi = xla::ffi;
static ffi::Error NotYet() {
  return ffi::Error(ffi::ErrorCode::kUnimplemented, "jax_fpx: CUDA kernel not built yet");
}
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxFpxLinearCuda, NotYet, ffi::Ffi::Bind());
