"""Platform dispatch: which path computes ``linear`` on which platform, for which M.

Paths: the ``jax_fpx_linear`` custom call (:mod:`jax_fpx.ffi_calls`; a C++ handler on CPU, Tensor
Core kernels on CUDA), or dequantize + XLA's dot (on CUDA builds dequantized by the
``jax_fpx_dequantize`` kernel), or ``impl="reference"``'s float32 math. Every threshold here names
the measurement it comes from; the CUDA kernel's stream-K workspace size comes from the extension
(``_ffi.kernel_workspace_elems``).
"""

from __future__ import annotations

import bisect
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import _ffi, ffi_calls
from .linear_spec import LinearSpec
from .quantize import dequantize
from .weight import FPxWeight

__all__ = ["linear", "GPU_KERNEL_MAX_M", "cpu_kernel_max_m", "kernel_supports"]

# Largest number of rows M (tokens) for which the CUDA decode kernel runs under impl="auto"; above
# it the large-M path runs (CUDA dequantize + XLA dot). The kernel covers M <= 64 in one launch
# (more rows: one launch per 64). Measured on an H100 (benchmarks/results/decode_h100_v2.json,
# KERNEL_NOTES.md sections 3 and A.5): at M = 64 the kernel is 0.73-0.76x of XLA bf16 on the LLM
# shapes, the dequantize + dot path 0.40-0.45x (A.5), so the kernel keeps M = 64; M > 64 is untested
# for the v2 kernel against that path.
GPU_KERNEL_MAX_M = 64

# CPU, impl="auto": the C++ handler runs for M <= cpu_kernel_max_m(K * N), dequantize + XLA's
# (multithreaded, float32) dot above. Rows: (largest K*N of the row, largest M where the handler
# is not slower). Measured 2026-12-02 on the 2-core CI-type Xeon, jax 0.10.2, layout v2 handler,
# bf16, fp6_e3m2, jit, min of 25 interleaved runs (the box was shared: load ~7), handler/xla us:
#   384x384     M=1 505/1001   M=16 653/1030    M=64 796/1051     M=128 1190/1215   M=256 2373/1795
#   384x1536    M=1 2262/3635  M=16 2754/3821   M=64 3915/4872    M=128 7869/6236
#   1536x384    M=1 1978/3939  M=16 1875/3747   M=64 3641/4807    M=128 9557/5881
#   1024x4096   M=1 23.6/62.4k M=16 22.8/82.0k  M=64 56.3/73.3k   M=128 108/135k    M=256 182/113k
#   4096x4096   M=1 109/401k   M=16 154/447k    M=64 292/368k     M=256 734/580k
# (the python -m jax_fpx shapes are the first three, at M = 1 and 16: the handler wins there.)
CPU_KERNEL_MAX_M_BY_SIZE = ((1 << 21, 64), (1 << 62, 128))

KERNEL_MIN_CC = 9.0  # bulk copies and mbarrier waits of the decode kernel (sm_90)


def cpu_kernel_max_m(weights: int) -> int:
    """Largest M for which impl="auto" runs the CPU handler on a ``weights`` = K * N matrix."""
    sizes = [s for s, _ in CPU_KERNEL_MAX_M_BY_SIZE]
    return CPU_KERNEL_MAX_M_BY_SIZE[min(bisect.bisect_left(sizes, weights), len(sizes) - 1)][1]


def kernel_supports(platform: str, spec: LinearSpec) -> bool:
    """Whether the extension has a ``jax_fpx_linear`` kernel for this format on ``platform``."""
    return (spec.fmt.ebits, spec.fmt.mbits) in _ffi.kernel_formats(platform)


@functools.cache
def cuda_kernel_capable() -> bool:
    """Whether this process's GPUs run the decode kernel (compute capability >= 9.0); others
    take dequantize + XLA dot."""
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        return False
    return all(float(getattr(d, "compute_capability", "0") or 0) >= KERNEL_MIN_CC for d in gpus)


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
            and cuda_kernel_capable() and (forced or m <= GPU_KERNEL_MAX_M)
        )
        if not use_kernel:
            return dequant_matmul(x, data, scale, bias, spec, cuda_dequantize=cuda_built)
        ws = _ffi.kernel_workspace_elems(int(np.prod(x.shape[:-1])))
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
