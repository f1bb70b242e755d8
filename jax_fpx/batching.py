"""Batching: the ``custom_vmap`` rule of ``linear``, the one module that touches a batch axis.

The core works on operands with a leading batch axis in the handlers' convention
(``x [bx, M, K]``, ``data [bw, NT, KB, 32*bits]``, ``scale [bw, N_pad, G]``, ``bias [bb, N]`` float32
or ``None``; ``bx``/``bw``/``bb`` each 1 = shared, or B). :func:`linear` adds that axis to a 2-D call
and takes it off again; the core hands a batch of 1 to :mod:`jax_fpx.partitioning` as a 2-D product.
Its vmap rule never broadcasts the packed weights:

* only the activations mapped: the new axis is folded into M (the weights stream once for all rows);
* weights (and/or bias) mapped: the new axis is merged into the batch axis (a reshape);
* a combination that would need copies of the weights (e.g. mapped scales over shared codes, or
  shared weights already batched by an inner vmap) runs sequentially with ``lax.map`` instead.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from . import partitioning
from .linear_spec import LinearSpec

__all__ = ["linear"]


def linear(x2, data, scale, bias, spec: LinearSpec):
    """One 2-D product ``(M, K) x packed -> (M, N)``; ``bias`` float32 ``(N,)`` or ``None``."""
    y = _core(spec, bias is not None)(x2[None], data[None], scale[None], None if bias is None else bias[None])
    return y[0]


@functools.lru_cache(maxsize=None)
def _core(spec: LinearSpec, has_bias: bool):  # one custom_vmap per operand structure
    @jax.custom_batching.custom_vmap
    def core(x3, data, scale, bias):
        return _unbatched(x3, data, scale, bias, spec)

    @core.def_vmap
    def _rule(axis_size, in_batched, x3, data, scale, bias):
        return _batch_rule(core, axis_size, in_batched, x3, data, scale, bias), True

    return core


def _unbatched(x3, data, scale, bias, spec):
    bx, m, k = x3.shape
    bw = data.shape[0]
    bb = 1 if bias is None else bias.shape[0]
    if bw == 1 and bb == 1:  # shared weights and bias: one 2-D product with bx*m rows
        b = None if bias is None else bias[0]
        y = partitioning.linear(x3.reshape(bx * m, k), data[0], scale[0], b, spec)
        return y.reshape(bx, m, y.shape[-1])
    if bb > 1 and max(bx, bw) == 1:  # the handler batches by x or weights: give x the bias's batch
        x3 = jnp.broadcast_to(x3, (bb, m, k))
    return partitioning.linear_batched(x3, data, scale, bias, spec)


def _batch_rule(core, a, in_batched, x3, data, scale, bias):
    xb, db, sb, bb = in_batched
    bb = bool(bb) and bias is not None

    def inner(arr, batched):  # the operand's own batch size (1 or B)
        return 1 if arr is None else (arr.shape[1] if batched else arr.shape[0])

    bx, bw, bs, bbias = inner(x3, xb), inner(data, db), inner(scale, sb), inner(bias, bb)
    bp = max(bx, bw, bs, bbias)
    if not (db or sb or bb):
        # Only activations are mapped: fold the new axis into M (free when bx == 1).
        _, _, m, k = x3.shape
        y = core(jnp.swapaxes(x3, 0, 1).reshape(bx, a * m, k), data, scale, bias)  # (bp, a*m, n)
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
        return _sequential(core, (xb, db, sb, bb), (x3, data, scale, bias))
    s2 = merge_or_broadcast(scale, sb, bs)  # scales are small; data was checked above
    if s2.shape[0] != d2.shape[0]:
        s2 = jnp.broadcast_to(s2, (d2.shape[0], *s2.shape[1:]))
    x2_ = merge_or_broadcast(x3, xb, bx)
    b2_ = None if bias is None else merge_or_broadcast(bias, bb, bbias)
    y = core(x2_, d2, s2, b2_)  # (a*bp, m, n)
    return y.reshape(a, bp, *y.shape[1:])


def _sequential(core, in_batched, args):
    mapped = tuple(arr for arr, b in zip(args, in_batched) if b)

    def one(sl):
        it = iter(sl)
        return core(*[next(it) if b else arr for arr, b in zip(args, in_batched)])

    return jax.lax.map(one, mapped)
