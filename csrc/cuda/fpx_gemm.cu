// CUDA handler of `jax_fpx_linear`: validate (shared ParseLinear), pick the token tile and the
// K split from the shape and the device, launch the FPx GEMM (and, for split > 1, the
// deterministic reduction) on XLA's stream. No allocation, no host synchronization: safe inside
// XLA command buffers (CUDA graphs).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

#include "../linear_args.h"
#include "kernel/registry.cuh"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace jax_fpx {
namespace cuda {

bool FindKernels(int ebits, int mbits, bool f16, FpxKernels* out) {
  if (ebits == 3 && mbits == 2) *out = KernelsE3M2(f16);
  else if (ebits == 2 && mbits == 3) *out = KernelsE2M3(f16);
  else if (ebits == 2 && mbits == 2) *out = KernelsE2M2(f16);
  else if (ebits == 2 && mbits == 1) *out = KernelsE2M1(f16);
  else return false;
  return true;
}

namespace {

ffi::Error CudaError(cudaError_t err, const char* what) {
  return ffi::Error(ffi::ErrorCode::kInternal,
                    std::string("jax_fpx_linear: ") + what + ": " + cudaGetErrorString(err));
}

// Resident CTAs per SM of a kernel (cached; a host-side query, legal during graph capture).
int ResidentCtas(KernelFn fn, int threads) {
  static std::mutex mu;
  static std::unordered_map<const void*, int> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(reinterpret_cast<const void*>(fn));
  if (it != cache.end()) return it->second;
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, fn, threads, 0) != cudaSuccess || n < 1) {
    cudaGetLastError();
    n = 1;
  }
  cache.emplace(reinterpret_cast<const void*>(fn), n);
  return n;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Split-K chosen from the shape and the device: at least one full wave of resident CTAs (every
// SM streams weights), then the split in [s_min, 2 s_min] with the least wave quantization,
// charging each split for its pipeline fill (~2 blocks) and the partials it writes and reads back.
int AutoSplit(int64_t base_ctas, int64_t k_blocks, int64_t resident_ctas, int64_t out_elems,
              int64_t weight_bytes, int64_t max_split) {
  const int64_t s_min = std::max<int64_t>(1, CeilDiv(resident_ctas, base_ctas));
  const int64_t s_max = std::min<int64_t>({max_split, 2 * s_min + 1, std::max<int64_t>(1, k_blocks / 4)});
  int64_t best = std::min(s_min, std::max<int64_t>(1, s_max));
  double best_cost = 1e300;
  for (int64_t s = 1; s <= s_max; ++s) {
    const double waves = double(base_ctas * s) / double(resident_ctas);
    const double quant = waves < 1.0 ? 1.0 / waves : std::ceil(waves) / waves;
    double cost = quant * (1.0 + 2.0 * double(s) / double(k_blocks));
    if (s > 1) cost += double(out_elems) * 8.0 * double(s) / double(weight_bytes) + 0.02;
    if (cost < best_cost * 0.995) {
      best_cost = cost;
      best = s;
    }
  }
  return static_cast<int>(best);
}

}  // namespace

ffi::Error LinearCuda(cudaStream_t stream, ffi::AnyBuffer x, ffi::AnyBuffer data,
                      ffi::AnyBuffer scale, ffi::AnyBuffer bias, ffi::Result<ffi::AnyBuffer> y,
                      ffi::Result<ffi::AnyBuffer> ws, int32_t ebits, int32_t mbits,
                      int32_t in_features, int32_t out_features, int32_t group_size,
                      int32_t split_k) {
  LinearProblem pr;
  if (auto err = ParseLinear(x, data, scale, bias, *y, ebits, mbits, in_features, out_features,
                             group_size, split_k, &pr);
      err.failure()) {
    return err;
  }
  if (ws->element_type() != ffi::DataType::F32) return BadArg("workspace must be float32");

  int dev = 0, cc_major = 0, sms = 0;
  if (auto e = cudaGetDevice(&dev); e != cudaSuccess) return CudaError(e, "cudaGetDevice");
  if (auto e = cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, dev);
      e != cudaSuccess)
    return CudaError(e, "cudaDeviceGetAttribute");
  if (cc_major < 8)
    return ffi::Error(ffi::ErrorCode::kUnimplemented,
                      "jax_fpx_linear: the CUDA kernel needs compute capability >= 8.0 (Ampere); "
                      "this GPU is sm_" + std::to_string(cc_major) + "x. Use impl='xla'.");
  if (auto e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev); e != cudaSuccess)
    return CudaError(e, "cudaDeviceGetAttribute");

  FpxKernels kernels;
  if (!FindKernels(pr.ebits, pr.mbits, pr.fp16, &kernels))
    return ffi::Error(ffi::ErrorCode::kUnimplemented,
                      "jax_fpx_linear: no CUDA kernel is compiled for format e" +
                          std::to_string(pr.ebits) + "m" + std::to_string(pr.mbits) +
                          " (built: e3m2, e2m3, e2m2, e2m1); use impl='xla'");
  if (pr.m == 0 || pr.n == 0 || pr.batch == 0) return ffi::Error::Success();

  // Batches: a shared weight folds the x batch into the rows.
  const bool folded = pr.batch_w == 1;
  GemmParams p{};
  p.x = static_cast<const uint16_t*>(x.untyped_data());
  p.data = static_cast<const uint32_t*>(data.untyped_data());
  p.scale = static_cast<const float*>(scale.untyped_data());
  p.bias = pr.has_bias ? static_cast<const float*>(bias.untyped_data()) : nullptr;
  p.y = static_cast<uint16_t*>(y->untyped_data());
  p.ws = static_cast<float*>(ws->untyped_data());
  p.m = folded ? pr.batch_x * pr.m : pr.m;
  p.k = pr.k;
  p.n = pr.n;
  p.n_pad = pr.n_pad;
  p.row_tiles = pr.row_tiles;
  p.k_blocks = pr.k_blocks;
  p.groups = pr.groups;
  p.group_blocks = pr.group_blocks;
  p.m_item = pr.m;
  p.batch = folded ? 1 : static_cast<int>(pr.batch);
  p.x_batched = !folded && pr.batch_x > 1;
  p.w_batched = !folded;
  p.bias_mode = !pr.has_bias ? 0 : !pr.bias_batched ? 1 : folded ? 3 : 2;
  p.x_vec = (pr.k % 8 == 0) && (reinterpret_cast<uintptr_t>(p.x) % 16 == 0);
  p.fold = kernels.fold;

  // Kernel: the warp kernel up to 16 rows (decode), the shared-memory tiled kernel above
  // (needs 16-byte aligned activation rows). JAX_FPX_GEMM_KERNEL=warp|tiled forces one (for
  // benchmarks; the tiled one only where its alignment holds).
  const char* force = std::getenv("JAX_FPX_GEMM_KERNEL");
  bool tiled = p.m > 16;
  if (force && std::strcmp(force, "warp") == 0) tiled = false;
  if (force && std::strcmp(force, "tiled") == 0) tiled = true;
  tiled = tiled && p.x_vec;
  const int mt_idx = p.m <= 8 ? 0 : 1;  // M > 16 here only for unaligned rows
  const bool grouped = pr.group_blocks < pr.k_blocks;
  KernelFn gemm = tiled ? kernels.gemm_tiled[grouped] : kernels.gemm[mt_idx];
  const int threads = tiled ? kTileThreads : kThreads;
  const int64_t m_tiles = CeilDiv(p.m, tiled ? kTileTokens : 8 * kTokenTiles[mt_idx]);
  const int64_t row_ctas = CeilDiv(pr.row_tiles, tiled ? kTileWarps : kWarpsPerCta);
  // Grid x: the warp kernel walks row tiles (one weight stream per warp); the tiled kernel walks
  // token tiles first, so CTAs sharing a weight block run side by side (L2 reuse).
  const int64_t gx = tiled ? m_tiles : row_ctas, gy = tiled ? row_ctas : m_tiles;
  if (gy > 65535 || gx > 2147483647LL) return BadArg("too many rows for one launch");

  const int64_t out_elems = int64_t(p.batch) * p.m * p.n_pad;
  const int64_t ws_fit = static_cast<int64_t>(ws->element_count()) / std::max<int64_t>(1, out_elems);
  const int64_t max_split = std::min<int64_t>({pr.k_blocks, ws_fit, 65535 / p.batch, 64});
  int split = 1;
  if (pr.split_k > 0) {
    if (pr.split_k > pr.k_blocks)
      return BadArg("split_k=" + std::to_string(pr.split_k) + " exceeds the " +
                    std::to_string(pr.k_blocks) + " k-blocks");
    if (pr.split_k > 1 && pr.split_k > ws_fit)
      return BadArg("split_k=" + std::to_string(pr.split_k) + " does not fit the workspace (" +
                    std::to_string(ws->element_count()) + " floats; needs split*M*N_pad)");
    if (int64_t(pr.split_k) * p.batch > 65535) return BadArg("split_k * batch too large");
    split = pr.split_k;
  } else if (max_split > 1) {
    const int64_t resident = int64_t(ResidentCtas(gemm, threads)) * sms;
    const int64_t weight_bytes = int64_t(p.batch) * pr.row_tiles * pr.k_blocks * 128 * pr.bits;
    split = AutoSplit(gx * gy * p.batch, pr.k_blocks, resident, out_elems, weight_bytes,
                      max_split);
  }
  if (int64_t(split) * p.batch > 65535) return BadArg("batch too large for one launch");
  p.split = split;

  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy),
                  static_cast<unsigned>(p.batch * split));
  void* args[] = {&p};
  if (auto e = cudaLaunchKernel(reinterpret_cast<const void*>(gemm), grid, dim3(threads), args, 0,
                                stream);
      e != cudaSuccess)
    return CudaError(e, "GEMM kernel launch");
  if (split > 1) {
    const int64_t total = int64_t(p.batch) * p.m * p.n;
    const int64_t blocks = std::min<int64_t>(CeilDiv(total, 256), int64_t(sms) * 16);
    if (auto e = cudaLaunchKernel(reinterpret_cast<const void*>(kernels.reduce),
                                  dim3(static_cast<unsigned>(blocks)), dim3(256), args, 0, stream);
        e != cudaSuccess)
      return CudaError(e, "split-K reduction launch");
  }
  return ffi::Error::Success();
}

}  // namespace cuda
}  // namespace jax_fpx

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxFpxLinearCuda, jax_fpx::cuda::LinearCuda,
                              jax_fpx::BindLinearOperands(
                                  ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>()),
                              {ffi::Traits::kCmdBufferCompatible});
