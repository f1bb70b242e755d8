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
  (:mod:`jax_fpx.partitioning`). Set ``jax_fpx.sharding.AUTO_PARTITION = False`` (the same flag
  as ``jax_fpx.partitioning.AUTO_PARTITION``) to turn it off (then XLA gathers the operands of
  the custom call). Note: ``jax.export`` of a *multi-device* function containing it cannot be
  serialized (the partitioner callback lives in this process); export single-device functions
  or use :func:`sharded_linear`.
"""

from __future__ import annotations

import sys
import types
from typing import Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from . import autodiff, partitioning, validation
from .linear_spec import LinearSpec
from .partitioning import axis_size as _axis_size
from .weight import FPxWeight

__all__ = ["sharded_linear", "shard_weight", "weight_sharding", "weight_specs", "check_shardable", "AUTO_PARTITION"]


def check_shardable(w: FPxWeight, mesh: Mesh, in_axis=None, out_axis=None) -> None:
    """Raise ValueError unless ``w`` splits along K over ``in_axis`` and N over ``out_axis``
    into whole packed tiles/blocks/groups."""
    if not isinstance(w, FPxWeight):
        raise TypeError(f"expected an FPxWeight, got {type(w).__name__}")
    if w.batch_shape:
        raise ValueError(f"{w} is a stack; shard one layer (or map over the stack)")
    partitioning.check_shardable(LinearSpec(w.fmt, w.shape, w.group_size), mesh, in_axis, out_axis, what=repr(w))


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
    validation.check_call_options(impl, split_k, LinearSpec(w.fmt, w.shape, w.group_size).k_blocks)
    if not hasattr(x, "ndim") or x.ndim < 2:
        raise ValueError(f"sharded_linear expects x of shape (M, ..., in_features), got {x.shape}")
    p_batch = _axis_size(mesh, batch_axis)
    if x.shape[0] % p_batch:
        raise ValueError(f"data parallel over {p_batch} devices ({batch_axis!r}) needs M={x.shape[0]} divisible by {p_batch}")
    x = validation.check_activations(x, w.in_features, where="sharded_linear")
    k, n = w.shape
    k_loc, n_loc = k // _axis_size(mesh, in_axis), n // _axis_size(mesh, out_axis)
    mid = (None,) * (x.ndim - 2)
    x_spec = P(batch_axis, *mid, in_axis)
    y_spec = P(batch_axis, *mid, out_axis)
    wspec = weight_specs(w, in_axis, out_axis)
    has_bias = bias is not None
    bias = validation.check_bias(bias, n) if has_bias else jnp.zeros((0,), jnp.float32)
    b_spec = P(out_axis) if has_bias else P(None)
    local_spec = LinearSpec(w.fmt, (k_loc, n_loc), w.group_size, impl, split_k)

    def local(xl, data, scale, bl):
        lead = xl.shape[:-1]
        x2 = xl.reshape(-1, k_loc)
        if x2.shape[0] == 0:
            return jnp.zeros((*lead, n_loc), xl.dtype)
        if in_axis is None:
            y = autodiff.linear(x2, data, scale, bl if has_bias else None, local_spec)
        else:  # row parallel: float32 partial sums, reduced, then the bias once
            y = jax.lax.psum(autodiff.linear(x2, data, scale, None, local_spec).astype(jnp.float32), in_axis)
            if has_bias:
                y = y + bl.astype(jnp.float32)
            y = y.astype(xl.dtype)
        return y.reshape(*lead, n_loc)

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


class _ShardingModule(types.ModuleType):
    """``jax_fpx.sharding.AUTO_PARTITION`` reads and sets ``jax_fpx.partitioning.AUTO_PARTITION``."""

    @property
    def AUTO_PARTITION(self) -> bool:  # noqa: N802
        return partitioning.AUTO_PARTITION

    @AUTO_PARTITION.setter
    def AUTO_PARTITION(self, value: bool) -> None:  # noqa: N802
        partitioning.AUTO_PARTITION = bool(value)


sys.modules[__name__].__class__ = _ShardingModule
