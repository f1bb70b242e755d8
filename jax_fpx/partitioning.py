"""Partitioning of the 2-D op over a device mesh, so a plain ``jax_fpx.linear`` on sharded operands
runs sharded, with the packed weights sharded in place.

* Auto (and no) mesh axes: ``jax.experimental.custom_partitioning`` with a Shardy sharding rule
  (Shardy is JAX's default partitioner since 0.7) and a GSPMD ``infer_sharding_from_operands``
  for ``jax_use_shardy_partitioner=False``. It follows the weights: N split over the axis on
  ``data`` axis 0, K over the axis on ``data`` axis 1 (partials all-reduced in float32), M over
  the axis on x's axis 0; a split that breaks a tile/block/group is dropped (replicated) instead.
  ``AUTO_PARTITION = False`` turns it off (XLA then gathers the custom call's operands).
* Explicit mesh axes (sharding in types, ``jax.make_mesh``'s default): the same decision, run
  through ``jax.sharding.auto_axes`` with the output sharding it implies.

Batched calls (stacked weights under ``vmap``) are not partitioned; they go to
:mod:`jax_fpx.dispatch` as they are. The sharding rules of the packed leaves are in
:mod:`jax_fpx.sharding`'s docstring; :func:`check_shardable` states them as errors.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import jax
import jax.numpy as jnp
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from . import dispatch, layout
from .linear_spec import LinearSpec, explicit_mesh

__all__ = ["linear", "linear_batched", "check_shardable", "axis_size", "AUTO_PARTITION"]

# Partition plain ``jax_fpx.linear`` calls under sharding (custom_partitioning); read at trace time.
AUTO_PARTITION = True


def linear(x2, data, scale, bias, spec: LinearSpec):
    """One ``(M, K) x packed -> (M, N)`` product, partitioned over the operands' mesh (if any)."""
    mesh = explicit_mesh(x2, data, scale, bias)
    if mesh is not None:
        return _linear_explicit(x2, data, scale, bias, spec, mesh)
    args = (x2, data, scale) if bias is None else (x2, data, scale, bias)
    return _linear_auto(*args, spec=spec)


def _linear_auto(x2, data, scale, *bias, spec: LinearSpec):
    if not AUTO_PARTITION:
        return dispatch.linear(x2, data, scale, bias[0] if bias else None, spec)
    return _partitioned(spec, bool(bias))(x2, data, scale, *bias)


def linear_batched(x3, data, scale, bias, spec: LinearSpec):
    """A batch of products (operands with a leading batch axis): not partitioned."""
    return dispatch.linear(x3, data, scale, bias, spec)


def _linear_explicit(x2, data, scale, bias, spec, mesh):
    """Explicitly sharded operands: the automatic decision, under ``auto_axes``."""
    args = (x2, data, scale) if bias is None else (x2, data, scale, bias)
    shapes = [SimpleNamespace(shape=a.shape, sharding=P(*_spec(jax.typeof(a).sharding, a.ndim))) for a in args]
    out_sharding, _ = _shardings(spec, bias is not None, mesh, _decide(spec, mesh, shapes))
    return jax.sharding.auto_axes(lambda *a: _linear_auto(*a, spec=spec), out_sharding=out_sharding)(*args)


def axis_size(mesh: Mesh, axis) -> int:
    if axis is None:
        return 1
    names = axis if isinstance(axis, tuple) else (axis,)
    size = 1
    for a in names:
        if a not in mesh.shape:
            raise ValueError(f"mesh has no axis {a!r} (axes: {tuple(mesh.shape)})")
        size *= mesh.shape[a]
    return size


def check_shardable(spec: LinearSpec, mesh: Mesh, in_axis=None, out_axis=None, what: str = "") -> None:
    """Raise ValueError unless the weight of ``spec`` splits along K over ``in_axis`` and N over
    ``out_axis`` into whole packed tiles/blocks/groups (``what`` names it in the message)."""
    k, n = spec.shape
    n_pad, k_pad = spec.padded_shape
    what = what or f"{spec.fmt.name} weight ({k}, {n})"
    p_out, p_in = axis_size(mesh, out_axis), axis_size(mesh, in_axis)
    if p_out > 1 and (n_pad != n or (n_pad // layout.ROW_TILE) % p_out):
        raise ValueError(
            f"column-parallel {what} over {p_out} devices ({out_axis!r}): out_features={n} must be a "
            f"multiple of {layout.ROW_TILE} x {p_out} = {layout.ROW_TILE * p_out} (whole 16-row tiles "
            "per shard); pad out_features or use fewer shards"
        )
    if p_in > 1:
        group = spec.group_size
        kmult = layout.K_BLOCK if group is None else max(layout.K_BLOCK, group)
        if k_pad != k or (k // kmult) % p_in:
            blocks = "64-wide k blocks" if group is None else f"k blocks and scale groups of {group}"
            raise ValueError(
                f"row-parallel {what} over {p_in} devices ({in_axis!r}): in_features={k} must be a "
                f"multiple of {kmult} x {p_in} = {kmult * p_in} (whole {blocks} per shard); pad "
                "in_features or use fewer shards"
            )


def _sdy_rule(spec: LinearSpec, has_bias):
    """Einsum-like Shardy rule tying the packed dims to the logical ones where they align."""
    (k, n), group = spec.shape, spec.group_size
    n_pad, k_pad = spec.padded_shape
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


def _decide(spec: LinearSpec, mesh, arg_shapes):
    """(batch_axis, in_axis, out_axis) this call can run with, from the operand shardings."""
    xs, ds = _spec(arg_shapes[0].sharding, 2), _spec(arg_shapes[1].sharding, 3)
    out_axis, in_axis = ds[0], ds[1]

    def ok(i, o):
        try:
            check_shardable(spec, mesh, i, o)
            return True
        except ValueError:
            return False

    out_axis = out_axis if ok(None, out_axis) else None  # else: replicate that dim
    in_axis = in_axis if ok(in_axis, None) else None
    used = set(_axes(in_axis)) | set(_axes(out_axis))
    batch_axis = xs[0]
    if batch_axis is not None and (
        set(_axes(batch_axis)) & used or arg_shapes[0].shape[0] % axis_size(mesh, batch_axis)
    ):
        batch_axis = None
    return batch_axis, in_axis, out_axis


def _shardings(spec: LinearSpec, has_bias, mesh, decided):
    batch_axis, in_axis, out_axis = decided
    group = spec.group_size
    ns = functools.partial(NamedSharding, mesh)
    args = [ns(P(batch_axis, in_axis)), ns(P(out_axis, in_axis, None)), ns(P(out_axis, in_axis if group else None))]
    if has_bias:
        args.append(ns(P(out_axis)))
    return ns(P(batch_axis, out_axis)), tuple(args)


def _infer(spec, has_bias, mesh, arg_shapes, result_shape):
    del result_shape
    return _shardings(spec, has_bias, mesh, _decide(spec, mesh, arg_shapes))[0]


def _partition(spec: LinearSpec, has_bias, mesh, arg_shapes, result_shape):
    del result_shape
    decided = _decide(spec, mesh, arg_shapes)
    _, in_axis, out_axis = decided
    out_sharding, arg_shardings = _shardings(spec, has_bias, mesh, decided)
    k, n = spec.shape
    local = spec.with_shape(k // axis_size(mesh, in_axis), n // axis_size(mesh, out_axis))

    def lower_fn(x2, data, scale, *bias):
        b = bias[0] if bias else None
        if in_axis is None:
            return dispatch.linear(x2, data, scale, b, local)
        # row parallel: float32 partial sums of the local K slice, reduced, then the bias once
        part = dispatch.linear(x2, data, scale, None, local).astype(jnp.float32)
        y = jax.lax.psum(part, in_axis)
        if b is not None:
            y = y + b
        return y.astype(x2.dtype)

    return mesh, lower_fn, out_sharding, arg_shardings


@functools.lru_cache(maxsize=None)
def _partitioned(spec: LinearSpec, has_bias: bool):
    def body(x2, data, scale, *bias):
        return dispatch.linear(x2, data, scale, bias[0] if bias else None, spec)

    fn = custom_partitioning(body)
    rule, kw = _sdy_rule(spec, has_bias)
    fn.def_partition(
        partition=functools.partial(_partition, spec, has_bias),
        infer_sharding_from_operands=functools.partial(_infer, spec, has_bias),
        sharding_rule=rule,
        **kw,
    )
    return fn
