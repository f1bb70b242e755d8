"""``jax_fpx.linear``: input checks, dispatch, the FFI call and its custom VJP."""

from __future__ import annotations

import functools
import math
from typing import Literal, Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import _ffi, dispatch, reference
from .quantize import dequantize
from .weight import FPxWeight

__all__ = ["linear", "Impl"]

Impl = Literal["auto", "kernel", "reference", "xla"]
_IMPLS = ("auto", "kernel", "reference", "xla")
_ACT_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def linear(
    x: jax.Array,
    w: FPxWeight,
    bias: Optional[jax.Array] = None,
    *,
    impl: Impl = "auto",
    split_k: Optional[int] = None,
) -> jax.Array:
    """``y = x @ dequantize(w) + bias`` with FPx weights.

    Args:
      x: ``(..., in_features)`` bfloat16 or float16 activations.
      w: :class:`FPxWeight` of an ``(in_features, out_features)`` kernel (from :func:`quantize`).
      bias: optional ``(out_features,)`` float bias, added in float32.
      impl: ``"auto"`` (FFI kernel where it applies: the CPU handler, the CUDA kernel for
        ``M <= dispatch.GPU_KERNEL_MAX_M`` rows; else dequantize + XLA dot), ``"kernel"``
        (the FFI kernel at every M), ``"reference"`` (pure-JAX oracle, float32 math) or
        ``"xla"`` (dequantize to ``x.dtype`` + XLA dot).
      split_k: force the CUDA kernel's number of K splits (experts; default: chosen from
        the shape and the device's SM count).

    Returns:
      ``(..., out_features)`` in ``x.dtype``. Accumulation is float32 on every path.
    """
    x, bias = _check_inputs(x, w, bias, impl, split_k)
    lead = x.shape[:-1]
    m = math.prod(lead)
    n = w.out_features
    if m == 0 or n == 0:
        return jnp.zeros((*lead, n), x.dtype)
    y = _linear_2d(x.reshape(m, w.in_features), w, bias, impl, split_k)
    return y.reshape(*lead, n)


def _check_inputs(x, w, bias, impl, split_k):
    if not isinstance(w, FPxWeight):
        raise TypeError(
            f"jax_fpx.linear expects w to be an FPxWeight (from jax_fpx.quantize), got {type(w).__name__}"
        )
    if w.batch_shape:
        raise ValueError(
            f"{w} is a stack of {w.batch_shape} weights; index it (w[i] via jax.tree.map) "
            "or map over it with jax.vmap / lax.scan"
        )
    w.check()
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        x = jnp.asarray(x)
    if x.ndim == 0:
        raise ValueError("jax_fpx.linear expects x of shape (..., in_features), got a scalar")
    dt = jnp.dtype(x.dtype)
    if dt not in _ACT_DTYPES:
        hint = (
            f" (cast first: x.astype(jnp.bfloat16) or x.astype(jnp.float16))"
            if jnp.issubdtype(dt, jnp.floating)
            else ""
        )
        raise TypeError(f"jax_fpx.linear expects bfloat16 or float16 activations, got {dt}{hint}")
    if x.shape[-1] != w.in_features:
        raise ValueError(
            f"x has {x.shape[-1]} features in its last axis (shape {tuple(x.shape)}) but w expects "
            f"in_features={w.in_features}"
        )
    if bias is not None:
        if not hasattr(bias, "shape"):
            bias = jnp.asarray(bias)
        if tuple(bias.shape) != (w.out_features,):
            raise ValueError(f"bias must have shape ({w.out_features},), got {tuple(bias.shape)}")
        if not jnp.issubdtype(bias.dtype, jnp.floating):
            raise TypeError(f"bias must be a float array, got {bias.dtype}")
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
    if split_k is not None and (not isinstance(split_k, (int, np.integer)) or split_k < 1):
        raise ValueError(f"split_k must be None or a positive int, got {split_k!r}")
    return x, bias


# --- custom VJP: d/dx via the dequantized weight; frozen weights get zero cotangents ------
@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _linear_2d(x2, w, bias, impl, split_k):
    return _forward(x2, w, bias, impl, split_k)


def _linear_2d_fwd(x2, w, bias, impl, split_k):
    return _forward(x2, w, bias, impl, split_k), (w, bias, x2.dtype)


def _zero_cotangent(leaf):
    if jnp.issubdtype(leaf.dtype, jnp.integer):
        return np.zeros(leaf.shape, dtype=jax.dtypes.float0)
    return jnp.zeros(leaf.shape, leaf.dtype)


def _linear_2d_bwd(impl, split_k, res, g):
    del impl, split_k
    w, bias, x_dtype = res
    wd = dequantize(w, jnp.float32)  # (in, out)
    dx = jnp.dot(g.astype(jnp.float32), wd.T, precision=jax.lax.Precision.HIGHEST).astype(x_dtype)
    dw = jax.tree.map(_zero_cotangent, w)
    dbias = None if bias is None else jnp.sum(g.astype(jnp.float32), axis=0).astype(bias.dtype)
    return dx, dw, dbias


_linear_2d.defvjp(_linear_2d_fwd, _linear_2d_bwd)


# --- forward dispatch ----------------------------------------------------------------------
def _forward(x2, w, bias, impl, split_k):
    if impl == "reference":
        return reference.linear(x2, w, bias)
    if impl == "xla":
        return reference.dequant_dot(x2, w, bias)
    cuda_built = _ffi.register()
    m = x2.shape[0]
    n_pad, k_pad = w.padded_shape
    k_blocks = k_pad // 64
    fp16 = jnp.dtype(x2.dtype) == jnp.dtype(jnp.float16)
    use_cuda_kernel = (
        cuda_built
        and dispatch.gpu_kernel_supports(w.fmt, fp16)
        and (impl == "kernel" or split_k is not None or m <= dispatch.GPU_KERNEL_MAX_M)
    )
    if split_k is not None and split_k > k_blocks:
        raise ValueError(f"split_k={split_k} exceeds the {k_blocks} k-blocks of this weight")

    def cpu(x2, w, bias):
        return _ffi_linear(x2, w, bias, split_k=0, ws_elems=1)

    def cuda(x2, w, bias):
        if not use_cuda_kernel:
            return reference.dequant_dot(x2, w, bias)
        ws = dispatch.workspace_elems(m, n_pad, k_blocks, split_k)
        return _ffi_linear(x2, w, bias, split_k=split_k or 0, ws_elems=ws)

    def other(x2, w, bias):
        return reference.dequant_dot(x2, w, bias)

    return jax.lax.platform_dependent(x2, w, bias, cpu=cpu, cuda=cuda, default=other)


def _ffi_linear(x2, w, bias, *, split_k: int, ws_elems: int):
    m = x2.shape[0]
    bias_arr = jnp.zeros((0,), jnp.float32) if bias is None else bias.astype(jnp.float32)
    call = jax.ffi.ffi_call(
        _ffi.TARGET,
        (
            jax.ShapeDtypeStruct((m, w.out_features), x2.dtype),
            jax.ShapeDtypeStruct((ws_elems,), jnp.float32),
        ),
        vmap_method="expand_dims",
    )
    y, _ = call(
        x2,
        w.data,
        w.scale,
        bias_arr,
        ebits=np.int32(w.fmt.ebits),
        mbits=np.int32(w.fmt.mbits),
        in_features=np.int32(w.in_features),
        out_features=np.int32(w.out_features),
        group_size=np.int32(w.group_size or 0),
        split_k=np.int32(split_k),
    )
    return y
