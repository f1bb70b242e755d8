// CUDA handler of `jax_fpx_dequantize`: packed FPx codes + scales -> dense [N, K] bf16/f16.
// The large-M path of jax_fpx.linear (dequantize once, then XLA's GEMM): one thread per
// (block, lane) decodes its 32 values through a shared-memory table and writes 16 contiguous
// k of two rows, so a warp's stores are 128-byte runs. Launched on XLA's stream; no allocation.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "../fpx_format.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace jax_fpx {
namespace {

constexpr int kDequantThreads = 256;  // 8 blocks x 32 lanes per CTA

template <int kBits, typename T>
__global__ void DequantizeKernel(const uint32_t* __restrict__ data, const float* __restrict__ scale,
                                 T* __restrict__ out, int ebits, int mbits, int64_t n, int64_t k,
                                 int64_t row_tiles, int64_t k_blocks, int64_t groups,
                                 int64_t group_blocks, int64_t n_pad, int64_t batch_w) {
  __shared__ float table[1 << kBits];
  for (int c = threadIdx.x; c < (1 << kBits); c += blockDim.x) table[c] = DecodeCode(c, ebits, mbits);
  __syncthreads();
  const int64_t b = blockIdx.y;
  const int64_t blocks = row_tiles * k_blocks;
  const int64_t blk = static_cast<int64_t>(blockIdx.x) * (kDequantThreads / kLanes) + threadIdx.x / kLanes;
  if (blk >= blocks) return;
  const int lane = threadIdx.x % kLanes;
  const int64_t nt = blk / k_blocks, kb = blk % k_blocks;
  const uint32_t* block = data + (b % batch_w) * blocks * kLanes * kBits + blk * kLanes * kBits;
  uint32_t words[kBits];
#pragma unroll
  for (int i = 0, off = 0; i < NumParts(kBits); ++i) {
    const int p = PartWidth(kBits, i);
#pragma unroll
    for (int j = 0; j < p; ++j) words[off + j] = __ldg(block + kLanes * off + lane * p + j);
    off += p;
  }
  const int g = lane >> 2, t = lane & 3;
  const int64_t k0 = kb * kKBlock + 16 * t;
  const float* sb = scale + (b % batch_w) * n_pad * groups;
  const int64_t col = groups == 1 ? 0 : kb / group_blocks;
  T* ob = out + b * n * k;
#pragma unroll
  for (int rb = 0; rb < 2; ++rb) {
    const int64_t row = nt * kRowTile + g + 8 * rb;
    if (row >= n) continue;
    const float s = sb[row * groups + col];
    T vals[16];
#pragma unroll
    for (int z = 0; z < 8; ++z) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int beta = 2 * rb + h;
        uint32_t code = 0;
#pragma unroll
        for (int i = 0, off = 0; i < NumParts(kBits); ++i) {
          const int p = PartWidth(kBits, i), o = PartOffset(kBits, i), q = 8 / p;
          const uint32_t word = words[off + z / q];
          code |= ((word >> (8 * beta + 8 - p - p * (z % q))) & ((1u << p) - 1u)) << (kBits - o - p);
          off += p;
        }
        const float v = table[code] * s;
        if constexpr (std::is_same<T, __half>::value) vals[2 * z + h] = __float2half_rn(v);
        else vals[2 * z + h] = __float2bfloat16_rn(v);
      }
    }
    T* dst = ob + row * k + k0;
    const bool aligned = (k % 8 == 0) && (k0 + 16 <= k);
    if (aligned) {
      reinterpret_cast<uint4*>(dst)[0] = reinterpret_cast<const uint4*>(vals)[0];
      reinterpret_cast<uint4*>(dst)[1] = reinterpret_cast<const uint4*>(vals)[1];
    } else {
      for (int i = 0; i < 16; ++i)
        if (k0 + i < k) dst[i] = vals[i];
    }
  }
}

template <typename T>
cudaError_t LaunchDequantize(cudaStream_t stream, int bits, const uint32_t* data, const float* scale,
                             T* out, int ebits, int mbits, int64_t n, int64_t k, int64_t row_tiles,
                             int64_t k_blocks, int64_t groups, int64_t group_blocks, int64_t n_pad,
                             int64_t batch, int64_t batch_w) {
  const int64_t blocks = row_tiles * k_blocks;
  const dim3 grid(static_cast<unsigned>((blocks + 7) / 8), static_cast<unsigned>(batch));
#define JAX_FPX_DQ(B)                                                                          \
  case B:                                                                                      \
    DequantizeKernel<B, T><<<grid, kDequantThreads, 0, stream>>>(                              \
        data, scale, out, ebits, mbits, n, k, row_tiles, k_blocks, groups, group_blocks, n_pad, \
        batch_w);                                                                              \
    break;
  switch (bits) {
    JAX_FPX_DQ(3) JAX_FPX_DQ(4) JAX_FPX_DQ(5) JAX_FPX_DQ(6) JAX_FPX_DQ(7) JAX_FPX_DQ(8)
    default:
      return cudaErrorInvalidValue;
  }
#undef JAX_FPX_DQ
  return cudaGetLastError();
}

ffi::Error Dequantize(cudaStream_t stream, ffi::AnyBuffer data, ffi::AnyBuffer scale,
                      ffi::Result<ffi::AnyBuffer> out, int32_t ebits, int32_t mbits,
                      int32_t in_features, int32_t out_features, int32_t group_size) {
  auto bad = [](const std::string& m) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "jax_fpx_dequantize: " + m);
  };
  const int bits = 1 + ebits + mbits;
  if (ebits < 1 || mbits < 1 || bits < 3 || bits > 8) return bad("unsupported format");
  if (data.element_type() != ffi::DataType::U32 || scale.element_type() != ffi::DataType::F32)
    return bad("data must be uint32 and scale float32");
  const bool f16 = out->element_type() == ffi::DataType::F16;
  if (!f16 && out->element_type() != ffi::DataType::BF16) return bad("output must be bf16 or f16");
  auto dd = data.dimensions(), sd = scale.dimensions();
  if (dd.size() < 3 || sd.size() < 2) return bad("operand ranks too small");
  const int64_t row_tiles = dd[dd.size() - 3], k_blocks = dd[dd.size() - 2];
  const int64_t n = out_features, k = in_features, n_pad = row_tiles * kRowTile;
  if (dd[dd.size() - 1] != kLanes * bits || n_pad < n || k_blocks * kKBlock < k || sd[sd.size() - 2] != n_pad)
    return bad("packed shapes do not match (in_features, out_features)");
  const int64_t groups = sd[sd.size() - 1];
  const int64_t group_blocks = group_size == 0 ? k_blocks : group_size / kKBlock;
  if ((group_size == 0 && groups != 1) || (group_size != 0 && groups * group_blocks != k_blocks))
    return bad("scale columns do not match group_size");
  int64_t batch_w = 1;
  for (size_t i = 0; i + 3 < dd.size(); ++i) batch_w *= dd[i];
  const int64_t batch = static_cast<int64_t>(out->element_count()) / std::max<int64_t>(1, n * k);
  if (batch * n * k != static_cast<int64_t>(out->element_count()) || (batch_w != 1 && batch_w != batch))
    return bad("output size does not match the weight batch");
  if (n == 0 || k == 0 || batch == 0) return ffi::Error::Success();
  const auto* d = static_cast<const uint32_t*>(data.untyped_data());
  const auto* s = static_cast<const float*>(scale.untyped_data());
  cudaError_t err =
      f16 ? LaunchDequantize(stream, bits, d, s, static_cast<__half*>(out->untyped_data()), ebits, mbits,
                             n, k, row_tiles, k_blocks, groups, group_blocks, n_pad, batch, batch_w)
          : LaunchDequantize(stream, bits, d, s, static_cast<__nv_bfloat16*>(out->untyped_data()), ebits,
                             mbits, n, k, row_tiles, k_blocks, groups, group_blocks, n_pad, batch, batch_w);
  if (err != cudaSuccess)
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("jax_fpx_dequantize: ") + cudaGetErrorString(err));
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jax_fpx

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxFpxDequantizeCuda, jax_fpx::Dequantize,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()  // data
                                  .Arg<ffi::AnyBuffer>()  // scale
                                  .Ret<ffi::AnyBuffer>()  // out [..., N, K]
                                  .Attr<int32_t>("ebits")
                                  .Attr<int32_t>("mbits")
                                  .Attr<int32_t>("in_features")
                                  .Attr<int32_t>("out_features")
                                  .Attr<int32_t>("group_size"),
                              {ffi::Traits::kCmdBufferCompatible});
