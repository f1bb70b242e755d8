"""The batched FFI core of ``jax_fpx.linear``: its vmap rule, the kernel-vs-fallback dispatch
per platform, the ``jax_fpx_linear`` custom call and the dequantize + XLA dot path.

``jax_fpx.ops`` (checks, custom VJP) calls :func:`kernel_core`; ``jax_fpx.sharding`` calls
:func:`dispatch_2d` per shard.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import _ffi, dispatch, layout
from .quantize import dequantize
from .weight import FPxWeight

__all__ = ["kernel_core", "dispatch_2d", "dequant_matmul", "ffi_linear"]


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
def kernel_core(fmt, shape, group_size, impl, split_k):
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
        from . import sharding as _sharding  # (imports ops, which imports this module)

        y = _sharding.linear_2d(x3[0], data[0], scale[0], bias2[0] if has_bias else None, meta)
        return y[None]
    return _dispatch(x3, data, scale, bias2, meta, batch)


def dispatch_2d(x2, data, scale, bias, meta):
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
            y = ffi_linear(x3[0], data[0], scale[0], bias2[0], meta, sk, ws_elems, 1)
            return y[None]
        b2 = bias2 if has_bias else bias2[0]
        return ffi_linear(x3, data, scale, b2, meta, sk, ws_elems, batch)

    use_cpu_kernel = impl != "xla" and (
        impl == "kernel" or split_k is not None or not m_known or m <= dispatch.CPU_KERNEL_MAX_M
    )

    def cpu(x3, data, scale, bias2):
        if not use_cpu_kernel:
            return dequant_matmul(x3, data, scale, bias2, meta, on_cpu=True)
        return ffi(x3, data, scale, bias2, 1, 0)

    def cuda(x3, data, scale, bias2):
        if not use_cuda_kernel:
            return dequant_matmul(x3, data, scale, bias2, meta, cuda_dequant=cuda_built)
        ws = dispatch.workspace_elems(m, n_pad, k_blocks, split_k)
        return ffi(x3, data, scale, bias2, ws, split_k or 0)

    def other(x3, data, scale, bias2):
        return dequant_matmul(x3, data, scale, bias2, meta)

    return jax.lax.platform_dependent(x3, data, scale, bias2, cpu=cpu, cuda=cuda, default=other)


def dequant_matmul(x3, data, scale, bias2, meta, cuda_dequant=False, on_cpu=False):
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


def ffi_linear(x, data, scale, bias, meta, split_k: int, ws_elems: int, batch: int):
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
