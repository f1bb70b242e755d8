"""``FPxWeight``: a quantized Flax-layout kernel as a JAX pytree."""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

from . import layout, validation
from .formats import FPxFormat
from .linear_spec import LogicalShape

__all__ = ["FPxWeight"]


@jax.tree_util.register_pytree_with_keys_class
class FPxWeight(LogicalShape):
    """A ``(in_features, out_features)`` kernel stored as packed FPx codes plus scales.

    Leaves (arrays; may carry extra leading axes when weights are stacked, e.g. by
    ``nn.scan`` or ``jax.vmap``):
      data:  ``uint32[..., N_pad/16, K_pad/64, 32*bits]`` packed codes (see ``jax_fpx.layout``).
      scale: ``float32[..., N_pad, 1]`` per-channel or ``bfloat16[..., N_pad, K_pad/group]``
        per-group scales (``layout.scale_dtype``).

    Static aux data: ``fmt`` (FPxFormat), ``shape`` = logical (in_features, out_features),
    ``group_size`` (None = one scale per output channel).
    """

    __slots__ = ("data", "scale", "fmt", "shape", "group_size")

    def __init__(self, data: Any, scale: Any, fmt: FPxFormat, shape: tuple[int, int], group_size: int | None):
        self.fmt, self.shape, self.group_size = _checked_metadata(fmt, shape, group_size)
        self.data = data
        self.scale = scale
        if all(hasattr(a, "shape") and hasattr(a, "dtype") for a in (data, scale)):  # arrays, not specs
            validation.check_leaves(data, scale, self.fmt, self.shape, self.group_size)

    # --- pytree -------------------------------------------------------------------------
    def tree_flatten_with_keys(self):
        children = ((jax.tree_util.GetAttrKey("data"), self.data), (jax.tree_util.GetAttrKey("scale"), self.scale))
        return children, (self.fmt, self.shape, self.group_size, layout.LAYOUT_VERSION)

    def tree_flatten(self):
        return (self.data, self.scale), (self.fmt, self.shape, self.group_size, layout.LAYOUT_VERSION)

    @classmethod
    def tree_unflatten(cls, aux, children):
        fmt, shape, group_size, version = aux
        if version != layout.LAYOUT_VERSION:
            raise ValueError(
                f"FPxWeight packed with layout v{version}, this jax_fpx reads v{layout.LAYOUT_VERSION} (the packed "
                "codes are not interchangeable): re-quantize the float weights with jax_fpx.quantize, or dequantize "
                "with the jax_fpx that wrote them and quantize the result here"
            )
        fmt, shape, group_size = _checked_metadata(fmt, shape, group_size)  # leaves here may be any object
        obj = object.__new__(cls)
        obj.data, obj.scale = children
        obj.fmt, obj.shape, obj.group_size = fmt, shape, group_size
        return obj

    # --- shape helpers (in_features, out_features, padded_shape: LogicalShape) -----------
    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading axes of stacked weights (``()`` for a single matrix)."""
        return tuple(np.shape(self.data))[:-3]

    @property
    def nbytes(self) -> int:
        """Bytes of packed codes plus scales (what a GEMM streams from memory)."""
        scale_bytes = np.dtype(self.scale.dtype).itemsize
        return int(np.prod(np.shape(self.data))) * 4 + int(np.prod(np.shape(self.scale))) * scale_bytes

    def check(self) -> tuple[int, ...]:
        """Raise ValueError unless the leaves match the static metadata (packed shapes, dtypes);
        returns the batch shape (leading axes of stacked weights)."""
        return validation.check_leaves(self.data, self.scale, self.fmt, self.shape, self.group_size, where=repr(self))

    def __repr__(self) -> str:
        g = "per-channel" if self.group_size is None else f"group={self.group_size}"
        b = f", batch={self.batch_shape}" if self.batch_shape else ""
        return f"FPxWeight({self.fmt.name}, in={self.shape[0]}, out={self.shape[1]}, {g}{b})"


def _checked_metadata(fmt, shape, group_size):
    """``validation.check_metadata``, cached (unflatten runs on every transformation)."""
    try:
        hash((fmt, shape, group_size))
    except TypeError:  # e.g. a list or array shape: checked (and rejected or normalized) uncached
        return validation.check_metadata(fmt, shape, group_size)
    return _checked_metadata_cached(fmt, shape, group_size)


@functools.lru_cache(maxsize=4096)
def _checked_metadata_cached(fmt, shape, group_size):
    return validation.check_metadata(fmt, shape, group_size)


# --- jax.export: serializing an exported function whose inputs/outputs contain FPxWeight -------
_EXPORT_NAME = "jax_fpx.FPxWeight"


def _serialize_aux(aux) -> bytes:
    import json

    fmt, shape, group_size, version = aux
    return json.dumps(
        {
            "ebits": fmt.ebits,
            "mbits": fmt.mbits,
            "nan_at_max": fmt.nan_at_max,
            "shape": list(shape),
            "group_size": group_size,
            "layout_version": version,
        }
    ).encode()


def _deserialize_aux(blob: bytes):
    import json

    d = json.loads(blob.decode())
    fmt = FPxFormat(int(d["ebits"]), int(d["mbits"]), bool(d["nan_at_max"]))
    return fmt, tuple(int(s) for s in d["shape"]), d["group_size"], int(d["layout_version"])


jax.export.register_pytree_node_serialization(
    FPxWeight,
    serialized_name=_EXPORT_NAME,
    serialize_auxdata=_serialize_aux,
    deserialize_auxdata=_deserialize_aux,
)
