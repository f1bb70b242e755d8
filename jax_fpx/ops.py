"""``jax_fpx.linear``: input checks, dispatch, the FFI call and its custom VJP."""

from __future__ import annotations

import functools
import math
from typing import Literal, Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import _ffi, kernel_call, layout, reference
from .quantize import dequantize
from .weight import FPxWeight

__all__ = ["linear", "Impl", "export_disabled_checks", "register_ffi"]

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

    Transformations:
      * ``jax.vmap``: mapping x folds the mapped axis into M (one pass over the weights);
        mapping a stacked ``FPxWeight`` batches the call (the packed weights are never
        broadcast). Outside ``vmap`` a stacked weight is an error: index it or map over it.
      * ``jax.grad``: exact float32 gradients for x and bias (as the reference path); the
        packed codes get ``float0`` cotangents and the scales their true gradient (computed
        only when differentiated), so frozen-base training (LoRA) just works. Forward mode
        (``jax.jvp``/``jacfwd``) is not supported (JAX raises: custom_vjp).
      * ``lax.scan``/``nn.scan`` over stacked layers, ``jax.checkpoint``, ``jax.eval_shape``,
        donation: supported.
      * Sharding: see :mod:`jax_fpx.sharding` (column/row/data parallel).
      * ``jax.export``: the kernel is the custom call ``jax_fpx_linear`` (on CUDA builds the
        large-M path also calls ``jax_fpx_dequantize``), which have no compatibility
        guarantee; export with
        ``jax.export.export(f, disabled_checks=jax_fpx.ops.export_disabled_checks())``
        (i.e. ``[jax.export.DisabledSafetyCheck.custom_call("jax_fpx_linear"),
        jax.export.DisabledSafetyCheck.custom_call("jax_fpx_dequantize")]``), and call
        :func:`register_ffi` (or ``jax_fpx.linear`` once) in the process that runs a
        deserialized module. ``FPxWeight`` pytrees serialize (registered by ``jax_fpx``).
    """
    x, bias = _check_inputs(x, w, bias, impl, split_k)
    if _explicitly_sharded(x, w.data, w.scale, bias):  # jax.sharding.AxisType.Explicit meshes
        from . import sharding

        return sharding._linear_explicit(x, w, bias, impl, split_k)
    lead = x.shape[:-1]
    m = math.prod(lead)
    n = w.out_features
    if m == 0 or n == 0:
        return jnp.zeros((*lead, n), x.dtype)
    y = _linear_2d(x.reshape(m, w.in_features), w, bias, impl, split_k)
    return y.reshape(*lead, n)


def _explicitly_sharded(*arrays) -> bool:
    for a in arrays:
        if a is None:
            continue
        try:
            sh = jax.typeof(a).sharding
        except Exception:  # pragma: no cover - older jax / non-array
            return False
        mesh = getattr(sh, "mesh", None)
        if mesh is None or getattr(mesh, "empty", True):
            continue
        if any(e is not None for e in sh.spec) and any(
            t == jax.sharding.AxisType.Explicit for t in getattr(mesh, "axis_types", ())
        ):
            return True
    return False


def export_disabled_checks() -> list:
    """``disabled_checks`` for ``jax.export.export`` of a function that uses ``linear``: the
    custom-call targets ``jax_fpx_linear`` and (CUDA builds, large-M path) ``jax_fpx_dequantize``."""
    targets = [_ffi.TARGET, getattr(_ffi, "DEQUANTIZE_TARGET", None)]
    return [jax.export.DisabledSafetyCheck.custom_call(t) for t in targets if t]


def register_ffi() -> None:
    """Register the ``jax_fpx_linear`` FFI handlers (needed before running a deserialized
    ``jax.export`` module in a process that has not called :func:`linear` yet)."""
    _ffi.register()


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
            " (cast first: x.astype(jnp.bfloat16) or x.astype(jnp.float16))"
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


# --- custom VJP ------------------------------------------------------------------------------
# d/dx = g @ dequantize(w).T and d/dbias = sum(g) are exact (float32, like the reference). The
# packed codes are integers: their cotangent is float0. The float32 scales get their true
# gradient when (and only when) they are being differentiated (symbolic_zeros tells us), so a
# frozen base costs nothing extra and no activation is saved for it.
@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _linear_2d(x2, w, bias, impl, split_k):
    return _forward(x2, w, bias, impl, split_k)


def _linear_2d_fwd(x2, w, bias, impl, split_k):
    xv = x2.value
    wv = jax.tree.map(lambda p: p.value, w)
    bv = None if bias is None else bias.value
    y = _forward(xv, wv, bv, impl, split_k)
    want_dx = x2.perturbed
    want_dbias = bias is not None and bias.perturbed
    want_dscale = w.scale.perturbed
    res = (wv, bv if want_dbias else None, xv if want_dscale else None, jnp.zeros((0,), xv.dtype),
           jnp.zeros((0,) if want_dx else (0, 0), jnp.float32))
    return y, res


def _linear_2d_bwd(impl, split_k, res, g):
    del impl, split_k
    w, bias, x2, x_dtype_tag, dx_tag = res
    x_dtype = x_dtype_tag.dtype
    want_dx = dx_tag.ndim == 1
    if isinstance(g, jax.custom_derivatives.SymbolicZero):
        return None, None, None
    g32 = g.astype(jnp.float32)
    dx = None
    if want_dx:
        wd = dequantize(w, jnp.float32)  # (in, out)
        dx = jnp.dot(g32, wd.T, precision=jax.lax.Precision.HIGHEST).astype(x_dtype)
    dscale = None if x2 is None else _scale_grad(w, x2, g32)
    dw = FPxWeight(None, dscale, w.fmt, w.shape, w.group_size)  # data (uint32): float0
    dbias = None if bias is None else jnp.sum(g32, axis=0).astype(bias.dtype)
    return dx, dw, dbias


def _scale_grad(w: FPxWeight, x2, g32):
    """d loss / d scale[n, j] = sum_{k in group j} codes[n, k] * (g^T x)[n, k]."""
    n_pad, k_pad = w.padded_shape
    k, n = w.shape
    ones = FPxWeight(w.data, jnp.ones_like(w.scale), w.fmt, w.shape, w.group_size)
    codes = dequantize(ones, jnp.float32).T  # (n, k) decoded codes, unscaled
    gx = jnp.dot(g32.T, x2.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)  # (n, k)
    prod = jnp.pad(codes * gx, ((0, n_pad - n), (0, k_pad - k)))
    groups = w.scale.shape[-1]
    return prod.reshape(n_pad, groups, k_pad // groups).sum(-1).astype(w.scale.dtype)


_linear_2d.defvjp(_linear_2d_fwd, _linear_2d_bwd, symbolic_zeros=True)


# --- forward ---------------------------------------------------------------------------------
def _forward(x2, w, bias, impl, split_k):
    if impl == "reference":
        return reference.linear(x2, w, bias)
    _ffi.register()
    k_blocks = w.padded_shape[1] // layout.K_BLOCK
    if split_k is not None and split_k > k_blocks:
        raise ValueError(f"split_k={split_k} exceeds the {k_blocks} k-blocks of this weight")
    bias2 = jnp.zeros((1, 0), jnp.float32) if bias is None else bias.astype(jnp.float32)[None]
    core = kernel_call.kernel_core(w.fmt, w.shape, w.group_size, impl, split_k)
    return core(x2[None], w.data[None], w.scale[None], bias2)[0]
