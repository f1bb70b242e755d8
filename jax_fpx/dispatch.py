"""Which implementation runs where: kernel vs dequantize + XLA dot, and the split-K budget.

Thresholds come from measurements; each names the measurement it comes from.
"""

from __future__ import annotations

from .formats import FPxFormat

# Largest number of rows M (tokens) for which the CUDA kernel runs under impl="auto"; above it
# jax_fpx.linear takes the large-M path (CUDA dequantize + XLA dot, jax_fpx.fallback).
# Measured 2026-11-26 on an H100 80GB HBM3, jax 0.11.2, bf16, fp6_e3m2, with the shared-memory
# tiled kernel for M > 16 (benchmarks/results/gemm_h100_tiled_v7.json), kernel vs fallback, us:
#   8192x28672:  M=128 324 vs 475, M=256 553 vs 497
#   28672x8192:  M=128 296 vs 510, M=256 543 vs 516
#   4096x14336:  M=128  91 vs 136, M=256 174 vs 150
# Interpolated crossing at M ~ 210-225 on all three; 192 = three 64-token tiles. Checked in a second
# run (gemm_h100_tiled_v7d.json, same kernel): M=192 458 vs 478, 410 vs 512, 132 vs 141 (kernel wins);
# M=256 516 vs 489, 510 vs 521, 163 vs 148. (Earlier warp-only kernel: crossing at M ~ 96-128.)
# XLA's bf16 dot is faster than both from M ~ 128 on.
GPU_KERNEL_MAX_M = 192

# Largest M for which the CPU handler runs under impl="auto" (above it: dequantize + XLA's
# multithreaded dot). Measured 2026-11-26 on the 2-core CI-type Xeon (AVX-512), jax 0.10.2:
# 4096x4096 M=16: handler 56 ms vs 102 ms; 384x1536 M=64: 3.9 vs 2.6 ms; M=2816: 94 vs 33 ms.
CPU_KERNEL_MAX_M = 64

# Split-K workspace budget (bytes of float32 partials) reserved per call.
WORKSPACE_BUDGET_BYTES = 64 << 20
MAX_SPLIT_K = 32


# (ebits, mbits) with compiled CUDA kernels (csrc/cuda/fpx_kernels_*.cu), bf16 and f16 each;
# other formats go to dequantize + XLA dot. Keep in sync with cuda::FindKernels.
GPU_KERNEL_FORMATS = frozenset({(3, 2), (2, 3), (2, 2), (2, 1)})


def gpu_kernel_supports(fmt: FPxFormat, fp16: bool) -> bool:
    """Whether the CUDA kernel has an instantiation for this format (both activation dtypes)."""
    del fp16  # every compiled format has bf16 and f16 kernels
    return (fmt.ebits, fmt.mbits) in GPU_KERNEL_FORMATS


def max_split_k(m: int, n_pad: int, k_blocks: int) -> int:
    """Most K splits the workspace holds for an (m x n_pad) output."""
    fit = WORKSPACE_BUDGET_BYTES // max(1, 4 * m * n_pad)
    return int(max(1, min(MAX_SPLIT_K, k_blocks, fit)))


def workspace_elems(m: int, n_pad: int, k_blocks: int, split_k: int | None) -> int:
    """float32 elements of split-K workspace to give the CUDA handler."""
    s = max_split_k(m, n_pad, k_blocks) if split_k is None else split_k
    return max(1, s * m * n_pad) if s > 1 else 1
