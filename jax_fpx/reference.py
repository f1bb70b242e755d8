"""The oracle: dequantize -> ``jnp.dot`` with float32 accumulation.

Used by the tests and as ``impl="reference"``. (The fast non-kernel path, dequantize to the
activation dtype + XLA's GEMM, is ``impl="xla"``.)
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from .quantize import dequantize
from .weight import FPxWeight

__all__ = ["linear"]


def linear(x: jax.Array, w: FPxWeight, bias: Optional[jax.Array] = None) -> jax.Array:
    """``x @ dequantize(w) (+ bias)`` computed in float32, cast to ``x.dtype``.

    Args:
      x: ``(..., in_features)``.
      w: :class:`FPxWeight` for an ``(in_features, out_features)`` kernel.
      bias: optional ``(out_features,)``.
    Returns:
      ``(..., out_features)`` in ``x.dtype``.
    """
    y = jnp.dot(x.astype(jnp.float32), dequantize(w, jnp.float32), precision=jax.lax.Precision.HIGHEST)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype)
