// CPU FFI handler of `jax_fpx_linear` (see ../linear_args.h for the call's signature).
#pragma once

#include "xla/ffi/api/ffi.h"

namespace jax_fpx {

xla::ffi::Error LinearCpu(xla::ffi::AnyBuffer x, xla::ffi::AnyBuffer data,
                          xla::ffi::AnyBuffer scale, xla::ffi::AnyBuffer bias,
                          xla::ffi::Result<xla::ffi::AnyBuffer> y,
                          xla::ffi::Result<xla::ffi::AnyBuffer> ws, int32_t ebits, int32_t mbits,
                          int32_t in_features, int32_t out_features, int32_t group_size,
                          int32_t split_k);

}  // namespace jax_fpx
