// CUDA handler of `jax_fpx_linear`: validate (shared ParseLinear), pick the token tiles and the
// persistent stream-K schedule from the shape and the device, zero the fix-up flags and launch the
// decode GEMM on XLA's stream. No allocation, no host synchronization: safe inside XLA command
// buffers (CUDA graphs).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_set>

#include "../linear_args.h"
#include "kernel/registry.cuh"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace jax_fpx {
namespace cuda {
namespace {

ffi::Error CudaError(cudaError_t err, const char* what) {
  return ffi::Error(ffi::ErrorCode::kInternal,
                    std::string("jax_fpx_linear: ") + what + ": " + cudaGetErrorString(err));
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Raises a kernel's dynamic shared-memory limit once (a host-side attribute, legal during capture).
cudaError_t AllowSmem(KernelFn fn, int bytes) {
  static std::mutex mu;
  static std::unordered_set<const void*> done;
  std::lock_guard<std::mutex> lock(mu);
  const void* key = reinterpret_cast<const void*>(fn);
  if (done.count(key)) return cudaSuccess;
  cudaError_t e = cudaFuncSetAttribute(key, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (e == cudaSuccess) done.insert(key);
  return e;
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

  int dev = 0, cc_major = 0, sms = 0, smem_optin = 0, smem_sm = 0;
  if (auto e = cudaGetDevice(&dev); e != cudaSuccess) return CudaError(e, "cudaGetDevice");
  if (auto e = cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, dev); e != cudaSuccess)
    return CudaError(e, "cudaDeviceGetAttribute");
  if (cc_major < 9)
    return ffi::Error(ffi::ErrorCode::kUnimplemented,
                      "jax_fpx_linear: the CUDA kernel needs a Hopper GPU (sm_90); this GPU is sm_" +
                          std::to_string(cc_major) + "x: use impl='xla' (impl='auto' does)");
  if (auto e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev); e != cudaSuccess)
    return CudaError(e, "cudaDeviceGetAttribute");
  if (auto e = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
      e != cudaSuccess)
    return CudaError(e, "cudaDeviceGetAttribute");
  if (auto e = cudaDeviceGetAttribute(&smem_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev);
      e != cudaSuccess)
    return CudaError(e, "cudaDeviceGetAttribute");

  FpxKernels kernels;
  if (!FindKernels(pr.ebits, pr.mbits, pr.fp16, &kernels))
    return ffi::Error(ffi::ErrorCode::kUnimplemented,
                      "jax_fpx_linear: no CUDA kernel is compiled for format e" + std::to_string(pr.ebits) +
                          "m" + std::to_string(pr.mbits) + " (jax_fpx._jax_fpx.kernel_formats() lists them); "
                          "use impl='xla'");
  if (pr.m == 0 || pr.n == 0 || pr.batch == 0) return ffi::Error::Success();

  // Batches: a shared weight folds the x batch into the rows.
  const bool folded = pr.batch_w == 1;
  const int64_t rows = folded ? pr.batch_x * pr.m : pr.m;
  if (!folded && rows > kMaxKernelRows)
    return BadArg("stacked weights with more than " + std::to_string(kMaxKernelRows) +
                  " rows per item: use impl='xla'");
  GemmParams p{};
  p.data = static_cast<const uint32_t*>(data.untyped_data());
  p.scale = scale.untyped_data();
  p.bias = pr.has_bias ? static_cast<const float*>(bias.untyped_data()) : nullptr;
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
  p.scale_bf16 = pr.scale_bf16;
  p.fold = kernels.fold;
  p.tiles_per_item = CeilDiv(pr.row_tiles, kWarps);
  p.tiles = p.tiles_per_item * p.batch;
  p.iters = CeilDiv(pr.k_blocks, kStageBlocks);
  p.total = p.tiles * p.iters;

  const auto* xs = static_cast<const uint16_t*>(x.untyped_data());
  auto* ys = static_cast<uint16_t*>(y->untyped_data());
  auto* wsp = static_cast<float*>(ws->untyped_data());
  const int64_t ws_elems = static_cast<int64_t>(ws->element_count());
  if (p.bias_mode == 3 && rows > kMaxKernelRows)
    return BadArg("a per-item bias with more than " + std::to_string(kMaxKernelRows) + " folded rows: use impl='xla'");
  // More than kMaxKernelRows folded rows (impl='kernel' at large M): one launch per chunk.
  for (int64_t r0 = 0; r0 < rows; r0 += kMaxKernelRows) {
    const int64_t m = std::min<int64_t>(kMaxKernelRows, rows - r0);
    const int ti = TokenTileIndex(m);
    const KernelFn gemm = kernels.gemm[ti];
    const int per_sm = CtasPerSm(kTokenTiles[ti]);
    const int64_t ctas = std::min<int64_t>(
        {int64_t(sms) * per_sm, p.total, (ws_elems - 32) / WorkspacePerCta(kTokenTiles[ti])});
    if (ctas < 1) return BadArg("workspace too small");
    // Shared memory per CTA: the SM's share (1 KiB of it reserved per CTA), at most the opt-in cap.
    const int64_t smem_cta = std::min<int64_t>(smem_optin, smem_sm / per_sm - 1024);
    const int stages = static_cast<int>(
        std::min<int64_t>(8, (smem_cta - kBarBytes) / kernels.stage_bytes[ti]));
    if (stages < 2) return BadArg("not enough shared memory for the kernel's ring");
    const int smem = kBarBytes + stages * int(kernels.stage_bytes[ti]);
    p.x = xs + r0 * pr.k;
    p.y = ys + r0 * pr.n;
    p.m = m;
    p.x_bulk = (pr.k % 8 == 0) && (reinterpret_cast<uintptr_t>(p.x) % 16 == 0);
    p.ctas = static_cast<int>(ctas);
    p.stages = stages;
    p.flags = reinterpret_cast<int*>(wsp);
    p.partial = wsp + CeilDiv(ctas * kWarps, 32) * 32;
    if (auto e = AllowSmem(gemm, smem); e != cudaSuccess) return CudaError(e, "cudaFuncSetAttribute");
    if (auto e = cudaMemsetAsync(p.flags, 0, sizeof(int) * ctas * kWarps, stream); e != cudaSuccess)
      return CudaError(e, "flag reset");
    void* args[] = {&p};
    if (auto e = cudaLaunchKernel(reinterpret_cast<const void*>(gemm), dim3(unsigned(ctas)), dim3(kThreads), args,
                                  smem, stream);
        e != cudaSuccess)
      return CudaError(e, "GEMM kernel launch");
  }
  return ffi::Error::Success();
}

}  // namespace cuda
}  // namespace jax_fpx

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxFpxLinearCuda, jax_fpx::cuda::LinearCuda,
                              jax_fpx::BindLinearOperands(
                                  ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>()),
                              {ffi::Traits::kCmdBufferCompatible});
