"""Loads the compiled ``_jax_fpx`` module and registers its FFI targets with JAX (once, lazily)."""

from __future__ import annotations

import functools

import jax

TARGET = "jax_fpx_linear"  # the custom-call target name (for jax.export's disabled_checks docs)
DEQUANTIZE_TARGET = "jax_fpx_dequantize"  # CUDA only: packed -> dense [N, K] for the large-M path


@functools.cache
def _module():
    try:
        from . import _jax_fpx
    except ImportError as err:  # pragma: no cover - only without a build
        raise ImportError(
            "jax_fpx's compiled extension is missing: install the package with "
            "`pip install -e .` (it builds with CMake + nanobind)"
        ) from err
    return _jax_fpx


@functools.cache
def register() -> bool:
    """Register the CPU (and, if built, CUDA) handlers. Returns whether CUDA is available."""
    regs = _module().registrations()
    jax.ffi.register_ffi_target(TARGET, regs["jax_fpx_linear_cpu"], platform="cpu")
    cuda = "jax_fpx_linear_cuda" in regs
    if cuda:
        jax.ffi.register_ffi_target(TARGET, regs["jax_fpx_linear_cuda"], platform="CUDA")
        jax.ffi.register_ffi_target(DEQUANTIZE_TARGET, regs["jax_fpx_dequantize_cuda"], platform="CUDA")
    return cuda


def cuda_built() -> bool:
    """Whether the extension was compiled with the CUDA kernel."""
    return bool(_module().cuda_enabled())
