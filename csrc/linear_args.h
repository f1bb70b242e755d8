// Shape/dtype validation of the `jax_fpx_linear` FFI call, shared by the CPU and CUDA handlers.
//
// Operands:  x     bf16/f16 [bx..., M, K]          activations (K = logical in_features)
//            data  u32      [bw..., NT, KB, 32*bits] packed codes (jax_fpx/layout.py)
//            scale f32      [bw..., N_pad, G]        per-channel (G=1) / per-group scales
//            bias  f32      [b..., N] or [0]         optional bias (size 0 = none)
// Results:   y     x.dtype  [b..., M, N]
//            ws    f32      [...]                    split-K workspace (GPU), any size on CPU
// Attributes: ebits, mbits, in_features (K), out_features (N), group_size (0 = per channel),
//             split_k (0 = automatic).
// Batches: bx and bw are each 1 or B = max(bx, bw); a batch of 1 is shared by every item.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "fpx_format.h"
#include "xla/ffi/api/ffi.h"

namespace jax_fpx {

namespace ffi = xla::ffi;

struct LinearProblem {
  int ebits = 0, mbits = 0, bits = 0;
  int64_t m = 0, k = 0, n = 0;          // logical GEMM: y[m, n] = x[m, k] @ W[k, n]
  int64_t n_pad = 0, k_pad = 0;         // packed matrix extent
  int64_t row_tiles = 0, k_blocks = 0;  // n_pad / 16, k_pad / 64
  int64_t groups = 1;                   // scale columns (1 = per channel)
  int64_t group_blocks = 0;             // k blocks per scale group
  int64_t batch = 1, batch_x = 1, batch_w = 1;
  bool has_bias = false;
  bool bias_batched = false;            // one bias per batch item (else shared)
  bool fp16 = false;                    // activations are f16 (else bf16)
  int split_k = 0;                      // requested split (0 = auto)
};

// Appends the call's operands and attributes (see the top of this file) to an FFI binding, so
// the CPU and CUDA handlers bind the same signature.
template <typename Binding>
auto BindLinearOperands(Binding binding) {
  return std::move(binding).template Arg<ffi::AnyBuffer>()  // x
      .template Arg<ffi::AnyBuffer>()            // data
      .template Arg<ffi::AnyBuffer>()            // scale
      .template Arg<ffi::AnyBuffer>()            // bias
      .template Ret<ffi::AnyBuffer>()            // y
      .template Ret<ffi::AnyBuffer>()            // workspace
      .template Attr<int32_t>("ebits")
      .template Attr<int32_t>("mbits")
      .template Attr<int32_t>("in_features")
      .template Attr<int32_t>("out_features")
      .template Attr<int32_t>("group_size")
      .template Attr<int32_t>("split_k");
}

inline int64_t Prod(ffi::AnyBuffer::Dimensions d, size_t begin, size_t end) {
  int64_t p = 1;
  for (size_t i = begin; i < end; ++i) p *= d[i];
  return p;
}

inline ffi::Error BadArg(const std::string& msg) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, "jax_fpx_linear: " + msg);
}

// Fills `p` from the call's buffers and attributes, or returns a descriptive error.
inline ffi::Error ParseLinear(ffi::AnyBuffer x, ffi::AnyBuffer data, ffi::AnyBuffer scale,
                              ffi::AnyBuffer bias, ffi::AnyBuffer y, int32_t ebits,
                              int32_t mbits, int32_t in_features, int32_t out_features,
                              int32_t group_size, int32_t split_k, LinearProblem* p) {
  if (ebits < 1 || mbits < 1 || 1 + ebits + mbits < 3 || 1 + ebits + mbits > 8)
    return BadArg("unsupported format e" + std::to_string(ebits) + "m" + std::to_string(mbits));
  p->ebits = ebits;
  p->mbits = mbits;
  p->bits = 1 + ebits + mbits;
  if (x.element_type() == ffi::DataType::F16) {
    p->fp16 = true;
  } else if (x.element_type() != ffi::DataType::BF16) {
    return BadArg("x must be bfloat16 or float16");
  }
  if (y.element_type() != x.element_type()) return BadArg("y must have x's dtype");
  if (data.element_type() != ffi::DataType::U32) return BadArg("data must be uint32");
  if (scale.element_type() != ffi::DataType::F32) return BadArg("scale must be float32");
  if (bias.element_type() != ffi::DataType::F32) return BadArg("bias must be float32");
  auto xd = x.dimensions(), dd = data.dimensions(), sd = scale.dimensions();
  if (xd.size() < 2 || dd.size() < 3 || sd.size() < 2) return BadArg("operand ranks too small");
  p->k = in_features;
  p->n = out_features;
  p->m = xd[xd.size() - 2];
  if (xd[xd.size() - 1] != p->k) return BadArg("x's last dim must equal in_features");
  p->row_tiles = dd[dd.size() - 3];
  p->k_blocks = dd[dd.size() - 2];
  p->n_pad = p->row_tiles * kRowTile;
  p->k_pad = p->k_blocks * kKBlock;
  if (dd[dd.size() - 1] != kLanes * p->bits) return BadArg("data's last dim must be 32*bits");
  if (p->n_pad < p->n || p->n_pad - p->n >= kRowTile || p->k_pad < p->k)
    return BadArg("packed data shape does not match (in_features, out_features)");
  if (sd[sd.size() - 2] != p->n_pad) return BadArg("scale rows must equal padded out_features");
  p->groups = sd[sd.size() - 1];
  if (group_size == 0) {
    if (p->groups != 1) return BadArg("per-channel scale must have one column");
    p->group_blocks = p->k_blocks;
  } else {
    if (group_size % kKBlock != 0 || p->k_pad % group_size != 0 || p->groups != p->k_pad / group_size)
      return BadArg("scale columns do not match group_size");
    p->group_blocks = group_size / kKBlock;
  }
  p->batch_x = Prod(xd, 0, xd.size() - 2);
  p->batch_w = Prod(dd, 0, dd.size() - 3);
  if (Prod(sd, 0, sd.size() - 2) != p->batch_w) return BadArg("scale batch must match data batch");
  p->batch = p->batch_x > p->batch_w ? p->batch_x : p->batch_w;
  if ((p->batch_x != 1 && p->batch_x != p->batch) || (p->batch_w != 1 && p->batch_w != p->batch))
    return BadArg("x and weight batches must be equal or 1");
  p->has_bias = bias.element_count() > 0;
  if (p->has_bias) {
    const int64_t count = static_cast<int64_t>(bias.element_count());
    p->bias_batched = p->batch > 1 && count == p->batch * p->n;
    if (count != p->n && !p->bias_batched)
      return BadArg("bias must have out_features elements (per batch item if batched)");
  }
  if (static_cast<int64_t>(y.element_count()) != p->batch * p->m * p->n)
    return BadArg("y has the wrong number of elements");
  if (split_k < 0) return BadArg("split_k must be >= 0");
  p->split_k = split_k;
  return ffi::Error::Success();
}

}  // namespace jax_fpx
