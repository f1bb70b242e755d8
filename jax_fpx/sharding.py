"""Sharded ``jax_fpx.linear``: data parallel (M), column parallel (out_features) and row
parallel (in_features, partial sums reduced), with the packed weights sharded in place.

The packed leaves shard along with the logical dims, no repacking:

==================  ================================  ===============================
logical dim         ``data`` uint32[N/16, K/64, 32b]  ``scale`` f32[N_pad, G]
==================  ================================  ===============================
out_features (N)    axis 0 (16-row tiles)             axis 0 (rows)
in_features (K)     axis 1 (64-wide k blocks)         axis 1 (groups; per-channel: -)
==================  ================================  ===============================

so a shard of ``p`` devices along N must hold whole 16-row tiles (``N % (16 p) == 0``) and
a shard along K whole k blocks and whole scale groups (``K % (max(64, group) * p) == 0``,
no K padding). Shapes that do not divide raise ``ValueError`` naming the rule.

Two ways to use it:

* :func:`sharded_linear` -- explicit: a ``jax.shard_map`` over ``mesh`` with the
  named mesh axes for M (``batch_axis``), K (``in_axis``) and N (``out_axis``).
  Row-parallel partial results (``x.dtype`` from the kernel) are summed in float32 with
  ``psum``; the bias is added once, after the sum.
* :func:`shard_weight` / :func:`weight_sharding` -- place an :class:`FPxWeight` on a mesh
  with the leaf shardings that match a logical ``PartitionSpec(in_axis, out_axis)``.

* nothing: a plain ``jax_fpx.linear`` under ``jax.jit`` with sharded operands (e.g. params
  placed with :func:`shard_weight`, Flax partitioning) is partitioned by the op itself
  (``jax.experimental.custom_partitioning`` with a Shardy sharding rule -- Shardy is JAX's
  default partitioner since 0.7 -- and a GSPMD ``infer_sharding_from_operands`` for
  ``jax_use_shardy_partitioner=False``). It follows the weights: N split over the axis on
  ``data`` axis 0, K over the axis on ``data`` axis 1 (partials all-reduced in float32), M
  over the axis on x's axis 0; a split that breaks a tile/block/group is dropped
  (replicated) instead. Set ``jax_fpx.sharding.AUTO_PARTITION = False`` to turn it off
  (then XLA gathers the operands of the custom call). Note: ``jax.export`` of a *multi-
  device* function containing it cannot be serialized (the partitioner callback lives in
  this process); export single-device functions or use :func:`sharded_linear`.
"""

from __future__ import annotations

from typing import Optional

import functools
from types import SimpleNamespace

import jax
import jax.numpy as jnp
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from . import kernel_call, layout
from .ops import linear
from .weight import FPxWeight

# Partition plain ``jax_fpx.linear`` calls under sharding (custom_partitioning); read at trace time.
AUTO_PARTITION = True

__all__ = ["sharded_linear", "shard_weight", "weight_sharding", "weight_specs", "check_shardable"]


def _axis_size(mesh: Mesh, axis) -> int:
    if axis is None:
        return 1
    names = axis if isinstance(axis, tuple) else (axis,)
    size = 1
    for a in names:
        if a not in mesh.shape:
            raise ValueError(f"mesh has no axis {a!r} (axes: {tuple(mesh.shape)})")
        size *= mesh.shape[a]
    return size


def check_shardable(w: FPxWeight, mesh: Mesh, in_axis=None, out_axis=None) -> None:
    """Raise ValueError unless ``w`` splits along K over ``in_axis`` and N over ``out_axis``
    into whole packed tiles/blocks/groups."""
    if not isinstance(w, FPxWeight):
        raise TypeError(f"expected an FPxWeight, got {type(w).__name__}")
    if w.batch_shape:
        raise ValueError(f"{w} is a stack; shard one layer (or map over the stack)")
    k, n = w.shape
    n_pad, k_pad = w.padded_shape
    p_out, p_in = _axis_size(mesh, out_axis), _axis_size(mesh, in_axis)
    if p_out > 1 and (n_pad != n or (n_pad // layout.ROW_TILE) % p_out):
        raise ValueError(
            f"column-parallel {w} over {p_out} devices ({out_axis!r}): out_features={n} must be a "
            f"multiple of {layout.ROW_TILE} x {p_out} = {layout.ROW_TILE * p_out} (whole 16-row tiles "
            "per shard); pad out_features or use fewer shards"
        )
    if p_in > 1:
        kmult = layout.K_BLOCK if w.group_size is None else max(layout.K_BLOCK, w.group_size)
        if k_pad != k or (k // kmult) % p_in:
            what = "64-wide k blocks" if w.group_size is None else f"k blocks and scale groups of {w.group_size}"
            raise ValueError(
                f"row-parallel {w} over {p_in} devices ({in_axis!r}): in_features={k} must be a "
                f"multiple of {kmult} x {p_in} = {kmult * p_in} (whole {what} per shard); pad "
                "in_features or use fewer shards"
            )


def weight_specs(w: FPxWeight, in_axis=None, out_axis=None) -> FPxWeight:
    """An FPxWeight-shaped pytree of PartitionSpecs for the logical spec (in_axis, out_axis)."""
    lead = (None,) * len(w.batch_shape)
    scale_k = in_axis if w.group_size is not None else None  # per-channel scale: replicated along K
    return FPxWeight(P(*lead, out_axis, in_axis, None), P(*lead, out_axis, scale_k), w.fmt, w.shape, w.group_size)


def weight_sharding(w: FPxWeight, mesh: Mesh, in_axis=None, out_axis=None) -> FPxWeight:
    """NamedShardings (as an FPxWeight pytree) for ``jax.device_put`` / ``jit`` shardings."""
    specs = weight_specs(w, in_axis, out_axis)
    return FPxWeight(NamedSharding(mesh, specs.data), NamedSharding(mesh, specs.scale), w.fmt, w.shape, w.group_size)


def shard_weight(w: FPxWeight, mesh: Mesh, in_axis=None, out_axis=None) -> FPxWeight:
    """``w`` placed on ``mesh``: K split over ``in_axis``, N over ``out_axis`` (checked)."""
    check_shardable(w, mesh, in_axis, out_axis)
    return jax.device_put(w, weight_sharding(w, mesh, in_axis, out_axis))


def sharded_linear(
    x: jax.Array,
    w: FPxWeight,
    bias: Optional[jax.Array] = None,
    *,
    mesh: Mesh,
    batch_axis=None,
    in_axis=None,
    out_axis=None,
    impl: str = "auto",
    split_k: Optional[int] = None,
) -> jax.Array:
    """``jax_fpx.linear`` as a ``shard_map`` over ``mesh``.

    Args:
      x: ``(M, ..., in_features)``; axis 0 is split over ``batch_axis`` (data parallel), the
        last axis over ``in_axis``.
      w: the (global) :class:`FPxWeight`; its K dim is split over ``in_axis`` (row parallel)
        and N over ``out_axis`` (column parallel). Any combination of the three axes works.
      bias: optional ``(out_features,)``, split over ``out_axis``.
      mesh: the device mesh; ``*_axis`` are mesh axis names (or tuples of names) or None.

    Returns:
      ``(M, ..., out_features)`` in ``x.dtype``, axis 0 split over ``batch_axis`` and the last
      axis over ``out_axis`` (replicated over ``in_axis``).

    With ``in_axis`` each device computes a partial product over its K slice (rounded to
    ``x.dtype`` by the kernel); the partials are summed in float32, then the bias is added.
    So results match the unsharded op to a few ``x.dtype`` rounding steps, not bit-exactly.
    """
    check_shardable(w, mesh, in_axis, out_axis)
    if x.ndim < 2:
        raise ValueError(f"sharded_linear expects x of shape (M, ..., in_features), got {x.shape}")
    p_batch = _axis_size(mesh, batch_axis)
    if x.shape[0] % p_batch:
        raise ValueError(f"data parallel over {p_batch} devices ({batch_axis!r}) needs M={x.shape[0]} divisible by {p_batch}")
    if x.shape[-1] != w.in_features:
        raise ValueError(f"x has {x.shape[-1]} features but w expects in_features={w.in_features}")
    k, n = w.shape
    k_loc, n_loc = k // _axis_size(mesh, in_axis), n // _axis_size(mesh, out_axis)
    mid = (None,) * (x.ndim - 2)
    x_spec = P(batch_axis, *mid, in_axis)
    y_spec = P(batch_axis, *mid, out_axis)
    wspec = weight_specs(w, in_axis, out_axis)
    has_bias = bias is not None
    if has_bias:
        bias = jnp.asarray(bias)
        if bias.shape != (n,):
            raise ValueError(f"bias must have shape ({n},), got {bias.shape}")
    else:
        bias = jnp.zeros((0,), jnp.float32)
    b_spec = P(out_axis) if has_bias else P(None)
    fmt, group = w.fmt, w.group_size

    def local(xl, data, scale, bl):
        wl = FPxWeight(data, scale, fmt, (k_loc, n_loc), group)
        if in_axis is None:
            return linear(xl, wl, bl if has_bias else None, impl=impl, split_k=split_k)
        part = linear(xl, wl, None, impl=impl, split_k=split_k).astype(jnp.float32)
        y = jax.lax.psum(part, in_axis)
        if has_bias:
            y = y + bl.astype(jnp.float32)
        return y.astype(xl.dtype)

    args = (x, w.data, w.scale, bias)
    specs = (x_spec, wspec.data, wspec.scale, b_spec)
    if any(t == jax.sharding.AxisType.Explicit for t in getattr(mesh, "axis_types", ())):
        # explicit-sharding meshes (jax.make_mesh's default): move operands to the specs first
        args = tuple(jax.reshard(a, NamedSharding(mesh, s)) for a, s in zip(args, specs))
    fn = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=specs,
        out_specs=y_spec,
        check_vma=False,
    )
    return fn(*args)


# --- automatic partitioning of the plain op (custom_partitioning + Shardy rule) ----------------
def linear_2d(x2, data, scale, bias, meta):
    """ops' 2-D entry: ``(M, K) x packed -> (M, N)``; partitionable when AUTO_PARTITION."""
    if not AUTO_PARTITION:
        return kernel_call.dispatch_2d(x2, data, scale, bias, meta)
    fn = _partitioned(meta, bias is not None)
    args = (x2, data, scale) if bias is None else (x2, data, scale, bias.astype(jnp.float32))
    return fn(*args)


def _sdy_rule(meta, has_bias):
    """Einsum-like Shardy rule tying the packed dims to the logical ones where they align."""
    _, (k, n), group, _, _ = meta
    n_pad, k_pad = layout.padded_shape(k, n, group)
    sizes, reduction, replicate = {}, [], ["w"]
    if n == n_pad:  # N = nt * 16: y/bias/scale rows shard with the data's row tiles
        yn, dn, sn = "(nt r)", "nt", "(nt r)"
        sizes["r"] = layout.ROW_TILE
        replicate.append("r")
    else:
        yn, dn, sn = "n", "nt", "np"
        replicate += ["n", "nt", "np"]
    if k == k_pad:  # K = blocks * 64 (groups of gb blocks)
        sizes["c"] = layout.K_BLOCK
        replicate.append("c")
        gb = 1 if group is None else group // layout.K_BLOCK
        if group is None:
            xk, dk, sk = "(kb c)", "kb", "s"
            reduction.append("kb")
            replicate.append("s")
        elif gb == 1:
            xk, dk, sk = "(kg c)", "kg", "kg"
            reduction.append("kg")
        else:
            xk, dk, sk = "(kg gb c)", "(kg gb)", "kg"
            sizes["gb"] = gb
            reduction.append("kg")
            replicate.append("gb")
    else:
        xk, dk, sk = "k", "kb", "s"
        replicate += ["k", "kb", "s"]
    operands = [f"m {xk}", f"{dn} {dk} w", f"{sn} {sk}"] + ([yn] if has_bias else [])
    rule = ", ".join(operands) + f" -> m {yn}"
    # Shardy wants special factors listed in factor-index order (order of first appearance)
    order = list(dict.fromkeys(rule.replace("(", " ").replace(")", " ").replace(",", " ").split()))
    ordered = lambda fs: tuple(sorted(set(fs), key=order.index))  # noqa: E731
    return rule, dict(reduction_factors=ordered(reduction), need_replication_factors=ordered(replicate), **sizes)


def _spec(sharding, ndim):
    spec = sharding if isinstance(sharding, P) else getattr(sharding, "spec", ())
    spec = tuple(spec or ())
    return spec + (None,) * (ndim - len(spec))


def _axes(entry) -> tuple:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def _decide(meta, mesh, arg_shapes):
    """(batch_axis, in_axis, out_axis) this call can run with, from the operand shardings."""
    fmt, shape, group, _, _ = meta
    w = FPxWeight(arg_shapes[1], arg_shapes[2], fmt, shape, group)
    xs, ds = _spec(arg_shapes[0].sharding, 2), _spec(arg_shapes[1].sharding, 3)
    out_axis, in_axis = ds[0], ds[1]

    def ok(i, o):
        try:
            check_shardable(w, mesh, i, o)
            return True
        except ValueError:
            return False

    out_axis = out_axis if ok(None, out_axis) else None  # else: replicate that dim
    in_axis = in_axis if ok(in_axis, None) else None
    used = set(_axes(in_axis)) | set(_axes(out_axis))
    batch_axis = xs[0]
    if batch_axis is not None and (
        set(_axes(batch_axis)) & used or arg_shapes[0].shape[0] % _axis_size(mesh, batch_axis)
    ):
        batch_axis = None
    return batch_axis, in_axis, out_axis


def _shardings(meta, has_bias, mesh, decided):
    batch_axis, in_axis, out_axis = decided
    group = meta[2]
    ns = functools.partial(NamedSharding, mesh)
    args = [ns(P(batch_axis, in_axis)), ns(P(out_axis, in_axis, None)), ns(P(out_axis, in_axis if group else None))]
    if has_bias:
        args.append(ns(P(out_axis)))
    return ns(P(batch_axis, out_axis)), tuple(args)


def _infer(meta, has_bias, mesh, arg_shapes, result_shape):
    del result_shape
    return _shardings(meta, has_bias, mesh, _decide(meta, mesh, arg_shapes))[0]


def _partition(meta, has_bias, mesh, arg_shapes, result_shape):
    del result_shape
    decided = _decide(meta, mesh, arg_shapes)
    _, in_axis, out_axis = decided
    out_sharding, arg_shardings = _shardings(meta, has_bias, mesh, decided)
    fmt, (k, n), group, impl, split_k = meta
    local = (fmt, (k // _axis_size(mesh, in_axis), n // _axis_size(mesh, out_axis)), group, impl, split_k)

    def lower_fn(x2, data, scale, *bias):
        b = bias[0] if bias else None
        if in_axis is None:
            return kernel_call.dispatch_2d(x2, data, scale, b, local)
        part = kernel_call.dispatch_2d(x2, data, scale, None, local).astype(jnp.float32)
        y = jax.lax.psum(part, in_axis)
        if b is not None:
            y = y + b
        return y.astype(x2.dtype)

    return mesh, lower_fn, out_sharding, arg_shardings


@functools.lru_cache(maxsize=None)
def _partitioned(meta, has_bias):
    def body(x2, data, scale, *bias):
        return kernel_call.dispatch_2d(x2, data, scale, bias[0] if bias else None, meta)

    fn = custom_partitioning(body)
    rule, kw = _sdy_rule(meta, has_bias)
    fn.def_partition(
        partition=functools.partial(_partition, meta, has_bias),
        infer_sharding_from_operands=functools.partial(_infer, meta, has_bias),
        sharding_rule=rule,
        **kw,
    )
    return fn


def _linear_explicit(x, w, bias, impl, split_k):
    """``linear`` on operands with explicit (sharding-in-types) shardings: a shard_map over
    the axes the weights are split on (checked/dropped as in the automatic path)."""
    xt, dt = jax.typeof(x), jax.typeof(w.data)
    mesh = dt.sharding.mesh if not getattr(dt.sharding.mesh, "empty", True) else xt.sharding.mesh
    xs, ds = _spec(xt.sharding, x.ndim), _spec(dt.sharding, 3)
    x_shape = x.shape if x.ndim > 1 else (1, x.shape[0])
    args = (  # what _decide reads of custom_partitioning's arg shapes: .shape and .sharding
        SimpleNamespace(shape=x_shape, sharding=P(*(xs if x.ndim > 1 else (None, xs[0])))),
        SimpleNamespace(shape=w.data.shape, sharding=P(*ds)),
        SimpleNamespace(shape=w.scale.shape, sharding=P()),
    )
    meta = (w.fmt, w.shape, w.group_size, impl, split_k)
    batch_axis, in_axis, out_axis = _decide(meta, mesh, args)
    if x.ndim == 1:
        return sharded_linear(x[None], w, bias, mesh=mesh, in_axis=in_axis, out_axis=out_axis, impl=impl, split_k=split_k)[0]
    return sharded_linear(
        x, w, bias, mesh=mesh, batch_axis=batch_axis, in_axis=in_axis, out_axis=out_axis, impl=impl, split_k=split_k
    )
