"""Flax linen layers with FPx weights: ``FPxDense`` (drop-in for ``nn.Dense``) and ``FPxDenseGeneral``."""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..formats import FormatLike
from ..quantize import quantize
from ..weight import FPxWeight
from ._op import contracted_trailing_axes, dense_general_matmul, fpx_matmul

__all__ = ["FPxDense", "FPxDenseGeneral"]

Initializer = Callable[..., jax.Array]
default_kernel_init = nn.initializers.lecun_normal()


def _quantized_init(kernel_init, shape, param_dtype, fmt, group_size):
    def init(rng):
        return quantize(kernel_init(rng, shape, param_dtype), fmt, group_size=group_size)

    return init


def _precheck(mod: nn.Module, where: str) -> None:
    """Clear error for dense params given to an FPx layer (before Flax's shape check)."""
    if mod.has_variable("params", "kernel"):
        k = mod.get_variable("params", "kernel")
        if not isinstance(k, FPxWeight):
            _check_kernel(k, 0, 0, where)


def _check_kernel(kernel, in_features, out_features, where):
    if not isinstance(kernel, FPxWeight):
        raise TypeError(
            f"{where}: param 'kernel' must be an FPxWeight, got {type(kernel).__name__} "
            "(quantize dense params with jax_fpx.flax.quantize_params, or run an unmodified model "
            "under jax_fpx.flax.fpx_dense_interceptor())"
        )
    if kernel.shape != (in_features, out_features):
        raise ValueError(f"{where}: kernel is {kernel} but the input/features need ({in_features}, {out_features})")


class FPxDense(nn.Module):
    """A drop-in for :class:`flax.linen.Dense` whose ``kernel`` is an :class:`FPxWeight`.

    Same fields and param names as ``nn.Dense`` (``kernel``, ``bias``), plus ``fmt``,
    ``group_size`` and ``impl`` (see :func:`jax_fpx.linear`). ``init`` draws the dense kernel
    with ``kernel_init`` and quantizes it (works under ``jax.jit``); ``bias`` stays dense.

    Dtypes: the compute dtype is ``dtype`` if set, else the input's dtype (note: ``nn.Dense``
    would promote with ``param_dtype``; here the input decides). The FPx op runs on
    bfloat16/float16 activations, so for a float32 compute dtype the input is cast to
    ``act_dtype`` (default bfloat16) for the matmul and the output is cast back to float32,
    with the bias added in float32. ``precision`` is accepted for compatibility and ignored:
    the op always accumulates in float32.
    """

    features: int
    use_bias: bool = True
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Initializer = default_kernel_init
    bias_init: Initializer = nn.initializers.zeros_init()
    fmt: FormatLike = "fp6_e3m2"
    group_size: Optional[int] = None
    impl: str = "auto"
    act_dtype: Optional[Any] = None

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        in_features = jnp.shape(inputs)[-1]
        _precheck(self, f"FPxDense {'/'.join(self.scope.path)}")
        kernel = self.param(
            "kernel",
            _quantized_init(self.kernel_init, (in_features, self.features), self.param_dtype, self.fmt, self.group_size),
        )
        _check_kernel(kernel, in_features, self.features, f"FPxDense {'/'.join(self.scope.path)}")
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        return fpx_matmul(inputs, kernel, bias, dtype=self.dtype, act_dtype=self.act_dtype, impl=self.impl)


class FPxDenseGeneral(nn.Module):
    """``nn.DenseGeneral`` counterpart for contracting the *trailing* axes of the input.

    Supported: ``axis`` = ``-1`` or any set of trailing, contiguous axes (e.g. ``(-2, -1)``
    for an attention output projection), ``features`` an int or a tuple (e.g.
    ``(num_heads, head_dim)``), ``batch_dims=()``. The kernel is stored as one 2-D
    :class:`FPxWeight` of shape ``(prod(contracted dims), prod(features))`` (the flattened
    ``nn.DenseGeneral`` kernel; its ``kernel_init`` sees that flat shape, as in
    ``nn.DenseGeneral``'s fan-in computation). ``bias`` has shape ``features`` as in
    ``nn.DenseGeneral``. Not supported (raises ``NotImplementedError``): non-trailing or
    non-contiguous ``axis`` and ``batch_dims`` -- transpose the input first or use
    ``jax.vmap`` over a stacked :class:`FPxWeight`.
    """

    features: Union[int, Sequence[int]]
    axis: Union[int, Sequence[int]] = -1
    batch_dims: Sequence[int] = ()
    use_bias: bool = True
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Initializer = default_kernel_init
    bias_init: Initializer = nn.initializers.zeros_init()
    fmt: FormatLike = "fp6_e3m2"
    group_size: Optional[int] = None
    impl: str = "auto"
    act_dtype: Optional[Any] = None

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        where = f"FPxDenseGeneral {'/'.join(self.scope.path)}"
        ndim = jnp.ndim(inputs)
        n_contract = contracted_trailing_axes(self.axis, self.batch_dims, ndim, where)
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        k_in, n_out = math.prod(jnp.shape(inputs)[ndim - n_contract :]), math.prod(features)
        _precheck(self, where)
        kernel = self.param(
            "kernel", _quantized_init(self.kernel_init, (k_in, n_out), self.param_dtype, self.fmt, self.group_size)
        )
        _check_kernel(kernel, k_in, n_out, where)
        bias = self.param("bias", self.bias_init, features, self.param_dtype) if self.use_bias else None
        return dense_general_matmul(
            inputs, kernel, bias, features, n_contract, dtype=self.dtype, act_dtype=self.act_dtype, impl=self.impl
        )
