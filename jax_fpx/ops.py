"""``jax_fpx.linear``: input checks, dispatch, the FFI call and its custom VJP."""

from __future__ import annotations

import functools
import math
from typing import Literal, Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import _ffi, dispatch, layout, reference
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
    core = _kernel_core(w.fmt, w.shape, w.group_size, impl, split_k)
    return core(x2[None], w.data[None], w.scale[None], bias2)[0]


# The kernel path works on batched operands in the FFI handler's convention (csrc/linear_args.h):
#   x3 [bx, M, K], data [bw, NT, KB, 32*bits], scale [bw, N_pad, G], bias2 [bb, N] or [1, 0]
# with bx, bw, bb each 1 (shared) or B. Its vmap rule keeps it that way without ever
# broadcasting the packed weights:
#   * only x (or the activations and nothing else) mapped: the new axis is folded into M,
#     so the weights stream once for all rows;
#   * weights (and/or bias) mapped: the new axis is merged into the batch axis (a reshape);
#   * a combination that would need copies of the weights (e.g. mapped bias, shared weights
#     already batched by an inner vmap) runs sequentially with lax.map instead.
@functools.lru_cache(maxsize=None)
def _kernel_core(fmt, shape, group_size, impl, split_k):
    meta = (fmt, shape, group_size, impl, split_k)

    @jax.custom_batching.custom_vmap
    def core(x3, data, scale, bias2):
        return _kernel_unbatched(x3, data, scale, bias2, meta)

    @core.def_vmap
    def _rule(axis_size, in_batched, x3, data, scale, bias2):
        return _batch_rule(core, axis_size, in_batched, (x3, data, scale, bias2)), True

    return core


def _batch_rule(core, a, in_batched, args):
    x3, data, scale, bias2 = args
    xb, db, sb, bb = in_batched
    if bb and bias2.shape[-1] == 0:  # "no bias" marker: nothing to map
        bias2, bb = bias2[0], False

    def inner(arr, batched):
        return arr.shape[1] if batched else arr.shape[0]

    bx, bw, bs, bbias = inner(x3, xb), inner(data, db), inner(scale, sb), inner(bias2, bb)
    bp = max(bx, bw, bs, bbias)
    if not (db or sb or bb):
        # Only activations are mapped: fold the new axis into M (free when bx == 1).
        _, _, m, k = x3.shape
        xf = jnp.swapaxes(x3, 0, 1).reshape(bx, a * m, k)
        y = core(xf, data, scale, bias2)  # (bp, a*m, n)
        return jnp.swapaxes(y.reshape(y.shape[0], a, m, y.shape[-1]), 0, 1)

    def merge(arr, batched, b):
        """(a, bp, ...) -> (a*bp, ...); unmapped shared (1, ...) stays; else None (needs a copy)."""
        if batched and b == bp:
            return arr.reshape(a * bp, *arr.shape[2:])
        if not batched and b == 1:
            return arr
        return None

    def merge_or_broadcast(arr, batched, b):
        out = merge(arr, batched, b)
        if out is None:
            arr = arr if batched else arr[None]
            out = jnp.broadcast_to(arr, (a, bp, *arr.shape[2:])).reshape(a * bp, *arr.shape[2:])
        return out

    d2 = merge(data, db, bw)
    if d2 is None or (d2.shape[0] == 1 and (sb or bs > 1)):
        # the packed weights would need broadcast copies: map sequentially instead
        return _sequential(core, (xb, db, sb, bb), (x3, data, scale, bias2))
    s2 = merge_or_broadcast(scale, sb, bs)  # scales are small; data was checked above
    if s2.shape[0] != d2.shape[0]:
        s2 = jnp.broadcast_to(s2, (d2.shape[0], *s2.shape[1:]))
    x2_ = merge_or_broadcast(x3, xb, bx)
    b2_ = merge_or_broadcast(bias2, bb, bbias) if bias2.shape[-1] else bias2
    y = core(x2_, d2, s2, b2_)  # (a*bp, m, n)
    return y.reshape(a, bp, *y.shape[1:])


def _sequential(core, in_batched, args):
    mapped = tuple(arr for arr, b in zip(args, in_batched) if b)

    def one(sl):
        it = iter(sl)
        return core(*[next(it) if b else arr for arr, b in zip(args, in_batched)])

    return jax.lax.map(one, mapped)


def _kernel_unbatched(x3, data, scale, bias2, meta):
    fmt, shape, group_size, impl, split_k = meta
    bx, m, k = x3.shape
    bw, bb = data.shape[0], bias2.shape[0]
    has_bias = bias2.shape[-1] > 0
    if bw == 1 and bb == 1 and bx > 1:  # shared weights and bias: one GEMM with bx*m rows
        y = _kernel_unbatched(x3.reshape(1, bx * m, k), data, scale, bias2, meta)
        return y.reshape(bx, m, y.shape[-1])
    if has_bias and bb > 1 and max(bx, bw) == 1:  # the handler batches by x or weights
        x3 = jnp.broadcast_to(x3, (bb, m, k))
        bx = bb
    batch = max(bx, bw)
    if batch == 1:  # the plain 2-D call: partitioned under sharding (jax_fpx.sharding)
        from . import sharding as _sharding  # (imports ops)

        y = _sharding.linear_2d(x3[0], data[0], scale[0], bias2[0] if has_bias else None, meta)
        return y[None]
    return _dispatch(x3, data, scale, bias2, meta, batch)


def _dispatch_2d(x2, data, scale, bias, meta):
    """One (M, K) x packed (K, N) product on this device: the FFI kernel or the fallback."""
    bias2 = jnp.zeros((1, 0), jnp.float32) if bias is None else bias.astype(jnp.float32)[None]
    return _dispatch(x2[None], data[None], scale[None], bias2, meta, 1)[0]


def _dispatch(x3, data, scale, bias2, meta, batch):
    fmt, shape, group_size, impl, split_k = meta
    m = x3.shape[1]
    has_bias = bias2.shape[-1] > 0
    n_pad, k_pad = layout.padded_shape(*shape, group_size)
    k_blocks = k_pad // layout.K_BLOCK
    fp16 = jnp.dtype(x3.dtype) == jnp.dtype(jnp.float16)
    # A symbolic M (jax.export shape polymorphism) cannot size the split-K workspace or pick
    # the kernel statically: the CUDA path then runs dequantize + XLA dot (CPU: the handler).
    m_known = isinstance(m, (int, np.integer))
    cuda_built = _ffi.register()
    use_cuda_kernel = (
        cuda_built
        and m_known
        and dispatch.gpu_kernel_supports(fmt, fp16)
        and impl != "xla"
        and (impl == "kernel" or split_k is not None or m <= dispatch.GPU_KERNEL_MAX_M)
    )

    def ffi(x3, data, scale, bias2, ws_elems, sk):
        if batch == 1:  # the plain 2-D contract
            y = _ffi_linear(x3[0], data[0], scale[0], bias2[0], meta, sk, ws_elems, 1)
            return y[None]
        b2 = bias2 if has_bias else bias2[0]
        return _ffi_linear(x3, data, scale, b2, meta, sk, ws_elems, batch)

    use_cpu_kernel = impl != "xla" and (
        impl == "kernel" or split_k is not None or not m_known or m <= dispatch.CPU_KERNEL_MAX_M
    )

    def cpu(x3, data, scale, bias2):
        if not use_cpu_kernel:
            return _dequant_matmul(x3, data, scale, bias2, meta, on_cpu=True)
        return ffi(x3, data, scale, bias2, 1, 0)

    def cuda(x3, data, scale, bias2):
        if not use_cuda_kernel:
            return _dequant_matmul(x3, data, scale, bias2, meta, cuda_dequant=cuda_built)
        ws = dispatch.workspace_elems(m, n_pad, k_blocks, split_k)
        return ffi(x3, data, scale, bias2, ws, split_k or 0)

    def other(x3, data, scale, bias2):
        return _dequant_matmul(x3, data, scale, bias2, meta)

    return jax.lax.platform_dependent(x3, data, scale, bias2, cpu=cpu, cuda=cuda, default=other)


def _dequant_matmul(x3, data, scale, bias2, meta, cuda_dequant=False, on_cpu=False):
    """The non-kernel path (impl="xla", and "auto" above the kernels' M thresholds), batched:
    dequantize once (the CUDA ``jax_fpx_dequantize`` kernel on GPU builds), then XLA's GEMM."""
    fmt, shape, group_size, _, _ = meta
    w = FPxWeight(data, scale, fmt, shape, group_size)
    if cuda_dequant:
        from . import fallback

        w_nk = fallback.dequantize_nk(w, x3.dtype)  # (bw, N, K)
        y = jnp.einsum("...mk,...nk->...mn", x3, w_nk, preferred_element_type=jnp.float32)
    elif on_cpu:  # XLA:CPU's bf16/f16 dot does not accumulate in float32: use float32 operands
        wd = dequantize(w, jnp.float32)  # (bw, K, N)
        y = jnp.matmul(x3.astype(jnp.float32), wd)
    else:
        wd = dequantize(w, x3.dtype)  # (bw, K, N)
        y = jnp.matmul(x3, wd, preferred_element_type=jnp.float32)
    if bias2.shape[-1]:
        y = y + bias2[:, None, :]
    return y.astype(x3.dtype)


def _ffi_linear(x, data, scale, bias, meta, split_k: int, ws_elems: int, batch: int):
    """The `jax_fpx_linear` custom call (operands as in csrc/linear_args.h)."""
    fmt, (k, n), group_size, _, _ = meta
    lead = (batch,) if batch > 1 else ()
    call = jax.ffi.ffi_call(
        _ffi.TARGET,
        (
            jax.ShapeDtypeStruct((*lead, x.shape[-2], n), x.dtype),
            jax.ShapeDtypeStruct((*lead, ws_elems), jnp.float32),
        ),
        vmap_method="sequential",  # never reached: the custom_vmap rule above batches
    )
    y, _ = call(
        x,
        data,
        scale,
        bias,
        ebits=np.int32(fmt.ebits),
        mbits=np.int32(fmt.mbits),
        in_features=np.int32(k),
        out_features=np.int32(n),
        group_size=np.int32(group_size or 0),
        split_k=np.int32(split_k),
    )
    return y
