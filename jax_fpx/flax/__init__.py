"""Flax integration of jax_fpx.

linen:
  ``FPxDense`` / ``FPxDenseGeneral``: drop-ins for ``nn.Dense`` / ``nn.DenseGeneral`` with an
  :class:`~jax_fpx.FPxWeight` ``kernel``.
  ``quantize_params(params, fmt)``: quantize every Dense kernel of a param tree.
  ``fpx_dense_interceptor()``: run an unmodified model's ``nn.Dense`` layers on those params.
  ``Calibration`` / ``dense_input_hessians()``: inputs' XᵀX for ``quantize_params(method="gptq")``.
nnx:
  ``FPxLinear``: ``nnx.Linear`` counterpart; ``quantize_nnx(model, fmt)`` converts in place.
"""

from .calibration import Calibration, InputStats, dense_input_hessians, nnx_input_hessians
from .convert import DEFAULT_EXCLUDE, dense_input_stats, dequantize_params, fpx_dense_interceptor, quantize_params
from .linen import FPxDense, FPxDenseGeneral
from .nnx import FPxLinear, quantize_nnx
from .rules import QuantRule, load_rules

__all__ = [
    "FPxDense",
    "FPxDenseGeneral",
    "FPxLinear",
    "quantize_nnx",
    "quantize_params",
    "dequantize_params",
    "dense_input_stats",
    "dense_input_hessians",
    "nnx_input_hessians",
    "Calibration",
    "InputStats",
    "fpx_dense_interceptor",
    "DEFAULT_EXCLUDE",
    "QuantRule",
    "load_rules",
]
