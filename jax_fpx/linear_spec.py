"""``LinearSpec``: the static description of one ``linear`` call, shared by every module of the op chain.

The chain (each module imports only the next one)::

    ops          public ``linear``: checks (jax_fpx.validation), N-D -> 2-D, one cached jit per spec
    autodiff     custom VJP (exact dx / dbias, scale gradient only when asked)
    batching     custom vmap rule: the only place that adds, folds or merges a batch axis
    partitioning custom_partitioning + Shardy rule; explicit meshes through auto_axes
    dispatch     which path runs on which platform and M (thresholds, split-K workspace size)
    ffi_calls    the ``jax_fpx_linear`` / ``jax_fpx_dequantize`` custom calls
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax

from . import layout
from .formats import FPxFormat

__all__ = ["LinearSpec", "LogicalShape", "IMPLS", "explicit_mesh"]

IMPLS = ("auto", "kernel", "reference", "xla")


class LogicalShape:
    """Shape facts of a weight from its ``shape`` = (in_features, out_features) and ``group_size``
    (shared by :class:`LinearSpec` and :class:`jax_fpx.FPxWeight`)."""

    __slots__ = ()

    @property
    def in_features(self) -> int:
        return self.shape[0]

    @property
    def out_features(self) -> int:
        return self.shape[1]

    @property
    def padded_shape(self) -> tuple[int, int]:
        """(N_pad, K_pad) of the packed matrix."""
        return layout.padded_shape(self.shape[0], self.shape[1], self.group_size)


@dataclasses.dataclass(frozen=True)
class LinearSpec(LogicalShape):
    """Static facts of a ``linear`` call (hashable: a jit static argument and cache key).

    Attributes:
      fmt: the weight format.
      shape: logical ``(in_features, out_features)`` of the weight this call sees (a shard's
        local shape under partitioning).
      group_size: ``None`` (one scale per output channel) or the scale group along K.
      impl: ``"auto"``, ``"kernel"``, ``"reference"`` or ``"xla"`` (see :func:`jax_fpx.linear`).
      split_k: forced number of CUDA K splits, or ``None`` (chosen by :mod:`jax_fpx.dispatch`).
    """

    fmt: FPxFormat
    shape: tuple[int, int]
    group_size: Optional[int] = None
    impl: str = "auto"
    split_k: Optional[int] = None

    @property
    def k_blocks(self) -> int:
        return self.padded_shape[1] // layout.K_BLOCK

    def with_shape(self, in_features: int, out_features: int) -> "LinearSpec":
        """The same call on a ``(in_features, out_features)`` shard of the weight."""
        return dataclasses.replace(self, shape=(int(in_features), int(out_features)))


def explicit_mesh(*arrays):
    """The mesh if any array is sharded over an ``AxisType.Explicit`` mesh axis (sharding in
    types), else ``None``."""
    for a in arrays:
        if a is None:
            continue
        try:
            sh = jax.typeof(a).sharding
        except Exception:  # pragma: no cover - not an array
            continue
        mesh = getattr(sh, "mesh", None)
        if mesh is None or getattr(mesh, "empty", True):
            continue
        explicit = any(t == jax.sharding.AxisType.Explicit for t in getattr(mesh, "axis_types", ()))
        if explicit and any(e is not None for e in sh.spec):
            return mesh
    return None
