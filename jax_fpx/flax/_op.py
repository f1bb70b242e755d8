"""The one place where Flax layers call :func:`jax_fpx.linear` (dtype policy lives here)."""

from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp

from ..ops import linear
from ..weight import FPxWeight

_OP_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def fpx_matmul(
    x: jax.Array,
    w: FPxWeight,
    bias: Optional[jax.Array] = None,
    *,
    dtype: Any = None,
    act_dtype: Any = None,
    impl: str = "auto",
) -> jax.Array:
    """``x @ dequantize(w) + bias`` with the Flax layers' dtype policy.

    The compute dtype is ``dtype`` if given, else ``x.dtype``. The FPx op takes bfloat16 /
    float16 activations only, so:

    * compute dtype bfloat16 or float16: ``x`` is cast to it and the op returns it
      (bias added in float32 inside the op);
    * any other compute dtype (float32, ...): ``x`` is cast to ``act_dtype`` (default
      bfloat16) for the op, the result is cast back to the compute dtype and the bias is
      added in the compute dtype. Accumulation is float32 on every path; the only extra
      rounding is that of the activations to ``act_dtype``.
    """
    if not isinstance(w, FPxWeight):
        raise TypeError(
            f"expected the 'kernel' param to be an FPxWeight (quantize it with jax_fpx.quantize or "
            f"jax_fpx.flax.quantize_params), got {type(w).__name__}"
        )
    x = jnp.asarray(x)
    compute = jnp.dtype(dtype) if dtype is not None else jnp.dtype(x.dtype)
    if not jnp.issubdtype(compute, jnp.floating):
        compute = jnp.dtype(jnp.float32)
    if compute in _OP_DTYPES:
        return linear(x.astype(compute), w, bias, impl=impl)
    op_dt = jnp.dtype(jnp.bfloat16) if act_dtype is None else jnp.dtype(act_dtype)
    if op_dt not in _OP_DTYPES:
        raise ValueError(f"act_dtype must be bfloat16 or float16, got {op_dt}")
    y = linear(x.astype(op_dt), w, impl=impl).astype(compute)
    if bias is not None:
        y = y + jnp.asarray(bias).astype(compute)
    return y


def contracted_trailing_axes(axis: Any, batch_dims: Any, ndim: int, where: str) -> int:
    """Number of trailing input axes a DenseGeneral-style layer contracts; raises
    ``NotImplementedError`` (naming ``where``) for ``batch_dims`` or non-trailing axes."""
    if tuple(batch_dims):
        raise NotImplementedError(f"{where}: batch_dims is not supported; use jax.vmap over a stacked FPxWeight")
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    axes = tuple(sorted(a % ndim for a in axes))
    if axes != tuple(range(ndim - len(axes), ndim)):
        raise NotImplementedError(
            f"{where}: only trailing contiguous axes can be contracted, got axis={axis} for a {ndim}-d input "
            "(transpose the input so the contracted axes come last)"
        )
    return len(axes)


def dense_general_matmul(
    x: jax.Array,
    w: FPxWeight,
    bias: Optional[jax.Array],
    features: Any,
    n_contract: int,
    **kwargs: Any,
) -> jax.Array:
    """``fpx_matmul`` over the last ``n_contract`` axes of ``x`` with the flattened 2-D ``w``;
    the output's trailing axes are ``features`` (int or tuple), as in ``nn.DenseGeneral``."""
    features = (features,) if isinstance(features, int) else tuple(features)
    lead = x.shape[: x.ndim - n_contract]
    n_out = math.prod(features)
    y = fpx_matmul(
        jnp.reshape(x, (*lead, math.prod(x.shape[len(lead) :]))),
        w,
        None if bias is None else jnp.reshape(bias, (n_out,)),
        **kwargs,
    )
    return jnp.reshape(y, (*lead, *features))

