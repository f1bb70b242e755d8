"""Platform dispatch: which path computes ``linear`` on which platform, for which M.

Paths: the ``jax_fpx_linear`` custom call (:mod:`jax_fpx.ffi_calls`; a C++ handler on CPU, Tensor
Core kernels on CUDA), or dequantize + XLA's dot (on CUDA builds dequantized by the
``jax_fpx_dequantize`` kernel), or ``impl="reference"``'s float32 math. Every threshold here names
the measurement it comes from; :func:`workspace_elems` is the one formula for the CUDA split-K
workspace.
"""

from __future__ import annotations

import bisect
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import _ffi, ffi_calls
from .linear_spec import LinearSpec
from .quantize import dequantize
from .weight import FPxWeight

__all__ = ["linear", "GPU_KERNEL_MAX_M", "cpu_kernel_max_m", "workspace_elems", "max_split_k", "kernel_supports"]

# Largest number of rows M (tokens) for which the CUDA kernel runs under impl="auto"; above it
# the large-M path runs (CUDA dequantize + XLA dot).
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

# CPU, impl="auto": the C++ handler runs for M <= cpu_kernel_max_m(K * N), dequantize + XLA's
# (multithreaded, float32) dot above. Rows: (largest K*N of the row, largest M where the handler
# is faster). Measured DATE_TBD (see the table's source below).
CPU_KERNEL_MAX_M_BY_SIZE = ((1 << 62, 64),)

# Split-K workspace budget (bytes of float32 partials) reserved per CUDA call.
WORKSPACE_BUDGET_BYTES = 64 << 20
MAX_SPLIT_K = 32


def cpu_kernel_max_m(weights: int) -> int:
    """Largest M for which impl="auto" runs the CPU handler on a ``weights`` = K * N matrix."""
    sizes = [s for s, _ in CPU_KERNEL_MAX_M_BY_SIZE]
    return CPU_KERNEL_MAX_M_BY_SIZE[min(bisect.bisect_left(sizes, weights), len(sizes) - 1)][1]


def kernel_supports(platform: str, spec: LinearSpec) -> bool:
    """Whether the extension has a ``jax_fpx_linear`` kernel for this format on ``platform``."""
    return (spec.fmt.ebits, spec.fmt.mbits) in _ffi.kernel_formats(platform)


def max_split_k(m: int, n_pad: int, k_blocks: int) -> int:
    """Most K splits the workspace holds for an (m x n_pad) output."""
    fit = WORKSPACE_BUDGET_BYTES // max(1, 4 * m * n_pad)
    return int(max(1, min(MAX_SPLIT_K, k_blocks, fit)))


def workspace_elems(m: int, n_pad: int, k_blocks: int, split_k: Optional[int]) -> int:
    """float32 elements of split-K workspace to give the CUDA handler."""
    s = max_split_k(m, n_pad, k_blocks) if split_k is None else split_k
    return max(1, s * m * n_pad) if s > 1 else 1


def linear(x, data, scale, bias, spec: LinearSpec):
    """``x @ W + bias`` on this device, 2-D or batched operands (see :mod:`jax_fpx.ffi_calls`),
    ``bias`` float32 or ``None``; the path is chosen per platform when the computation is lowered."""
    if spec.impl == "reference":
        return dequant_matmul(x, data, scale, bias, spec, float32=True)
    m = x.shape[-2]
    # A symbolic M (jax.export shape polymorphism) cannot size the split-K workspace or pick
    # the kernel statically: CUDA then runs dequantize + XLA dot, CPU the handler.
    m_known = isinstance(m, (int, np.integer))
    forced = spec.impl == "kernel" or spec.split_k is not None
    cuda_built = _ffi.register()

    def cpu(x, data, scale, bias):
        use_kernel = spec.impl != "xla" and kernel_supports("cpu", spec) and (
            forced or not m_known or m <= cpu_kernel_max_m(spec.in_features * spec.out_features)
        )
        if not use_kernel:
            return dequant_matmul(x, data, scale, bias, spec, float32=True)
        return ffi_calls.linear(x, data, scale, bias, spec, split_k=0, workspace_elems=1)

    def cuda(x, data, scale, bias):
        use_kernel = (
            cuda_built and m_known and spec.impl != "xla" and kernel_supports("cuda", spec)
            and (forced or m <= GPU_KERNEL_MAX_M)
        )
        if not use_kernel:
            return dequant_matmul(x, data, scale, bias, spec, cuda_dequantize=cuda_built)
        n_pad = spec.padded_shape[0]
        ws = workspace_elems(m, n_pad, spec.k_blocks, spec.split_k)
        return ffi_calls.linear(x, data, scale, bias, spec, split_k=spec.split_k or 0, workspace_elems=ws)

    def other(x, data, scale, bias):
        return dequant_matmul(x, data, scale, bias, spec)

    return jax.lax.platform_dependent(x, data, scale, bias, cpu=cpu, cuda=cuda, default=other)


def dequant_matmul(x, data, scale, bias, spec: LinearSpec, *, float32: bool = False, cuda_dequantize: bool = False):
    """Dequantize once, then XLA's dot, float32 accumulation (2-D or batched operands).

    ``float32``: float32 operands at HIGHEST precision (impl="reference", and CPU, whose bf16/f16
    dot does not accumulate in float32); ``cuda_dequantize``: the ``jax_fpx_dequantize`` kernel
    writes the ``[N, K]`` weight; else pure-JAX dequantize to ``x.dtype``."""
    if cuda_dequantize and not float32:
        w_nk = ffi_calls.dequantize_nk(data, scale, spec, x.dtype)  # (..., N, K)
        y = jnp.einsum("...mk,...nk->...mn", x, w_nk, preferred_element_type=jnp.float32)
    else:
        w = FPxWeight(data, scale, spec.fmt, spec.shape, spec.group_size)
        dtype = jnp.float32 if float32 else x.dtype
        precision = jax.lax.Precision.HIGHEST if float32 else None
        y = jnp.matmul(x.astype(dtype), dequantize(w, dtype), precision=precision, preferred_element_type=jnp.float32)
    if bias is not None:
        y = y + (bias if x.ndim == 2 else bias[:, None, :])
    return y.astype(x.dtype)
