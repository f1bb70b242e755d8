"""Which implementation runs where: kernel vs dequantize + XLA dot, and the split-K budget.

Thresholds come from measurements; each names the measurement it comes from.
"""

from __future__ import annotations

from .formats import FPxFormat

# Largest number of rows M (tokens) for which the CUDA kernel runs under impl="auto";
# above it jax_fpx.linear dequantizes and calls XLA's dot.
# Measured 2026-11-26 on an H100 80GB HBM3 (jax 0.11.2), fp6_e3m2, 8192x28672 and 28672x8192
# (benchmarks/KERNEL_NOTES.md): kernel 117 us at M=16 and 407-486 us at M=64, while
# dequantize + XLA dot ("xla") took 1330-1400 us at every M <= 64. See the notes for M >= 256.
GPU_KERNEL_MAX_M = 128

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
