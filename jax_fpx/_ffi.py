"""Loads the compiled ``_jax_fpx`` module, registers its FFI targets with JAX (once, lazily) and
reads the facts it exports: the formats each platform's kernels support, the layout version its
handlers read and the CUDA kernel's workspace size (one source: ``csrc/ffi_module.cc``)."""

from __future__ import annotations

import functools
import warnings

import jax

from . import layout

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
    version = _jax_fpx.layout_version()
    if version != layout.LAYOUT_VERSION:
        raise ImportError(
            f"jax_fpx's compiled extension reads packed layout v{version} but the Python package writes "
            f"v{layout.LAYOUT_VERSION}: rebuild it (`pip install --no-build-isolation -e .`)"
        )
    return _jax_fpx


def _gpu_present() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


@functools.cache
def register() -> bool:
    """Register the CPU (and, if built, CUDA) handlers. Returns whether the CUDA handler exists.

    A process that sees a GPU but whose extension has no CUDA handler (built where ``nvcc`` was
    not found) gets one ``RuntimeWarning``: on the GPU ``linear`` then runs dequantize + XLA dot,
    ``impl="kernel"`` included."""
    regs = _module().registrations()
    jax.ffi.register_ffi_target(TARGET, regs["jax_fpx_linear_cpu"], platform="cpu")
    cuda = "jax_fpx_linear_cuda" in regs
    if cuda:
        jax.ffi.register_ffi_target(TARGET, regs["jax_fpx_linear_cuda"], platform="CUDA")
        jax.ffi.register_ffi_target(DEQUANTIZE_TARGET, regs["jax_fpx_dequantize_cuda"], platform="CUDA")
    elif _gpu_present():
        warnings.warn(
            "jax_fpx: JAX sees a GPU but jax_fpx's extension was built without the CUDA handler (nvcc was "
            "not found at build time), so jax_fpx.linear runs dequantize + XLA dot on the GPU, also for "
            "impl='kernel'. Rebuild with nvcc on PATH against this jaxlib: pip install --no-build-isolation -e .",
            RuntimeWarning,
            stacklevel=2,
        )
    return cuda


def cuda_built() -> bool:
    """Whether the extension was compiled with the CUDA kernel."""
    return bool(_module().cuda_enabled())


@functools.cache
def kernel_formats(platform: str) -> frozenset:
    """``(ebits, mbits)`` pairs with a compiled ``jax_fpx_linear`` kernel on ``platform``
    (``"cpu"``/``"cuda"``), from the extension's ``kernel_formats()``; empty when the platform
    has no handler in this build."""
    table = _module().kernel_formats()
    return frozenset((int(e), int(m)) for e, m in table.get(platform, ()))


def kernel_workspace_elems(rows: int) -> int:
    """float32 workspace elements the CUDA GEMM handler needs for ``rows`` folded tokens (stream-K
    flags and partial sums; ``csrc/cuda/kernel/launch_shape.h``)."""
    return int(_module().kernel_workspace_elems(int(rows)))
