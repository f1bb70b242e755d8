"""Which implementation runs where: kernel vs dequantize + XLA dot, and the split-K budget.

Thresholds come from measurements; each names the measurement it comes from.
"""

from __future__ import annotations

from .formats import FPxFormat

# Largest number of rows M (tokens) for which the CUDA kernel runs under impl="auto"; above it
# jax_fpx.linear takes the large-M path (CUDA dequantize + XLA dot, jax_fpx.fallback).
# Measured 2026-11-26 on an H100 80GB HBM3, jax 0.11.2, bf16, benchmarks/results/threshold_h100.json
# (KERNEL_NOTES.md), kernel vs fallback in us:
#   8192x28672:  M=48 411 vs 456, M=64 480 vs 440, M=128 910 vs 572
#   28672x8192:  M=48 409 vs 501, M=64 392 vs 490, M=128 743 vs 505
#   8192x8192:   M=48 107 vs 143, M=64 127 vs 154, M=128 230 vs 146
# (fp4_e2m1 alike). The kernel wins up to 64 (but one shape at 64), loses from 128 on.
GPU_KERNEL_MAX_M = 64

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
