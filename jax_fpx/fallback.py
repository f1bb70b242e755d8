"""The large-M path: dequantize once, then XLA's GEMM (float32 accumulation).

On CUDA the dequantization is one FFI kernel (``jax_fpx_dequantize``: packed codes ->
dense ``[N, K]`` in the activation dtype), which XLA's dot consumes as a transposed operand;
elsewhere it is the pure-JAX :func:`jax_fpx.dequantize`.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import _ffi, reference
from .weight import FPxWeight

__all__ = ["dequant_dot", "dequantize_nk"]


def dequantize_nk(w: FPxWeight, dtype) -> jax.Array:
    """Dense ``(..., out_features, in_features)`` weight in ``dtype`` via the CUDA kernel (GPU only)."""
    call = jax.ffi.ffi_call(
        _ffi.DEQUANTIZE_TARGET,
        jax.ShapeDtypeStruct((*w.batch_shape, w.out_features, w.in_features), dtype),
        vmap_method="expand_dims",
    )
    return call(
        w.data,
        w.scale,
        ebits=np.int32(w.fmt.ebits),
        mbits=np.int32(w.fmt.mbits),
        in_features=np.int32(w.in_features),
        out_features=np.int32(w.out_features),
        group_size=np.int32(w.group_size or 0),
    )


def _cuda_dequant_dot(x2, w, bias):
    w_nk = dequantize_nk(w, x2.dtype)
    y = jax.lax.dot_general(x2, w_nk, (((x2.ndim - 1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(x2.dtype)


def _cpu_dequant_dot(x2, w, bias):
    # XLA:CPU's bf16/f16 dot does not accumulate in float32: use float32 operands there.
    return reference.linear(x2, w, bias)


def dequant_dot(x2: jax.Array, w: FPxWeight, bias: Optional[jax.Array] = None) -> jax.Array:
    """``x2 @ dequantize(w, x2.dtype) (+ bias)``; x2: ``(M, in_features)`` bf16/f16."""
    if not _ffi.register():
        return jax.lax.platform_dependent(x2, w, bias, cpu=_cpu_dequant_dot, default=reference.dequant_dot)
    return jax.lax.platform_dependent(
        x2, w, bias, cpu=_cpu_dequant_dot, cuda=_cuda_dequant_dot, default=reference.dequant_dot
    )
