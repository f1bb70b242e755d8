"""The custom calls, and nothing else: ``jax_fpx_linear`` (CPU + CUDA) and ``jax_fpx_dequantize`` (CUDA).

Operands follow the handlers' contract (``csrc/linear_args.h``): either one 2-D product
(``x [M, K]``, ``data [NT, KB, 32*bits]``, ``scale [N_pad, G]``) or a batch of them (``x [bx, M, K]``,
``data [bw, ...]``, ``scale [bw, ...]``, with ``bx``/``bw`` each 1 or B). The bias is ``[N]``
(``[bb, N]`` batched) float32, or ``None``, passed as the empty ``[0]`` operand the handler reads as
"no bias". Neither call is ever vmapped directly: :mod:`jax_fpx.batching` owns the batch axis.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import _ffi
from .linear_spec import LinearSpec

__all__ = ["linear", "dequantize_nk"]


def _format_attrs(spec: LinearSpec) -> dict:
    k, n = spec.shape
    return dict(
        ebits=np.int32(spec.fmt.ebits),
        mbits=np.int32(spec.fmt.mbits),
        in_features=np.int32(k),
        out_features=np.int32(n),
        group_size=np.int32(spec.group_size or 0),
    )


def linear(x, data, scale, bias: Optional[jax.Array], spec: LinearSpec, *, split_k: int, workspace_elems: int):
    """``jax_fpx_linear``: ``y = x @ W + bias`` in ``x.dtype`` (float32 accumulation).

    ``split_k`` (0 = the handler chooses) and ``workspace_elems`` (float32 split-K scratch, from
    :func:`jax_fpx.dispatch.workspace_elems`) only matter to the CUDA handler."""
    _ffi.register()
    batch = () if x.ndim == 2 else (max(x.shape[0], data.shape[0]),)
    if bias is None:
        bias = jnp.zeros((0,), jnp.float32)
    call = jax.ffi.ffi_call(
        _ffi.TARGET,
        (
            jax.ShapeDtypeStruct((*batch, x.shape[-2], spec.out_features), x.dtype),
            jax.ShapeDtypeStruct((*batch, workspace_elems), jnp.float32),
        ),
    )
    y, _ = call(x, data, scale, bias, split_k=np.int32(split_k), **_format_attrs(spec))
    return y


def dequantize_nk(data, scale, spec: LinearSpec, dtype) -> jax.Array:
    """``jax_fpx_dequantize`` (CUDA only): dense ``[..., N, K]`` weight in ``dtype``, which XLA's dot
    reads as a transposed operand."""
    _ffi.register()
    batch = tuple(data.shape[:-3])
    call = jax.ffi.ffi_call(
        _ffi.DEQUANTIZE_TARGET, jax.ShapeDtypeStruct((*batch, spec.out_features, spec.in_features), dtype)
    )
    return call(data, scale, **_format_attrs(spec))
