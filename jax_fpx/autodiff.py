"""Autodiff: the custom VJP of the 2-D ``linear`` (forward through :mod:`jax_fpx.batching`).

d/dx = g @ dequantize(w).T and d/dbias = sum(g) are exact (float32, like the reference). The packed
codes are integers: their cotangent is float0. The scales get their true gradient when (and only
when) they are being differentiated (``symbolic_zeros`` tells us), so a frozen base costs nothing
extra and no activation is saved for it. Which cotangents are wanted travels as static pytree
metadata of the residuals (:class:`_Wanted`), not as array shapes. On explicitly sharded operands
the backward runs under ``jax.sharding.auto_axes`` (the compiler partitions it), with the primal
operands' shardings as the cotangents' shardings.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from . import batching
from .linear_spec import LinearSpec, explicit_mesh
from .quantize import dequantize
from .weight import FPxWeight

__all__ = ["linear"]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def linear(x2, data, scale, bias, spec: LinearSpec):
    """``x2 (M, K) @ W + bias`` in ``x2.dtype``; ``bias`` is ``(N,)`` of any float dtype or ``None``."""
    return batching.linear(x2, data, scale, _f32(bias), spec)


def _f32(bias):
    return None if bias is None else bias.astype(jnp.float32)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _Wanted:
    """Static part of the residuals: which cotangents to compute, and their shardings (explicit
    meshes only; ``None`` elsewhere)."""

    dx: bool
    dscale: bool
    dbias: bool
    bias_dtype: Any = None
    shardings: Any = None


def _fwd(x2, data, scale, bias, spec):
    xv, dv, sv = x2.value, data.value, scale.value
    bv = None if bias is None else bias.value
    y = batching.linear(xv, dv, sv, _f32(bv), spec)
    dx, dscale, dbias = x2.perturbed, scale.perturbed, bias is not None and bias.perturbed
    shardings = None
    if explicit_mesh(xv, dv, sv, bv) is not None:
        shardings = tuple(jax.typeof(a).sharding if want else None for a, want in ((xv, dx), (sv, dscale), (bv, dbias)))
    wanted = _Wanted(dx, dscale, dbias, bv.dtype if dbias else None, shardings)
    return y, (dv, sv, xv if dscale else None, wanted)


def _bwd(spec, res, g):
    data, scale, x2, wanted = res
    if isinstance(g, jax.custom_derivatives.SymbolicZero):
        return None, None, None, None

    def grads(g, data, scale, x2):
        g32 = g.astype(jnp.float32)
        w = FPxWeight(data, scale, spec.fmt, spec.shape, spec.group_size)
        dx = dscale = dbias = None
        if wanted.dx:
            dx = jnp.dot(g32, dequantize(w, jnp.float32).T, precision=jax.lax.Precision.HIGHEST).astype(g.dtype)
        if wanted.dscale:
            dscale = _scale_grad(w, x2, g32)
        if wanted.dbias:
            dbias = jnp.sum(g32, axis=0).astype(wanted.bias_dtype)
        return dx, dscale, dbias

    if wanted.shardings is not None:  # explicitly sharded operands: let the compiler partition it
        grads = jax.sharding.auto_axes(grads, out_sharding=wanted.shardings)
    dx, dscale, dbias = grads(g, data, scale, x2)
    return dx, None, dscale, dbias


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


linear.defvjp(_fwd, _bwd, symbolic_zeros=True)
