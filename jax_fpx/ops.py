"""``jax_fpx.linear``, the public op: input checks, N-D -> 2-D, and the top of the op chain.

The chain (each module imports only the next; :mod:`jax_fpx.linear_spec` says what each owns):
``ops`` -> ``autodiff`` -> ``batching`` -> ``partitioning`` -> ``dispatch`` -> ``ffi_calls``.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import jax
import jax.numpy as jnp

from . import _ffi, autodiff, validation
from .linear_spec import LinearSpec
from .weight import FPxWeight

__all__ = ["linear", "Impl", "export_disabled_checks", "register_ffi"]

Impl = Literal["auto", "kernel", "reference", "xla"]


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
      impl: ``"auto"`` (FFI kernel where it applies: the CPU handler up to a measured M,
        ``dispatch.cpu_kernel_max_m``; the CUDA kernel for ``M <= dispatch.GPU_KERNEL_MAX_M`` rows;
        else dequantize + XLA dot), ``"kernel"`` (the FFI kernel at every M), ``"reference"``
        (pure-JAX oracle, float32 math) or ``"xla"`` (dequantize, on CUDA builds by the
        ``jax_fpx_dequantize`` kernel, then XLA's dot).
      split_k: kept for compatibility and still validated (``<=`` the k-blocks); the CUDA decode
        kernel's persistent stream-K schedule splits K itself, so it does not change the result.

    Returns:
      ``(..., out_features)`` in ``x.dtype``. Accumulation is float32 on every path.

    Eager calls (outside ``jit``) run one compiled function cached per shapes, dtypes and
    static arguments: no retracing, no growth in memory.

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
    if not isinstance(w, FPxWeight):
        raise TypeError(
            f"jax_fpx.linear expects w to be an FPxWeight (from jax_fpx.quantize), got {type(w).__name__}"
        )
    validation.check_metadata(w.fmt, w.shape, w.group_size, where=repr(w))
    if validation.check_leaves(w.data, w.scale, w.fmt, w.shape, w.group_size, where=repr(w)):  # batch shape
        raise ValueError(
            f"{w} is a stack of {w.batch_shape} weights; index it (w[i] via jax.tree.map) "
            "or map over it with jax.vmap / lax.scan"
        )
    x = validation.check_activations(x, w.in_features)
    bias = validation.check_bias(bias, w.out_features)
    spec = LinearSpec(w.fmt, w.shape, w.group_size, impl, split_k)
    validation.check_call_options(impl, split_k, spec.k_blocks)
    if any(isinstance(a, jax.core.Tracer) for a in (x, w.data, w.scale, bias)):
        return _linear_nd(x, w.data, w.scale, bias, spec)
    # Eager call: one compiled function per (shapes, dtypes, spec), reused. Run eagerly, the
    # custom_vmap around lax.platform_dependent inside retraced and leaked memory on every call.
    return _linear_nd_jit(x, w.data, w.scale, bias, spec)


def _linear_nd(x, data, scale, bias, spec: LinearSpec):
    lead = x.shape[:-1]
    m, (k, n) = math.prod(lead), spec.shape
    if m == 0 or n == 0:
        return jnp.zeros((*lead, n), x.dtype)
    return autodiff.linear(x.reshape(m, k), data, scale, bias, spec).reshape(*lead, n)


_linear_nd_jit = jax.jit(_linear_nd, static_argnums=(4,))


def export_disabled_checks() -> list:
    """``disabled_checks`` for ``jax.export.export`` of a function that uses ``linear``: the
    custom-call targets ``jax_fpx_linear`` and (CUDA builds, large-M path) ``jax_fpx_dequantize``."""
    return [jax.export.DisabledSafetyCheck.custom_call(t) for t in (_ffi.TARGET, _ffi.DEQUANTIZE_TARGET)]


def register_ffi() -> None:
    """Register the ``jax_fpx_linear`` FFI handlers (needed before running a deserialized
    ``jax.export`` module in a process that has not called :func:`linear` yet)."""
    _ffi.register()
