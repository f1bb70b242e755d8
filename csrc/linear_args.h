// Shape/dtype validation of the `jax_fpx_linear` FFI call, shared by the CPU and CUDA handlers.
//
// Operands:  x     bf16/f16 [bx..., M, K]          activations (K = logical in_features)
//            data  u32      [bw..., NT, KB, 32*bits] packed codes (jax_fpx/layout.py)
//            scale f32/bf16 [bw..., N_pad, G]        per-channel f32 (G=1) / per-group bf16 scales
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

// The packed weight operands (data, scale) checked against the static attributes: shared by the
// linear and dequantize handlers, so both reject the same tampered or mismatched weights.
struct WeightShape {
  int ebits = 0, mbits = 0, bits = 0;
  const Recipe* recipe = nullptr;
  int64_t k = 0, n = 0;                 // logical in_features, out_features
  int64_t n_pad = 0, k_pad = 0;         // packed matrix extent
  int64_t row_tiles = 0, k_blocks = 0;  // n_pad / 16, k_pad / 64
  int64_t groups = 1;                   // scale columns (1 = per channel)
  int64_t group_blocks = 0;             // k blocks per scale group
  int64_t batch_w = 1;                  // stacked weights
  bool scale_bf16 = false;              // per-group scales are bf16, per-channel f32
};

struct LinearProblem : WeightShape {
  int64_t m = 0;                        // logical GEMM: y[m, n] = x[m, k] @ W[k, n]
  int64_t batch = 1, batch_x = 1;
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

inline int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

inline ffi::Error BadArgOf(const char* who, const std::string& msg) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, std::string(who) + ": " + msg);
}
inline ffi::Error BadArg(const std::string& msg) { return BadArgOf("jax_fpx_linear", msg); }

// Fills `w` from the packed operands and the static attributes, or returns an error that says
// what does not match (layout: jax_fpx/layout.py).
inline ffi::Error ParseWeight(const char* who, ffi::AnyBuffer data, ffi::AnyBuffer scale,
                              int32_t ebits, int32_t mbits, int32_t in_features,
                              int32_t out_features, int32_t group_size, WeightShape* w) {
  const int idx = FindRecipe(ebits, mbits);
  if (idx < 0)
    return BadArgOf(who, "unsupported format e" + std::to_string(ebits) + "m" + std::to_string(mbits));
  w->ebits = ebits;
  w->mbits = mbits;
  w->bits = 1 + ebits + mbits;
  w->recipe = &kRecipes[idx];
  if (in_features < 0 || out_features < 0) return BadArgOf(who, "negative in/out features");
  if (group_size < 0 || group_size % kKBlock != 0)
    return BadArgOf(who, "group_size must be 0 (per channel) or a positive multiple of 64");
  if (data.element_type() != ffi::DataType::U32) return BadArgOf(who, "data must be uint32");
  w->scale_bf16 = group_size != 0;
  if (scale.element_type() != (w->scale_bf16 ? ffi::DataType::BF16 : ffi::DataType::F32))
    return BadArgOf(who, w->scale_bf16 ? "per-group scale must be bfloat16" : "per-channel scale must be float32");
  auto dd = data.dimensions(), sd = scale.dimensions();
  if (dd.size() < 3 || sd.size() < 2) return BadArgOf(who, "operand ranks too small");
  w->k = in_features;
  w->n = out_features;
  w->row_tiles = dd[dd.size() - 3];
  w->k_blocks = dd[dd.size() - 2];
  w->n_pad = w->row_tiles * kRowTile;
  w->k_pad = w->k_blocks * kKBlock;
  const int64_t kmult = group_size > kKBlock ? group_size : kKBlock;
  if (dd[dd.size() - 1] != kLanes * w->bits) return BadArgOf(who, "data's last dim must be 32*bits");
  if (w->n_pad != RoundUp(w->n > 0 ? w->n : 1, kRowTile) || w->k_pad != RoundUp(w->k > 0 ? w->k : 1, kmult))
    return BadArgOf(who, "packed data shape does not match (in_features, out_features, group_size)");
  if (sd[sd.size() - 2] != w->n_pad) return BadArgOf(who, "scale rows must equal padded out_features");
  w->groups = sd[sd.size() - 1];
  if (group_size == 0) {
    if (w->groups != 1) return BadArgOf(who, "per-channel scale must have one column");
    w->group_blocks = w->k_blocks;
  } else {
    if (w->groups != w->k_pad / group_size) return BadArgOf(who, "scale columns do not match group_size");
    w->group_blocks = group_size / kKBlock;
  }
  w->batch_w = Prod(dd, 0, dd.size() - 3);
  if (Prod(sd, 0, sd.size() - 2) != w->batch_w) return BadArgOf(who, "scale batch must match data batch");
  return ffi::Error::Success();
}

// Fills `p` from the call's buffers and attributes, or returns a descriptive error.
inline ffi::Error ParseLinear(ffi::AnyBuffer x, ffi::AnyBuffer data, ffi::AnyBuffer scale,
                              ffi::AnyBuffer bias, ffi::AnyBuffer y, int32_t ebits,
                              int32_t mbits, int32_t in_features, int32_t out_features,
                              int32_t group_size, int32_t split_k, LinearProblem* p) {
  if (auto err = ParseWeight("jax_fpx_linear", data, scale, ebits, mbits, in_features, out_features,
                             group_size, p);
      err.failure())
    return err;
  if (x.element_type() == ffi::DataType::F16) {
    p->fp16 = true;
  } else if (x.element_type() != ffi::DataType::BF16) {
    return BadArg("x must be bfloat16 or float16");
  }
  if (y.element_type() != x.element_type()) return BadArg("y must have x's dtype");
  if (bias.element_type() != ffi::DataType::F32) return BadArg("bias must be float32");
  auto xd = x.dimensions();
  if (xd.size() < 2) return BadArg("x must have rank >= 2");
  p->m = xd[xd.size() - 2];
  if (xd[xd.size() - 1] != p->k) return BadArg("x's last dim must equal in_features");
  p->batch_x = Prod(xd, 0, xd.size() - 2);
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
