"""The CUDA dequantize kernel of the large-M path (``impl="xla"`` and ``"auto"`` above the
kernel's M threshold): packed codes -> dense ``[N, K]`` in the activation dtype, which XLA's
dot consumes as a transposed operand (jax_fpx.kernel_call.dequant_matmul). GPU only.
"""

from __future__ import annotations

import jax
import numpy as np

from . import _ffi
from .weight import FPxWeight

__all__ = ["dequantize_nk"]


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
