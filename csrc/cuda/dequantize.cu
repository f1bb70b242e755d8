// CUDA handler of `jax_fpx_dequantize`: packed FPx codes + scales -> dense [N, K] bf16/f16, the
// large-M path of jax_fpx.linear (dequantize once, then XLA's GEMM). One thread per (block, lane)
// unpacks its 32 codes with the shared routine (fpx_format.h, recipe in constant memory) and
// writes them as pairs of consecutive k. XLA's stream; no allocation.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "../linear_args.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace jax_fpx {
namespace {

__constant__ Recipe kRecipesDev[] = JAX_FPX_RECIPES_INIT;

constexpr int kDequantThreads = 256;  // 8 blocks x 32 lanes per CTA

template <typename T>
__device__ __forceinline__ T FromFloat(float v) {
  if constexpr (std::is_same<T, __half>::value) return __float2half_rn(v);
  else return __float2bfloat16_rn(v);
}

template <typename T>
__global__ void DequantizeKernel(const uint32_t* __restrict__ data, const void* __restrict__ scale,
                                 T* __restrict__ out, int recipe, int64_t n, int64_t k, int64_t row_tiles,
                                 int64_t k_blocks, int64_t groups, int64_t group_blocks, int64_t n_pad,
                                 int64_t batch_w, bool scale_bf16) {
  const Recipe& rec = kRecipesDev[recipe];
  const int bits = 1 + rec.ebits + rec.mbits;
  __shared__ float table[256];
  for (int c = threadIdx.x; c < (1 << bits); c += blockDim.x) table[c] = DecodeCode(c, rec.ebits, rec.mbits);
  __syncthreads();
  const int64_t b = blockIdx.y;
  const int64_t blocks = row_tiles * k_blocks;
  const int64_t blk = static_cast<int64_t>(blockIdx.x) * (kDequantThreads / kLanes) + threadIdx.x / kLanes;
  if (blk >= blocks) return;
  const int lane = threadIdx.x % kLanes;
  const int64_t nt = blk / k_blocks, kb = blk % k_blocks;
  uint8_t codes[2 * kRegs];
  UnpackLane(data + ((b % batch_w) * blocks + blk) * kLanes * bits, rec, lane, codes);
  const int64_t col = groups == 1 ? 0 : kb / group_blocks;
  const int64_t sbase = (b % batch_w) * n_pad * groups;
  T* ob = out + b * n * k;
  // Register r holds row g + 8*(r&1), k = 16*(r>>2) + 2t + 8*((r&3)>>1) + h: per row half,
  // 8 pairs of consecutive k.
#pragma unroll
  for (int rb = 0; rb < 2; ++rb) {
    const int64_t row = nt * kRowTile + (lane >> 2) + 8 * rb;
    if (row >= n) continue;
    const float s = scale_bf16 ? Bf16BitsToFloat(static_cast<const uint16_t*>(scale)[sbase + row * groups + col])
                               : static_cast<const float*>(scale)[sbase + row * groups + col];
#pragma unroll
    for (int r = rb; r < kRegs; r += 2) {
      const int64_t k0 = kb * kKBlock + ElementK(lane, r, 0);
      T* dst = ob + row * k + k0;
      const T v0 = FromFloat<T>(table[codes[2 * r]] * s), v1 = FromFloat<T>(table[codes[2 * r + 1]] * s);
      if (k0 + 1 < k && (k % 2) == 0) {
        T pair[2] = {v0, v1};
        *reinterpret_cast<uint32_t*>(dst) = *reinterpret_cast<const uint32_t*>(pair);
      } else {
        if (k0 < k) dst[0] = v0;
        if (k0 + 1 < k) dst[1] = v1;
      }
    }
  }
}

ffi::Error Dequantize(cudaStream_t stream, ffi::AnyBuffer data, ffi::AnyBuffer scale,
                      ffi::Result<ffi::AnyBuffer> out, int32_t ebits, int32_t mbits,
                      int32_t in_features, int32_t out_features, int32_t group_size) {
  constexpr const char* kWho = "jax_fpx_dequantize";
  WeightShape w;
  if (auto err = ParseWeight(kWho, data, scale, ebits, mbits, in_features, out_features, group_size, &w);
      err.failure())
    return err;
  const bool f16 = out->element_type() == ffi::DataType::F16;
  if (!f16 && out->element_type() != ffi::DataType::BF16) return BadArgOf(kWho, "output must be bf16 or f16");
  const int64_t nk = w.n * w.k;
  const int64_t count = static_cast<int64_t>(out->element_count());
  const int64_t batch = nk == 0 ? w.batch_w : count / nk;
  if (batch * nk != count || (w.batch_w != 1 && w.batch_w != batch))
    return BadArgOf(kWho, "output size does not match the weight batch");
  if (nk == 0 || batch == 0) return ffi::Error::Success();
  const int64_t blocks = w.row_tiles * w.k_blocks;
  const dim3 grid(static_cast<unsigned>((blocks + 7) / 8), static_cast<unsigned>(batch));
  const auto* d = static_cast<const uint32_t*>(data.untyped_data());
  const int recipe = static_cast<int>(w.recipe - kRecipes);
  if (f16)
    DequantizeKernel<__half><<<grid, kDequantThreads, 0, stream>>>(
        d, scale.untyped_data(), static_cast<__half*>(out->untyped_data()), recipe, w.n, w.k, w.row_tiles,
        w.k_blocks, w.groups, w.group_blocks, w.n_pad, w.batch_w, w.scale_bf16);
  else
    DequantizeKernel<__nv_bfloat16><<<grid, kDequantThreads, 0, stream>>>(
        d, scale.untyped_data(), static_cast<__nv_bfloat16*>(out->untyped_data()), recipe, w.n, w.k,
        w.row_tiles, w.k_blocks, w.groups, w.group_blocks, w.n_pad, w.batch_w, w.scale_bf16);
  if (auto err = cudaGetLastError(); err != cudaSuccess)
    return ffi::Error(ffi::ErrorCode::kInternal, std::string(kWho) + ": " + cudaGetErrorString(err));
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
