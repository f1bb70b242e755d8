"""jax_fpx: FP6 (and any eXmY FPx) weight-only quantized matmul for JAX.

    w = jax_fpx.quantize(kernel, "fp6_e3m2")   # kernel: (in_features, out_features)
    y = jax.jit(jax_fpx.linear)(x, w)          # x: (..., in_features) bf16/f16
    dense = jax_fpx.dequantize(w)

``jax_fpx.flax`` (imported on first use) has the Flax layers and model conversion.
"""

from __future__ import annotations

from . import layout, reference
from .formats import FORMATS, FPxFormat, get_format
from .gptq import GPTQ, quantize_gptq
from .ops import linear
from .quantize import ScaleSearch, dequantize, quantize
from .weight import FPxWeight

__version__ = "0.1.0"
__all__ = [
    "FPxFormat",
    "FPxWeight",
    "FORMATS",
    "get_format",
    "quantize",
    "quantize_gptq",
    "GPTQ",
    "ScaleSearch",
    "dequantize",
    "linear",
    "reference",
    "layout",
]


_LAZY = {"flax": "flax", "models": "models", "cli": "cli", "bench": "cli.bench"}  # jax_fpx.bench: moved to cli


def __getattr__(name):  # lazy subpackages: importing jax_fpx must not import flax
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"{__name__}.{_LAZY[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
