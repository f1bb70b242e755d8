"""The one validation of FPx weights and ``linear`` arguments.

Used by ``FPxWeight`` (construction, unflatten, ``check``), ``dequantize``, the reference, ``linear``
(every impl) and ``sharded_linear``, so every path accepts and rejects the same inputs, before any
kernel launch, with an error that says what to fix.
"""

from __future__ import annotations

import numpy as np

from . import layout
from .formats import FPxFormat
from .linear_spec import IMPLS

__all__ = ["check_metadata", "check_leaves", "check_activations", "check_bias", "check_call_options"]

_INT32_MAX = 2**31 - 1


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _scale_dtype(group_size):
    import jax.numpy as jnp

    scale_dtype = getattr(layout, "scale_dtype", None)  # layout v2: bfloat16 group scales
    return np.dtype(jnp.dtype(scale_dtype(group_size) if scale_dtype else jnp.float32))


def check_metadata(fmt, shape, group_size, where: str = "FPxWeight") -> tuple:
    """``(fmt, (in_features, out_features), group_size)`` normalized, or a TypeError/ValueError."""
    if not isinstance(fmt, FPxFormat):
        hint = f" (use jax_fpx.get_format({fmt!r}))" if isinstance(fmt, (str, tuple)) else ""
        raise TypeError(f"{where}: fmt must be an FPxFormat, got {type(fmt).__name__}{hint}")
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__") or len(shape) != 2 or not all(_is_int(d) for d in shape):
        raise ValueError(f"{where}: shape must be (in_features, out_features), two ints, got {shape!r}")
    k, n = int(shape[0]), int(shape[1])
    if k < 0 or n < 0:
        raise ValueError(f"{where}: shape must be non-negative, got ({k}, {n})")
    if group_size is not None:
        if not _is_int(group_size) or group_size <= 0 or group_size % layout.K_BLOCK:
            raise ValueError(
                f"{where}: group_size must be None (one scale per output channel) or a positive multiple of "
                f"{layout.K_BLOCK} (what the kernels read), got {group_size!r}"
            )
        group_size = int(group_size)
    n_pad, k_pad = layout.padded_shape(k, n, group_size)
    if k_pad > _INT32_MAX or n_pad > _INT32_MAX:  # the kernels' int32 attributes
        raise ValueError(
            f"{where}: a ({k}, {n}) weight with group_size={group_size} pads to ({k_pad}, {n_pad}) (K, N), too "
            "large for the kernels' int32 indexing; use a smaller group_size or split the weight"
        )
    return fmt, (k, n), group_size


def check_leaves(data, scale, fmt: FPxFormat, shape, group_size, where: str = "FPxWeight") -> tuple:
    """Raise unless ``data``/``scale`` have the packed shapes and dtypes of the (checked) metadata.
    Returns the batch shape (leading axes of stacked weights)."""
    ds = layout.data_shape(*shape, fmt.bits, group_size)
    ss = layout.scale_shape(*shape, group_size)
    dshape, sshape = tuple(np.shape(data)), tuple(np.shape(scale))
    if len(dshape) < 3 or len(sshape) < 2 or dshape[-3:] != ds or sshape[-2:] != ss or dshape[:-3] != sshape[:-2]:
        kind = "per-channel" if group_size is None else f"group_size={group_size}"
        raise ValueError(
            f"{where}: leaves do not match the metadata {fmt.name} {shape} {kind}: data {dshape} (want [...]+{ds}), "
            f"scale {sshape} (want [...]+{ss}); build weights with jax_fpx.quantize, or pass the fmt, shape "
            "and group_size they were packed with"
        )
    want = _scale_dtype(group_size)
    if np.dtype(data.dtype) != np.uint32 or np.dtype(scale.dtype) != want:
        raise ValueError(f"{where}: wants uint32 data and {want} scale, got {data.dtype} and {scale.dtype}")
    return dshape[:-3]


def check_activations(x, in_features: int, where: str = "jax_fpx.linear"):
    """``x`` as a ``(..., in_features)`` bfloat16/float16 array, or a TypeError/ValueError."""
    import jax.numpy as jnp

    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        x = jnp.asarray(x)
    if x.ndim == 0:
        raise ValueError(f"{where} expects x of shape (..., in_features), got a scalar")
    dt = jnp.dtype(x.dtype)
    if dt not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        hint = " (cast first: x.astype(jnp.bfloat16) or x.astype(jnp.float16))" if jnp.issubdtype(dt, jnp.floating) else ""
        raise TypeError(f"{where} expects bfloat16 or float16 activations, got {dt}{hint}")
    if x.shape[-1] != in_features:
        raise ValueError(
            f"x has {x.shape[-1]} features in its last axis (shape {tuple(x.shape)}) but w expects in_features={in_features}"
        )
    return x


def check_bias(bias, out_features: int):
    """``bias`` as a float ``(out_features,)`` array (or ``None``)."""
    import jax.numpy as jnp

    if bias is None:
        return None
    if not hasattr(bias, "shape"):
        bias = jnp.asarray(bias)
    if tuple(bias.shape) != (out_features,):
        raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
    if not jnp.issubdtype(bias.dtype, jnp.floating):
        raise TypeError(f"bias must be a float array, got {bias.dtype}")
    return bias


def check_call_options(impl, split_k, k_blocks: int) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if split_k is not None and (not _is_int(split_k) or split_k < 1):
        raise ValueError(f"split_k must be None or a positive int, got {split_k!r}")
    if split_k is not None and split_k > k_blocks:
        raise ValueError(f"split_k={split_k} exceeds the {k_blocks} k-blocks of this weight")
